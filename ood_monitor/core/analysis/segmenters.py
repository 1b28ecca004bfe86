"""Image segmenters that the discrepancy is pooled over: SAM (torch or ONNX Runtime) and superpixels.

One interface, `Segmenter.segment(rgb) -> list of HxW bool masks`, plus `labels(rgb)`, the disjoint
label image pooling needs (superpixels produce it directly, which is cheaper than masks). SAM needs a
user-supplied checkpoint; `make_segmenter` falls back to superpixels with a reason when none is
configured or it fails to load, so the node always runs and says what it runs.
"""
from __future__ import annotations

import json
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ood_monitor.core.analysis.pooling import disjoint_labels

SAM_MEAN = (123.675, 116.28, 103.53)
SAM_STD = (58.395, 57.12, 57.375)
SEGMENTER_KINDS = ("auto", "sam", "sam_onnx", "slic", "felzenszwalb")


class Segmenter(ABC):
    """Base: `segment` gives boolean masks (may overlap, may not cover the image)."""

    name = "segmenter"

    @abstractmethod
    def segment(self, rgb: np.ndarray) -> list[np.ndarray]:
        """Boolean HxW masks of the image's segments."""

    def labels(self, rgb: np.ndarray) -> np.ndarray:
        """Disjoint int32 label image (-1 = no segment), area ordering of anomalies by synthesis."""
        return disjoint_labels(self.segment(rgb), rgb.shape[:2])


def _check_rgb(rgb: np.ndarray) -> None:
    if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8 or min(rgb.shape[:2]) < 8:
        raise ValueError(f"segmenter input must be HxWx3 uint8 (>= 8 px), got {rgb.shape} {rgb.dtype}")


def _masks_from_labels(labels: np.ndarray) -> list[np.ndarray]:
    return [labels == i for i in np.unique(labels) if i >= 0]


def _superpixels(rgb: np.ndarray, max_side: int, fn) -> np.ndarray:
    """`fn` run on the image shrunk to `max_side` (superpixel cost grows with pixels, their boundaries
    barely move), labels scaled back with nearest neighbour."""
    import cv2

    _check_rgb(rgb)
    h, w = rgb.shape[:2]
    scale = max_side / max(h, w) if max_side > 0 else 1.0
    if scale >= 1.0:
        return fn(rgb).astype(np.int32)
    small = cv2.resize(rgb, (max(8, round(w * scale)), max(8, round(h * scale))), interpolation=cv2.INTER_AREA)
    labels = fn(small).astype(np.int32)
    return cv2.resize(labels, (w, h), interpolation=cv2.INTER_NEAREST)


# ------------------------------------------------------------------------------------- superpixels


@dataclass
class SlicSegmenter(Segmenter):
    """SLIC superpixels in Lab space: compact, boundary-following segments, no model needed."""

    n_segments: int = 400  # at the 128 px model input ~40 px each: small objects keep their own segments
    compactness: float = 10.0
    sigma: float = 1.0
    max_side: int = 160  # segment a copy no larger than this (0: full size)
    iterations: int = 3  # k-means iterations: half the time of scikit-image's 10 at the same mask quality
    name: str = field(default="slic", init=False)

    def labels(self, rgb: np.ndarray) -> np.ndarray:
        from skimage.segmentation import slic

        return _superpixels(rgb, self.max_side, lambda im: slic(
            im, n_segments=self.n_segments, compactness=self.compactness, sigma=self.sigma, start_label=0,
            convert2lab=True, max_num_iter=self.iterations))

    def segment(self, rgb: np.ndarray) -> list[np.ndarray]:
        return _masks_from_labels(self.labels(rgb))


@dataclass
class FelzenszwalbSegmenter(Segmenter):
    """Felzenszwalb graph segmentation: fast, follows colour boundaries, sizes adapt to the scene."""

    scale: float = 100.0
    sigma: float = 0.8
    min_size: int = 15
    max_side: int = 160  # segment a copy no larger than this (0: full size)
    name: str = field(default="felzenszwalb", init=False)

    def labels(self, rgb: np.ndarray) -> np.ndarray:
        from skimage.segmentation import felzenszwalb

        return _superpixels(rgb, self.max_side, lambda im: felzenszwalb(
            im, scale=self.scale, sigma=self.sigma, min_size=self.min_size))

    def segment(self, rgb: np.ndarray) -> list[np.ndarray]:
        return _masks_from_labels(self.labels(rgb))


