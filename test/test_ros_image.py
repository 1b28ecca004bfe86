"""Image / CompressedImage <-> array conversions: round trips, hand-built messages in both byte orders,
known pixel values, error messages, the cv_bridge self-test, and fuzzing of every conversion."""
from __future__ import annotations

import array
import os
import struct
import sys
import types

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from sensor_msgs.msg import CompressedImage, Image
from std_msgs.msg import Header

from ood_monitor.ros import image as img
from ood_monitor.ros.image import (
    ENCODINGS,
    SUPPORTED_ENCODINGS,
    ImageConversionError,
    array_to_compressed,
    array_to_image,
    compressed_to_array,
    image_to_array,
    image_to_rgb8,
    to_rgb8,
)

HEAVY = os.environ.get("HYPOTHESIS_PROFILE") == "ci-heavy"
FUZZ = settings(
    max_examples=2000 if HEAVY else 150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
SIZES = [(1, 1), (1, 9), (9, 1), (7, 5)]  # (height, width)
HOST_BE = sys.byteorder == "big"


def random_pixels(encoding: str, height: int, width: int, seed: int = 0) -> np.ndarray:
    """Values that exercise every byte of the element type (floats include negatives and large values)."""
    info = ENCODINGS[encoding]
    rng = np.random.default_rng(seed)
    shape = (height, width) if info.channels == 1 else (height, width, info.channels)
    if info.dtype.kind == "f":
        return (rng.standard_normal(shape) * 1e3).astype(info.dtype)
    return rng.integers(0, np.iinfo(info.dtype).max + 1, size=shape, dtype=info.dtype)


def hand_built(pixels: np.ndarray, encoding: str, bigendian: bool, pad: int = 0, data_type=bytes):
    """A duck-typed Image built without the module under test: explicit byte order and row padding."""
    height, width = pixels.shape[:2]
    wire = pixels.astype(pixels.dtype.newbyteorder(">" if bigendian else "<"))
    rows = [wire[r].tobytes() + bytes(range(1, pad + 1)) for r in range(height)]  # non-zero padding
    raw = b"".join(rows)
    data = {bytes: raw, list: list(raw), array.array: array.array("B", raw), np.ndarray: np.frombuffer(raw, np.uint8)}
    return types.SimpleNamespace(
        height=height, width=width, encoding=encoding, is_bigendian=int(bigendian),
        step=len(rows[0]), data=data[data_type], header=Header(),
    )


# ----------------------------------------------------------------------------------------- round trips


@pytest.mark.parametrize("pad", [0, 5])
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("encoding", SUPPORTED_ENCODINGS)
def test_round_trip_every_encoding(encoding, size, pad):
    pixels = random_pixels(encoding, *size, seed=SUPPORTED_ENCODINGS.index(encoding) + size[1])
    row = size[1] * ENCODINGS[encoding].bytes_per_pixel
    msg = array_to_image(pixels, encoding, step=row + pad)
    assert isinstance(msg, Image)
    assert (msg.height, msg.width, msg.step, msg.encoding) == (size[0], size[1], row + pad, encoding)
    assert msg.is_bigendian == int(HOST_BE)
    assert len(msg.data) == (row + pad) * size[0]
    if pad:
        padding = np.frombuffer(bytes(msg.data), np.uint8).reshape(size[0], -1)[:, row:]
        assert not padding.any()
    back = image_to_array(msg)
    assert back.dtype == ENCODINGS[encoding].dtype and back.dtype.isnative
    np.testing.assert_array_equal(back, pixels)


@pytest.mark.parametrize("data_type", [bytes, list, array.array, np.ndarray])
@pytest.mark.parametrize("bigendian", [False, True])
@pytest.mark.parametrize("pad", [0, 3])
@pytest.mark.parametrize("encoding", SUPPORTED_ENCODINGS)
def test_decode_hand_built_both_byte_orders(encoding, pad, bigendian, data_type):
    pixels = random_pixels(encoding, 7, 5, seed=3)
    back = image_to_array(hand_built(pixels, encoding, bigendian, pad, data_type))
    assert back.dtype == ENCODINGS[encoding].dtype and back.dtype.isnative
    assert back.shape == pixels.shape
    np.testing.assert_array_equal(back, pixels)


def test_result_is_read_only_view_or_copy():
    pixels = random_pixels("rgb8", 4, 3)
    msg = array_to_image(pixels, "rgb8")
    view = image_to_array(msg)
    assert not view.flags.writeable
    assert np.shares_memory(view, np.frombuffer(msg.data, np.uint8))  # no copy per frame
    swapped = image_to_array(hand_built(random_pixels("mono16", 4, 3), "mono16", bigendian=not HOST_BE))
    assert not swapped.flags.writeable and swapped.dtype.isnative


def test_rosbags_messages_both_ways():
    typestore_mod = pytest.importorskip("rosbags.typesys")
    store = typestore_mod.get_typestore(typestore_mod.Stores.ROS2_HUMBLE)
    bag_image = store.types["sensor_msgs/msg/Image"]
    bag_header = store.types["std_msgs/msg/Header"](
        stamp=store.types["builtin_interfaces/msg/Time"](sec=4, nanosec=5), frame_id="cam"
    )
    pixels = random_pixels("bgra8", 3, 5)
    msg = array_to_image(pixels, "bgra8", header=bag_header, msg_cls=bag_image, step=24)
    assert isinstance(msg, bag_image) and isinstance(msg.data, np.ndarray) and msg.header.frame_id == "cam"
    np.testing.assert_array_equal(image_to_array(msg), pixels)
    with pytest.raises(TypeError, match="header is required"):
        array_to_image(pixels, "bgra8", msg_cls=bag_image)


# ----------------------------------------------------------------------------------------- known values

F_HALF_BE, F_HALF_LE = struct.pack(">f", 0.5), struct.pack("<f", 0.5)
KNOWN = [
    # encoding, raw bytes of one pixel, is_bigendian, decoded pixel, rgb8
    ("rgb8", b"\x01\x02\x03", 0, [1, 2, 3], (1, 2, 3)),
    ("bgr8", b"\x01\x02\x03", 0, [1, 2, 3], (3, 2, 1)),
    ("rgba8", b"\x01\x02\x03\x04", 0, [1, 2, 3, 4], (1, 2, 3)),
    ("bgra8", b"\x01\x02\x03\x04", 0, [1, 2, 3, 4], (3, 2, 1)),
    ("mono8", b"\x07", 0, 7, (7, 7, 7)),
    ("8UC1", b"\x07", 1, 7, (7, 7, 7)),
    ("8UC3", b"\x01\x02\x03", 0, [1, 2, 3], (3, 2, 1)),
    ("8UC4", b"\x01\x02\x03\x04", 1, [1, 2, 3, 4], (3, 2, 1)),
    ("mono16", b"\x01\x02", 1, 258, (1, 1, 1)),
    ("mono16", b"\x01\x02", 0, 513, (2, 2, 2)),
    ("16UC1", b"\xff\x00", 1, 65280, (255, 255, 255)),
    ("16UC1", b"\xff\x00", 0, 255, (0, 0, 0)),
    ("rgb16", b"\x01\x00\x02\x00\x03\x00", 1, [256, 512, 768], (1, 2, 3)),
    ("bgr16", b"\x01\x00\x02\x00\x03\x00", 1, [256, 512, 768], (3, 2, 1)),
    ("rgba16", b"\x00\x01\x00\x02\x00\x03\x00\x04", 0, [256, 512, 768, 1024], (1, 2, 3)),
    ("bgra16", b"\x00\x01\x00\x02\x00\x03\x00\x04", 0, [256, 512, 768, 1024], (3, 2, 1)),
    ("32FC1", F_HALF_BE, 1, 0.5, (128, 128, 128)),
    ("32FC1", F_HALF_LE, 0, 0.5, (128, 128, 128)),
    ("32FC2", struct.pack(">ff", 0.25, 2.0), 1, [0.25, 2.0], (64, 255, 0)),
    ("32FC2", struct.pack("<ff", -1.0, 1.0), 0, [-1.0, 1.0], (0, 255, 0)),
    ("32FC3", struct.pack("<fff", 0.25, 2.0, 0.5), 0, [0.25, 2.0, 0.5], (64, 255, 128)),  # flow + warp residual
]


@pytest.mark.parametrize(("encoding", "raw", "bigendian", "pixel", "rgb"), KNOWN)
def test_known_pixel_values(encoding, raw, bigendian, pixel, rgb):
    msg = types.SimpleNamespace(height=1, width=1, encoding=encoding, is_bigendian=bigendian, step=len(raw), data=raw)
    decoded = image_to_array(msg)
    np.testing.assert_array_equal(decoded[0, 0], pixel)
    assert tuple(image_to_rgb8(msg)[0, 0]) == rgb


def test_every_encoding_has_a_known_value_test():
    assert {k[0] for k in KNOWN} == set(SUPPORTED_ENCODINGS)


def test_to_rgb8_float_scaling_choices():
    depth = np.array([[0.0, 2.0], [4.0, 8.0]], np.float32)
    clipped = to_rgb8(depth, "32FC1")
    np.testing.assert_array_equal(clipped[..., 0], [[0, 255], [255, 255]])
    stretched = to_rgb8(depth, "32FC1", float_range=None)
    np.testing.assert_array_equal(stretched[..., 0], [[0, 64], [128, 255]])
    ranged = to_rgb8(depth, "32FC1", float_range=(0.0, 8.0))
    np.testing.assert_array_equal(ranged[..., 1], [[0, 64], [128, 255]])
    flat = to_rgb8(np.full((2, 3), 5.0, np.float32), "32FC1", float_range=None)
    assert flat.shape == (2, 3, 3) and not flat.any()
    with pytest.raises(ImageConversionError, match="float_range"):
        to_rgb8(depth, "32FC1", float_range=(1.0, 1.0))


def test_to_rgb8_returns_new_writable_array():
    pixels = random_pixels("rgb8", 3, 4)
    out = to_rgb8(pixels, "rgb8")
    assert out.flags.writeable and out.flags.c_contiguous and not np.shares_memory(out, pixels)
    np.testing.assert_array_equal(out, pixels)


# --------------------------------------------------------------------------------------- error messages


def message(encoding="rgb8", height=30, width=40, step=None, data_len=None, bigendian=0):
    step = width * 3 if step is None else step
    data_len = step * height if data_len is None else data_len
    return types.SimpleNamespace(
        height=height, width=width, encoding=encoding, is_bigendian=bigendian, step=step, data=bytes(data_len)
    )


@pytest.mark.parametrize(
    ("msg", "kwargs", "pattern"),
    [
        (message(encoding="yuv422"), {}, r"unsupported encoding 'yuv422'"),
        (message(step=100), {}, r"step 100 < width\*bpp 120 for rgb8 40x30"),
        (message(data_len=100), {}, r"data has 100 bytes, expected 3600"),
        (message(data_len=3601), {}, r"data has 3601 bytes, expected 3600"),
        (message(height=0, step=120, data_len=0), {}, r"size 40x0 .* must be positive"),
        (message(width=-2, step=0, data_len=0), {}, r"size -2x30 .* must be positive"),
        (message(), {"max_pixels": 1000}, r"40x30 \(1200 px\) exceeds the limit of 1000 px"),
        (message(step="wide", data_len=3600), {}, r"field 'step' must be an integer"),
        (types.SimpleNamespace(**{**vars(message()), "data": "text"}), {}, r"data must be bytes"),
        (types.SimpleNamespace(**{**vars(message()), "data": [256] * 3600}), {}, r"integers in \[0, 255\]"),
        (types.SimpleNamespace(**{**vars(message()), "data": np.zeros(3600, np.int8)}), {}, r"must be uint8, got int8"),
        (types.SimpleNamespace(**{**vars(message()), "data": array.array("H", bytes(3600))}), {}, r"typecode 'H'"),
    ],
)
def test_image_errors_say_what_is_wrong(msg, kwargs, pattern):
    with pytest.raises(ImageConversionError, match=pattern):
        image_to_array(msg, **kwargs)


def test_nonfinite_floats_rejected_where_not_allowed():
    depth = np.array([[1.0, np.nan, np.inf]], np.float32)
    msg = array_to_image(depth, "32FC1")
    assert np.isnan(image_to_array(msg)[0, 1])  # depth images may carry NaN
    with pytest.raises(ImageConversionError, match="2 NaN/Inf values"):
        image_to_array(msg, allow_nonfinite=False)
    with pytest.raises(ImageConversionError, match="NaN/Inf"):
        to_rgb8(depth, "32FC1")


@pytest.mark.parametrize(
    ("array_", "encoding", "kwargs", "pattern"),
    [
        (np.zeros((2, 3, 3), np.uint16), "rgb8", {}, r"rgb8 needs dtype uint8, got uint16"),
        (np.zeros((2, 3), np.uint8), "rgb8", {}, r"needs shape HxWx3, got \(2, 3\)"),
        (np.zeros((2, 3, 2), np.uint8), "mono8", {}, r"needs shape HxW or HxWx1"),
        (np.zeros((2, 3, 3), np.uint8), "rgb8", {"step": 8}, r"step 8 < width\*bpp 9 for rgb8 3x2"),
        (np.zeros((0, 3, 3), np.uint8), "rgb8", {}, r"must be positive"),
        (np.zeros((2, 3), np.float64), "32FC1", {}, r"needs dtype float32"),
        (np.zeros((2, 3), np.uint8), "mono8", {"max_pixels": 5}, r"exceeds the limit"),
        (np.zeros((2, 3), np.uint8), "jpeg", {}, r"unsupported encoding 'jpeg'"),
    ],
)
def test_array_to_image_validates(array_, encoding, kwargs, pattern):
    with pytest.raises(ImageConversionError, match=pattern):
        array_to_image(array_, encoding, **kwargs)


def test_array_to_image_accepts_foreign_byte_order():
    pixels = np.array([[1, 258]], dtype=">u2")
    msg = array_to_image(pixels, "mono16")
    assert msg.is_bigendian == int(HOST_BE)
    np.testing.assert_array_equal(image_to_array(msg), [[1, 258]])


# ------------------------------------------------------------------------------------------- compressed


def smooth_rgb(height=32, width=48) -> np.ndarray:
    yy, xx = np.mgrid[0:height, 0:width]
    return np.stack([xx * 5, yy * 7, (xx + yy) * 2], axis=-1).astype(np.uint8)


@pytest.mark.parametrize("size", [(1, 1), (1, 9), (9, 1), (7, 5), (32, 48)])
@pytest.mark.parametrize("encoding", ["rgb8", "bgr8", "rgba8", "bgra8"])
def test_png_round_trip_is_exact(encoding, size):
    pixels = random_pixels(encoding, *size)
    msg = array_to_compressed(pixels, "png", encoding)
    assert isinstance(msg, CompressedImage) and msg.format == f"{encoding}; png compressed bgr8"
    np.testing.assert_array_equal(compressed_to_array(msg), to_rgb8(pixels, encoding))
    np.testing.assert_array_equal(compressed_to_array(msg, "bgr8"), to_rgb8(pixels, encoding)[..., ::-1])


def test_png_mono_round_trip_is_exact():
    pixels = random_pixels("mono8", 7, 5)
    msg = array_to_compressed(pixels, "png", "mono8")
    assert msg.format == "mono8; png compressed mono8"
    np.testing.assert_array_equal(compressed_to_array(msg, "mono8"), pixels)
    np.testing.assert_array_equal(compressed_to_array(msg, "rgb8"), np.repeat(pixels[..., None], 3, axis=2))


def test_jpeg_round_trip_within_tolerance():
    pixels = smooth_rgb()
    msg = array_to_compressed(pixels, "jpeg", "rgb8", header=Header(frame_id="cam"))
    assert msg.format == "rgb8; jpeg compressed bgr8" and msg.header.frame_id == "cam"
    decoded = compressed_to_array(msg)
    assert decoded.shape == pixels.shape and decoded.dtype == np.uint8
    error = np.abs(decoded.astype(int) - pixels.astype(int))
    assert error.mean() < 2.0 and error.max() < 24
    swapped = compressed_to_array(msg, "bgr8")
    assert np.abs(swapped[..., ::-1].astype(int) - pixels.astype(int)).mean() < 2.0


@pytest.mark.parametrize(
    ("fmt", "expected_first_pixel"),
    [("jpeg", (10, 20, 30)), ("png", (10, 20, 30)), ("", (10, 20, 30)),
     ("bgr8; png compressed bgr8", (10, 20, 30)), ("rgb8; png compressed rgb8", (30, 20, 10))],
)
def test_format_string_sets_channel_order(fmt, expected_first_pixel):
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[...] = (10, 20, 30)
    _, encoded = cv2.imencode(".png", np.ascontiguousarray(rgb[..., ::-1]))  # what image_transport writes
    msg = CompressedImage(format=fmt, data=array.array("B", encoded.tobytes()))
    assert tuple(compressed_to_array(msg)[0, 0]) == expected_first_pixel


def test_compressed_mono_from_colour():
    rgb = np.zeros((2, 2, 3), np.uint8)
    rgb[...] = (255, 0, 0)
    msg = array_to_compressed(rgb, "png", "rgb8")
    np.testing.assert_array_equal(compressed_to_array(msg, "mono8"), np.full((2, 2), 76, np.uint8))


def patched(data: bytes, offset: int, value: bytes) -> bytes:
    return data[:offset] + value + data[offset + len(value):]


def test_forged_header_sizes_rejected_before_decoding():
    png = bytes(array_to_compressed(smooth_rgb(8, 8), "png").data)
    huge_png = patched(png, 16, (60000).to_bytes(4, "big") + (60000).to_bytes(4, "big"))
    with pytest.raises(ImageConversionError, match="60000x60000 .* exceeds the limit"):
        compressed_to_array(types.SimpleNamespace(format="png", data=huge_png))
    jpeg = bytes(array_to_compressed(smooth_rgb(8, 8), "jpeg").data)
    sof = jpeg.index(b"\xff\xc0")
    assert jpeg[sof + 5 : sof + 9] == b"\x00\x08\x00\x08"  # the header the size check reads
    huge_jpeg = patched(jpeg, sof + 5, b"\xea\x60\xea\x60")
    with pytest.raises(ImageConversionError, match="60000x60000 .* exceeds the limit"):
        compressed_to_array(types.SimpleNamespace(format="jpeg", data=huge_jpeg))
    with pytest.raises(ImageConversionError, match=r"8x8 \(64 px\) exceeds the limit of 63 px"):
        compressed_to_array(types.SimpleNamespace(format="jpeg", data=jpeg), max_pixels=63)


@pytest.mark.parametrize(
    ("fmt", "data", "desired", "pattern"),
    [
        ("jpeg", b"", "rgb8", "has no data"),
        ("jpeg", b"not an image at all", "rgb8", "corrupt"),
        ("tiff", b"II*\x00", "rgb8", "unsupported compressed format 'tiff'"),
        ("16UC1; compressedDepth png", b"\x00" * 20, "rgb8", "compressedDepth"),
        ("png", b"\x89PNG", "rgba8", "desired must be one of"),
    ],
)
def test_compressed_errors(fmt, data, desired, pattern):
    with pytest.raises(ImageConversionError, match=pattern):
        compressed_to_array(types.SimpleNamespace(format=fmt, data=data), desired)


def test_truncated_png_is_an_error():
    png = bytes(array_to_compressed(smooth_rgb(), "png").data)
    with pytest.raises(ImageConversionError, match="corrupt"):
        compressed_to_array(types.SimpleNamespace(format="png", data=png[: len(png) // 2]))


def test_array_to_compressed_rejects_unknown_codec():
    with pytest.raises(ImageConversionError, match="unsupported compressed format 'webp'"):
        array_to_compressed(smooth_rgb(), "webp")


# ----------------------------------------------------------------------------------------------- backend


class DelegatingBridge:
    """A healthy stand-in for cv_bridge.CvBridge that records its use."""

    calls = 0

    def cv2_to_imgmsg(self, cvim, encoding="passthrough"):
        return array_to_image(cvim, encoding)

    def imgmsg_to_cv2(self, msg, desired_encoding="passthrough"):
        DelegatingBridge.calls += 1
        return np.array(img._numpy_decode(
            img.byte_buffer(msg.data), ENCODINGS[msg.encoding], msg.width, msg.height, msg.step,
            bool(msg.is_bigendian),
        ))


class Numpy2BrokenBridge(DelegatingBridge):
    def cv2_to_imgmsg(self, cvim, encoding="passthrough"):
        raise AttributeError("'numpy.ndarray' object has no attribute 'tostring'")


class LyingBridge(DelegatingBridge):
    def imgmsg_to_cv2(self, msg, desired_encoding="passthrough"):
        return np.zeros((msg.height, msg.width, 3), np.uint8)


@pytest.fixture
def fake_bridge(monkeypatch):
    def install(bridge_cls):
        monkeypatch.setitem(sys.modules, "cv_bridge", types.SimpleNamespace(CvBridge=bridge_cls))
        img._bridge.cache_clear()

    yield install
    img._bridge.cache_clear()


def test_backend_here_is_known():
    assert img.backend() in (img.BACKEND_CV_BRIDGE, img.BACKEND_NUMPY)


def test_healthy_bridge_is_used_for_plain_messages(fake_bridge):
    fake_bridge(DelegatingBridge)
    assert img.backend() == img.BACKEND_CV_BRIDGE
    before = DelegatingBridge.calls
    pixels = random_pixels("rgb8", 3, 4)
    np.testing.assert_array_equal(image_to_array(array_to_image(pixels, "rgb8")), pixels)
    assert DelegatingBridge.calls == before + 1
    np.testing.assert_array_equal(image_to_array(array_to_image(pixels, "rgb8", step=20)), pixels)
    assert DelegatingBridge.calls == before + 1  # padded rows never go to the bridge


@pytest.mark.parametrize("bridge_cls", [Numpy2BrokenBridge, LyingBridge])
def test_broken_bridge_is_detected_and_skipped(fake_bridge, bridge_cls):
    fake_bridge(bridge_cls)
    assert img.backend() == img.BACKEND_NUMPY
    pixels = random_pixels("rgb8", 3, 4)
    np.testing.assert_array_equal(image_to_array(array_to_image(pixels, "rgb8")), pixels)


def test_env_forces_numpy(fake_bridge, monkeypatch):
    monkeypatch.setenv(img.BACKEND_ENV, "numpy")
    fake_bridge(DelegatingBridge)
    assert img.backend() == img.BACKEND_NUMPY


def test_real_cv_bridge_matches_numpy_path():
    if img.backend() != img.BACKEND_CV_BRIDGE:
        pytest.skip("no working cv_bridge on this machine")
    for encoding in SUPPORTED_ENCODINGS:
        pixels = random_pixels(encoding, 7, 5)
        np.testing.assert_array_equal(image_to_array(array_to_image(pixels, encoding)), pixels)


# ----------------------------------------------------------------------------------------------- fuzzing

INVALID_ENCODINGS = ["yuv422", "", "RGB8", "8UC2", "32FC3", "64FC1", "bayer_rggb8", "mono8 "]
ITEM_FORMAT = {"u1": "B", "u2": "H", "f4": "f"}


FIELDS = ["encoding", "height", "width", "step", "size"]


@st.composite
def raw_images(draw):
    """Valid messages, and messages with one to three fields drawn from wide ranges (often wrong), together
    with their raw bytes to check against."""
    loose = set(draw(st.sets(st.sampled_from(FIELDS), min_size=1, max_size=3))) if draw(st.booleans()) else set()
    encoding = draw(
        st.one_of(st.sampled_from(INVALID_ENCODINGS), st.text(max_size=8), st.sampled_from(SUPPORTED_ENCODINGS))
        if "encoding" in loose else st.sampled_from(SUPPORTED_ENCODINGS)
    )
    height = draw(st.integers(-1, 9) if "height" in loose else st.integers(1, 9))
    width = draw(st.one_of(st.integers(-3, 9), st.integers(1, 3000)) if "width" in loose else
                 st.one_of(st.integers(1, 9), st.integers(1, 3000)))
    bpp = ENCODINGS[encoding].bytes_per_pixel if encoding in ENCODINGS else draw(st.integers(1, 8))
    row = max(width, 0) * bpp
    step = draw(st.one_of(st.integers(max(row - 9, 0), row + 9), st.integers(-2, 64)) if "step" in loose else
                st.one_of(st.just(row), st.integers(row, row + 9)))
    size = max(step, 0) * max(height, 0)
    if "size" in loose:
        size = draw(st.integers(max(size - 5, 0), size + 5))
    raw = (draw(st.binary(min_size=size, max_size=size)) if size < 4096
           else np.random.default_rng(size).integers(0, 256, size, np.uint8).tobytes())
    kind = draw(st.sampled_from(["bytes", "list", "array", "ndarray"]))
    data = {"bytes": raw, "list": list(raw), "array": array.array("B", raw),
            "ndarray": np.frombuffer(raw, np.uint8)}[kind]
    bigendian = draw(st.sampled_from([0, 1, 2]))
    msg = types.SimpleNamespace(height=height, width=width, encoding=encoding, is_bigendian=bigendian,
                                step=step, data=data)
    return msg, raw


def expected_valid(msg, raw, max_pixels) -> bool:
    info = ENCODINGS.get(msg.encoding)
    return (info is not None and msg.width > 0 and msg.height > 0 and msg.width * msg.height <= max_pixels
            and msg.step >= msg.width * info.bytes_per_pixel and len(raw) == msg.step * msg.height)


@FUZZ
@given(raw_images(), st.sampled_from([img.DEFAULT_MAX_PIXELS, 64]))
def test_fuzz_image_to_array(sample, max_pixels):
    msg, raw = sample
    valid = expected_valid(msg, raw, max_pixels)
    try:
        out = image_to_array(msg, max_pixels=max_pixels)
    except ImageConversionError:
        assert not valid, "a valid message was rejected"
        return
    assert valid, "an invalid message was accepted"
    info = ENCODINGS[msg.encoding]
    channels = () if info.channels == 1 else (info.channels,)
    assert out.shape == (msg.height, msg.width, *channels) and out.dtype == info.dtype
    # spot-check the last element of the last row against struct, an independent reader
    order = ">" if msg.is_bigendian else "<"
    offset = (msg.height - 1) * msg.step + (msg.width * info.channels - 1) * info.dtype.itemsize
    (value,) = struct.unpack_from(order + ITEM_FORMAT[info.dtype.str[1:]], raw, offset)
    last = out[-1, -1] if info.channels == 1 else out[-1, -1, -1]
    np.testing.assert_array_equal(last, np.array(value, dtype=info.dtype))


@FUZZ
@given(st.data())
def test_fuzz_round_trip(data):
    encoding = data.draw(st.sampled_from(SUPPORTED_ENCODINGS))
    info = ENCODINGS[encoding]
    height, width = data.draw(st.integers(1, 6)), data.draw(st.integers(1, 6))
    shape = (height, width) if info.channels == 1 else (height, width, info.channels)
    pixels = data.draw(hnp.arrays(info.dtype, shape))
    pad = data.draw(st.integers(0, 7))
    back = image_to_array(array_to_image(pixels, encoding, step=width * info.bytes_per_pixel + pad))
    np.testing.assert_array_equal(back, pixels)  # NaN == NaN here, bit patterns preserved


@FUZZ
@given(st.data())
def test_fuzz_to_rgb8_float(data):
    encoding = data.draw(st.sampled_from(["32FC1", "32FC2"]))
    channels = ENCODINGS[encoding].channels
    shape = (data.draw(st.integers(1, 5)), data.draw(st.integers(1, 5)), channels)
    pixels = data.draw(hnp.arrays(np.float32, shape, elements=st.floats(width=32)))
    float_range = data.draw(st.sampled_from([(0.0, 1.0), None, (-5.0, 5.0)]))
    if not np.isfinite(pixels).all():
        with pytest.raises(ImageConversionError, match="NaN/Inf"):
            to_rgb8(pixels, encoding, float_range=float_range)
        return
    out = to_rgb8(pixels, encoding, float_range=float_range)
    assert out.shape == (*shape[:2], 3) and out.dtype == np.uint8
    # in float64: float32 extremes (-2.2e38 .. 1.2e38) overflow a float32 range to inf
    low, high = (float(pixels.min()), float(pixels.max())) if float_range is None else float_range
    if high > low:
        expected = np.rint(np.clip((pixels[..., 0].astype(np.float64) - low) / (high - low), 0, 1) * 255)
        np.testing.assert_array_equal(out[..., 0], expected.astype(np.uint8))
    if channels == 2:
        assert not out[..., 2].any()


CORRUPTIONS = st.tuples(st.sampled_from(["png", "jpeg"]), st.integers(0, 4000), st.binary(max_size=4),
                        st.booleans())


@FUZZ
@given(
    st.one_of(st.binary(max_size=300), CORRUPTIONS),
    st.sampled_from(["jpeg", "png", "", "rgb8; jpeg compressed bgr8", "bgr8; png compressed rgb8", "gif"]),
    st.sampled_from(["rgb8", "bgr8", "mono8"]),
)
def test_fuzz_compressed_bytes(payload, fmt, desired):
    """Random bytes and corrupted or truncated real PNG/JPEG streams: an image, or our error."""
    if isinstance(payload, tuple):
        codec, position, garbage, truncate = payload
        clean = bytes(array_to_compressed(smooth_rgb(16, 24), codec).data)
        position %= len(clean)
        payload = clean[:position] if truncate else clean[:position] + garbage + clean[position + len(garbage):]
    try:
        out = compressed_to_array(types.SimpleNamespace(format=fmt, data=payload), desired)
    except ImageConversionError:
        return
    assert fmt != "gif", "an unsupported format was decoded"
    assert out.dtype == np.uint8 and out.flags.c_contiguous and out.size > 0
    assert out.shape[2:] == (() if desired == "mono8" else (3,))


def test_decoder_exception_becomes_conversion_error(monkeypatch):
    def failing_imdecode(buf, flags):
        raise cv2.error("decoder failure")

    monkeypatch.setattr(img.cv2, "imdecode", failing_imdecode)
    with pytest.raises(ImageConversionError, match="corrupt compressed data .*decoder failure"):
        compressed_to_array(types.SimpleNamespace(format="png", data=b"\x89PNG"))
