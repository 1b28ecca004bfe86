"""core/analysis: discrepancy, pooling, masks/regions, segmenters (superpixels, fallback reasons, a tiny
random SAM through the real loading, automatic-mask and ONNX export/inference paths), costmap, speed."""
from __future__ import annotations

import cv2
import numpy as np
import pytest
import torch
from skimage import data as skdata
from skimage.metrics import structural_similarity

from ood_monitor.cli.bench_analysis import oracle_synthesis
from ood_monitor.core.analysis import AnalysisConfig, Analyzer
from ood_monitor.core.analysis.costmap import CostmapConfig, RollingCostmap, SpeedLimiter, SpeedPolicy
from ood_monitor.core.analysis.discrepancy import (
    Discrepancy,
    DiscrepancyConfig,
    HookFeatures,
    _cosine_distance,
    local_ssim,
    make_feature_extractor,
    random_conv_features,
)
from ood_monitor.core.analysis.masks import extract_regions
from ood_monitor.core.analysis.pooling import disjoint_labels, pool_labels, pool_segments
from ood_monitor.core.analysis.segmenters import (
    AutoMaskConfig,
    FelzenszwalbSegmenter,
    SamArchitecture,
    SamOnnxSegmenter,
    SamSegmenter,
    SlicSegmenter,
    build_sam,
    load_sam,
    make_segmenter,
)

TINY = SamArchitecture(32, 2, 2, (1,), image_size=128, prompt_embed_dim=32, window_size=4, decoder_mlp_dim=64,
                       decoder_heads=2, iou_head_hidden_dim=32)
LOOSE = AutoMaskConfig(points_per_side=4, pred_iou_thresh=-1e9, stability_score_thresh=-1e9, box_nms_thresh=1.0)


def scene(h: int = 96, w: int = 128) -> np.ndarray:
    """Natural texture (grass) so structure and features have something to see."""
    import cv2

    return cv2.resize(skdata.astronaut()[100:400, 100:500], (w, h), interpolation=cv2.INTER_AREA)


def with_patch(img: np.ndarray, y0=30, x0=40, size=24, colour=(255, 0, 255)) -> tuple[np.ndarray, np.ndarray]:
    out = img.copy()
    out[y0:y0 + size, x0:x0 + size] = colour
    mask = np.zeros(img.shape[:2], np.uint8)
    mask[y0:y0 + size, x0:x0 + size] = 255
    return out, mask


# -------------------------------------------------------------------------------------- discrepancy


@pytest.mark.parametrize("features", [True, False])
def test_identical_images_give_zero_discrepancy(features):
    img = scene()
    d = Discrepancy(DiscrepancyConfig(), random_conv_features() if features else None)(img, img)
    assert d.shape == img.shape[:2] and d.dtype == np.float32
    assert float(d.max()) < 1e-3


def test_cosine_distance_equals_torch_cosine_similarity_on_mean_centred_features():
    """The flat products must give what F.cosine_similarity gives (the nominal statistics were fitted on
    it), and 0 where both images' features agree."""
    f = torch.randn(2, 16, 9, 7, generator=torch.Generator().manual_seed(3)).relu()
    f[1, :, 0, 0] = f[0, :, 0, 0]
    centred = f - f.mean(dim=(0, 2, 3), keepdim=True)
    expected = (1.0 - torch.nn.functional.cosine_similarity(centred[0:1], centred[1:2], dim=1, eps=1e-6)) / 2.0
    got = _cosine_distance(f)
    assert got.shape == (1, 1, 9, 7)
    torch.testing.assert_close(got[0], expected, atol=1e-6, rtol=0)
    assert float(got[0, 0, 0, 0]) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("sigma", [1.0, 2.0])
def test_local_ssim_is_scikit_image_structural_similarity(sigma):
    """The structure term's SSIM map must be scikit-image's (Gaussian weights, population covariance)."""
    rng = np.random.default_rng(5)
    a = cv2.GaussianBlur(rng.uniform(0, 255, (40, 56)), (0, 0), 1.5)
    b = np.clip(a + rng.normal(0, 12, a.shape), 0, 255)
    b[10:20, 30:45] = 0.0
    _, expected = structural_similarity(a, b, gaussian_weights=True, sigma=sigma, use_sample_covariance=False,
                                        data_range=255.0, full=True)
    np.testing.assert_allclose(local_ssim(a, b, sigma), expected, rtol=0, atol=1e-9)


