"""Anomalies by synthesis (docs/methods.md#anomalies-by-synthesis): a diffusion model trained only on nominal
frames re-synthesizes the input; what it changes is what it has not seen. DC-AE + latent DiT with
similarity-guided DDIM is the fast path; the pixel U-Net with DDPM-1000 is the baseline every speed-up is
measured against."""
from .guided_ddim import GUIDANCE_KINDS, GuidanceConfig, guided_sample
from .schedules import ScheduleConfig, make_scheduler, plan_timesteps
from .synthesizer import ModelFileError, Synthesizer, load_model, save_model
from .weight_quantization import PRECISIONS, quantize

__all__ = [
    "GUIDANCE_KINDS", "PRECISIONS", "GuidanceConfig", "ModelFileError", "ScheduleConfig", "Synthesizer",
    "guided_sample", "load_model", "make_scheduler", "plan_timesteps", "quantize", "save_model",
]
