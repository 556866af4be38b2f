"""The bridge's rclpy transport end to end: a ZeroMQ publisher's masks, through MaskBridge and
RclpySink, arrive at a real ROS 2 subscription (rclpy and Fast DDS from PyPI, no ROS install)."""

import os
import time

import numpy as np
import pytest

from iapc.ros_bridge.rclpy_publisher import RCLPY_MISSING, rclpy_available

pytestmark = pytest.mark.skipif(not rclpy_available(), reason=RCLPY_MISSING)


class Ros2Listener:
    """A ROS 2 node of its own context that keeps every Image and String it receives."""

    def __init__(self, domain_id: int, image_topic: str, status_topic: str):
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from sensor_msgs.msg import Image
        from std_msgs.msg import String

        self._rclpy = rclpy
        self.context = rclpy.Context()
        rclpy.init(context=self.context, domain_id=domain_id)
        self.node = rclpy.create_node("iapc_bridge_listener", context=self.context)
        self.images, self.statuses = [], []
        self.node.create_subscription(Image, image_topic, self.images.append, 10)
        self.node.create_subscription(String, status_topic, self.statuses.append, 10)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)

    def spin(self, seconds: float) -> None:
        self.executor.spin_once(timeout_sec=seconds)

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        self._rclpy.shutdown(context=self.context)


def bridge_until(condition, pub, bridge, listener, publish, timeout: float = 20.0) -> None:
    """Publish on ZeroMQ, bridge, spin the listener, until ``condition()`` holds: discovery
    between the two ROS 2 nodes takes a moment, and what is published before it is dropped."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "nothing arrived at the ROS 2 subscription"
        publish(pub)
        try:
            bridge.bridge_one(timeout=0.05)
        except TimeoutError:
            pass
        listener.spin(0.05)


def test_a_ros2_subscriber_receives_the_bridged_masks_as_published_on_zeromq():
    from iapc.ros_bridge.bridge import BridgeConfig, MaskBridge
    from iapc.ros_bridge.rclpy_publisher import RclpySink
    from iapc.runtime.client import MaskSubscriber
    from iapc.runtime.protocol import MaskHeader
    from iapc.runtime.publisher import MaskPublisher

    domain_id = 100 + os.getpid() % 100  # a domain of its own: no cross-talk with other runs
    mask = np.random.default_rng(7).integers(0, 19, size=(30, 47), dtype=np.uint8)  # odd width
    capture_ns = 1_712_345_678_900_000_001
    header = MaskHeader(frame_id=3, capture_ns=capture_ns, engine_version=2, height=30, width=47,
                        num_classes=19)
    config = BridgeConfig(frame_id="camera")
    listener = Ros2Listener(domain_id, config.topic, config.status_topic)
    sink = RclpySink(domain_id=domain_id)
    try:
        with MaskPublisher("tcp://127.0.0.1:*") as pub:
            with MaskBridge(MaskSubscriber(pub.endpoint, topics=config.wire_topics()), [sink],
                            config) as bridge:
                bridge_until(lambda: listener.images, pub, bridge, listener,
                             lambda p: p.publish_mask(header, mask))
                bridge_until(lambda: listener.statuses, pub, bridge, listener,
                             lambda p: p.publish_status({"kind": "heartbeat", "engine_version": 2}))
    finally:
        sink.close()
        listener.close()

    image = listener.images[0]
    assert (image.header.stamp.sec, image.header.stamp.nanosec) == (1_712_345_678, 900_000_001)
    assert image.header.frame_id == "camera"
    assert (image.encoding, image.height, image.width, image.step) == ("mono8", 30, 47, 47)
    assert image.is_bigendian == 0
    assert np.array_equal(np.frombuffer(bytes(image.data), np.uint8).reshape(30, 47), mask)
    assert '"kind":"heartbeat"' in listener.statuses[0].data
