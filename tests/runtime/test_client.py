"""MaskSubscriber and `iapc subscribe` against a real MaskPublisher on loopback."""

from __future__ import annotations

import argparse
import threading
import time

import numpy as np
import pytest
import zmq

from iapc.errors import UserError
from iapc.runtime.client import MaskSubscriber
from iapc.runtime import subscribe_cli
from iapc.runtime.protocol import (
    TOPIC_MASK,
    TOPIC_STATUS,
    MaskHeader,
    PayloadSizeError,
    encode_mask_message,
)
from iapc.runtime.publisher import MaskPublisher

EPHEMERAL = "tcp://127.0.0.1:*"
PROBE_ID = 10**9  # frame id of the messages used to wait for the connection


def header_for(mask: np.ndarray, frame_id: int, engine_version: int = 1) -> MaskHeader:
    return MaskHeader(frame_id=frame_id, capture_ns=time.time_ns(), engine_version=engine_version,
                      height=mask.shape[0], width=mask.shape[1], num_classes=19)


def join(pub: MaskPublisher, sub: MaskSubscriber, timeout: float = 5.0) -> None:
    """PUB/SUB drops messages until the subscription arrives: publish probes until one lands."""
    probe = np.zeros((2, 2), np.uint8)
    deadline = time.monotonic() + timeout
    while sub.counters.received == 0:
        assert time.monotonic() < deadline, "subscriber never joined"
        pub.publish_mask(header_for(probe, PROBE_ID), probe)
        time.sleep(0.02)
    discard_pending(sub)


def discard_pending(sub: MaskSubscriber) -> None:
    """Let in-flight messages land, then drop them, so a test starts from an empty subscriber."""
    time.sleep(0.05)
    while True:
        try:
            sub.receive_any(timeout=0)
        except TimeoutError:
            return


@pytest.fixture
def pub():
    with MaskPublisher(EPHEMERAL, sndhwm=100) as publisher:
        yield publisher


def test_receive_returns_header_and_mask(pub):
    mask = np.random.default_rng(1).integers(0, 19, size=(64, 128), dtype=np.uint8)
    with MaskSubscriber(pub.endpoint) as sub:
        join(pub, sub)
        pub.publish_mask(header_for(mask, 5, engine_version=3), mask)
        header, array = sub.receive(timeout=5)
    assert header.frame_id == 5 and header.engine_version == 3
    assert array.tobytes() == mask.tobytes()


def test_newest_wins(pub):
    mask = np.zeros((16, 32), np.uint8)
    with MaskSubscriber(pub.endpoint) as sub:
        join(pub, sub)
        received, replaced = sub.counters.received, sub.counters.replaced
        for frame_id in range(50):
            pub.publish_mask(header_for(mask, frame_id), mask)
        wait_for(lambda: sub.counters.received >= received + 50)
        header, _ = sub.receive(timeout=5)
        assert header.frame_id == 49
        # the 49 older ones were overwritten in place, never queued
        assert sub.counters.replaced - replaced >= 49
        with pytest.raises(TimeoutError):  # each message is returned once
            sub.receive(timeout=0.05)


def test_fifo_mode_keeps_messages_in_order(pub):
    mask = np.zeros((4, 4), np.uint8)
    with MaskSubscriber(pub.endpoint, newest_wins=False) as sub:
        join(pub, sub)
        for frame_id in range(5):
            pub.publish_mask(header_for(mask, frame_id), mask)
        frame_ids = []
        while len(frame_ids) < 5:
            frame_id = sub.receive(timeout=5)[0].frame_id
            if frame_id != PROBE_ID:  # a connection probe that landed late
                frame_ids.append(frame_id)
        assert frame_ids == [0, 1, 2, 3, 4]


def test_receive_timeout_raises_timeout_error(pub):
    with MaskSubscriber(pub.endpoint, topics=(b"mask", b"status")) as sub:
        start = time.monotonic()
        with pytest.raises(TimeoutError, match="no mask message"):
            sub.receive(timeout=0.2)
        assert 0.15 <= time.monotonic() - start < 2.0
        with pytest.raises(TimeoutError, match="no status message"):
            sub.receive_status(timeout=0.05)


def test_status_round_trip(pub):
    with MaskSubscriber(pub.endpoint, topics=(TOPIC_MASK, TOPIC_STATUS)) as sub:
        join(pub, sub)
        pub.publish_status({"kind": "swap", "from": 1, "to": 2, "at_frame": 77})
        status = sub.receive_status(timeout=5)
    assert status["kind"] == "swap" and status["to"] == 2 and status["v"] == 1