@pytest.mark.parametrize("cfg", [DiscrepancyConfig(), DiscrepancyConfig(weight_colour=0, weight_structure=0),
                                 DiscrepancyConfig(weight_feature=0, weight_structure=0),
                                 DiscrepancyConfig(weight_feature=0, weight_colour=0)])
def test_changed_patch_scores_high_inside_low_outside(cfg):
    img = scene()
    changed, mask = with_patch(img)
    d = Discrepancy(cfg, random_conv_features())(changed, img)
    inside, outside = d[mask > 0], d[mask == 0]
    core = d[36:48, 46:58]  # well inside the patch, away from blurred borders
    assert core.mean() > 0.3, core.mean()
    assert inside.mean() > 4 * outside.mean(), (inside.mean(), outside.mean())
    assert d.min() >= 0.0 and d.max() <= 1.0


def test_discrepancy_refuses_mismatched_inputs():
    img = scene()
    with pytest.raises(ValueError, match="one size"):
        Discrepancy()(img, img[:50])
    with pytest.raises(ValueError):
        DiscrepancyConfig(weight_feature=0, weight_colour=0, weight_structure=0)


def test_hook_features_collect_named_layers_and_reject_unknown():
    net = random_conv_features()
    hooks = HookFeatures(net, ["stages.0", "stages.2"], net)
    feats = hooks(torch.rand(1, 3, 32, 32))
    assert [f.shape[1] for f in feats] == [16, 64]
    with pytest.raises(ValueError, match="no submodules"):
        HookFeatures(net, ["stages.9"], net)


def test_feature_extractor_factory(tmp_path):
    assert make_feature_extractor("none")[0] is None
    extractor, desc = make_feature_extractor("auto", tmp_path)  # no models/dcae: random conv net
    assert "random" in desc and len(extractor(torch.rand(1, 3, 16, 16))) == 3
    with pytest.raises(ValueError):
        make_feature_extractor("clip")


# ------------------------------------------------------------------------------------------ pooling


def test_pooling_makes_segments_disjoint_smallest_wins_and_fills_means():
    values = np.arange(16, dtype=np.float32).reshape(4, 4)
    big = np.ones((4, 4), bool)  # whole image
    small = np.zeros((4, 4), bool)
    small[:2, :2] = True  # nested in big: keeps its own mean
    labels = disjoint_labels([small, big], (4, 4))
    assert labels[0, 0] == 1 and labels[3, 3] == 0  # rank by area: big first (0), small painted over (1)
    pooled = pool_segments(values, [small, big])
    assert np.allclose(pooled[:2, :2], values[:2, :2].mean())
    rest = ~small
    assert np.allclose(pooled[rest], values[rest].mean())  # big's mean over its disjoint part only


def test_pixels_outside_every_segment_keep_their_value():
    values = np.random.default_rng(0).random((5, 6)).astype(np.float32)
    seg = np.zeros((5, 6), bool)
    seg[1:3, 1:4] = True
    pooled = pool_segments(values, [seg])
    assert np.array_equal(pooled[~seg], values[~seg])
    assert np.allclose(pooled[seg], values[seg].mean())
    assert np.array_equal(pool_labels(values, np.full((5, 6), -1)), values)


# -------------------------------------------------------------------------------------------- masks


def test_regions_have_score_roi_area_and_small_ones_are_dropped():
    conf = np.zeros((40, 50), np.float32)
    conf[5:15, 10:30] = 0.9  # 200 px
    conf[30:35, 40:44] = 0.6  # 20 px
    conf[0, 0] = 0.8  # 1 px: below min_region_px
    res = extract_regions(conf, threshold=0.5, min_region_px=5)
    assert [(r.x, r.y, r.width, r.height, r.area_px) for r in res.regions] == [(10, 5, 20, 10, 200), (40, 30, 4, 5, 20)]
    assert res.regions[0].score == pytest.approx(0.9) and res.frame_score == pytest.approx(0.9)
    assert res.mask[0, 0] == 0 and res.mask[10, 20] == 255 and int((res.mask > 0).sum()) == 220
    empty = extract_regions(np.zeros((8, 8), np.float32), 0.5)
    assert empty.regions == [] and empty.frame_score == 0.0
    with pytest.raises(ValueError, match="NaN"):
        extract_regions(np.full((8, 8), np.nan, np.float32))


def test_regions_are_8_connected():
    conf = np.zeros((10, 10), np.float32)
    conf[2, 2] = conf[3, 3] = conf[4, 4] = 1.0  # diagonal chain: one region under 8-connectivity
    assert len(extract_regions(conf, 0.5).regions) == 1


