"""Export SAM's image encoder and prompt-conditioned mask decoder to ONNX for `SamOnnxSegmenter`.

Two graphs, as the automatic generator needs them: the heavy encoder runs once per frame, the light
decoder once per batch of grid points (batch and point count are dynamic axes). A JSON file beside them
records what the runtime must reproduce outside the graphs (input size, mask threshold).

    python -m ood_monitor.core.analysis.sam_export --checkpoint sam_vit_b.pth --model-type vit_b --out models/sam_onnx
"""
from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import torch

from ood_monitor.core.analysis.segmenters import SamArchitecture, load_sam

ENCODER_FILE = "sam_image_encoder.onnx"
DECODER_FILE = "sam_mask_decoder.onnx"
META_FILE = "sam_onnx.json"
OPSET = 17


def _legacy_exporter() -> dict:
    """TorchScript-based export (no onnxscript needed): `dynamo=False` where torch has the switch."""
    import inspect

    return {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}


def export_encoder(sam, path: Path) -> None:
    size = sam.image_encoder.img_size
    example = torch.randn(1, 3, size, size)
    torch.onnx.export(sam.image_encoder, (example,), str(path), input_names=["image"],
                      output_names=["image_embeddings"], opset_version=OPSET, **_legacy_exporter())


def export_decoder(sam, path: Path) -> None:
    from segment_anything.utils.onnx import SamOnnxModel

    model = SamOnnxModel(sam, return_single_mask=False).eval()
    dim = sam.prompt_encoder.embed_dim
    side = sam.prompt_encoder.image_embedding_size
    inputs = {
        "image_embeddings": torch.randn(1, dim, *side),
        "point_coords": torch.randint(0, sam.image_encoder.img_size, (2, 2, 2)).float(),
        "point_labels": torch.tensor([[1.0, -1.0], [1.0, -1.0]]),
        "mask_input": torch.zeros(1, 1, 4 * side[0], 4 * side[1]),
        "has_mask_input": torch.zeros(1),
        "orig_im_size": torch.tensor([480.0, 640.0]),
    }
    dynamic = {"point_coords": {0: "batch", 1: "points"}, "point_labels": {0: "batch", 1: "points"},
               "masks": {0: "batch", 2: "height", 3: "width"}, "iou_predictions": {0: "batch"},
               "low_res_masks": {0: "batch"}}
    torch.onnx.export(model, tuple(inputs.values()), str(path), input_names=list(inputs),
                      output_names=["masks", "iou_predictions", "low_res_masks"], dynamic_axes=dynamic,
                      opset_version=OPSET, **_legacy_exporter())


def export_sam(sam, out_dir: str | Path, model_type: str = "") -> Path:
    """Write the encoder, the decoder and their metadata to `out_dir`; returns it."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sam = sam.cpu().eval()
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # tracer warnings about shape-dependent Python control flow
        export_encoder(sam, out / ENCODER_FILE)
        export_decoder(sam, out / DECODER_FILE)
    meta = {"image_size": int(sam.image_encoder.img_size), "mask_threshold": float(sam.mask_threshold),
            "model_type": model_type, "opset": OPSET}
    (out / META_FILE).write_text(json.dumps(meta, indent=1))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description="export SAM (encoder + mask decoder) to ONNX")
    p.add_argument("--checkpoint", required=True, help="SAM weights (.pth state_dict or .safetensors)")
    p.add_argument("--model-type", default="vit_b", help="vit_b | vit_l | vit_h | custom (<checkpoint>.json)")
    p.add_argument("--out", required=True, help="output folder (the analysis node's sam_onnx_dir)")
    args = p.parse_args(argv)
    sam = load_sam(args.checkpoint, args.model_type)
    print(f"wrote {export_sam(sam, args.out, args.model_type)}")
    return 0


__all__ = ["DECODER_FILE", "ENCODER_FILE", "META_FILE", "SamArchitecture", "export_sam"]

if __name__ == "__main__":
    raise SystemExit(main())
