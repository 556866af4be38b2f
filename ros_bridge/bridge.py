"""MaskBridge: the runtime's ZeroMQ masks -> ROS 2 images, through independent sinks.

One thread takes the newest message from a :class:`MaskSubscriber` (which drops older masks while
the bridge is busy, so nothing queues without bound), builds the ROS 2 messages once, and hands
them to every sink: DDS or rclpy (the vehicle's ROS 2 graph), an MCAP recorder, a Foxglove view.
ZeroMQ SUB sockets reconnect by themselves, so a runtime restart needs nothing here.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass, field
from typing import Protocol, Sequence

from iapc.errors import UserError
from iapc.ros_bridge.ros_messages import (
    ImageMessage,
    color_image,
    confidence_image,
    mask_image,
    status_text,
)
from iapc.runtime.client import MaskSubscriber, Received
from iapc.runtime.protocol import TOPIC_CONF, TOPIC_MASK, TOPIC_STATUS

DEFAULT_TOPIC = "/iapc/mask"
DEFAULT_STATUS_TOPIC = "/iapc/status"
DEFAULT_FRAME_ID = "camera"
_POLL_S = 0.1  # how often run() checks its stop event while no message arrives

# A fully qualified ROS 2 topic name: "/" then tokens of letters, digits and "_", separated by "/";
# a token may not start with a digit.
_ROS_TOPIC = re.compile(r"^(/[A-Za-z_][A-Za-z0-9_]*)+$")


class Sink(Protocol):
    """Where bridged messages go. Each transport (DDS, rclpy, MCAP, Foxglove) is one sink."""

    def publish_image(self, topic: str, image: ImageMessage) -> None: ...

    def publish_status(self, topic: str, text: str) -> None: ...

    def close(self) -> None: ...


def check_ros_topic(name: str, option: str = "--topic") -> str:
    """Return ``name`` if it is a fully qualified ROS 2 topic name, else a UserError."""
    if not _ROS_TOPIC.match(name) or "__" in name:
        raise UserError(
            f"{option} {name!r} is not a ROS 2 topic name: use /tokens/of/letters_digits, "
            "e.g. /iapc/mask"
        )
    return name


@dataclass
class BridgeConfig:
    topic: str = DEFAULT_TOPIC  # mono8 class ids
    frame_id: str = DEFAULT_FRAME_ID
    color: bool = False  # also publish rgb8 on TOPIC/color
    confidence: bool = False  # also publish the confidence map as mono8 on TOPIC/confidence
    status_topic: str | None = DEFAULT_STATUS_TOPIC  # None: do not bridge status

    def __post_init__(self) -> None:
        check_ros_topic(self.topic, "--topic")
        if self.status_topic is not None:
            check_ros_topic(self.status_topic, "--status-topic")
        if not self.frame_id or any(c.isspace() for c in self.frame_id):
            raise UserError(f"--frame-id {self.frame_id!r} must be a non-empty name without spaces")

    @property
    def color_topic(self) -> str:
        return f"{self.topic}/color"

    @property
    def confidence_topic(self) -> str:
        return f"{self.topic}/confidence"

    def wire_topics(self) -> tuple[bytes, ...]:
        """The ZeroMQ topics to subscribe to."""
        topics = [TOPIC_MASK]
        if self.confidence:
            topics.append(TOPIC_CONF)
        if self.status_topic is not None:
            topics.append(TOPIC_STATUS)
        return tuple(topics)


@dataclass
class BridgeCounters:
    masks: int = 0  # mask messages bridged (each may yield a mono8 and an rgb8 image)
    confidences: int = 0
    statuses: int = 0
    last_frame_id: int | None = None
    sink_errors: dict[str, int] = field(default_factory=dict)  # sink class name -> failures


class MaskBridge:
    """Takes messages from ``subscriber`` and publishes them to every sink.

    The bridge owns the subscriber and the sinks: :meth:`close` closes them all.

    >>> with MaskBridge(MaskSubscriber(address, topics=config.wire_topics()), [sink], config) as b:
    ...     b.run(count=100)
    """

    def __init__(self, subscriber: MaskSubscriber, sinks: Sequence[Sink],
                 config: BridgeConfig | None = None) -> None:
        self.subscriber = subscriber
        self.sinks = list(sinks)
        self.config = config or BridgeConfig()
        self.counters = BridgeCounters()
        self._closed = False

    @property
    def dropped(self) -> int:
        """Messages the subscriber replaced by a newer one before the bridge took them."""
        return self.subscriber.counters.replaced

    # -- one message ----------------------------------------------------------------------

    def bridge_one(self, timeout: float | None = None) -> Received:
        """Take the oldest unread message (newest per topic) and publish it; TimeoutError if none."""
        message = self.subscriber.receive_any(timeout=timeout)
        if message.status is not None:
            self._publish_status(message)
        elif message.topic == TOPIC_CONF:
            self._publish_confidence(message)
        else:
            self._publish_mask(message)
        return message

    def _publish_mask(self, message: Received) -> None:
        config = self.config
        self._publish_image(config.topic, mask_image(message.header, message.array, config.frame_id))
        if config.color:
            self._publish_image(config.color_topic,
                                color_image(message.header, message.array, config.frame_id))
        self.counters.masks += 1
        self.counters.last_frame_id = message.header.frame_id

    def _publish_confidence(self, message: Received) -> None:
        image = confidence_image(message.header, message.array, self.config.frame_id)
        self._publish_image(self.config.confidence_topic, image)
        self.counters.confidences += 1

    def _publish_status(self, message: Received) -> None:
        text = status_text(message.status)
        for sink in self.sinks:
            self._guarded(sink, sink.publish_status, self.config.status_topic, text)
        self.counters.statuses += 1

    def _publish_image(self, topic: str, image: ImageMessage) -> None:
        for sink in self.sinks:
            self._guarded(sink, sink.publish_image, topic, image)

    def _guarded(self, sink: Sink, method, *args) -> None:
        # One failing sink (a full disk under the recorder, a closed Foxglove server) must not
        # stop the others from publishing: count the failure and go on. Bugs still surface in
        # the counters and in the CLI's summary line.
        try:
            method(*args)
        except (OSError, RuntimeError, ValueError) as err:
            name = type(sink).__name__
            self.counters.sink_errors[name] = self.counters.sink_errors.get(name, 0) + 1
            if self.counters.sink_errors[name] == 1:
                print(f"iapc bridge: {name} failed ({err}); counting further failures",
                      flush=True)

    # -- loop -----------------------------------------------------------------------------

    def run(self, count: int = 0, idle_timeout: float | None = None,
            stop: threading.Event | None = None) -> BridgeCounters:
        """Bridge until ``count`` masks (0: no limit), ``stop`` is set, or no message for
        ``idle_timeout`` seconds (TimeoutError)."""
        stop = stop or threading.Event()
        last_message = time.monotonic()
        while not stop.is_set() and (count == 0 or self.counters.masks < count):
            try:
                self.bridge_one(timeout=_POLL_S)
            except TimeoutError:
                if idle_timeout is not None and time.monotonic() - last_message > idle_timeout:
                    raise TimeoutError(
                        f"no message from {self.subscriber.address} in {idle_timeout} s"
                    ) from None
                continue
            last_message = time.monotonic()
        return self.counters

    # -- lifetime -------------------------------------------------------------------------

    def close(self) -> None:
        """Close the subscriber, then every sink (an MCAP recorder finalises its file here)."""
        if self._closed:
            return
        self._closed = True
        self.subscriber.close()
        for sink in self.sinks:
            sink.close()

    def __enter__(self) -> "MaskBridge":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
