"""DdsSink against a real cyclonedds reader typed as ROS 2 types it; CDR checked against rosbags."""

# No "from __future__ import annotations": cyclonedds resolves the IDL field annotations itself.

import random
import time
from dataclasses import dataclass

import numpy as np
import pytest
from cyclonedds.core import InstanceState, SampleState, ViewState
from cyclonedds.domain import DomainParticipant
from cyclonedds.idl import IdlStruct
from cyclonedds.idl import types as idl
from cyclonedds.sub import DataReader
from cyclonedds.topic import Topic

from iapc.errors import UserError
from iapc.ros_bridge.bridge import BridgeConfig, MaskBridge
from iapc.ros_bridge.dds import DdsSink, Header_, Time_, dds_topic_name, ros2_qos
from iapc.ros_bridge.ros_messages import mask_image, serialize_image, serialize_string
from iapc.runtime.client import MaskSubscriber
from iapc.runtime.protocol import MaskHeader
from iapc.runtime.publisher import MaskPublisher

ANY_SAMPLE = SampleState.Any | ViewState.Any | InstanceState.Any


# The reader's type is written here from sensor_msgs/msg/Image.msg, independently of DdsSink's.
@dataclass
class ReaderImage(IdlStruct, typename="sensor_msgs::msg::dds_::Image_"):
    header: Header_
    height: idl.uint32
    width: idl.uint32
    encoding: str
    is_bigendian: idl.uint8
    step: idl.uint32
    data: idl.sequence[idl.uint8]


@dataclass
class ReaderString(IdlStruct, typename="std_msgs::msg::dds_::String_"):
    data: str


@pytest.fixture
def domain_id() -> int:
    return random.randint(100, 200)  # a domain of its own: no cross-talk with other runs


def take_raw(reader: DataReader, timeout: float = 10.0) -> bytes:
    """The serialized sample exactly as it arrived (cyclonedds' own take, before deserializing)."""
    from cyclonedds._clayer import ddspy_take  # what DataReader.take calls before deserializing

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        samples = [data for data, info in ddspy_take(reader._ref, ANY_SAMPLE, 1) if info.valid_data]
        if samples:
            return bytes(samples[0])
        time.sleep(0.01)
    raise AssertionError("no DDS sample arrived")


def strip_padding(wire: bytes, expected_length: int) -> bytes:
    """DDS pads a sample to a multiple of 4 bytes; the padding is zeros after the CDR."""
    assert len(wire) - expected_length in range(4) and not any(wire[expected_length:])
    return wire[:expected_length]


def test_bridged_images_arrive_over_dds_with_the_cdr_rosbags_writes(domain_id):
    mask = np.random.default_rng(3).integers(0, 19, size=(30, 47), dtype=np.uint8)  # odd width
    capture_ns = 1_712_345_678_900_000_001
    reader_participant = DomainParticipant(domain_id)
    topic = Topic(reader_participant, "rt/iapc/mask", ReaderImage)
    reader = DataReader(reader_participant, topic, qos=ros2_qos())
    status_reader = DataReader(
        reader_participant, Topic(reader_participant, "rt/iapc/status", ReaderString),
        qos=ros2_qos())
    sink = DdsSink(domain_id=domain_id)
    with MaskPublisher("tcp://127.0.0.1:*") as pub:
        config = BridgeConfig(frame_id="camera")
        with MaskBridge(MaskSubscriber(pub.endpoint, topics=config.wire_topics()), [sink],
                        config) as bridge:
            header = MaskHeader(frame_id=1, capture_ns=capture_ns, engine_version=1,
                                height=30, width=47, num_classes=19)
            # Publish until the writer exists and a reader matched it; then the message that counts.
            deadline = time.monotonic() + 10
            while sink.matched_readers("/iapc/mask") == 0:
                assert time.monotonic() < deadline, "no mask reached the DDS writer"
                pub.publish_mask(header, mask)
                try:
                    bridge.bridge_one(timeout=0.05)
                except TimeoutError:
                    pass
            time.sleep(0.2)
            pub.publish_status({"kind": "heartbeat", "engine_version": 1})
            deadline = time.monotonic() + 10
            while bridge.counters.statuses == 0:
                assert time.monotonic() < deadline, "no status bridged"
                try:
                    bridge.bridge_one(timeout=0.1)
                except TimeoutError:
                    pass
            wire = take_raw(reader)
            status_wire = take_raw(status_reader)

    expected = serialize_image(mask_image(header, mask, "camera"))
    assert expected[:4] == b"\x00\x01\x00\x00"  # CDR little-endian, as ROS 2 sends it
    assert strip_padding(wire, len(expected)) == expected
    sample = ReaderImage.deserialize(wire)
    assert (sample.header.stamp.sec, sample.header.stamp.nanosec) == (1_712_345_678, 900_000_001)
    assert (sample.encoding, sample.height, sample.width, sample.step) == ("mono8", 30, 47, 47)
    assert bytes(sample.data) == mask.tobytes()
    assert b'"kind":"heartbeat"' in status_wire
    text = ReaderString.deserialize(status_wire).data
    assert strip_padding(status_wire, len(serialize_string(text))) == serialize_string(text)


def test_dds_names_follow_ros2():
    assert dds_topic_name("/iapc/mask") == "rt/iapc/mask"
    assert ReaderImage.__idl_typename__ == "sensor_msgs::msg::dds_::Image_"
    assert Time_.__idl_typename__ == "builtin_interfaces::msg::dds_::Time_"


def test_bad_domain_id_says_what_to_use():
    with pytest.raises(UserError, match="ROS_DOMAIN_ID"):
        DdsSink(domain_id=233)
