"""The ROS 2 messages the bridge publishes, built once from the wire protocol and serialised with rosbags.

A received mask becomes an :class:`ImageMessage`, a transport-neutral form of
``sensor_msgs/msg/Image`` (header stamp, frame id, encoding, pixels). Each sink turns it into its
own type (DDS struct, rclpy message, Foxglove RawImage, CDR bytes for a bag). Status becomes the
JSON text of a ``std_msgs/msg/String``.

CDR comes from ``rosbags`` (``Typestore.serialize_cdr``), the same serialiser ``ros2 bag`` files
written by rosbags use; no torch and no ROS installation needed.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np

from iapc.labels import colorize
from iapc.runtime.protocol import MaskHeader

if TYPE_CHECKING:
    from rosbags.typesys.store import Typestore

IMAGE_TYPE = "sensor_msgs/msg/Image"
STRING_TYPE = "std_msgs/msg/String"
MONO8 = "mono8"  # class ids and confidence: one byte per pixel
RGB8 = "rgb8"  # colourised mask: three bytes per pixel, Cityscapes palette
NS_PER_S = 1_000_000_000


@dataclass(frozen=True)
class ImageMessage:
    """``sensor_msgs/msg/Image`` without a transport: ``pixels`` is (H, W) mono8 or (H, W, 3) rgb8."""

    stamp_ns: int  # header.stamp, nanoseconds since the epoch (the camera's capture time)
    frame_id: str  # header.frame_id
    encoding: str
    pixels: np.ndarray  # uint8, C-contiguous

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def step(self) -> int:
        """Bytes per row: width for mono8, 3 * width for rgb8 (rows are never padded)."""
        return self.pixels.strides[0]

    @property
    def stamp(self) -> tuple[int, int]:
        """(sec, nanosec) of builtin_interfaces/msg/Time."""
        return split_stamp(self.stamp_ns)

    def data(self) -> memoryview:
        """The row-major pixel bytes (no copy)."""
        return memoryview(self.pixels).cast("B")


def split_stamp(stamp_ns: int) -> tuple[int, int]:
    """Nanoseconds -> (sec, nanosec), the two fields of builtin_interfaces/msg/Time."""
    return stamp_ns // NS_PER_S, stamp_ns % NS_PER_S


def _image(header: MaskHeader, pixels: np.ndarray, frame_id: str, encoding: str) -> ImageMessage:
    return ImageMessage(stamp_ns=header.capture_ns, frame_id=frame_id, encoding=encoding,
                        pixels=np.ascontiguousarray(pixels, dtype=np.uint8))


def mask_image(header: MaskHeader, mask: np.ndarray, frame_id: str) -> ImageMessage:
    """(H, W) class ids -> mono8 image stamped with the capture time."""
    return _image(header, mask, frame_id, MONO8)


def color_image(header: MaskHeader, mask: np.ndarray, frame_id: str) -> ImageMessage:
    """(H, W) class ids -> (H, W, 3) rgb8 in the Cityscapes palette (ignore is black)."""
    return _image(header, colorize(mask), frame_id, RGB8)


def confidence_image(header: MaskHeader, confidence: np.ndarray, frame_id: str) -> ImageMessage:
    """(H, W) uint8 confidence map -> mono8 image."""
    return _image(header, confidence, frame_id, MONO8)


def status_text(status: Mapping[str, Any]) -> str:
    """A runtime status dict -> the compact JSON carried as std_msgs/msg/String.data."""
    return json.dumps(dict(status), separators=(",", ":"), sort_keys=True)


# -- rosbags ------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def ros2_typestore() -> "Typestore":
    """The ROS 2 Humble message definitions (Image, Header, Time and String are unchanged since)."""
    from rosbags.typesys import Stores, get_typestore

    return get_typestore(Stores.ROS2_HUMBLE)


def to_rosbags_image(image: ImageMessage, typestore: "Typestore | None" = None) -> Any:
    """:class:`ImageMessage` -> a rosbags ``sensor_msgs__msg__Image`` (data shares the pixels)."""
    store = typestore or ros2_typestore()
    types = store.types
    sec, nanosec = image.stamp
    header = types["std_msgs/msg/Header"](
        stamp=types["builtin_interfaces/msg/Time"](sec=sec, nanosec=nanosec),
        frame_id=image.frame_id,
    )
    return types[IMAGE_TYPE](
        header=header, height=image.height, width=image.width, encoding=image.encoding,
        is_bigendian=0, step=image.step, data=image.pixels.reshape(-1),
    )


def serialize_image(image: ImageMessage, typestore: "Typestore | None" = None) -> bytes:
    """CDR (little-endian, with the 4-byte encapsulation header) of the Image message."""
    store = typestore or ros2_typestore()
    return bytes(store.serialize_cdr(to_rosbags_image(image, store), IMAGE_TYPE))


def serialize_string(text: str, typestore: "Typestore | None" = None) -> bytes:
    """CDR of a std_msgs/msg/String."""
    store = typestore or ros2_typestore()
    return bytes(store.serialize_cdr(store.types[STRING_TYPE](data=text), STRING_TYPE))


def deserialize_image(data: bytes | memoryview, typestore: "Typestore | None" = None) -> Any:
    """CDR -> rosbags Image (for readers of a recorded bag)."""
    store = typestore or ros2_typestore()
    return store.deserialize_cdr(data, IMAGE_TYPE)