# --------------------------------------------------------------------------------------------- SAM


@dataclass(frozen=True)
class SamArchitecture:
    """segment-anything's model hyper-parameters (the published vit_b/l/h or a tiny one for tests)."""

    encoder_embed_dim: int
    encoder_depth: int
    encoder_num_heads: int
    encoder_global_attn_indexes: tuple[int, ...]
    image_size: int = 1024
    prompt_embed_dim: int = 256
    window_size: int = 14
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_heads: int = 8
    iou_head_hidden_dim: int = 256

    @classmethod
    def from_dict(cls, data: dict) -> SamArchitecture:
        data = dict(data)
        data["encoder_global_attn_indexes"] = tuple(data["encoder_global_attn_indexes"])
        return cls(**data)


SAM_ARCHITECTURES = {
    "vit_b": SamArchitecture(768, 12, 12, (2, 5, 8, 11)),
    "vit_l": SamArchitecture(1024, 24, 16, (5, 11, 17, 23)),
    "vit_h": SamArchitecture(1280, 32, 16, (7, 15, 23, 31)),
}


def resolve_architecture(model_type: str | SamArchitecture, checkpoint: str | Path | None = None) -> SamArchitecture:
    """`vit_b|vit_l|vit_h`, an architecture, or `custom` read from `<checkpoint>.json` beside the weights."""
    if isinstance(model_type, SamArchitecture):
        return model_type
    if model_type in SAM_ARCHITECTURES:
        return SAM_ARCHITECTURES[model_type]
    if model_type == "custom" and checkpoint is not None:
        sidecar = Path(str(checkpoint) + ".json")
        if sidecar.is_file():
            return SamArchitecture.from_dict(json.loads(sidecar.read_text()))
        raise ValueError(f"sam_model_type custom needs {sidecar}")
    raise ValueError(f"sam_model_type must be one of {sorted(SAM_ARCHITECTURES)} or custom, got {model_type!r}")


def build_sam(arch: SamArchitecture):
    """An untrained Sam from segment-anything's own classes (the layout of its build_sam)."""
    from functools import partial

    from segment_anything.modeling import ImageEncoderViT, MaskDecoder, PromptEncoder, Sam, TwoWayTransformer

    embed = arch.image_size // 16
    return Sam(
        image_encoder=ImageEncoderViT(
            depth=arch.encoder_depth, embed_dim=arch.encoder_embed_dim, img_size=arch.image_size, mlp_ratio=4,
            norm_layer=partial(torch.nn.LayerNorm, eps=1e-6), num_heads=arch.encoder_num_heads, patch_size=16,
            qkv_bias=True, use_rel_pos=True, global_attn_indexes=arch.encoder_global_attn_indexes,
            window_size=arch.window_size, out_chans=arch.prompt_embed_dim),
        prompt_encoder=PromptEncoder(
            embed_dim=arch.prompt_embed_dim, image_embedding_size=(embed, embed),
            input_image_size=(arch.image_size, arch.image_size), mask_in_chans=16),
        mask_decoder=MaskDecoder(
            num_multimask_outputs=3,
            transformer=TwoWayTransformer(depth=arch.decoder_depth, embedding_dim=arch.prompt_embed_dim,
                                          mlp_dim=arch.decoder_mlp_dim, num_heads=arch.decoder_heads),
            transformer_dim=arch.prompt_embed_dim, iou_head_depth=3, iou_head_hidden_dim=arch.iou_head_hidden_dim),
        pixel_mean=list(SAM_MEAN), pixel_std=list(SAM_STD),
    )


