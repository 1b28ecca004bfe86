"""sensor_msgs/Image and CompressedImage <-> numpy arrays.

Every node converts camera frames here, so this module is strict: a malformed message raises
`ImageConversionError` with a message that says what is wrong, never garbage pixels or a numpy traceback.
Messages are duck-typed (rclpy messages, `rosbags` dataclasses, anything with the same field names), and
the numpy path is complete on its own; cv_bridge is used for plain decodes only when it imports and passes a
self-test, because numpy-2-incompatible builds are common on robots.

Decoded arrays are HxW (one channel) or HxWxC, in native byte order, and always read-only: a view of the
message buffer when no byte swap or realignment is needed (no copy per frame), a private copy otherwise.
Call `.copy()` before writing.
"""
from __future__ import annotations

import array as _array
import functools
import operator
import os
import re
import sys
from dataclasses import dataclass
from typing import Any

import cv2
import numpy as np

DEFAULT_MAX_PIXELS = 8192 * 8192
"""Largest width*height accepted anywhere here; a corrupt header must not allocate gigabytes."""

BACKEND_CV_BRIDGE = "cv_bridge"
BACKEND_NUMPY = "numpy"
BACKEND_ENV = "OOD_MONITOR_IMAGE_BACKEND"
"""Set to "numpy" to never use cv_bridge (e.g. a robot whose bridge passes the self-test but misbehaves)."""

_HOST_BIGENDIAN = sys.byteorder == "big"
_CODECS = {"jpeg": ".jpg", "jpg": ".jpg", "png": ".png"}
_DESIRED = ("rgb8", "bgr8", "mono8")


class ImageConversionError(ValueError):
    """An image message or array that cannot be converted; the message names the offending field."""


@dataclass(frozen=True)
class ImageEncoding:
    """How one ROS encoding string lays out a pixel: element type, channel count and channel order."""

    name: str
    dtype: np.dtype
    channels: int
    order: str  # "rgb", "bgr", "rgba", "bgra", "mono" or "pair" (two float channels, e.g. optical flow)

    @property
    def bytes_per_pixel(self) -> int:
        return self.dtype.itemsize * self.channels


def _enc(name: str, dtype: str, channels: int, order: str) -> tuple[str, ImageEncoding]:
    return name, ImageEncoding(name, np.dtype(dtype), channels, order)


ENCODINGS: dict[str, ImageEncoding] = dict(
    [
        _enc("rgb8", "u1", 3, "rgb"),
        _enc("bgr8", "u1", 3, "bgr"),
        _enc("rgba8", "u1", 4, "rgba"),
        _enc("bgra8", "u1", 4, "bgra"),
        _enc("mono8", "u1", 1, "mono"),
        _enc("8UC1", "u1", 1, "mono"),
        _enc("8UC3", "u1", 3, "bgr"),  # OpenCV's channel order, which is what publishes 8UC3
        _enc("8UC4", "u1", 4, "bgra"),
        _enc("rgb16", "u2", 3, "rgb"),
        _enc("bgr16", "u2", 3, "bgr"),
        _enc("rgba16", "u2", 4, "rgba"),
        _enc("bgra16", "u2", 4, "bgra"),
        _enc("mono16", "u2", 1, "mono"),
        _enc("16UC1", "u2", 1, "mono"),
        _enc("32FC1", "f4", 1, "mono"),
        _enc("32FC2", "f4", 2, "pair"),
        _enc("32FC3", "f4", 3, "rgb"),  # ood/flow with the warp residual (u, v, residual)
    ]
)
SUPPORTED_ENCODINGS: tuple[str, ...] = tuple(ENCODINGS)


def encoding_info(encoding: object) -> ImageEncoding:
    """The layout of `encoding`, or ImageConversionError naming it when it is not supported."""
    info = ENCODINGS.get(encoding) if isinstance(encoding, str) else None
    if info is None:
        raise ImageConversionError(
            f"unsupported encoding {encoding!r} (supported: {', '.join(SUPPORTED_ENCODINGS)})"
        )
    return info


