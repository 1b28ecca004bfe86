"""TensorRT backend (Jetson, desktop GPUs): builds an engine from the ONNX graph (fp32, fp16, or int8
with an entropy calibrator), caches it on disk and runs it with pycuda buffers.

An engine only runs on the TensorRT version and GPU that built it (the "engine built on another
device" error Isaac ROS users meet), so the cache key is sha256(onnx) + tensorrt.__version__ + GPU name
+ precision + batch profile. The file name depends on the model and precision only, its JSON sidecar
holds the full key: a cache made by another TensorRT or GPU is rebuilt in place, never loaded.
tensorrt and pycuda are imported lazily; without them the backend raises `BackendUnavailable`.
"""
from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .base import BackendUnavailable, InferenceBackend, device_kind

UNAVAILABLE = ("backend 'tensorrt' needs the tensorrt and pycuda packages (not importable here): "
               "set parameter backend to onnxruntime or torch")
DEFAULT_CACHE = Path.home() / ".cache" / "ood_monitor" / "engines"
WORKSPACE_BYTES = 1 << 30


def import_tensorrt() -> tuple[Any, Any]:
    """(tensorrt, pycuda.driver) or BackendUnavailable naming the parameter to change."""
    try:
        import pycuda.driver as cuda
        import tensorrt as trt
    except ImportError as exc:
        raise BackendUnavailable(UNAVAILABLE) from exc
    return trt, cuda


@dataclass(frozen=True)
class EngineKey:
    """Everything an engine depends on; `digest` names the exact build."""

    onnx_sha256: str
    tensorrt: str
    gpu: str
    precision: str
    max_batch: int

    def digest(self) -> str:
        return hashlib.sha256(json.dumps(asdict(self), sort_keys=True).encode()).hexdigest()

    def file_stem(self) -> str:
        """Cache file name: one slot per model and precision (TensorRT/GPU changes overwrite it)."""
        return f"{self.onnx_sha256[:16]}-{self.precision}-b{self.max_batch}"


def engine_key(onnx: bytes, tensorrt_version: str, gpu: str, precision: str, max_batch: int) -> EngineKey:
    return EngineKey(hashlib.sha256(onnx).hexdigest(), tensorrt_version, gpu, precision, max_batch)


def cached_engine(cache_dir: str | Path, key: EngineKey, build: Callable[[], bytes], force: bool = False
                  ) -> tuple[bytes, bool]:
    """(engine bytes, rebuilt?): the cached engine when its sidecar key equals `key`, else a fresh
    build written atomically with its key (so a crash never leaves a half-written engine)."""
    cache = Path(cache_dir)
    engine_path = cache / f"{key.file_stem()}.engine"
    meta_path = cache / f"{key.file_stem()}.json"
    if not force and engine_path.is_file() and meta_path.is_file():
        try:
            if json.loads(meta_path.read_text()).get("digest") == key.digest():
                return engine_path.read_bytes(), False
        except (OSError, json.JSONDecodeError):
            pass
    data = build()
    cache.mkdir(parents=True, exist_ok=True)
    for path, blob in ((engine_path, data), (meta_path, json.dumps({**asdict(key), "digest": key.digest()},
                                                                    indent=1).encode())):
        tmp = path.with_suffix(path.suffix + ".tmp")
        tmp.write_bytes(blob)
        os.replace(tmp, path)
    return data, True


def make_calibrator(trt: Any, cuda: Any, batches: np.ndarray, batch_size: int, cache_file: Path) -> Any:
    """An IInt8EntropyCalibrator2 feeding `batches` (N, ...) float32, `batch_size` rows at a time."""

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):
        def __init__(self) -> None:
            super().__init__()
            self.data = np.ascontiguousarray(batches, dtype=np.float32)
            self.start = 0
            self.device = cuda.mem_alloc(self.data[:batch_size].nbytes)

        def get_batch_size(self) -> int:
            return batch_size

        def get_batch(self, names: list[str]) -> list[int] | None:
            if self.start + batch_size > len(self.data):
                return None
            cuda.memcpy_htod(self.device, np.ascontiguousarray(self.data[self.start:self.start + batch_size]))
            self.start += batch_size
            return [int(self.device)]

        def read_calibration_cache(self) -> bytes | None:
            return cache_file.read_bytes() if cache_file.is_file() else None

        def write_calibration_cache(self, cache: bytes) -> None:
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            cache_file.write_bytes(bytes(cache))

    return EntropyCalibrator()


