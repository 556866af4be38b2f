"""Publish the bridge's images straight to DDS with cyclonedds, the way a ROS 2 node would.

ROS 2 (rmw_cyclonedds, rmw_fastrtps) maps a topic ``/iapc/mask`` of type ``sensor_msgs/msg/Image``
to the DDS topic ``rt/iapc/mask`` with type name ``sensor_msgs::msg::dds_::Image_`` and plain
little-endian CDR (XCDR1). Using the same names, field order and QoS, ROS 2 nodes on the same
domain receive these images without rclpy in this process.

QoS is ROS 2's default publisher profile (``rclpy`` depth 10): RELIABLE, KEEP_LAST 10, VOLATILE.
A reliable writer matches both reliable and best-effort (sensor-data) subscriptions; KEEP_LAST
bounds what is kept for a slow reader. ``best_effort=True`` gives the sensor-data profile (depth 5).

Network configuration (interfaces, multicast, peers) comes from the ``CYCLONEDDS_URI`` environment
variable, as for any Cyclone DDS program (docs/BRIDGE.md).
"""

# No "from __future__ import annotations": cyclonedds resolves the IDL field annotations itself.

import struct
from dataclasses import dataclass

from cyclonedds.core import Policy, Qos
from cyclonedds.domain import DomainParticipant
from cyclonedds.idl import IdlStruct
from cyclonedds.idl import types as t
from cyclonedds.pub import DataWriter
from cyclonedds.topic import Topic
from cyclonedds.util import duration

from iapc.errors import UserError
from iapc.ros_bridge.ros_messages import ImageMessage

ROS_TOPIC_PREFIX = "rt"  # ROS 2 topics; services use rq/ and rr/
MAX_DOMAIN_ID = 232  # the highest domain id whose RTPS ports fit in 16 bits
DEFAULT_DEPTH = 10
SENSOR_DATA_DEPTH = 5
_MAX_BLOCKING = duration(milliseconds=100)  # how long write() may wait on a full reliable queue


# -- the ROS 2 IDL types, field order exactly as in the .msg files --------------------------------


@dataclass
class Time_(IdlStruct, typename="builtin_interfaces::msg::dds_::Time_"):
    sec: t.int32
    nanosec: t.uint32


@dataclass
class Header_(IdlStruct, typename="std_msgs::msg::dds_::Header_"):
    stamp: Time_
    frame_id: str


@dataclass
class Image_(IdlStruct, typename="sensor_msgs::msg::dds_::Image_"):
    header: Header_
    height: t.uint32
    width: t.uint32
    encoding: str
    is_bigendian: t.uint8
    step: t.uint32
    data: t.sequence[t.uint8]

    def serialize(self, *args, **kwargs) -> bytes:
        """CDR as cyclonedds writes it, with the pixel bytes appended in one copy.

        cyclonedds packs a ``sequence<uint8>`` element by element (about 60 ms for a 1024x512
        mask). ``data`` is the last member and a uint8 sequence is its uint32 length followed by
        the bytes, unaligned, so serialising the message with an empty ``data`` and then writing
        the real length and bytes gives exactly the same CDR.
        """
        payload = self.data
        if isinstance(payload, list):  # a deserialised sample: cyclonedds' own path is exact
            return super().serialize(*args, **kwargs)
        head = Image_(self.header, self.height, self.width, self.encoding, self.is_bigendian,
                      self.step, []).serialize_plain(*args, **kwargs)
        endian = "<" if head[1] & 1 else ">"  # encapsulation id: CDR_LE is 0x0001, CDR_BE 0x0000
        return head[:-4] + struct.pack(f"{endian}I", len(payload)) + bytes(payload)

    def serialize_plain(self, *args, **kwargs) -> bytes:
        return super().serialize(*args, **kwargs)


@dataclass
class String_(IdlStruct, typename="std_msgs::msg::dds_::String_"):
    data: str


def dds_topic_name(ros_topic: str) -> str:
    """``/iapc/mask`` -> ``rt/iapc/mask`` (ROS 2's DDS name for a topic)."""
    return ROS_TOPIC_PREFIX + ros_topic


def ros2_qos(best_effort: bool = False) -> Qos:
    """ROS 2's default publisher QoS, or its sensor-data profile with ``best_effort``."""
    if best_effort:
        return Qos(Policy.Reliability.BestEffort, Policy.History.KeepLast(SENSOR_DATA_DEPTH),
                   Policy.Durability.Volatile)
    return Qos(Policy.Reliability.Reliable(_MAX_BLOCKING), Policy.History.KeepLast(DEFAULT_DEPTH),
               Policy.Durability.Volatile)


def to_dds_image(image: ImageMessage) -> Image_:
    sec, nanosec = image.stamp
    return Image_(header=Header_(stamp=Time_(sec=sec, nanosec=nanosec), frame_id=image.frame_id),
                  height=image.height, width=image.width, encoding=image.encoding,
                  is_bigendian=0, step=image.step, data=image.data())


def check_domain_id(domain_id: int) -> int:
    if not 0 <= domain_id <= MAX_DOMAIN_ID:
        raise UserError(
            f"--domain-id {domain_id} is outside 0..{MAX_DOMAIN_ID}: use the ROS_DOMAIN_ID of the "
            "vehicle's ROS 2 graph (usually 0)"
        )
    return domain_id


class DdsSink:
    """Writes images and status to DDS topics named and typed as ROS 2 does."""

    def __init__(self, domain_id: int = 0, best_effort: bool = False) -> None:
        self.domain_id = check_domain_id(domain_id)
        self.qos = ros2_qos(best_effort)
        self._participant: DomainParticipant | None = DomainParticipant(domain_id)
        self._writers: dict[str, DataWriter] = {}

    def _writer(self, ros_topic: str, data_type: type) -> DataWriter:
        if self._participant is None:
            raise RuntimeError("DdsSink is closed")
        writer = self._writers.get(ros_topic)
        if writer is None:
            topic = Topic(self._participant, dds_topic_name(ros_topic), data_type)
            writer = DataWriter(self._participant, topic, qos=self.qos)
            self._writers[ros_topic] = writer
        return writer

    def matched_readers(self, ros_topic: str) -> int:
        """How many DDS readers (ROS 2 subscriptions) the topic's writer has matched."""
        writer = self._writers.get(ros_topic)
        return 0 if writer is None else writer.get_publication_matched_status().current_count

    def publish_image(self, topic: str, image: ImageMessage) -> None:
        self._writer(topic, Image_).write(to_dds_image(image))

    def publish_status(self, topic: str, text: str) -> None:
        self._writer(topic, String_).write(String_(data=text))

    def close(self) -> None:
        """Drop the writers and the participant (cyclonedds deletes entities when released)."""
        self._writers.clear()
        self._participant = None