# ---------------------------------------------------------------------------------------------- backend


def backend() -> str:
    """Which decoder `image_to_array` uses for plain messages: "cv_bridge" or "numpy"."""
    return BACKEND_CV_BRIDGE if _bridge() is not None else BACKEND_NUMPY


@functools.cache
def _bridge() -> Any | None:
    """A CvBridge that round-trips a probe image correctly, else None (missing or broken build)."""
    if os.environ.get(BACKEND_ENV, "").strip().lower() == BACKEND_NUMPY:
        return None
    try:
        from cv_bridge import CvBridge

        bridge = CvBridge()
        healthy = _bridge_self_test(bridge)
    except Exception:  # a broken binary build can fail in any way; all of them mean "don't use it"
        return None
    return bridge if healthy else None


def _bridge_self_test(bridge: Any) -> bool:
    """Round-trip an 8-bit colour and a 16-bit mono probe; both must come back bit-exact."""
    probes = (
        (np.arange(18, dtype=np.uint8).reshape(2, 3, 3), "rgb8"),
        (np.array([[258, 65535, 7]], dtype=np.uint16), "16UC1"),
    )
    for probe, encoding in probes:
        msg = bridge.cv2_to_imgmsg(probe, encoding=encoding)
        back = np.asarray(bridge.imgmsg_to_cv2(msg, desired_encoding="passthrough"))
        if back.shape != probe.shape or back.dtype != probe.dtype or not np.array_equal(back, probe):
            return False
    return True


# ------------------------------------------------------------------------------------- field checking


def _int_field(msg: Any, name: str) -> int:
    """An integer message field; duck-typed messages may carry anything, so check it."""
    return _as_int(getattr(msg, name, None), name)


def _as_int(value: Any, name: str) -> int:
    if isinstance(value, bool):
        return int(value)
    try:
        return operator.index(value)
    except TypeError:
        raise ImageConversionError(f"field {name!r} must be an integer, got {value!r}") from None


def _check_size(info: ImageEncoding, width: int, height: int, max_pixels: int) -> None:
    if width <= 0 or height <= 0:
        raise ImageConversionError(f"image size {width}x{height} for {info.name} must be positive")
    if width * height > max_pixels:
        raise ImageConversionError(
            f"image {width}x{height} ({width * height} px) exceeds the limit of {max_pixels} px"
        )


def _check_step(info: ImageEncoding, width: int, height: int, step: int) -> None:
    row = width * info.bytes_per_pixel
    if step < row:
        raise ImageConversionError(
            f"step {step} < width*bpp {row} for {info.name} {width}x{height}"
        )


def byte_buffer(data: Any) -> np.ndarray:
    """`data` (bytes, array.array, list of ints or uint8 ndarray) as a 1-D uint8 array, without copying
    buffers."""
    if isinstance(data, np.ndarray):
        if data.dtype != np.uint8:
            raise ImageConversionError(f"data array must be uint8, got {data.dtype}")
        return np.ascontiguousarray(data).reshape(-1)
    if isinstance(data, _array.array):
        if data.itemsize != 1:
            raise ImageConversionError(f"data array.array must hold bytes, got typecode {data.typecode!r}")
        return np.frombuffer(data, dtype=np.uint8)
    if isinstance(data, (bytes, bytearray, memoryview)):
        return np.frombuffer(data, dtype=np.uint8)
    if isinstance(data, (list, tuple)):
        return _list_to_bytes(data)
    raise ImageConversionError(f"data must be bytes, array.array, list or uint8 ndarray, got {type(data).__name__}")