def read_state_dict(checkpoint: str | Path) -> dict[str, torch.Tensor]:
    """Weights only: safetensors, or a torch state_dict file read with weights_only=True (never a pickled
    object, which is what the official checkpoints are: plain state_dicts)."""
    path = Path(checkpoint)
    if not path.is_file():
        raise FileNotFoundError(f"sam_checkpoint {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    return torch.load(path, map_location="cpu", weights_only=True)


def load_sam(checkpoint: str | Path, model_type: str | SamArchitecture = "vit_b", device: str = "cpu"):
    """Build SAM for `model_type` and load the checkpoint strictly (a mismatch is an error naming it)."""
    arch = resolve_architecture(model_type, checkpoint)
    sam = build_sam(arch)
    try:
        sam.load_state_dict(read_state_dict(checkpoint), strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0]
        raise ValueError(f"sam_checkpoint {checkpoint} does not fit sam_model_type {model_type!r}: {first}") from exc
    return sam.to(device).eval()


@dataclass(frozen=True)
class AutoMaskConfig:
    """The automatic-mask settings of anomalies by synthesis (arXiv 2505.22805)."""

    points_per_side: int = 32
    pred_iou_thresh: float = 0.88
    stability_score_thresh: float = 0.95
    box_nms_thresh: float = 0.7
    points_per_batch: int = 64


class SamSegmenter(Segmenter):
    """segment-anything's SamAutomaticMaskGenerator over a user-supplied checkpoint."""

    name = "sam"

    def __init__(self, checkpoint: str | Path, model_type: str | SamArchitecture = "vit_b", device: str = "cpu",
                 auto: AutoMaskConfig | None = None, sam=None) -> None:
        from segment_anything import SamAutomaticMaskGenerator

        self.auto = auto or AutoMaskConfig()
        self.sam = sam if sam is not None else load_sam(checkpoint, model_type, device)
        self.generator = SamAutomaticMaskGenerator(
            self.sam, points_per_side=self.auto.points_per_side, pred_iou_thresh=self.auto.pred_iou_thresh,
            stability_score_thresh=self.auto.stability_score_thresh, box_nms_thresh=self.auto.box_nms_thresh,
            points_per_batch=self.auto.points_per_batch)

    def segment(self, rgb: np.ndarray) -> list[np.ndarray]:
        _check_rgb(rgb)
        with torch.inference_mode():
            return [np.asarray(m["segmentation"], dtype=bool) for m in self.generator.generate(rgb)]


class SamOnnxSegmenter(Segmenter):
    """SAM's exported image encoder + mask decoder (see sam_export.py) on ONNX Runtime, with the automatic
    generator's single-crop logic: a point grid, one prompt per point, IoU/stability filters, box NMS."""

    name = "sam_onnx"

    def __init__(self, onnx_dir: str | Path, auto: AutoMaskConfig | None = None,
                 providers: list[str] | None = None) -> None:
        import onnxruntime as ort

        from ood_monitor.core.analysis.sam_export import DECODER_FILE, ENCODER_FILE, META_FILE

        root = Path(onnx_dir)
        for name in (ENCODER_FILE, DECODER_FILE, META_FILE):
            if not (root / name).is_file():
                raise FileNotFoundError(f"sam_onnx_dir {root} has no {name} (export with ood_monitor.core."
                                        "analysis.sam_export)")
        self.meta = json.loads((root / META_FILE).read_text())
        self.auto = auto or AutoMaskConfig()
        opts = ort.SessionOptions()
        providers = providers or ["CPUExecutionProvider"]
        self.encoder = ort.InferenceSession(str(root / ENCODER_FILE), opts, providers=providers)
        self.decoder = ort.InferenceSession(str(root / DECODER_FILE), opts, providers=providers)

    def preprocess(self, rgb: np.ndarray) -> tuple[np.ndarray, float]:
        """Resize the longest side to the model size, normalise, pad: (1, 3, S, S) float32 and the scale."""
        from segment_anything.utils.transforms import ResizeLongestSide

        size = int(self.meta["image_size"])
        resized = ResizeLongestSide(size).apply_image(rgb).astype(np.float32)  # SamPredictor's resize
        nh, nw = resized.shape[:2]
        scale = nw / rgb.shape[1]
        norm = (resized - np.array(SAM_MEAN, np.float32)) / np.array(SAM_STD, np.float32)
        out = np.zeros((1, 3, size, size), np.float32)
        out[0, :, :nh, :nw] = norm.transpose(2, 0, 1)
        return out, scale

    def embed(self, rgb: np.ndarray) -> tuple[np.ndarray, float]:
        pixels, scale = self.preprocess(rgb)
        return self.encoder.run(None, {"image": pixels})[0], scale

    def decode(self, embedding: np.ndarray, points: np.ndarray, orig_hw: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
        """Mask logits (B, 4, H, W) and IoU predictions (B, 4) for B single-point prompts (model coords)."""
        b = points.shape[0]
        side = embedding.shape[-1] * 4
        coords = np.concatenate([points[:, None, :], np.zeros((b, 1, 2))], axis=1).astype(np.float32)
        labels = np.tile(np.array([[1.0, -1.0]], np.float32), (b, 1))
        masks, iou, _ = self.decoder.run(None, {
            "image_embeddings": embedding, "point_coords": coords, "point_labels": labels,
            "mask_input": np.zeros((1, 1, side, side), np.float32), "has_mask_input": np.zeros(1, np.float32),
            "orig_im_size": np.array(orig_hw, np.float32)})
        return masks, iou

    def segment(self, rgb: np.ndarray) -> list[np.ndarray]:
        from segment_anything.utils.amg import (
            batched_mask_to_box,
            build_point_grid,
            calculate_stability_score,
        )
        from torchvision.ops import batched_nms

        _check_rgb(rgb)
        h, w = rgb.shape[:2]
        embedding, scale = self.embed(rgb)
        grid = build_point_grid(self.auto.points_per_side) * np.array([w, h]) * scale
        thr = float(self.meta["mask_threshold"])
        kept_masks, kept_scores = [], []
        for start in range(0, len(grid), self.auto.points_per_batch):
            logits, iou = self.decode(embedding, grid[start:start + self.auto.points_per_batch], (h, w))
            logits = torch.from_numpy(logits[:, 1:]).flatten(0, 1)  # the three multimask outputs
            iou = torch.from_numpy(iou[:, 1:]).flatten()
            stability = calculate_stability_score(logits, thr, 1.0)
            keep = (iou > self.auto.pred_iou_thresh) & (stability >= self.auto.stability_score_thresh)
            kept_masks.append(logits[keep] > thr)
            kept_scores.append(iou[keep])
        masks, scores = torch.cat(kept_masks), torch.cat(kept_scores)
        if masks.shape[0] == 0:
            return []
        boxes = batched_mask_to_box(masks).float()
        keep = batched_nms(boxes, scores, torch.zeros(len(scores)), iou_threshold=self.auto.box_nms_thresh)
        return [m.numpy() for m in masks[keep] if m.any()]


# ------------------------------------------------------------------------------------------ factory


@dataclass(frozen=True)
class SegmenterChoice:
    """The segmenter in use and why (what /diagnostics and the AnomalyMask report)."""

    segmenter: Segmenter
    reason: str


def make_superpixels(kind: str, slic: SlicSegmenter | None = None) -> Segmenter:
    """`slic` carries the SLIC settings (segments, iterations) used when kind is slic."""
    if kind == "felzenszwalb":
        return FelzenszwalbSegmenter()
    return slic or SlicSegmenter()


def make_segmenter(kind: str = "auto", checkpoint: str = "", model_type: str = "vit_b", onnx_dir: str = "",
                   device: str = "cpu", fallback: str = "slic", auto: AutoMaskConfig | None = None,
                   slic: SlicSegmenter | None = None) -> SegmenterChoice:
    """The requested segmenter, or the superpixel `fallback` with the reason SAM is not used.

    auto: ONNX SAM when onnx_dir is set, else torch SAM when a checkpoint is set, else the fallback.
    """
    if kind not in SEGMENTER_KINDS:
        raise ValueError(f"segmenter must be one of {SEGMENTER_KINDS}, got {kind!r}")
    if fallback not in ("slic", "felzenszwalb"):
        raise ValueError(f"fallback segmenter must be slic or felzenszwalb, got {fallback!r}")
    if kind in ("slic", "felzenszwalb"):
        return SegmenterChoice(make_superpixels(kind, slic), f"{kind}: configured")
    if kind == "auto":
        kind = "sam_onnx" if onnx_dir else "sam" if checkpoint else ""
        if not kind:
            return SegmenterChoice(make_superpixels(fallback, slic),
                                   f"fallback {fallback}: no sam_checkpoint or sam_onnx_dir configured")
    if kind == "sam_onnx" and not onnx_dir:
        return SegmenterChoice(make_superpixels(fallback, slic), f"fallback {fallback}: no sam_onnx_dir configured")
    if kind == "sam" and not checkpoint:
        return SegmenterChoice(make_superpixels(fallback, slic), f"fallback {fallback}: no sam_checkpoint configured")
    try:
        if kind == "sam_onnx":
            seg: Segmenter = SamOnnxSegmenter(onnx_dir, auto)
            return SegmenterChoice(seg, f"sam_onnx: {onnx_dir}")
        seg = SamSegmenter(checkpoint, model_type, device, auto)
        return SegmenterChoice(seg, f"sam {model_type}: {checkpoint} on {device}")
    except Exception as exc:  # any load failure (missing package, file, wrong type) must fall back, loudly
        return SegmenterChoice(make_superpixels(fallback, slic),
                               f"fallback {fallback}: {kind} failed to load: {type(exc).__name__}: {exc}")
