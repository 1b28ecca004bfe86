"""synthesizer_node over real rclpy + Fast DDS: result headers and sizes, the on_ood cascade, refusals."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.parameter import Parameter
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from ood_monitor.core.diffusion.dcae import DcaeConfig, build_dcae
from ood_monitor.core.diffusion.dit import Dit, DitConfig
from ood_monitor.core.diffusion.schedules import ScheduleConfig
from ood_monitor.core.diffusion.synthesizer import ModelFileError, save_model
from ood_monitor.nodes.synthesizer_node import SynthesizerNode
from ood_monitor.ros.image import array_to_image, image_to_array
from ood_msgs.msg import OODScore, SynthesisResult

from ros_harness import RosHarness, wait_until

pytestmark = pytest.mark.ros
SIZE = 32


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    """An untrained tiny DC-AE + DiT: the node's plumbing does not need a good model."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    ae = DcaeConfig(image_size=SIZE, latent_channels=4, channels=(8, 16, 32), layers=(0, 1, 1), attention_head_dim=8)
    save_model(root / "dcae", build_dcae(ae), {"type": "dcae", "arch": ae.to_dict(), "image_size": SIZE})
    dit = DitConfig(latent_channels=4, latent_size=8, patch=2, width=32, depth=1, heads=2)
    save_model(root / "dit", Dit(dit), {"type": "latent_dit", "arch": dit.to_dict(), "image_size": SIZE,
                                        "schedule": ScheduleConfig().to_dict(), "dcae": "../dcae"})
    return root / "dit"


@pytest.fixture
def ros():
    with RosHarness() as h:
        yield h


def start_node(ros: RosHarness, model_dir, **params) -> SynthesizerNode:
    params = {"model_dir": str(model_dir), "steps": 2, "threads": 1, **params}
    overrides = [Parameter(k, value=v) for k, v in params.items()]
    return ros.add(SynthesizerNode(context=ros.context, parameter_overrides=overrides))


def header(i: int, frame_id: str = "cam") -> Header:
    h = Header(frame_id=frame_id)
    h.stamp.sec, h.stamp.nanosec = 1_700_000_000 + i, 1000 * i
    return h


def frame(i: int) -> Image:
    rgb = np.random.default_rng(i).integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
    return array_to_image(rgb, "rgb8", header=header(i))


def score(i: int, is_ood: bool, detector: str = "image") -> OODScore:
    return OODScore(header=header(i), detector=detector, is_ood=is_ood)


def test_always_publishes_a_result_with_the_input_header(ros, model_dir):
    start_node(ros, model_dir)
    results = ros.collect(SynthesisResult, "ood/synthesis")
    pub = ros.publisher(Image, "ood/image")
    ros.wait_for_subscribers(pub)
    sent = frame(1)
    pub.publish(sent)
    assert wait_until(lambda: len(results) == 1, 15)
    r = results[0]
    for h in (r.header, r.input.header, r.synthesized.header):
        assert (h.stamp.sec, h.stamp.nanosec, h.frame_id) == (sent.header.stamp.sec, sent.header.stamp.nanosec, "cam")
    for img in (r.input, r.synthesized):
        assert (img.width, img.height, img.encoding) == (SIZE, SIZE, "rgb8")
    assert np.array_equal(image_to_array(r.input), image_to_array(sent))
    assert r.steps == 2 and r.backend == "ort-cpu-fp32" and r.latency_ms > 0  # backend auto: ONNX Runtime


def test_on_ood_runs_only_for_frames_scored_ood(ros, model_dir):
    node = start_node(ros, model_dir, trigger="on_ood", score_wait_s=5.0)
    results = ros.collect(SynthesisResult, "ood/synthesis")
    images = ros.publisher(Image, "ood/image")
    s_image, s_flow = ros.publisher(OODScore, "ood/score/image"), ros.publisher(OODScore, "ood/score/flow")
    for p in (images, s_image, s_flow):
        ros.wait_for_subscribers(p)
    images.publish(frame(1))  # in distribution for both detectors: must not run
    s_image.publish(score(1, False))
    s_flow.publish(score(1, False, "flow"))
    assert wait_until(lambda: node.counts["skipped_not_ood"] == 1, 10)
    images.publish(frame(2))
    s_flow.publish(score(2, False, "flow"))
    s_image.publish(score(3, True))  # another stamp's alarm does not trigger frame 2
    s_image.publish(score(2, True))
    assert wait_until(lambda: len(results) == 1, 15)
    assert results[0].header.stamp.sec == 1_700_000_002
    assert node.counts["triggered"] == 1 and node.counts["skipped_not_ood"] == 1


def test_on_ood_gives_up_on_a_frame_whose_score_never_comes(ros, model_dir):
    node = start_node(ros, model_dir, trigger="on_ood", score_wait_s=0.2)
    images = ros.publisher(Image, "ood/image")
    ros.wait_for_subscribers(images)
    images.publish(frame(4))
    assert wait_until(lambda: node.counts["skipped_score_timeout"] == 1, 10)
    assert node.counts["triggered"] == 0