def _list_to_bytes(values: list | tuple) -> np.ndarray:
    try:
        out = np.array(values, dtype=np.int64)
    except (TypeError, ValueError, OverflowError):
        raise ImageConversionError("data list must contain integers in [0, 255]") from None
    if out.ndim != 1 or (out.size and (out.min() < 0 or out.max() > 255)):
        raise ImageConversionError("data list must contain integers in [0, 255]")
    return out.astype(np.uint8)


# ------------------------------------------------------------------------------------- Image -> array


def image_to_array(msg: Any, *, max_pixels: int = DEFAULT_MAX_PIXELS, allow_nonfinite: bool = True) -> np.ndarray:
    """Decode a sensor_msgs/Image into a read-only HxW or HxWxC array in native byte order.

    Row padding (`step`) is skipped and big-endian data swapped. `allow_nonfinite=False` rejects NaN/Inf in
    float images (depth images legitimately carry NaN, so it is allowed by default).
    """
    info = encoding_info(getattr(msg, "encoding", None))
    width, height, step = _int_field(msg, "width"), _int_field(msg, "height"), _int_field(msg, "step")
    _check_size(info, width, height, max_pixels)
    _check_step(info, width, height, step)
    buf = byte_buffer(getattr(msg, "data", None))
    if buf.size != step * height:
        raise ImageConversionError(
            f"data has {buf.size} bytes, expected {step * height} (step {step} x height {height})"
        )
    bigendian = bool(_int_field(msg, "is_bigendian"))
    out = _bridge_decode(msg, info, width, height, step, bigendian)
    if out is None:
        out = _numpy_decode(buf, info, width, height, step, bigendian)
    if not allow_nonfinite:
        _require_finite(out, info.name)
    out.flags.writeable = False
    return out


def _numpy_decode(
    buf: np.ndarray, info: ImageEncoding, width: int, height: int, step: int, bigendian: bool
) -> np.ndarray:
    """Strided view over the rows; copied only when bytes must be swapped or realigned."""
    dtype = info.dtype.newbyteorder(">" if bigendian else "<")
    item = dtype.itemsize
    view = np.ndarray(
        shape=(height, width, info.channels),
        dtype=dtype,
        buffer=buf,
        strides=(step, item * info.channels, item),
    )
    if not dtype.isnative or not view.flags.aligned:
        view = view.astype(info.dtype)
    return view[:, :, 0] if info.channels == 1 else view


def _bridge_decode(
    msg: Any, info: ImageEncoding, width: int, height: int, step: int, bigendian: bool
) -> np.ndarray | None:
    """cv_bridge's decode for unpadded native-order messages; None (use numpy) in every other case.

    Older bridges ignore `step` and `is_bigendian`, so only the case they all get right is handed over, and a
    result of the wrong shape or type is discarded.
    """
    plain = step == width * info.bytes_per_pixel and bigendian == _HOST_BIGENDIAN
    if not plain or isinstance(msg.data, (list, tuple)):
        return None
    bridge = _bridge()
    if bridge is None:
        return None
    try:
        out = np.asarray(bridge.imgmsg_to_cv2(msg, desired_encoding="passthrough"))
    except Exception:  # the numpy path is authoritative; a bridge failure must not lose the frame
        return None
    expected = (height, width) if info.channels == 1 else (height, width, info.channels)
    return out if out.shape == expected and out.dtype == info.dtype else None


def _require_finite(image: np.ndarray, encoding: str) -> None:
    if image.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(image)))
        if bad:
            raise ImageConversionError(f"{encoding} image has {bad} NaN/Inf values")


# ------------------------------------------------------------------------------------- array -> Image


