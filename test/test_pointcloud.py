"""PointCloud2 <-> structured arrays: layout from the dtype (offsets, padding, counts), round trips flat and
organised, hand-built big-endian messages, is_dense, the sensor_msgs_py path, and fuzzed dtypes."""
from __future__ import annotations

import array
import os
import struct
import sys
import types

import numpy as np
import pytest
from builtin_interfaces.msg import Time
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from sensor_msgs.msg import PointCloud2, PointField
from std_msgs.msg import Header

from ood_monitor.ros.pointcloud import (
    PointCloudConversionError,
    pointcloud_from_structured,
    pointcloud_to_structured,
    xyz_cloud,
)

HEAVY = os.environ.get("HYPOTHESIS_PROFILE") == "ci-heavy"
FUZZ = settings(max_examples=1000 if HEAVY else 100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
HOST_BE = sys.byteorder == "big"

MIXED = np.dtype([("x", "f4"), ("y", "f4"), ("z", "f4"), ("intensity", "u1"), ("ring", "u2"), ("t", "f8"),
                  ("s8", "i1"), ("s16", "i2"), ("s32", "i4"), ("u32", "u4")])
PADDED = np.dtype({"names": ["x", "y", "z", "rgb", "normal"], "formats": ["f4", "f4", "f4", "u4", ("f4", (3,))],
                   "offsets": [0, 4, 8, 16, 20], "itemsize": 48})
FOREIGN = np.dtype([("x", ">f4"), ("label", ">u2"), ("w", "<f8")])
DTYPES = {"mixed": MIXED, "padded": PADDED, "foreign": FOREIGN, "xyz": np.dtype([(a, "f4") for a in "xyz"])}


def filled(dtype: np.dtype, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    out = np.zeros(shape, dtype)
    for name in dtype.names:
        base = dtype.fields[name][0].base
        values_shape = out[name].shape
        if base.kind == "f":
            out[name] = rng.standard_normal(values_shape) * 100
        else:
            info = np.iinfo(base)
            out[name] = rng.integers(info.min, info.max, size=values_shape, endpoint=True)
    return out


def assert_same_points(actual: np.ndarray, expected: np.ndarray) -> None:
    assert actual.shape == expected.shape
    assert actual.dtype.names == expected.dtype.names
    for name in expected.dtype.names:
        assert actual[name].dtype == expected[name].dtype.newbyteorder("=")
        np.testing.assert_array_equal(actual[name], expected[name])


@pytest.mark.parametrize("shape", [(1,), (13,), (1, 1), (4, 7), (7, 1)])
@pytest.mark.parametrize("kind", DTYPES)
def test_round_trip(kind, shape):
    dtype = DTYPES[kind]
    points = filled(dtype, shape, seed=len(shape))
    header = Header(stamp=Time(sec=3, nanosec=9), frame_id="camera")
    msg = pointcloud_from_structured(points, header)
    height, width = shape if len(shape) == 2 else (1, shape[0])
    assert (msg.height, msg.width) == (height, width)
    assert msg.point_step == dtype.itemsize and msg.row_step == dtype.itemsize * width
    assert len(msg.data) == msg.row_step * height and msg.is_bigendian == HOST_BE
    assert msg.header == header and msg.is_dense
    back = pointcloud_to_structured(msg)
    assert_same_points(back, points if height > 1 else points.reshape(-1))
    assert back.dtype.itemsize == dtype.itemsize


def test_fields_follow_the_dtype_layout():
    msg = pointcloud_from_structured(filled(PADDED, (3,)), Header())
    layout = [(f.name, f.offset, f.datatype, f.count) for f in msg.fields]
    assert layout == [("x", 0, PointField.FLOAT32, 1), ("y", 4, PointField.FLOAT32, 1),
                      ("z", 8, PointField.FLOAT32, 1), ("rgb", 16, PointField.UINT32, 1),
                      ("normal", 20, PointField.FLOAT32, 3)]
    mixed = pointcloud_from_structured(filled(MIXED, (2,)), Header())
    assert [f.datatype for f in mixed.fields] == [
        PointField.FLOAT32, PointField.FLOAT32, PointField.FLOAT32, PointField.UINT8, PointField.UINT16,
        PointField.FLOAT64, PointField.INT8, PointField.INT16, PointField.INT32, PointField.UINT32]


def test_known_bytes_and_zeroed_padding():
    dtype = np.dtype({"names": ["x", "id"], "formats": [">f4", "u2"], "offsets": [0, 6], "itemsize": 12})
    points = np.array([(1.5, 258)], dtype=dtype)
    data = bytes(pointcloud_from_structured(points, Header()).data)
    order = ">" if HOST_BE else "<"
    assert data == struct.pack(order + "f", 1.5) + b"\x00\x00" + struct.pack(order + "H", 258) + b"\x00" * 4


def test_is_dense_reflects_invalid_points():
    points = filled(MIXED, (5,))
    assert pointcloud_from_structured(points, Header()).is_dense
    points["t"][2] = np.inf
    assert not pointcloud_from_structured(points, Header()).is_dense
    points["t"][2] = 0.0
    points["z"][4] = np.nan
    cloud = pointcloud_from_structured(points, Header())
    assert not cloud.is_dense
    assert np.isnan(pointcloud_to_structured(cloud)["z"][4])


def test_frame_id_replaces_without_touching_the_callers_header():
    header = Header(stamp=Time(sec=7, nanosec=1), frame_id="base_link")
    msg = pointcloud_from_structured(filled(MIXED, (2,)), header, frame_id="camera_optical")
    assert msg.header.frame_id == "camera_optical" and msg.header.stamp == header.stamp
    assert header.frame_id == "base_link"
    assert pointcloud_from_structured(filled(MIXED, (2,)), None).header == Header()


def big_endian_cloud(pad_row: int) -> PointCloud2:
    """A 2x2 organised big-endian cloud with x (float32) at 0, label (uint16) at 6, point_step 8."""
    rows = []
    for row in range(2):
        points = b"".join(struct.pack(">f", row * 10 + col) + b"\xee\xee" + struct.pack(">H", 256 + col)
                          for col in range(2))
        rows.append(points + b"\xaa" * pad_row)
    fields = [PointField(name="x", offset=0, datatype=PointField.FLOAT32, count=1),
              PointField(name="label", offset=6, datatype=PointField.UINT16, count=1)]
    return PointCloud2(height=2, width=2, fields=fields, is_bigendian=True, point_step=8, row_step=16 + pad_row,
                       data=array.array("B", b"".join(rows)), is_dense=True)


@pytest.mark.parametrize("pad_row", [0, 5])
def test_hand_built_big_endian_with_row_padding(pad_row):
    points = pointcloud_to_structured(big_endian_cloud(pad_row))
    assert points.shape == (2, 2) and points.dtype["x"].isnative
    np.testing.assert_array_equal(points["x"], [[0.0, 1.0], [10.0, 11.0]])
    np.testing.assert_array_equal(points["label"], [[256, 257], [256, 257]])


def test_rosbags_message_reads():
    typesys = pytest.importorskip("rosbags.typesys")
    store = typesys.get_typestore(typesys.Stores.ROS2_HUMBLE)
    bag_field, bag_cloud = store.types["sensor_msgs/msg/PointField"], store.types["sensor_msgs/msg/PointCloud2"]
    source = big_endian_cloud(0)
    msg = bag_cloud(
        header=None, height=2, width=2, is_bigendian=True, point_step=8, row_step=16, is_dense=True,
        fields=[bag_field(name=f.name, offset=f.offset, datatype=f.datatype, count=f.count) for f in source.fields],
        data=np.frombuffer(bytes(source.data), np.uint8),
    )
    np.testing.assert_array_equal(pointcloud_to_structured(msg)["x"], [[0.0, 1.0], [10.0, 11.0]])


def with_changes(msg: PointCloud2, **changes) -> types.SimpleNamespace:
    fields = {name: getattr(msg, name) for name in ("height", "width", "fields", "is_bigendian", "point_step",
                                                   "row_step", "data")}
    return types.SimpleNamespace(**{**fields, **changes})


@pytest.mark.parametrize(
    ("changes", "pattern"),
    [
        ({"data": array.array("B", bytes(31))}, "data has 31 bytes, expected 32"),
        ({"row_step": 15}, "row_step 15 < width\\*point_step 16"),
        ({"point_step": 7, "row_step": 14, "data": bytes(28)}, "field 'label' ends at byte 8 > point_step 7"),
        ({"fields": [PointField(name="x", offset=0, datatype=9, count=1)]}, "unknown datatype 9"),
        ({"fields": [PointField(name="x", offset=0, datatype=7, count=0)]}, "count 0"),
        ({"fields": [PointField(name="x", offset=0, datatype=2, count=1)] * 2}, "duplicate field name 'x'"),
    ],
)
def test_malformed_messages_are_rejected(changes, pattern):
    with pytest.raises(PointCloudConversionError, match=pattern):
        pointcloud_to_structured(with_changes(big_endian_cloud(0), **changes))


@pytest.mark.parametrize(
    ("points", "pattern"),
    [
        (np.zeros((3, 3), np.float32), "expected a structured array"),
        (np.zeros((2, 2, 2), MIXED), "1-D or 2-D"),
        (np.zeros(3, [("x", "f4"), ("n", "i8")]), "field 'n' has dtype int64"),
        (np.zeros(3, [("x", "f2")]), "field 'x' has dtype float16"),
        (np.zeros(3, [("ok", "?")]), "field 'ok' has dtype bool"),
        (np.zeros(3, [("p", [("a", "f4")])]), "field 'p' has dtype"),
        (np.zeros(3, [("e", "f4", (0,))]), "field 'e' has no elements"),
    ],
)
def test_unsupported_arrays_are_rejected(points, pattern):
    with pytest.raises(PointCloudConversionError, match=pattern):
        pointcloud_from_structured(points, Header())


def test_xyz_cloud_flat_with_intensity():
    xyz = np.array([[1, 2, 3], [4, 5, 6]], dtype=np.float64)
    msg = xyz_cloud(xyz, Header(frame_id="map"), {"intensity": np.array([0.5, 1.5], np.float32)})
    assert [(f.name, f.offset, f.datatype) for f in msg.fields] == [
        ("x", 0, PointField.FLOAT32), ("y", 4, PointField.FLOAT32), ("z", 8, PointField.FLOAT32),
        ("intensity", 12, PointField.FLOAT32)]
    assert (msg.height, msg.width, msg.point_step, msg.header.frame_id) == (1, 2, 16, "map")
    points = pointcloud_to_structured(msg)
    np.testing.assert_array_equal(points["y"], [2, 5])
    np.testing.assert_array_equal(points["intensity"], [0.5, 1.5])


def test_xyz_cloud_organised():
    xyz = np.arange(2 * 3 * 3, dtype=np.float32).reshape(2, 3, 3)
    xyz[1, 2] = np.nan
    msg = xyz_cloud(xyz, Header(), {"label": np.ones((2, 3), np.uint8)})
    assert (msg.height, msg.width, msg.is_dense) == (2, 3, False)
    points = pointcloud_to_structured(msg)
    np.testing.assert_array_equal(points["z"][0], [2, 5, 8])
    assert points["label"].dtype == np.uint8 and points["label"].sum() == 6


@pytest.mark.parametrize(
    ("points", "extra", "pattern"),
    [
        (np.zeros((4, 2)), None, "Nx3 or HxWx3"),
        (np.zeros(3), None, "Nx3 or HxWx3"),
        (np.array([["a", "b", "c"]]), None, "numeric"),
        (np.zeros((4, 3)), {"i": np.zeros(3, np.float32)}, "shape \\(3,\\), expected \\(4,\\)"),
        (np.zeros((4, 3)), {"i": np.zeros(4, np.int64)}, "int64"),
        (np.zeros((4, 3)), {"z": np.zeros(4, np.float32)}, "clashes"),
    ],
)
def test_xyz_cloud_validates(points, extra, pattern):
    with pytest.raises(PointCloudConversionError, match=pattern):
        xyz_cloud(points, Header(), extra)


# ------------------------------------------------------------------------------------ sensor_msgs_py


def fake_sensor_msgs_py(monkeypatch, create_cloud) -> None:
    module = types.ModuleType("sensor_msgs_py")
    module.point_cloud2 = types.SimpleNamespace(create_cloud=create_cloud)
    monkeypatch.setitem(sys.modules, "sensor_msgs_py", module)


def flat_create_cloud(header, fields, points):
    """What every distribution's create_cloud does for a flat native array: height 1, is_dense False."""
    return PointCloud2(header=header, height=1, width=len(points), fields=fields, is_bigendian=HOST_BE,
                       point_step=points.dtype.itemsize, row_step=points.nbytes,
                       data=array.array("B", points.tobytes()), is_dense=False)


def test_sensor_msgs_py_result_is_completed(monkeypatch):
    points = filled(MIXED, (3, 4))
    expected = pointcloud_from_structured(points, Header())
    calls = []
    fake_sensor_msgs_py(monkeypatch, lambda *args: calls.append(1) or flat_create_cloud(*args))
    assert pointcloud_from_structured(points, Header()) == expected
    assert calls == [1]


def test_sensor_msgs_py_rejection_falls_back(monkeypatch):
    def refusing(header, fields, points):
        raise AssertionError("PointFields and structured NumPy array dtype do not match")

    points = filled(PADDED, (5,))
    expected = pointcloud_from_structured(points, Header())
    fake_sensor_msgs_py(monkeypatch, refusing)
    assert pointcloud_from_structured(points, Header()) == expected


def test_real_sensor_msgs_py_matches_numpy_path(monkeypatch):
    pytest.importorskip("sensor_msgs_py.point_cloud2")
    for dtype in DTYPES.values():
        for shape in [(6,), (2, 3)]:
            points = filled(dtype, shape)
            with_distro = pointcloud_from_structured(points, Header())
            monkeypatch.setitem(sys.modules, "sensor_msgs_py", None)
            assert pointcloud_from_structured(points, Header()) == with_distro
            monkeypatch.delitem(sys.modules, "sensor_msgs_py")


# ----------------------------------------------------------------------------------------------- fuzzing

SCALARS = ["i1", "u1", "i2", "u2", "i4", "u4", "f4", "f8"]


@st.composite
def point_dtypes(draw):
    """Random supported layouts: 1-5 fields, gaps between them, either byte order, subarrays, tail padding."""
    names, formats, offsets, offset = [], [], [], 0
    for index in range(draw(st.integers(1, 5))):
        base = np.dtype(draw(st.sampled_from(SCALARS))).newbyteorder(draw(st.sampled_from("<>")))
        count = draw(st.sampled_from([1, 1, 1, 2, 3]))
        offset += draw(st.integers(0, 3))
        names.append(f"f{index}")
        formats.append(base if count == 1 else (base, (count,)))
        offsets.append(offset)
        offset += base.itemsize * count
    itemsize = offset + draw(st.integers(0, 8))
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": itemsize})


@FUZZ
@given(st.data())
def test_fuzz_round_trip_any_layout(data):
    dtype = data.draw(point_dtypes())
    shape = data.draw(st.sampled_from([(0,), (1,), (5,), (1, 1), (3, 2), (2, 4)]))
    points = data.draw(hnp.arrays(dtype, shape))
    msg = pointcloud_from_structured(points, Header())
    assert msg.point_step == dtype.itemsize and len(msg.data) == dtype.itemsize * points.size
    assert [(f.name, f.offset) for f in msg.fields] == [(n, dtype.fields[n][1]) for n in dtype.names]
    has_invalid = any(not np.isfinite(points[n]).all() for n in dtype.names if dtype.fields[n][0].base.kind == "f")
    assert msg.is_dense == (not has_invalid)
    back = pointcloud_to_structured(msg)
    expected = points if msg.height > 1 else points.reshape(-1)
    assert_same_points(back, expected)
