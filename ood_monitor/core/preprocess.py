"""The preprocessing stage without ROS: camera frame -> model-sized RGB frame + optical flow.

The preprocess node, the trainers and the evaluators all call `Preprocessor.process`, so flow and
images are computed the same way live and offline.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ood_monitor.core.flow import FlowConfig, FlowEstimator
from ood_monitor.core.model_input import FrameConfig, prepare_frame, to_gray


@dataclass(frozen=True)
class PreprocessConfig:
    frame: FrameConfig = field(default_factory=FrameConfig)
    flow: FlowConfig = field(default_factory=FlowConfig)
    flow_enabled: bool = True


@dataclass(frozen=True)
class PreprocessResult:
    """`image` HxWx3 uint8 RGB at the model size; `flow` HxWx2 float32 px/frame at the model size, or
    None on the first frame of a sequence (`reset` says why) or when flow is disabled. A frame whose
    stamp repeats the previous one is `duplicate` and carries nothing."""

    image: np.ndarray | None
    flow: np.ndarray | None
    reset: str | None = None
    duplicate: bool = False


class Preprocessor:
    def __init__(self, cfg: PreprocessConfig | None = None) -> None:
        self.cfg = cfg or PreprocessConfig()
        self._flow = FlowEstimator(self.cfg.flow)
        self._src_shape: tuple[int, ...] | None = None

    def reset(self) -> None:
        self._flow.reset()
        self._src_shape = None

    def process(self, rgb: np.ndarray, stamp_ns: int) -> PreprocessResult:
        """One camera frame (HxWx3 uint8 RGB, any size) with its header stamp in nanoseconds."""
        image = prepare_frame(rgb, self.cfg.frame)
        if not self.cfg.flow_enabled:
            return PreprocessResult(image, None)
        resized = self._src_shape is not None and rgb.shape != self._src_shape
        if resized:  # the crop window moved: flow across it would be a false motion anomaly
            self._flow.reset()
        self._src_shape = rgb.shape
        update = self._flow.update(to_gray(image), stamp_ns)
        if update.duplicate:
            return PreprocessResult(None, None, duplicate=True)
        return PreprocessResult(image, update.flow, reset="resolution" if resized else update.reset)
