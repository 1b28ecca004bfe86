"""Training frames spooled to disk: bit-identical to the in-memory arrays, the same trained model, and the
spool folder gone after the command."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from ood_monitor.cli.main import main as cli
from ood_monitor.core.model_input import FrameConfig
from ood_monitor.core.vae import VaeConfig, build_model
from ood_monitor.core.vae.train import TrainConfig, train_vae
from ood_monitor.data.spool import FrameSpool, chunks, spool_directory
from ood_monitor.fleet.inputs import load_training_frames


def test_spool_returns_the_frames_appended_in_order_read_only(tmp_path: Path) -> None:
    frames = np.random.default_rng(0).integers(0, 255, (7, 4, 5, 3), dtype=np.uint8)
    spool = FrameSpool(tmp_path)
    for f in frames:
        spool.append(f)
    assert len(spool) == 7
    assert np.array_equal(spool.array(), frames)
    assert np.array_equal(spool.array(5), frames[5:])
    assert not spool.array().flags.writeable
    assert np.array_equal(np.concatenate(list(chunks(spool.array(), 3))), frames)
    with pytest.raises(ValueError, match="share the model's input size"):
        spool.append(np.zeros((4, 4, 3), np.uint8))


def test_spool_directory_is_removed_on_errors_too(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), spool_directory(tmp_path) as folder:
        FrameSpool(folder).append(np.zeros(3, np.uint8))
        assert folder.is_dir()
        raise RuntimeError("training failed")
    assert not folder.exists() and tmp_path.is_dir()


@pytest.mark.parametrize("kind", ["image", "flow"])
def test_spooled_frames_equal_the_in_memory_ones(demo_dataset: Path, tmp_path: Path, kind: str) -> None:
    bags = demo_dataset / "bags"
    paths, cfg = [bags / "train", bags / "calibration"], FrameConfig(32, 32)
    memory = load_training_frames(paths, kind, cfg, "/camera/image_raw")
    spooled = load_training_frames(paths, kind, cfg, "/camera/image_raw", spool_dir=tmp_path)
    assert isinstance(spooled.raw, np.memmap) and not isinstance(memory.raw, np.memmap)
    assert np.array_equal(spooled.raw, memory.raw) and spooled.data_hash == memory.data_hash
    assert np.array_equal(spooled.index, memory.index)


def test_training_on_a_spool_gives_the_same_weights(demo_dataset: Path, tmp_path: Path) -> None:
    frames = load_training_frames([demo_dataset / "bags" / "train"], "image", FrameConfig(16, 16), "/camera/image_raw",
                                  limit=64, spool_dir=tmp_path)
    cfg = VaeConfig(kind="image", height=16, width=16, latent=4, widths=(8, 8), hidden=16)
    train = TrainConfig(epochs=2, batch=16, val_split=0.25, patience=2, seed=0)
    weights = []
    for data in (frames, frames.subset(np.arange(len(frames)))):  # the memory map, then an in-memory copy
        torch.manual_seed(0)
        model = build_model("beta_vae", cfg)
        train_vae(model, data, 1.0, train, log=lambda _m: None)
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(weights[0], weights[1])


def test_train_commands_leave_no_spool_behind(demo_dataset: Path, tmp_path: Path) -> None:
    spools = tmp_path / "spools"
    vae = ["train", "vae", "--kind", "image", "--data", str(demo_dataset / "bags" / "train"), "--out",
           str(tmp_path / "vae"), "--size", "16", "--latent", "4", "--widths", "8", "--hidden", "16", "--epochs", "1",
           "--min-steps", "0", "--batch", "16", "--select-k", "2", "--threads", "1", "--max-frames", "40",
           "--spool-dir", str(spools)]
    assert cli(vae) == 0
    assert json.loads((tmp_path / "vae" / "config.json").read_text())["data"]["frames"] == 40
    dcae = ["train", "dcae", "--data", str(demo_dataset / "bags" / "train"), "--out", str(tmp_path / "dcae"),
            "--size", "16", "--steps", "1", "--batch", "2", "--crop", "0", "--threads", "1", "--max-frames", "20",
            "--spool-dir", str(spools)]
    assert cli(dcae) == 0
    assert spools.is_dir() and list(spools.iterdir()) == []