def raw_publisher(context: zmq.Context) -> tuple[zmq.Socket, str]:
    sock = context.socket(zmq.PUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.bind(EPHEMERAL)
    return sock, sock.getsockopt_string(zmq.LAST_ENDPOINT)


def malformed_messages(good_header: bytes) -> dict[str, list[bytes]]:
    return {
        "FrameCountError": [TOPIC_MASK, good_header],
        "HeaderJSONError": [TOPIC_MASK, b"{oops", bytes(16)],
        "PayloadSizeError": [TOPIC_MASK, good_header, bytes(15)],
        "UnsupportedVersionError": [TOPIC_MASK, good_header.replace(b'"v":1', b'"v":2'), bytes(16)],
    }


def test_malformed_messages_are_skipped_and_counted():
    context = zmq.Context()
    raw, endpoint = raw_publisher(context)
    mask = np.ones((4, 4), np.uint8)
    good = encode_mask_message(TOPIC_MASK, header_for(mask, 1), mask)
    good = [good[0], good[1], mask.tobytes()]
    with MaskSubscriber(endpoint) as sub:
        wait_for_raw(raw, sub, good)
        for frames in malformed_messages(good[1]).values():
            raw.send_multipart(frames)
        raw.send_multipart([good[0], good[1].replace(b'"frame_id":1', b'"frame_id":2'), good[2]])
        header, array = sub.receive(timeout=5)  # the good message after the bad ones still arrives
        assert header.frame_id == 2 and array.tobytes() == mask.tobytes()
        assert sub.counters.rejected == {name: 1 for name in malformed_messages(good[1])}
    raw.close()
    context.term()


def test_strict_mode_raises_the_specific_error():
    context = zmq.Context()
    raw, endpoint = raw_publisher(context)
    mask = np.ones((4, 4), np.uint8)
    good = encode_mask_message(TOPIC_MASK, header_for(mask, 1), mask)
    good = [good[0], good[1], mask.tobytes()]
    with MaskSubscriber(endpoint, strict=True) as sub:
        wait_for_raw(raw, sub, good)
        raw.send_multipart([good[0], good[1], bytes(3)])
        with pytest.raises(PayloadSizeError, match="3 bytes"):
            sub.receive(timeout=5)
        raw.send_multipart(good)
        assert sub.receive(timeout=5)[0].frame_id == 1  # the subscriber goes on after the error
    raw.close()
    context.term()


def wait_for_raw(raw: zmq.Socket, sub: MaskSubscriber, good: list[bytes]) -> None:
    deadline = time.monotonic() + 5
    while sub.counters.received == 0:
        assert time.monotonic() < deadline, "subscriber never joined"
        raw.send_multipart(good)
        time.sleep(0.02)
    discard_pending(sub)


def wait_for(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.01)


def test_close_is_idempotent():
    sub = MaskSubscriber("tcp://127.0.0.1:1")  # nothing listens there: connect is lazy
    sub.close()
    sub.close()
    with pytest.raises(RuntimeError, match="closed"):
        sub.receive(timeout=0.1)


@pytest.mark.parametrize("address", ["127.0.0.1:5555", "tcp://", "tcp://127.0.0.1:port"])
def test_bad_address_is_a_user_error(address):
    with pytest.raises(UserError, match="cannot connect"):
        MaskSubscriber(address)


def test_unknown_topic_is_a_user_error():
    with pytest.raises(UserError, match="unknown topic"):
        MaskSubscriber("tcp://127.0.0.1:1", topics=(b"depth",))


# -- iapc subscribe --------------------------------------------------------------------------


def cli_args(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    subscribe_cli.add_arguments(parser)
    return parser.parse_args(argv)


def test_cli_prints_one_line_per_message(pub, capsys):
    mask = np.zeros((32, 64), np.uint8)
    mask[:8] = 0  # road, 25 %
    mask[8:] = 10  # sky, 75 %
    stop = threading.Event()

    def publish_until_stopped():
        frame_id = 0
        while not stop.is_set():
            pub.publish_mask(header_for(mask, frame_id, engine_version=4), mask)
            pub.publish_status({"kind": "heartbeat", "engine_version": 4})
            frame_id += 1
            time.sleep(0.01)

    thread = threading.Thread(target=publish_until_stopped)
    thread.start()
    try:
        code = subscribe_cli.run(cli_args("--address", pub.endpoint, "--count", "4",
                                          "--timeout", "5"))
    finally:
        stop.set()
        thread.join()
    lines = capsys.readouterr().out.strip().splitlines()
    assert code == 0 and len(lines) == 4
    mask_lines = [line for line in lines if line.startswith("mask ")]
    assert mask_lines, lines
    assert "engine=v4 size=64x32 latency=" in mask_lines[0]
    assert "sky 75.0% road 25.0% (2 classes)" in mask_lines[0]
    assert any(line.startswith('status {"v":1') and '"kind":"heartbeat"' in line for line in lines)


def test_cli_timeout_is_a_one_line_user_error(pub):
    with pytest.raises(UserError, match="no end-of-stream message: the runtime hung, or is not "
                                         "running"):
        subscribe_cli.run(cli_args("--address", pub.endpoint, "--count", "1", "--timeout", "0.1"))


def test_cli_bad_address_is_a_user_error():
    with pytest.raises(UserError, match="cannot connect"):
        subscribe_cli.run(cli_args("--address", "localhost", "--count", "1"))


def test_runtime_never_imports_the_ros_bridge():
    """The client lives with the protocol: ros_bridge builds on runtime, never the reverse."""
    from pathlib import Path

    runtime = Path(__file__).resolve().parents[2] / "runtime"
    offenders = [p.name for p in runtime.glob("*.py") if "ros_bridge" in p.read_text()]
    assert offenders == []


def test_cli_stops_at_the_end_of_stream_message(pub, capsys):
    """An end status (the runtime stopped) ends `iapc subscribe` with exit 0 and one line."""
    done = {}
    thread = threading.Thread(target=lambda: done.setdefault(
        "code", subscribe_cli.run(cli_args("--address", pub.endpoint, "--topics", "mask",
                                           "--timeout", "5"))))
    thread.start()
    deadline = time.monotonic() + 5
    while thread.is_alive() and time.monotonic() < deadline:
        pub.publish_status({"kind": "end", "reason": "source_ended", "frames_published": 7,
                            "engine_version": 1, "time_ns": time.time_ns()})
        time.sleep(0.05)
    thread.join(5)
    assert done.get("code") == 0
    assert capsys.readouterr().out.strip().splitlines()[-1] == \
        "stream ended (source_ended) after 7 frames"