def array_to_image(
    array: np.ndarray,
    encoding: str,
    header: Any = None,
    msg_cls: type | None = None,
    step: int | None = None,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Any:
    """Encode an array as a sensor_msgs/Image (rclpy's by default) in host byte order.

    `step` larger than the row size pads each row with zero bytes (for tests). With a non-rclpy `msg_cls`
    (e.g. a rosbags type) `header` is required, as such classes have no default header.
    """
    info = encoding_info(encoding)
    pixels = _validated_pixels(array, info)
    height, width = pixels.shape[:2]
    _check_size(info, width, height, max_pixels)
    row = width * info.bytes_per_pixel
    step = row if step is None else _as_int(step, "step")
    _check_step(info, width, height, step)
    fields = {
        "height": height,
        "width": width,
        "encoding": encoding,
        "is_bigendian": int(_HOST_BIGENDIAN),
        "step": step,
        "data": _padded_rows(pixels, step),
    }
    return _new_message(msg_cls or _rclpy_class("Image"), header, fields)


def _validated_pixels(array: Any, info: ImageEncoding) -> np.ndarray:
    """`array` as a native-order C-contiguous HxWxC array, or an error naming the dtype/shape mismatch."""
    arr = np.asarray(array)
    if arr.dtype.kind != info.dtype.kind or arr.dtype.itemsize != info.dtype.itemsize:
        raise ImageConversionError(f"{info.name} needs dtype {info.dtype}, got {arr.dtype}")
    if arr.ndim == 2 and info.channels == 1:
        arr = arr[:, :, None]
    if arr.ndim != 3 or arr.shape[2] != info.channels:
        wanted = "HxW or HxWx1" if info.channels == 1 else f"HxWx{info.channels}"
        raise ImageConversionError(f"{info.name} needs shape {wanted}, got {arr.shape}")
    return np.ascontiguousarray(arr, dtype=info.dtype)


def _padded_rows(pixels: np.ndarray, step: int) -> bytes:
    height = pixels.shape[0]
    rows = pixels.reshape(height, -1).view(np.uint8)
    if rows.shape[1] == step:
        return rows.tobytes()
    padded = np.zeros((height, step), dtype=np.uint8)
    padded[:, : rows.shape[1]] = rows
    return padded.tobytes()


def _rclpy_class(name: str) -> type:
    """rclpy's sensor_msgs class, imported late so rosbags-only users never need rclpy."""
    from sensor_msgs import msg

    return getattr(msg, name)


def _new_message(cls: type, header: Any, fields: dict[str, Any]) -> Any:
    """Build `cls` from `fields`; rclpy classes take data as array.array, others (rosbags) as uint8 arrays."""
    is_rclpy = hasattr(cls, "get_fields_and_field_types")
    data = fields.pop("data")
    fields["data"] = _array.array("B", data) if is_rclpy else np.frombuffer(data, dtype=np.uint8).copy()
    if header is not None:
        fields["header"] = header
    elif not is_rclpy:
        raise TypeError(f"header is required when msg_cls ({cls.__name__}) is not an rclpy message class")
    return cls(**fields)


# -------------------------------------------------------------------------------------- to RGB8


def to_rgb8(
    array: np.ndarray, encoding: str, *, float_range: tuple[float, float] | None = (0.0, 1.0)
) -> np.ndarray:
    """Any supported encoding as a new, writable HxWx3 uint8 RGB array.

    Mono is replicated, 16-bit keeps the high byte (>>8), alpha is dropped, 8UC3/8UC4 are read as BGR(A).
    Floats map `float_range` linearly onto 0..255 with clipping; the default (0, 1) keeps a fixed scale so
    frames stay comparable (confidence maps, normalised images). `float_range=None` stretches each image's
    own min..max instead (depth previews); a constant image then becomes black. 32FC2 gives R=ch0, G=ch1,
    B=0. NaN/Inf raise, since no colour is honest for them.
    """
    info = encoding_info(encoding)
    pixels = _validated_pixels(array, info)
    if pixels.size == 0:
        raise ImageConversionError(f"image size {pixels.shape[1]}x{pixels.shape[0]} for {encoding} must be positive")
    if info.dtype.kind == "f":
        _require_finite(pixels, encoding)
        eight_bit = _float_to_uint8(pixels, float_range)
    elif info.dtype.itemsize == 2:
        eight_bit = (pixels >> 8).astype(np.uint8)
    else:
        eight_bit = pixels
    return np.ascontiguousarray(_as_rgb(eight_bit, info.order), dtype=np.uint8).copy()


def image_to_rgb8(msg: Any, *, max_pixels: int = DEFAULT_MAX_PIXELS, **to_rgb8_kwargs: Any) -> np.ndarray:
    """`to_rgb8(image_to_array(msg), msg.encoding)`: what a node needs from a camera frame."""
    return to_rgb8(image_to_array(msg, max_pixels=max_pixels), msg.encoding, **to_rgb8_kwargs)


def _float_to_uint8(pixels: np.ndarray, float_range: tuple[float, float] | None) -> np.ndarray:
    values = pixels.astype(np.float64)  # float32 max-min can overflow to inf
    if float_range is None:
        low, high = float(values.min()), float(values.max())
        if high <= low:
            return np.zeros(pixels.shape, dtype=np.uint8)
    else:
        low, high = (float(v) for v in float_range)
        if not (np.isfinite(low) and np.isfinite(high) and high > low):
            raise ImageConversionError(f"float_range must be finite with high > low, got {float_range}")
    scaled = np.clip((values - low) / (high - low), 0.0, 1.0) * 255.0
    return np.rint(scaled).astype(np.uint8)


def _as_rgb(pixels: np.ndarray, order: str) -> np.ndarray:
    if order in ("rgb", "rgba"):
        return pixels[:, :, :3]
    if order in ("bgr", "bgra"):
        return pixels[:, :, 2::-1]
    if order == "mono":
        return np.repeat(pixels, 3, axis=2)
    return np.concatenate([pixels, np.zeros_like(pixels[:, :, :1])], axis=2)  # "pair"


# ------------------------------------------------------------------------------------ CompressedImage


def compressed_to_array(
    msg: Any, desired: str = "rgb8", *, max_pixels: int = DEFAULT_MAX_PIXELS
) -> np.ndarray:
    """Decode a sensor_msgs/CompressedImage (jpeg/png) into a new HxWx3 RGB/BGR or HxW mono8 array.

    The format string's "compressed <enc>" tail says the decoded channel order ("bgr8", as image_transport
    writes, or "rgb8" from publishers that encode RGB arrays as-is). Image dimensions are read from the
    PNG/JPEG header first, so a forged header cannot make the decoder allocate past `max_pixels`.
    """
    if desired not in _DESIRED:
        raise ImageConversionError(f"desired must be one of {_DESIRED}, got {desired!r}")
    fmt = getattr(msg, "format", "")
    decoded_order = _decoded_order(fmt)
    buf = byte_buffer(getattr(msg, "data", None))
    if buf.size == 0:
        raise ImageConversionError(f"compressed image (format {fmt!r}) has no data")
    size = _encoded_size(buf)
    if size is not None:
        _check_compressed_size(size, max_pixels)
    colour = _imdecode(buf, fmt)
    _check_compressed_size((colour.shape[1], colour.shape[0]), max_pixels)
    if desired == "mono8":
        code = cv2.COLOR_BGR2GRAY if decoded_order == "bgr" else cv2.COLOR_RGB2GRAY
        return cv2.cvtColor(colour, code)
    if desired[:3] != decoded_order:
        colour = colour[:, :, ::-1]
    return np.ascontiguousarray(colour)


def _decoded_order(fmt: Any) -> str:
    """Validate a CompressedImage format string; return the channel order imdecode output will have."""
    if not isinstance(fmt, str):
        raise ImageConversionError(f"format must be a string, got {type(fmt).__name__}")
    words = [w for w in re.split(r"[;\s]+", fmt.strip().lower()) if w]
    if "compresseddepth" in words:
        raise ImageConversionError(f"compressedDepth images are not supported (format {fmt!r})")
    if words and not any(w in _CODECS for w in words):
        raise ImageConversionError(f"unsupported compressed format {fmt!r} (expected jpeg or png)")
    if "compressed" in words:
        tail = words[words.index("compressed") + 1 :]
        if tail and tail[0].startswith("rgb"):
            return "rgb"
    return "bgr"


def _imdecode(buf: np.ndarray, fmt: str) -> np.ndarray:
    flags = cv2.IMREAD_COLOR | cv2.IMREAD_IGNORE_ORIENTATION
    try:
        image = cv2.imdecode(buf, flags)
    except cv2.error as exc:
        raise ImageConversionError(f"corrupt compressed data ({buf.size} bytes, format {fmt!r}): {exc}") from None
    if image is None or image.ndim != 3 or image.shape[2] != 3 or image.size == 0:
        raise ImageConversionError(f"corrupt or unsupported compressed data ({buf.size} bytes, format {fmt!r})")
    return image


def _check_compressed_size(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise ImageConversionError(f"compressed image declares size {width}x{height}")
    if width * height > max_pixels:
        raise ImageConversionError(
            f"compressed image {width}x{height} ({width * height} px) exceeds the limit of {max_pixels} px"
        )


_PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
_JPEG_SOF = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}  # frame headers; C4/C8/CC are not frames
_JPEG_STANDALONE = frozenset(range(0xD0, 0xDA)) | {0x01}  # markers without a length field


def _encoded_size(buf: np.ndarray) -> tuple[int, int] | None:
    """(width, height) from a PNG IHDR or JPEG SOF header, None when neither can be read."""
    data = memoryview(buf)
    if bytes(data[:8]) == _PNG_MAGIC and len(data) >= 24:
        return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    if bytes(data[:2]) == b"\xff\xd8":
        return _jpeg_size(data)
    return None


def _jpeg_size(data: memoryview) -> tuple[int, int] | None:
    """Walk the JPEG marker segments up to the first frame header (a handful of jumps, not a byte scan)."""
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
        elif marker in _JPEG_STANDALONE:
            pos += 2
        elif marker in _JPEG_SOF:
            if pos + 9 > len(data):
                return None
            height = int.from_bytes(data[pos + 5 : pos + 7], "big")
            return int.from_bytes(data[pos + 7 : pos + 9], "big"), height
        else:
            pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
    return None


def array_to_compressed(
    array: np.ndarray,
    fmt: str = "jpeg",
    encoding: str = "rgb8",
    header: Any = None,
    msg_cls: type | None = None,
    *,
    quality: int = 95,
) -> Any:
    """Encode an array as a sensor_msgs/CompressedImage the way image_transport does (for tests and replay).

    One-channel encodings become mono8, others bgr8, both through `to_rgb8` (so 16-bit and float images are
    reduced to 8 bits); the format string is "<encoding>; <fmt> compressed <mono8|bgr8>".
    """
    codec = fmt.lower() if isinstance(fmt, str) else fmt
    if codec not in _CODECS:
        raise ImageConversionError(f"unsupported compressed format {fmt!r} (expected jpeg or png)")
    info = encoding_info(encoding)
    rgb = to_rgb8(array, encoding)
    image, target = (rgb[:, :, 0], "mono8") if info.channels == 1 else (rgb[:, :, ::-1], "bgr8")
    ext = _CODECS[codec]
    params = [cv2.IMWRITE_JPEG_QUALITY, int(quality)] if ext == ".jpg" else [cv2.IMWRITE_PNG_COMPRESSION, 3]
    ok, encoded = cv2.imencode(ext, np.ascontiguousarray(image), params)
    if not ok:
        raise ImageConversionError(f"OpenCV could not encode a {image.shape} image as {codec}")
    name = "jpeg" if ext == ".jpg" else "png"
    fields = {"format": f"{encoding}; {name} compressed {target}", "data": encoded.tobytes()}
    return _new_message(msg_cls or _rclpy_class("CompressedImage"), header, fields)