def test_every_n_synthesizes_every_nth_frame(ros, model_dir):
    node = start_node(ros, model_dir, trigger="every_n", every_n=3)
    pub = ros.publisher(Image, "ood/image")
    ros.wait_for_subscribers(pub)
    for i in range(3):
        pub.publish(frame(10 + i))
        wait_until(lambda i=i: node.counts["received"] == i + 1, 5)
    assert wait_until(lambda: node.counts["triggered"] == 1 and node.counts["skipped_trigger"] == 2, 10)


def hold_first_synthesis(node: SynthesizerNode) -> threading.Event:
    """Make the node's first synthesis wait until the returned event is set (the worker is busy meanwhile)."""
    release, original = threading.Event(), node.synth.synthesize
    calls = []

    def held(rgb):
        calls.append(1)
        if len(calls) == 1:
            release.wait(10)
        return original(rgb)

    node.synth.synthesize = held
    return release


@pytest.mark.parametrize("max_wait_ms, expected", [(10.0, [1, 3]), (0.0, [1, 2, 3])])
def test_a_frame_that_waited_too_long_for_the_worker_is_dropped(ros, model_dir, max_wait_ms, expected):
    node = start_node(ros, model_dir, max_wait_ms=max_wait_ms)
    release = hold_first_synthesis(node)
    results = ros.collect(SynthesisResult, "ood/synthesis")
    pub = ros.publisher(Image, "ood/image")
    ros.wait_for_subscribers(pub)
    pub.publish(frame(1))
    assert wait_until(lambda: node.counts["triggered"] == 1, 10)  # the worker holds frame 1
    pub.publish(frame(2))
    assert wait_until(lambda: node.pending is not None, 10)
    time.sleep(0.2)  # frame 2 waits far longer than 10 ms for the busy worker
    release.set()
    assert wait_until(lambda: len(results) >= 1, 15)
    assert wait_until(lambda: node.pending is None, 10)
    pub.publish(frame(3))  # with max_wait_ms, it arrives at an idle worker: never stale
    assert wait_until(lambda: len(results) == len(expected), 15)
    time.sleep(0.2)
    assert [r.header.stamp.sec - 1_700_000_000 for r in results] == expected
    assert node.counts["skipped_stale"] == (1 if max_wait_ms else 0)


def test_malformed_and_wrong_size_images_are_refused_with_a_diagnostic(ros, model_dir):
    start_node(ros, model_dir, diagnostics_period_s=0.2)
    results = ros.collect(SynthesisResult, "ood/synthesis")
    diags = ros.collect(DiagnosticArray, "/diagnostics")
    pub = ros.publisher(Image, "ood/image")
    ros.wait_for_subscribers(pub)
    bad = frame(5)
    bad.step = 7  # shorter than a row
    pub.publish(bad)
    wrong = array_to_image(np.zeros((SIZE + 8, SIZE, 3), np.uint8), "rgb8", header=header(6))
    pub.publish(wrong)

    def warned() -> bool:
        return any(s.level >= DiagnosticStatus.WARN and "synthesizer_node" in s.name
                   for d in diags for s in d.status)

    assert wait_until(warned, 10)
    values = {kv.key: kv.value for d in diags for s in d.status for kv in s.values}
    assert int(values["rejected"]) >= 1 and values["backend"] == "ort-cpu-fp32"
    assert results == []


def test_missing_model_refuses_to_start_naming_the_file_and_the_command(ros, tmp_path):
    with pytest.raises(ModelFileError, match=r"absent/config.json not found: run `ood-monitor train"):
        start_node(ros, tmp_path / "absent")


def test_sampling_parameters_retune_at_run_time(ros, model_dir):
    node = start_node(ros, model_dir)
    g = node.synth.guidance  # the realtime preset, steps set explicitly; fp32 runs on ONNX Runtime
    assert (g.kind, g.scale, g.strength, g.steps) == ("gradfree", 4.0, 0.3, 2) and node.synth.backend == "ort-cpu-fp32"
    results = node.set_parameters([Parameter("guidance", value=3.0), Parameter("steps", value=1)])
    assert all(r.successful for r in results)
    assert node.synth.guidance.scale == 3.0 and node.synth.guidance.steps == 1
    refused = node.set_parameters([Parameter("strength", value=1.5)])
    assert not refused[0].successful and node.synth.guidance.strength == 0.3
    # one parameter back to the model directory's sampling (this tiny model stores none: from_model_dir's
    # defaults, gradient guidance); values set explicitly still win
    assert node.set_parameters([Parameter("sampling", value="model"), Parameter("guidance", value=-1.0)])[0].successful
    g = node.synth.guidance
    assert (g.kind, g.scale, g.strength, g.steps) == ("gradient", 1.0, 0.6, 1)
    out = node.synth.synthesize(np.zeros((SIZE, SIZE, 3), np.uint8))  # gradient: the DiT in torch, DC-AE in ORT
    assert out.shape == (SIZE, SIZE, 3) and node.synth.last_timing.guidance_ms > 0
    refused = node.set_parameters([Parameter("model_dir", value="elsewhere")])
    assert not refused[0].successful and "read at configure" in refused[0].reason


def test_bad_trigger_parameter_is_refused(ros, model_dir):
    with pytest.raises(ValueError, match="parameter trigger"):
        start_node(ros, model_dir, trigger="sometimes")
