"""The synthesizer hands the analysis the DC-AE encoder features of the frame it encoded (so the analysis
runs those blocks on the synthesis only): the same features, the same masks, refused from another encoder,
carried intact by SynthesisResult, and used end to end by the two nodes."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from rclpy.parameter import Parameter
from sensor_msgs.msg import Image
from std_msgs.msg import Header

from ood_monitor.core.analysis.discrepancy import Discrepancy, DiscrepancyConfig, FrameFeatures, dcae_features
from ood_monitor.core.diffusion.synthesizer import Synthesizer
from ood_monitor.nodes.analysis_node import AnalysisNode
from ood_monitor.nodes.synthesizer_node import SynthesizerNode
from ood_monitor.ros.features import features_from_fields, features_to_fields
from ood_monitor.ros.image import array_to_image, image_to_array
from ood_msgs.msg import AnomalyMask, SynthesisResult

from ros_harness import RosHarness, wait_until

MODELS = Path(__file__).resolve().parents[1] / "models"


def frame(seed: int = 0) -> np.ndarray:
    """A 128 px frame with structure (the shipped models' input size)."""
    import cv2
    from skimage import data as skdata

    img = cv2.resize(skdata.astronaut()[100:400, 100:400], (128, 128), interpolation=cv2.INTER_AREA)
    return np.roll(img, seed * 7, axis=1)


@pytest.fixture(scope="module")
def extractor():
    return dcae_features(MODELS / "dcae")


@pytest.mark.parametrize("backend", ["onnxruntime", "torch"])
def test_synthesizer_features_are_the_analysis_features_and_give_the_same_map(extractor, backend):
    synth = Synthesizer.from_model_dir(MODELS / "latent_dit", backend=backend, threads=1, steps=2, strength=0.3,
                                       guidance=4.0, guidance_kind="gradfree")
    image = frame()
    out = synth.synthesize(image)
    assert synth.feature_source == extractor.source and synth.feature_source.startswith("dcae:")
    with torch.inference_mode():
        own = extractor(torch.from_numpy(image.astype(np.float32) / 255).permute(2, 0, 1)[None])
    assert [m.shape for m in synth.last_features] == [tuple(o.shape[1:]) for o in own]
    for handed, computed in zip(synth.last_features, own, strict=True):
        np.testing.assert_allclose(handed, computed[0].numpy(), atol=1e-4)
    d = Discrepancy(DiscrepancyConfig(), extractor)
    with_handed = d(image, out, FrameFeatures(synth.last_features, synth.feature_source))
    assert d.last_handed == ""
    np.testing.assert_allclose(with_handed, d(image, out), atol=1e-5)


def test_features_from_another_encoder_or_size_are_not_used(extractor):
    image, other = frame(0), frame(3)
    d = Discrepancy(DiscrepancyConfig(), extractor)
    with torch.inference_mode():
        wrong = tuple(f[0].numpy() for f in extractor(torch.from_numpy(other.astype(np.float32) / 255)
                                                      .permute(2, 0, 1)[None]))
    expected = d(image, other)
    # the wrong frame's maps under another encoder's name: refused, so the map is the computed one
    assert np.array_equal(d(image, other, FrameFeatures(wrong, "dcae:0123456789abcdef:fp32")), expected)
    assert "not this analysis'" in d.last_handed
    assert np.array_equal(d(image, other, FrameFeatures(wrong, extractor.source.replace("fp32", "int8-selected"))),
                          expected)
    assert d.last_handed
    half = tuple(m[:, ::2, ::2] for m in wrong)  # the right name, the shapes of another input size
    assert np.array_equal(d(image, other, FrameFeatures(half, extractor.source)), expected)
    assert "shapes" in d.last_handed
    # and accepted under the right name: then they are what the feature term reads (the map changes)
    assert not np.array_equal(d(image, other, FrameFeatures(wrong, extractor.source)), expected)
    assert d.last_handed == ""


def test_message_fields_round_trip_and_malformed_fields_are_errors():
    maps = (np.arange(24, dtype=np.float32).reshape(2, 3, 4), np.ones((4, 1, 2), np.float32))
    values, shapes = features_to_fields(maps)
    msg = SynthesisResult(input_features=values, feature_shapes=shapes, feature_source="dcae:x:fp32")
    back = features_from_fields(msg.input_features, msg.feature_shapes, msg.feature_source)
    assert back.source == "dcae:x:fp32" and all(np.array_equal(a, b) for a, b in zip(back.maps, maps, strict=True))
    assert features_from_fields(*features_to_fields(()), "") is None
    with pytest.raises(ValueError, match="per map"):
        features_from_fields(values, [2, 3, 4, 4, 1, 2, 1], "s")  # not a multiple of 3
    with pytest.raises(ValueError, match="describe"):
        features_from_fields(values[:-1], shapes, "s")
    with pytest.raises(ValueError, match="NaN"):
        features_from_fields(np.full(32, np.nan, np.float32), shapes, "s")
    with pytest.raises(ValueError, match="positive"):
        features_from_fields(values, [2, 3, 0, 4, 1, 2], "s")


def run_nodes(hand: bool) -> tuple[SynthesisResult, dict[str, str], np.ndarray]:
    """One frame through synthesizer_node -> analysis_node (shipped models): the synthesis message, the
    analysis' diagnostics and its confidence map."""
    with RosHarness() as ros:
        ros.add(SynthesizerNode(context=ros.context, parameter_overrides=[
            Parameter("model_dir", value=str(MODELS / "latent_dit")), Parameter("threads", value=1),
            Parameter("hand_features", value=hand)]))
        analysis = ros.add(AnalysisNode(context=ros.context, parameter_overrides=[
            Parameter("models_dir", value=str(MODELS)), Parameter("torch_threads", value=1)]))
        results = ros.collect(SynthesisResult, "ood/synthesis")
        masks = ros.collect(AnomalyMask, "ood/anomaly")
        pub = ros.publisher(Image, "ood/image")
        ros.wait_for_subscribers(pub)
        h = Header(frame_id="cam")
        h.stamp.sec = 1_700_000_000
        pub.publish(array_to_image(frame(), "rgb8", header=h))
        assert wait_until(lambda: masks, 60)
        return results[0], analysis.diagnostic_values(), image_to_array(masks[0].confidence)


@pytest.mark.ros
def test_nodes_hand_features_over_and_the_masks_stay_the_same():
    """The analysis uses the handed features (its diagnostics say so), and with hand_features false it
    computes them itself and publishes the same confidence map."""
    handed, diag, conf = run_nodes(True)
    assert handed.feature_source.startswith("dcae:") and len(handed.input_features) > 0
    assert (diag["handed_features_used"], diag["handed_features_none_sent"], diag["handed_features"]) == ("1", "0", "used")
    plain, diag, conf_plain = run_nodes(False)
    assert plain.feature_source == "" and len(plain.input_features) == 0 and len(plain.feature_shapes) == 0
    assert (diag["handed_features_used"], diag["handed_features_none_sent"]) == ("0", "1")
    assert diag["handed_features"].startswith("none sent")
    np.testing.assert_allclose(conf, conf_plain, atol=1e-4)


@pytest.mark.ros
def test_analysis_node_analyses_a_frame_whose_handed_features_are_malformed():
    """Broken feature fields cost the hand-off, not the frame: the mask is published, /diagnostics says why."""
    import array

    with RosHarness() as ros:
        analysis = ros.add(AnalysisNode(context=ros.context, parameter_overrides=[
            Parameter("models_dir", value=str(MODELS)), Parameter("torch_threads", value=1)]))
        masks = ros.collect(AnomalyMask, "ood/anomaly")
        pub = ros.publisher(SynthesisResult, "ood/synthesis")
        ros.wait_for_subscribers(pub)
        h = Header(frame_id="cam")
        h.stamp.sec = 1_700_000_000
        image = frame()
        pub.publish(SynthesisResult(header=h, input=array_to_image(image, "rgb8", header=h),
                                    synthesized=array_to_image(frame(2), "rgb8", header=h), steps=2,
                                    input_features=array.array("f", [1.0, 2.0, 3.0]),
                                    feature_shapes=array.array("I", [32, 64, 64]), feature_source="dcae:x:fp32"))
        assert wait_until(lambda: masks, 30)
        diag = analysis.diagnostic_values()
        assert diag["handed_features"].startswith("malformed") and "describe 131072 values" in diag["handed_features"]
        assert (diag["handed_features_used"], diag["handed_features_malformed"]) == ("0", "1")
        assert analysis.stats.processed == 1
