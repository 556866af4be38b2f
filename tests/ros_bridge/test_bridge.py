"""MaskBridge against a real MaskPublisher on loopback: messages, newest-wins, reconnection, CLI."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from iapc.labels import PALETTE
from iapc.errors import UserError
from iapc.ros_bridge import cli
from iapc.ros_bridge.bridge import BridgeConfig, MaskBridge
from iapc.ros_bridge.ros_messages import ImageMessage
from iapc.runtime.client import MaskSubscriber
from iapc.runtime.protocol import ENCODING_CONFIDENCE, TOPIC_CONF, MaskHeader
from iapc.runtime.publisher import MaskPublisher

EPHEMERAL = "tcp://127.0.0.1:*"
PROBE_ID = 10**9  # frame id of the masks used to wait for the subscription


class CollectingSink:
    """An in-memory sink: keeps what it is given, optionally slowly (a slow consumer)."""

    def __init__(self, delay: float = 0.0) -> None:
        self.delay = delay
        self.images: list[tuple[str, ImageMessage]] = []
        self.statuses: list[tuple[str, str]] = []
        self.closed = False

    def publish_image(self, topic: str, image: ImageMessage) -> None:
        time.sleep(self.delay)
        self.images.append((topic, image))

    def publish_status(self, topic: str, text: str) -> None:
        self.statuses.append((topic, text))

    def close(self) -> None:
        self.closed = True

    def masks(self, topic: str = "/iapc/mask") -> list[ImageMessage]:
        return [image for t, image in self.images
                if t == topic and image.stamp_ns != PROBE_ID]


def header_for(array: np.ndarray, frame_id: int, capture_ns: int | None = None,
               **kwargs) -> MaskHeader:
    return MaskHeader(frame_id=frame_id, capture_ns=capture_ns or time.time_ns(),
                      engine_version=2, height=array.shape[0], width=array.shape[1],
                      num_classes=19, **kwargs)


def wait_for(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.01)


def join(pub: MaskPublisher, bridge: MaskBridge) -> None:
    """PUB/SUB drops messages until the subscription lands: publish probes until one is bridged."""
    probe = np.zeros((2, 2), np.uint8)
    deadline = time.monotonic() + 5
    while bridge.counters.masks == 0:
        assert time.monotonic() < deadline, "bridge never joined the publisher"
        pub.publish_mask(header_for(probe, PROBE_ID, capture_ns=PROBE_ID), probe)
        time.sleep(0.02)
    time.sleep(0.05)  # let in-flight probes land before the test's own messages


class BridgeThread:
    """Runs MaskBridge.run in a thread until stopped."""

    def __init__(self, bridge: MaskBridge) -> None:
        self.bridge = bridge
        self.stop = threading.Event()
        self.thread = threading.Thread(target=bridge.run, kwargs={"stop": self.stop}, daemon=True)

    def __enter__(self) -> MaskBridge:
        self.thread.start()
        return self.bridge

    def __exit__(self, *exc_info: object) -> None:
        self.stop.set()
        self.thread.join(timeout=5)
        self.bridge.close()


def start_bridge(address: str, sink: CollectingSink, **config) -> BridgeThread:
    bridge_config = BridgeConfig(**config)
    subscriber = MaskSubscriber(address, topics=bridge_config.wire_topics())
    return BridgeThread(MaskBridge(subscriber, [sink], bridge_config))


def test_mask_color_confidence_and_status_become_ros_messages():
    mask = np.random.default_rng(0).integers(0, 19, size=(24, 40), dtype=np.uint8)
    mask[0, :5] = 255  # ignore pixels are black in the colour image
    confidence = np.random.default_rng(1).integers(0, 256, size=(24, 40), dtype=np.uint8)
    capture_ns = 1_700_000_000_123_456_789
    sink = CollectingSink()
    with MaskPublisher(EPHEMERAL) as pub, \
            start_bridge(pub.endpoint, sink, frame_id="front_cam", color=True,
                         confidence=True, topic="/car/seg") as bridge:
        join(pub, bridge)
        pub.publish_mask(header_for(mask, 7, capture_ns), mask)
        pub.publish_mask(header_for(confidence, 7, capture_ns, encoding=ENCODING_CONFIDENCE),
                         confidence, topic=TOPIC_CONF)
        pub.publish_status({"kind": "swap", "engine_version": 3})
        wait_for(lambda: bridge.counters.statuses == 1 and bridge.counters.confidences == 1
                 and len(sink.masks("/car/seg")) == 1)
    [mono] = sink.masks("/car/seg")
    assert (mono.encoding, mono.frame_id, mono.height, mono.width, mono.step) == \
        ("mono8", "front_cam", 24, 40, 40)
    assert mono.stamp == (1_700_000_000, 123_456_789)
    np.testing.assert_array_equal(mono.pixels, mask)
    [color] = sink.masks("/car/seg/color")
    assert (color.encoding, color.step) == ("rgb8", 120)
    np.testing.assert_array_equal(color.pixels[1:], PALETTE[mask[1:]])
    assert not color.pixels[0, :5].any()
    [conf] = sink.masks("/car/seg/confidence")
    assert conf.encoding == "mono8"
    np.testing.assert_array_equal(conf.pixels, confidence)
    [(status_topic, text)] = sink.statuses
    assert status_topic == "/iapc/status"
    assert json.loads(text)["kind"] == "swap" and json.loads(text)["engine_version"] == 3
    assert sink.closed


def test_slow_sink_drops_old_masks_and_bridges_the_newest():
    mask = np.zeros((8, 8), np.uint8)
    sink = CollectingSink(delay=0.05)  # 20 masks/s at most
    with MaskPublisher(EPHEMERAL, sndhwm=1000) as pub, \
            start_bridge(pub.endpoint, sink) as bridge:
        join(pub, bridge)
        for frame_id in range(200):  # a burst much faster than the sink
            pub.publish_mask(header_for(mask, frame_id), mask)
        wait_for(lambda: bridge.counters.last_frame_id == 199)
        bridged = bridge.counters.masks
        dropped = bridge.dropped
    assert bridged < 50  # older masks were replaced, not queued
    assert dropped > 150


def test_masks_arrive_again_after_the_runtime_restarts():
    mask = np.ones((4, 6), np.uint8)
    sink = CollectingSink()
    with MaskPublisher(EPHEMERAL) as first:
        address = first.endpoint
        bridge_thread = start_bridge(address, sink)
        bridge = bridge_thread.__enter__()
        join(first, bridge)
        first.publish_mask(header_for(mask, 1), mask)
        wait_for(lambda: bridge.counters.last_frame_id == 1)
    try:
        # The runtime restarts on the same address; the SUB socket reconnects by itself.
        with MaskPublisher(address) as second:
            deadline = time.monotonic() + 10
            while bridge.counters.last_frame_id != 2:
                assert time.monotonic() < deadline, "no mask after the publisher restarted"
                second.publish_mask(header_for(mask * 2, 2), mask * 2)
                time.sleep(0.05)
    finally:
        bridge_thread.__exit__()
    assert sink.masks()[-1].pixels.max() == 2


def cli_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return parser.parse_args(list(argv))


@pytest.mark.parametrize("argv, message", [
    (("--topic", "iapc/mask"), "--topic"),
    (("--status-topic", "/bad topic"), "--status-topic"),
    (("--frame-id", "a b"), "--frame-id"),
    (("--domain-id", "300"), "--domain-id"),
    (("--count", "-1"), "--count"),
    (("--transport", "none"), "bridges nowhere"),
])
def test_cli_rejects_bad_options_with_one_line(argv, message):
    with pytest.raises(UserError, match=message) as err:
        cli.run(cli_args(*argv))
    assert "\n" not in str(err.value)


def test_cli_reports_a_runtime_that_does_not_publish(tmp_path):
    args = cli_args("--address", "tcp://127.0.0.1:1", "--transport", "none",
                    "--record", str(tmp_path / "idle.mcap"), "--timeout", "0.3")
    with pytest.raises(UserError, match="check that the runtime is running"):
        cli.run(args)
    assert not (tmp_path / "idle").exists()  # nothing recorded: no empty bag folder left


def test_bridge_modules_do_not_import_torch():
    code = ("import sys; import iapc.ros_bridge.cli, iapc.ros_bridge.bridge, iapc.ros_bridge.dds, "
            "iapc.ros_bridge.recorder, iapc.ros_bridge.foxglove_view, "
            "iapc.ros_bridge.rclpy_publisher, iapc.ros_bridge.ros_messages; "
            "assert 'torch' not in sys.modules, 'torch was imported'")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