def test_analyzer_finds_the_inpainted_object():
    img = scene(120, 160)
    anomalous, gt = with_patch(img, 40, 60, 30, (20, 20, 230))
    synth = oracle_synthesis(anomalous, gt)
    # converged superpixels (10 iterations): this is about the analyzer; the shipped 3 iterations trade
    # boundary accuracy for time, measured on demo frames in docs/benchmarks-masks.md (IoU here 0.59 vs 0.61)
    seg = SlicSegmenter(iterations=10)
    result = Analyzer(AnalysisConfig(), seg, random_conv_features()).analyze(anomalous, synth)
    pred = result.mask.mask > 0
    iou = (pred & (gt > 0)).sum() / (pred | (gt > 0)).sum()
    assert iou > 0.6, iou
    assert result.mask.frame_score > 0.5
    assert set(result.timings_ms) == {"features", "colour", "structure", "weighting", "nominal", "segmentation",
                                      "segmentation_wait", "pooling", "mask"}  # every stage that ran
    assert all(v >= 0 for v in result.timings_ms.values()) and result.timings_ms["segmentation"] > 0
    # the segmentation ran on its own thread beside the discrepancy: not part of the frame's time twice
    assert result.elapsed_ms == pytest.approx(sum(result.timings_ms.values()) - result.timings_ms["segmentation"])
    # and pooled what the segmenter gives on the caller's thread
    expected = np.clip(pool_labels(result.discrepancy, seg.labels(anomalous)) * AnalysisConfig().confidence_gain, 0, 1)
    np.testing.assert_array_equal(result.confidence, expected.astype(np.float32))


def test_confidence_gain_scales_the_pooled_discrepancy_and_the_mask_follows():
    img = scene(120, 160)
    anomalous, gt = with_patch(img, 40, 60, 30, (20, 20, 230))
    synth = oracle_synthesis(anomalous, gt)
    seg = SlicSegmenter(n_segments=100)
    plain = Analyzer(AnalysisConfig(threshold=0.2, confidence_gain=1.0), seg).analyze(anomalous, synth)
    scaled = Analyzer(AnalysisConfig(threshold=0.4, confidence_gain=2.0), seg).analyze(anomalous, synth)
    assert np.array_equal(plain.discrepancy, scaled.discrepancy)
    np.testing.assert_allclose(scaled.confidence, np.clip(2.0 * plain.confidence, 0, 1), atol=1e-6)
    assert scaled.confidence.dtype == np.float32 and scaled.confidence.max() <= 1.0
    assert np.array_equal(plain.mask.mask, scaled.mask.mask)  # same decision at threshold x gain
    with pytest.raises(ValueError, match="confidence_gain"):
        AnalysisConfig(confidence_gain=0.0)


def test_analysis_config_from_node_parameters():
    from ood_monitor.core.analysis import analysis_config

    assert analysis_config({}) == AnalysisConfig()
    cfg = analysis_config({"weight_feature": 0.2, "weight_colour": 0, "threshold": 0.7, "confidence_gain": 3.0,
                           "min_region_px": 5, "slic_segments": 9, "segmenter": "slic"})  # others are not its
    assert cfg.threshold == 0.7 and cfg.confidence_gain == 3.0 and cfg.min_region_px == 5
    assert cfg.discrepancy == DiscrepancyConfig(weight_feature=0.2, weight_colour=0)


def test_shipped_parameter_file_equals_the_dataclass_defaults():
    """config/default.yaml, the node's PARAMETERS and the dataclasses cannot drift: evaluate, bench and the
    node all run the same analysis."""
    from pathlib import Path

    import yaml

    from ood_monitor.core.analysis import analysis_config

    root = Path(__file__).resolve().parents[1]
    section = yaml.safe_load((root / "config" / "default.yaml").read_text())["/**/analysis_node"]["ros__parameters"]
    assert analysis_config(section) == AnalysisConfig()
    assert section["slic_segments"] == SlicSegmenter.n_segments == make_segmenter("auto").segmenter.n_segments
    assert section["slic_iterations"] == SlicSegmenter.iterations
    pytest.importorskip("rclpy")
    from ood_monitor.nodes.analysis_node import PARAMETERS

    for name in ("weight_feature", "weight_colour", "weight_structure", "confidence_gain", "threshold",
                 "min_region_px", "slic_segments", "slic_iterations"):
        assert PARAMETERS[name][0] == section[name], name


# --------------------------------------------------------------------------------------- segmenters


