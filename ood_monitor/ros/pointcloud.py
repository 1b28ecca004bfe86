"""sensor_msgs/PointCloud2 <-> numpy structured arrays.

The nav bridge publishes anomaly points as PointCloud2 (flat, or organised pixel-for-pixel with the mask).
The message layout comes straight from the structured dtype: field offsets and trailing padding are kept,
so a cloud round-trips to an identical dtype. `sensor_msgs_py.point_cloud2.create_cloud` is used when it is
importable and accepts the dtype (its signature and checks differ between distributions); otherwise the
numpy path builds the same message. Messages are always written in host byte order.
"""
from __future__ import annotations

import array as _array
import sys
from typing import Any

import numpy as np
from sensor_msgs.msg import PointCloud2, PointField
from std_msgs.msg import Header

from ood_monitor.ros.image import ImageConversionError, byte_buffer

_HOST_BIGENDIAN = sys.byteorder == "big"

_DATATYPES: dict[int, np.dtype] = {
    PointField.INT8: np.dtype("i1"),
    PointField.UINT8: np.dtype("u1"),
    PointField.INT16: np.dtype("i2"),
    PointField.UINT16: np.dtype("u2"),
    PointField.INT32: np.dtype("i4"),
    PointField.UINT32: np.dtype("u4"),
    PointField.FLOAT32: np.dtype("f4"),
    PointField.FLOAT64: np.dtype("f8"),
}
_DATATYPE_OF: dict[tuple[str, int], int] = {(dt.kind, dt.itemsize): code for code, dt in _DATATYPES.items()}


class PointCloudConversionError(ValueError):
    """A structured array or PointCloud2 message that cannot be converted; the message says why."""


def pointcloud_from_structured(array: np.ndarray, header: Any = None, frame_id: str | None = None) -> PointCloud2:
    """A PointCloud2 from a 1-D (height 1) or 2-D (organised HxW) structured array.

    Field offsets and padding come from the dtype, subarray fields become `count > 1`, padding bytes are
    zeroed, and `is_dense` is False when any float field holds NaN or Inf (invalid points, as PCL treats
    them). `frame_id` replaces the header's frame without modifying the caller's header.
    """
    arr = np.asarray(array)
    if arr.dtype.names is None:
        raise PointCloudConversionError(f"expected a structured array, got dtype {arr.dtype}")
    if arr.ndim not in (1, 2):
        raise PointCloudConversionError(f"expected a 1-D or 2-D (organised) array, got shape {arr.shape}")
    fields = _point_fields(arr.dtype)
    points = _native_copy(arr)
    height, width = points.shape if points.ndim == 2 else (1, points.shape[0])
    header = _header_for(header, frame_id)
    dense = _is_dense(points)
    cloud = _create_with_sensor_msgs_py(header, fields, points)
    if cloud is None:
        cloud = PointCloud2(
            header=header,
            fields=fields,
            is_bigendian=_HOST_BIGENDIAN,
            point_step=points.dtype.itemsize,
            data=_array.array("B", points.tobytes()),
        )
    cloud.height, cloud.width = height, width
    cloud.row_step = points.dtype.itemsize * width
    cloud.is_dense = dense
    return cloud


def pointcloud_to_structured(msg: Any) -> np.ndarray:
    """A native-order copy of a PointCloud2's points: shape (height, width) when organised, else (width,).

    The dtype keeps the message's field offsets and point_step, so padding survives a round trip.
    Works on rclpy and rosbags messages alike.
    """
    height, width = int(msg.height), int(msg.width)
    point_step, row_step = int(msg.point_step), int(msg.row_step)
    names, formats, offsets = _fields_layout(msg.fields, point_step)
    if row_step < width * point_step:
        raise PointCloudConversionError(f"row_step {row_step} < width*point_step {width * point_step}")
    try:
        data = byte_buffer(msg.data)
    except ImageConversionError as exc:
        raise PointCloudConversionError(str(exc)) from None
    if data.size != row_step * height:
        raise PointCloudConversionError(f"data has {data.size} bytes, expected {row_step * height}")
    order = ">" if msg.is_bigendian else "<"
    wire = _dtype(names, [_with_order(f, order) for f in formats], offsets, point_step)
    if height == 0 or width == 0:
        rows = np.zeros((height, width), dtype=wire)
    else:
        rows = np.ndarray((height, width), dtype=wire, buffer=data, strides=(row_step, point_step))
    out = _native_copy(rows)
    return out if height > 1 else out.reshape(-1)


def xyz_cloud(
    points: np.ndarray,
    header: Any = None,
    extra_fields: dict[str, np.ndarray] | None = None,
    frame_id: str | None = None,
) -> PointCloud2:
    """A cloud of float32 x, y, z from Nx3 (flat) or HxWx3 (organised) points, plus optional per-point
    fields such as {"intensity": float32 array}, packed in that order. Extra fields keep their dtype."""
    pts = np.asarray(points)
    if pts.ndim not in (2, 3) or pts.shape[-1] != 3 or pts.dtype.kind not in "iuf":
        raise PointCloudConversionError(f"points must be a numeric Nx3 or HxWx3 array, got {pts.dtype} {pts.shape}")
    extras = {name: np.asarray(values) for name, values in (extra_fields or {}).items()}
    for name, values in extras.items():
        _check_extra(name, values, pts.shape[:-1])
    layout = [(axis, np.float32) for axis in "xyz"]
    dtype = np.dtype(layout + [(name, values.dtype.newbyteorder("=")) for name, values in extras.items()])
    cloud = np.zeros(pts.shape[:-1], dtype=dtype)
    for i, axis in enumerate("xyz"):
        cloud[axis] = pts[..., i]
    for name, values in extras.items():
        cloud[name] = values
    return pointcloud_from_structured(cloud, header, frame_id)