def build_engine(trt: Any, onnx: bytes, precision: str, max_batch: int, calibrator: Any = None) -> bytes:
    """Parse the ONNX graph and build a serialized engine with a batch profile 1..max_batch."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flag = getattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH", None)  # implicit batch gone in TRT 10
    network = builder.create_network(0 if flag is None else 1 << int(flag))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse(onnx):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT could not parse the ONNX graph: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, WORKSPACE_BYTES)
    if precision in ("fp16", "int8"):
        config.set_flag(trt.BuilderFlag.FP16)
    if precision == "int8":
        if calibrator is None:
            raise ValueError("int8 engines need calibration frames")
        config.set_flag(trt.BuilderFlag.INT8)
        config.int8_calibrator = calibrator
    profile = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        rest = tuple(tensor.shape)[1:]
        profile.set_shape(tensor.name, (1, *rest), (1, *rest), (max_batch, *rest))
    config.add_optimization_profile(profile)
    if precision == "int8":
        config.set_calibration_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise RuntimeError(f"TensorRT failed to build a {precision} engine (see its log above)")
    return bytes(serialized)


def gpu_name(cuda: Any, index: int) -> str:
    dev = cuda.Device(index)
    major, minor = dev.compute_capability()
    return f"{dev.name()} sm_{major}{minor}"


class TensorRTBackend(InferenceBackend):
    name = "tensorrt"

    def __init__(self, model: bytes | str | Path, device: str = "cuda", precision: str = "fp16",
                 cache_dir: str | Path | None = None, calibration: np.ndarray | None = None,
                 max_batch: int = 64, force_rebuild: bool = False) -> None:
        if device_kind(device) != "cuda":
            raise BackendUnavailable("backend 'tensorrt' runs on a GPU: set parameter device to cuda or backend "
                                     "to onnxruntime")
        trt, cuda = import_tensorrt()
        onnx = model if isinstance(model, bytes) else Path(model).read_bytes()
        index = int(device.split(":", 1)[1]) if ":" in device else 0
        cuda.init()
        self.trt, self.cuda = trt, cuda
        self.ctx = cuda.Device(index).retain_primary_context()
        self.precision, self.device = precision, device
        key = engine_key(onnx, trt.__version__, gpu_name(cuda, index), precision, max_batch)
        cache = Path(cache_dir) if cache_dir else DEFAULT_CACHE
        self.key = key
        self.ctx.push()
        try:
            def build() -> bytes:
                calib = None
                if precision == "int8":
                    if calibration is None:
                        raise ValueError("precision int8 with backend tensorrt needs calibration frames")
                    calib = make_calibrator(trt, cuda, calibration, min(8, len(calibration)),
                                            cache / f"{key.file_stem()}.calib")
                return build_engine(trt, onnx, precision, max_batch, calib)

            blob, self.rebuilt = cached_engine(cache, key, build, force=force_rebuild)
            self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(blob)
            if self.engine is None:  # corrupt cache file: rebuild once
                blob, self.rebuilt = cached_engine(cache, key, build, force=True)
                self.engine = trt.Runtime(trt.Logger(trt.Logger.WARNING)).deserialize_cuda_engine(blob)
            self.context = self.engine.create_execution_context()
            self.stream = cuda.Stream()
        finally:
            self.ctx.pop()
        names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in names if n not in self.inputs]
        self.buffers: dict[str, tuple[int, Any]] = {}

    def _buffer(self, name: str, nbytes: int) -> Any:
        """Device buffer for a tensor, reallocated only when a batch needs more room."""
        size, mem = self.buffers.get(name, (0, None))
        if nbytes > size:
            mem = self.cuda.mem_alloc(nbytes)
            self.buffers[name] = (nbytes, mem)
        return mem

    def run(self, x: np.ndarray, *extra: np.ndarray) -> tuple[np.ndarray, ...]:
        arrays = (x, *extra)
        if len(arrays) != len(self.inputs):
            raise ValueError(f"engine takes {len(self.inputs)} inputs ({', '.join(self.inputs)}), got {len(arrays)}")
        self.ctx.push()
        try:
            for name, arr in zip(self.inputs, arrays, strict=True):
                host = np.ascontiguousarray(arr, dtype=self.trt.nptype(self.engine.get_tensor_dtype(name)))
                self.context.set_input_shape(name, host.shape)
                mem = self._buffer(name, host.nbytes)
                self.cuda.memcpy_htod_async(mem, host, self.stream)
                self.context.set_tensor_address(name, int(mem))
            results = []
            for name in self.outputs:
                shape = tuple(self.context.get_tensor_shape(name))
                host = self.cuda.pagelocked_empty(shape, self.trt.nptype(self.engine.get_tensor_dtype(name)))
                mem = self._buffer(name, host.nbytes)
                self.context.set_tensor_address(name, int(mem))
                results.append((host, mem))
            if not self.context.execute_async_v3(self.stream.handle):
                raise RuntimeError("TensorRT execution failed")
            for host, mem in results:
                self.cuda.memcpy_dtoh_async(host, mem, self.stream)
            self.stream.synchronize()
        finally:
            self.ctx.pop()
        return tuple(np.array(h, dtype=np.float32) for h, _ in results)