@pytest.mark.parametrize("seg", [SlicSegmenter(n_segments=50), FelzenszwalbSegmenter()])
def test_superpixels_cover_the_image_disjointly(seg):
    img = scene()
    masks = seg.segment(img)
    assert len(masks) > 5
    assert np.array_equal(np.sum(masks, axis=0), np.ones(img.shape[:2]))
    labels = seg.labels(img)
    assert labels.min() >= 0 and labels.shape == img.shape[:2]


@pytest.mark.parametrize("kwargs,reason", [
    ({}, "fallback slic: no sam_checkpoint or sam_onnx_dir configured"),
    ({"kind": "sam"}, "fallback slic: no sam_checkpoint configured"),
    ({"kind": "sam_onnx"}, "fallback slic: no sam_onnx_dir configured"),
    ({"kind": "sam", "checkpoint": "/nonexistent/sam.pth"}, "fallback slic: sam failed to load: FileNotFoundError"),
    ({"kind": "sam_onnx", "onnx_dir": "/nonexistent", "fallback": "felzenszwalb"},
     "fallback felzenszwalb: sam_onnx failed to load: FileNotFoundError"),
])
def test_segmenter_falls_back_with_reason(kwargs, reason):
    choice = make_segmenter(**kwargs)
    assert choice.reason.startswith(reason), choice.reason
    assert choice.segmenter.name == reason.split()[1].rstrip(":")


def test_fallback_keeps_the_configured_slic_settings():
    slic = SlicSegmenter(n_segments=50, iterations=2)
    assert make_segmenter("sam", slic=slic).segmenter is slic
    assert make_segmenter("felzenszwalb", slic=slic).segmenter.name == "felzenszwalb"
    img = scene()
    assert not np.array_equal(slic.labels(img), SlicSegmenter(n_segments=50, iterations=10).labels(img))  # iterations reach slic


