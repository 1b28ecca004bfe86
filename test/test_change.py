"""The change part of the image detector's score: a frame's statistics against the frames just before it,
a reference that holds while a corruption lasts and restarts when the stream comes back or a new sequence
starts; the same scores online (the node's detector), offline (score_frameset) and in the fleet scorer."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from test_detector import cli, png_folder

from ood_monitor.core.alarm_calibration import block_tolerance
from ood_monitor.core.change import ChangeConfig, ChangeStats, ChangeTracker, change_scores
from ood_monitor.core.nonconformity import Nonconformity

WIDTH = 3


def stream(n: int, seed: int) -> np.ndarray:
    """(n, WIDTH) statistics of a camera moving through a scene: a slow AR(1) wander around 0."""
    rng = np.random.default_rng(seed)
    rows = np.zeros((n, WIDTH))
    for t in range(1, n):
        rows[t] = 0.95 * rows[t - 1] + rng.normal(0, 0.05, WIDTH)
    return rows


def bound_for(stats: ChangeStats, calibration: np.ndarray) -> float:
    """The gate as `calibrate` sets it: the blocks' tolerance times the largest nominal change score."""
    scores = change_scores(stats, calibration)
    return block_tolerance(scores, np.arange(len(scores)) * 5 // len(scores)) * float(scores.max())


def with_step(rows: np.ndarray, start: int, length: int, size: float = 1.5) -> np.ndarray:
    stepped = rows.copy()
    stepped[start:start + length, 0] += size  # a corruption: away from everything training saw, at once
    return stepped


def test_a_lasting_step_is_held_against_the_frames_before_it_and_the_return_is_not_flagged() -> None:
    stats = ChangeStats.fit(stream(400, 0), cfg=ChangeConfig(k=2, hold=40))
    bound = bound_for(stats, stream(200, 1))
    nominal = stream(60, 2)
    assert (change_scores(stats, nominal, bound=bound) <= bound).mean() > 0.95
    scores = change_scores(stats, with_step(nominal, 20, 8), bound=bound)
    assert np.all(scores[20:28] > bound)  # every frame of the step: the reference stayed on the lead-in
    assert np.all(scores[28:40] <= bound)
    moved = with_step(nominal, 20, 8)
    moved[28:, 1] += 0.4  # the camera moved on while the step lasted: the stream comes back elsewhere
    scores = change_scores(stats, moved, bound=bound)
    assert stats.change_distance(moved[28] - moved[18:20].mean(axis=0)) > bound  # far from the stale reference
    assert scores[28] == 0.0  # but towards the training frames from the held ones: nothing new, restart there
    assert np.all(scores[29:40] <= bound)
    # an ungated reference (every frame enters it) sees only the onset
    ungated = change_scores(stats, with_step(nominal, 20, 8))
    assert ungated[20] > bound and np.all(ungated[23:28] <= bound)


def test_the_reference_restarts_after_hold_frames_and_at_each_sequence() -> None:
    stats = ChangeStats.fit(stream(400, 0), cfg=ChangeConfig(k=2, hold=3))
    bound = bound_for(stats, stream(200, 1))
    scores = change_scores(stats, with_step(stream(60, 2), 20, 10), bound=bound)
    assert np.all(scores[20:24] > bound)  # 3 held, then the 4th restarts the reference ...
    assert np.all(scores[24:30] <= bound)  # ... and the rest of the lasting step is its new normal
    rows, sequence = stream(30, 3), np.repeat([0, 1, 2], 10)
    scores = change_scores(stats, rows, sequence, bound)
    assert np.all(scores[[0, 10, 20]] == 0.0)  # a new sequence has no reference yet
    tracker = ChangeTracker(stats, bound)
    manual = []
    for t, row in enumerate(rows):
        if t in (10, 20):
            tracker.reset()
        manual.append(tracker.update(row))
    np.testing.assert_array_equal(scores, manual)


def test_repeated_frames_are_no_change_and_the_frame_after_them_restarts_the_reference() -> None:
    stats = ChangeStats.fit(stream(400, 0), cfg=ChangeConfig(k=2, hold=40))
    bound = bound_for(stats, stream(200, 1))
    live = stream(80, 2)
    live[40:, 0] += 1.5  # while the camera stood frozen on frame 19 the view moved on
    frozen = live.copy()
    frozen[20:40] = live[19]
    scores = change_scores(stats, frozen, bound=bound)
    assert np.all(scores[20:40] == 0.0)  # a repeat changes nothing
    assert scores[40] == 0.0  # the jump on resuming is not a step from the frozen view
    assert np.all(scores[41:60] <= bound)  # and the frames after it face the new view, not the held old one
    without = frozen.copy()
    without[20:40] += np.arange(20)[:, None] * 1e-9  # the same stream where the frames differ minutely
    held = change_scores(stats, without, bound=bound)
    assert np.all(held[40:43] > bound)  # then the new view is held against the old one: what the rule avoids


def test_statistics_survive_the_card_and_refuse_what_they_cannot_fit() -> None:
    stats = ChangeStats.fit(stream(100, 0), cfg=ChangeConfig(k=4, hold=9))
    again = ChangeStats.from_dict(stats.to_dict())
    assert again.cfg == ChangeConfig(4, 9)
    np.testing.assert_allclose(change_scores(again, stream(20, 5)), change_scores(stats, stream(20, 5)))
    with pytest.raises(ValueError, match="at least 7 training changes"):
        ChangeStats.fit(stream(6, 0))
    with pytest.raises(ValueError, match="shapes"):
        ChangeStats.from_dict({**stats.to_dict(), "level_mean": [0.0]})
    with pytest.raises(ValueError, match="k >= 1"):
        ChangeConfig(k=0)
    from ood_monitor.cli import train_cmd
    from ood_monitor.core import nonconformity

    assert train_cmd.SCORES == nonconformity.SCORES  # the CLI's import-free copy names every score


def image_stream(n: int, seed: int, dark_from: int | None = None) -> np.ndarray:
    """(n, 32, 32, 3) uint8 frames of a slowly panning texture; from `dark_from` on, a third of the light."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:32, :32]
    frames = []
    for t in range(n):
        grey = 128 + 70 * np.sin((xx + 0.4 * t) / 4.0) * np.cos(yy / 5.0) + rng.normal(0, 2, (32, 32))
        frame = np.repeat(np.clip(grey, 0, 255)[..., None], 3, -1)
        frames.append(frame / 3 if dark_from is not None and t >= dark_from else frame)
    return np.asarray(frames, np.uint8)


def test_the_fused_score_takes_the_change_part_on_its_own_scale() -> None:
    from ood_monitor.core.photometric import PhotometricStats, photometric_features
    from ood_monitor.core.structure import StructureStats, structure_features
    from ood_monitor.core.texture import TextureHead

    train = image_stream(80, 0)
    rng = np.random.default_rng(1)
    mu, logvar = rng.normal(size=(80, 4)), rng.normal(-1, 0.1, size=(80, 4))
    rows = np.concatenate([photometric_features(train), structure_features(train)], axis=1)
    change = ChangeStats.fit(rows)
    kw = dict(texture=TextureHead.fit_frames(mu, logvar, train), photometric=PhotometricStats.fit_frames(train),
              structure=StructureStats.fit_frames(train))
    dims, center, scale = (0, 1), (0.5, 0.5), (0.2, 0.2)
    three = Nonconformity("kl_texture_photometric_structure", dims, center, scale, **kw, part_scales=(4.0, 10.0, 2.0))
    four = Nonconformity("kl_texture_photometric_structure_change", dims, center, scale, **kw, change=change,
                         part_scales=(4.0, 10.0, 2.0, 5.0))
    test = image_stream(12, 3, dark_from=6)
    test_rows = np.concatenate([photometric_features(test), structure_features(test)], axis=1)
    expected_change = change_scores(change, test_rows, bound=5.0)  # the part's scale is its gate
    fused = four(mu[:12], logvar[:12], four.frame_features(test))
    np.testing.assert_allclose(fused, np.maximum(three(mu[:12], logvar[:12], three.frame_features(test)),
                                                 expected_change / 5.0))
    alone = Nonconformity("change", dims, change=change)
    np.testing.assert_allclose(alone(mu[:12], logvar[:12], alone.frame_features(test)), change_scores(change, test_rows))
    four.restart()  # a new sequence: the first frame has no reference, so its change part is 0
    first = four.frame_features(test[6:7])
    assert first[0, -1] == 0.0
    with pytest.raises(ValueError, match="change statistics fitted at training"):
        Nonconformity("kl_texture_photometric_structure_change", dims, center, scale, **kw,
                      part_scales=(4.0, 10.0, 2.0, 5.0))
    with pytest.raises(ValueError, match="need the frames' features"):
        alone(mu[:1], logvar[:1])


def test_calibrated_change_score_runs_the_same_online_offline_and_in_the_fleet(tmp_path: Path) -> None:
    """`train vae` fits the change statistics; `calibrate --score ..._change` puts the four parts on their
    scales; the node's detector, score_frameset and the fleet scorer then give the same scores for a
    stream, each restarting where a sequence restarts."""
    import cv2

    from ood_monitor.core.detector import VaeDetector, score_frameset
    from ood_monitor.core.vae.dataset import FrameSet
    from ood_monitor.core.vae.io import load_encoder, read_card
    from ood_monitor.fleet.scoring import ModelScorer

    train, cal = png_folder(tmp_path / "train", 40, 0), png_folder(tmp_path / "cal", 30, 1)
    out = tmp_path / "vae"
    assert cli("train", "vae", "--kind", "image", "--data", str(train), "--out", str(out), "--size", "32",
               "--latent", "6", "--widths", "8,16", "--hidden", "32", "--epochs", "1", "--min-steps", "0",
               "--batch", "16", "--select-k", "3", "--threads", "2") == 0
    assert read_card(out).photometric["change"]["k"] == ChangeConfig().k
    method = "kl_texture_photometric_structure_change"
    assert cli("calibrate", "--model", str(out), "--data", str(cal), "--score", method) == 0
    card = read_card(out)
    assert card.score == method and len(card.photometric["parts"]["scales"]) == 4
    frames = np.stack([cv2.resize(cv2.imread(str(p))[..., ::-1], (32, 32), interpolation=cv2.INTER_AREA)
                       for p in sorted(cal.glob("*.png"))[:12]])
    frames[8:] //= 3  # the light drops at frame 8
    n = len(frames)
    test = FrameSet("image", frames, np.zeros(n, bool), np.array(["x"] * n, object), np.array(["x"] * n, object),
                    np.zeros(n, np.int64), np.arange(n), "h")
    sequence = np.repeat([0, 1], 6)
    offline = score_frameset(*load_encoder(out), test, sequence=sequence)
    det = VaeDetector.from_model_dir(out)
    online = []
    for t, frame in enumerate(frames):
        if t == 6:
            det.reset()
        online.append(det.score_frame(frame).score)
    np.testing.assert_allclose(online, offline, rtol=1e-5)
    scorer = ModelScorer(out)
    stamps = [t * 50_000_000 + (2_000_000_000 if t >= 6 else 0) for t in range(n)]  # a 2 s gap before frame 6
    fleet = np.concatenate([scorer.score(frames[:5], [("a", t, stamps[t]) for t in range(5)]),
                            scorer.score(frames[5:], [("a", t, stamps[t]) for t in range(5, n)])])
    np.testing.assert_allclose(fleet, offline, rtol=1e-5)
    assert offline[8] > offline[7]  # the drop in light