def _check_extra(name: str, values: np.ndarray, shape: tuple[int, ...]) -> None:
    if name in ("x", "y", "z") or not name:
        raise PointCloudConversionError(f"extra field name {name!r} clashes with x/y/z or is empty")
    if values.shape != shape:
        raise PointCloudConversionError(f"extra field {name!r} has shape {values.shape}, expected {shape}")
    _datatype(values.dtype, name)


def _datatype(dtype: np.dtype, name: str) -> int:
    code = _DATATYPE_OF.get((dtype.kind, dtype.itemsize)) if dtype.fields is None else None
    if code is None:
        raise PointCloudConversionError(
            f"field {name!r} has dtype {dtype}; PointCloud2 supports int8/16/32, uint8/16/32, float32/64"
        )
    return code


def _point_fields(dtype: np.dtype) -> list[PointField]:
    """One PointField per dtype field, in dtype order; subarray fields become `count`."""
    fields = []
    for name in dtype.names:
        field_dtype, offset = dtype.fields[name][:2]
        base, shape = field_dtype.subdtype if field_dtype.subdtype else (field_dtype, ())
        count = int(np.prod(shape, dtype=np.int64))
        if count < 1:
            raise PointCloudConversionError(f"field {name!r} has no elements (shape {shape})")
        fields.append(PointField(name=name, offset=offset, datatype=_datatype(base, name), count=count))
    return fields


def _fields_layout(fields: Any, point_step: int) -> tuple[list[str], list[Any], list[int]]:
    """Names, formats and offsets of a message's PointFields, checked against point_step."""
    names, formats, offsets = [], [], []
    for index, field in enumerate(fields):
        name = field.name or f"field_{index}"
        base = _DATATYPES.get(int(field.datatype))
        if base is None:
            raise PointCloudConversionError(f"field {name!r} has unknown datatype {field.datatype}")
        count = int(field.count)
        if count < 1:
            raise PointCloudConversionError(f"field {name!r} has count {count}")
        if name in names:
            raise PointCloudConversionError(f"duplicate field name {name!r}")
        end = int(field.offset) + base.itemsize * count
        if end > point_step:
            raise PointCloudConversionError(f"field {name!r} ends at byte {end} > point_step {point_step}")
        names.append(name)
        formats.append(base if count == 1 else (base, (count,)))
        offsets.append(int(field.offset))
    return names, formats, offsets


def _with_order(fmt: Any, order: str) -> Any:
    if isinstance(fmt, tuple):
        return (fmt[0].newbyteorder(order), fmt[1])
    return fmt.newbyteorder(order)


def _dtype(names: list[str], formats: list[Any], offsets: list[int], itemsize: int) -> np.dtype:
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": itemsize})


def _native_copy(arr: np.ndarray) -> np.ndarray:
    """A C-contiguous copy with every field in native byte order, same offsets, zeroed padding."""
    source = arr.dtype
    names = list(source.names)
    formats = [_with_order(_format_of(source.fields[n][0]), "=") for n in names]
    offsets = [source.fields[n][1] for n in names]
    out = np.zeros(arr.shape, dtype=_dtype(names, formats, offsets, source.itemsize))
    for name in names:
        out[name] = arr[name]
    return out


def _format_of(field_dtype: np.dtype) -> Any:
    return field_dtype.subdtype if field_dtype.subdtype else field_dtype


def _is_dense(points: np.ndarray) -> bool:
    for name in points.dtype.names:
        values = points[name]
        if values.dtype.kind == "f" and not np.isfinite(values).all():
            return False
    return True


def _header_for(header: Any, frame_id: str | None) -> Any:
    """`header` (default: empty), or a new header with its stamp and the given frame_id."""
    if header is None:
        header = Header()
    if frame_id is None:
        return header
    return type(header)(stamp=header.stamp, frame_id=frame_id)


def _create_with_sensor_msgs_py(header: Any, fields: list[PointField], points: np.ndarray) -> PointCloud2 | None:
    """The distribution's create_cloud on the flattened points, or None when it is missing or rejects the
    dtype (Humble's has no point_step and refuses padded dtypes; none takes subarray fields)."""
    try:
        from sensor_msgs_py import point_cloud2
    except ImportError:
        return None
    try:
        cloud = point_cloud2.create_cloud(header, fields, points.reshape(-1))
    except (AssertionError, TypeError, ValueError, KeyError):
        return None
    if cloud.point_step != points.dtype.itemsize or len(cloud.data) != points.nbytes:
        return None
    return cloud