def test_wrong_checkpoint_type_falls_back_naming_the_mismatch(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "tiny.pth"
    torch.save(build_sam(TINY).state_dict(), path)
    choice = make_segmenter("sam", str(path), "vit_b")
    assert choice.segmenter.name == "slic" and "does not fit sam_model_type 'vit_b'" in choice.reason


@pytest.fixture(scope="module")
def tiny_sam(tmp_path_factory):
    """A tiny random SAM saved as a state_dict only, and loaded back through the loader."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("sam") / "tiny_sam.pth"
    torch.save(build_sam(TINY).state_dict(), path)
    return path


def test_tiny_sam_loads_and_runs_automatic_masks(tiny_sam):
    (tiny_sam.parent / "custom.pth.json").write_text(
        '{"encoder_embed_dim": 32, "encoder_depth": 2, "encoder_num_heads": 2, "encoder_global_attn_indexes": [1],'
        ' "image_size": 128, "prompt_embed_dim": 32, "window_size": 4, "decoder_mlp_dim": 64, "decoder_heads": 2,'
        ' "iou_head_hidden_dim": 32}')
    (tiny_sam.parent / "custom.pth").write_bytes(tiny_sam.read_bytes())
    choice = make_segmenter("sam", str(tiny_sam.parent / "custom.pth"), "custom", auto=LOOSE)
    assert choice.segmenter.name == "sam", choice.reason
    img = scene(60, 80)
    masks = choice.segmenter.segment(img)
    assert masks and all(m.dtype == bool and m.shape == img.shape[:2] for m in masks)
    labels = choice.segmenter.labels(img)
    assert labels.shape == img.shape[:2] and labels.max() < len(masks)


def test_tiny_sam_onnx_export_matches_torch(tiny_sam, tmp_path):
    from segment_anything.utils.onnx import SamOnnxModel

    from ood_monitor.core.analysis.sam_export import export_sam

    sam = load_sam(tiny_sam, TINY)
    export_sam(sam, tmp_path, "tiny")
    seg = SamOnnxSegmenter(tmp_path, LOOSE)
    img = scene(60, 80)
    pixels, scale = seg.preprocess(img)
    with torch.no_grad():
        emb_torch = sam.image_encoder(torch.from_numpy(pixels)).numpy()
    emb_onnx, _ = seg.embed(img)
    np.testing.assert_allclose(emb_onnx, emb_torch, atol=1e-4, rtol=1e-3)
    points = np.array([[10.0, 20.0], [50.0, 30.0], [100.0, 60.0]])
    logits, iou = seg.decode(emb_onnx, points, img.shape[:2])
    coords = torch.from_numpy(np.concatenate([points[:, None], np.zeros((3, 1, 2))], 1)).float()
    labels = torch.tensor([[1.0, -1.0]] * 3)
    side = emb_torch.shape[-1] * 4
    with torch.no_grad():
        ref_masks, ref_iou, _ = SamOnnxModel(sam, return_single_mask=False)(
            torch.from_numpy(emb_torch), coords, labels, torch.zeros(1, 1, side, side), torch.zeros(1),
            torch.tensor([60.0, 80.0]))
    assert logits.shape == (3, 4, 60, 80)
    np.testing.assert_allclose(logits, ref_masks.numpy(), atol=1e-3, rtol=1e-3)
    np.testing.assert_allclose(iou, ref_iou.numpy(), atol=1e-4)
    masks = seg.segment(img)
    assert masks and all(m.shape == img.shape[:2] and m.dtype == bool for m in masks)
    strict = SamOnnxSegmenter(tmp_path, AutoMaskConfig(points_per_side=4, pred_iou_thresh=1e9))
    assert strict.segment(img) == []  # nothing passes an impossible IoU filter


def test_sam_segmenter_uses_published_defaults(tiny_sam):
    seg = SamSegmenter(tiny_sam, TINY)
    g = seg.generator
    assert (g.pred_iou_thresh, g.stability_score_thresh, len(g.point_grids[0])) == (0.88, 0.95, 32 * 32)


# ------------------------------------------------------------------------------------ costmap/speed


def test_costmap_marks_decays_and_scrolls_with_the_robot():
    cm = RollingCostmap(CostmapConfig(resolution=0.5, size_m=10.0, decay_time_s=1.0))
    assert cm.update(0.0, (0.0, 0.0), np.array([[2.2, 1.1], [50.0, 0.0]]), np.array([0.8, 1.0])) == 1
    occ = cm.occupancy()
    row, col = np.floor((np.array([1.1, 2.2]) - cm.origin[::-1]) / 0.5).astype(int)
    assert occ[row, col] == 80 and occ.sum() == 80
    cm.update(1.0, (0.0, 0.0), np.zeros((0, 2)), np.zeros(0))
    assert cm.occupancy()[row, col] == round(80 * np.exp(-1.0))
    cm.update(1.0, (1.0, 0.0), np.zeros((0, 2)), np.zeros(0))  # robot moved 1 m in x: 2 cells
    assert cm.origin[0] == pytest.approx(-4.0)
    assert cm.occupancy()[row, col - 2] == round(80 * np.exp(-1.0))  # same ground cell, new index


def test_speed_policy_and_hold():
    policy = SpeedPolicy(slow_score=0.4, stop_score=0.8, min_percent=20.0, hold_s=1.0)
    assert policy.percent(0.1) == 100.0 and policy.percent(0.8) == 20.0 and policy.percent(0.6) == pytest.approx(60.0)
    limiter = SpeedLimiter(policy)
    assert limiter.update(0.0, 0.9) == 20.0
    assert limiter.update(0.5, 0.0) == 20.0  # held
    assert limiter.update(1.6, 0.0) == 100.0  # released after hold_s


def test_dcae_feature_extractor_reads_the_synthesizer_model_dir(tmp_path):
    pytest.importorskip("diffusers")
    synthesizer = pytest.importorskip("ood_monitor.core.diffusion.synthesizer")
    from ood_monitor.core.diffusion.dcae import DcaeConfig, build_dcae

    arch = DcaeConfig(channels=(8, 16, 32), layers=(0, 1, 1))
    torch.manual_seed(0)
    synthesizer.save_model(tmp_path / "dcae", build_dcae(arch), {"type": "dcae", "arch": arch.to_dict()})
    extractor, desc = make_feature_extractor("auto", tmp_path)
    assert desc.startswith("dcae")
    feats = extractor(torch.rand(2, 3, 90, 120))  # not a multiple of the compression: resized inside
    assert [f.shape[1] for f in feats] == [16, 32, 32] and feats[0].shape[0] == 2
    # the encoder stops after the last block it reads: the same features as hooks on a whole encode
    from ood_monitor.core.analysis.discrepancy import load_dcae

    model = load_dcae(tmp_path / "dcae")
    names = [f"encoder.down_blocks.{i}" for i in range(3)]
    x = torch.rand(2, 3, 64, 96)
    with torch.inference_mode():
        hooked = HookFeatures(model, names, lambda t: model.encode(t * 2.0 - 1.0))(x)
        assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(extractor(x), hooked, strict=True))
    img = scene()
    d = Discrepancy(DiscrepancyConfig(weight_colour=0, weight_structure=0), extractor)
    changed, mask = with_patch(img)
    out = d(changed, img)
    assert float(d(img, img).max()) < 1e-3 and out[mask > 0].mean() > 2 * out[mask == 0].mean()
