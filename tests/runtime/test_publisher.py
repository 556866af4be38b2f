"""MaskPublisher over real ZeroMQ sockets on loopback, and the runtime metrics."""

from __future__ import annotations

import time
import urllib.request

import numpy as np
import pytest
import zmq

from iapc.errors import UserError
from iapc.runtime.metrics import LatencyStats, RateMeter, RuntimeMetrics
from iapc.runtime.protocol import (
    ENCODING_CONFIDENCE,
    TOPIC_CONF,
    TOPIC_MASK,
    TOPIC_STATUS,
    MaskHeader,
    decode_mask_message,
    decode_status,
)
from iapc.runtime.publisher import MaskPublisher, check_bind_address

EPHEMERAL = "tcp://127.0.0.1:*"


def header_for(mask: np.ndarray, frame_id: int = 0, **overrides) -> MaskHeader:
    return MaskHeader(frame_id=frame_id, capture_ns=time.time_ns(), engine_version=1,
                      height=mask.shape[0], width=mask.shape[1], num_classes=19, **overrides)


@pytest.fixture
def context():
    ctx = zmq.Context()
    yield ctx
    ctx.term()


def raw_subscriber(context, endpoint: str, rcvhwm: int = 1000, topic: bytes = b"") -> zmq.Socket:
    sock = context.socket(zmq.SUB)
    sock.setsockopt(zmq.RCVHWM, rcvhwm)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.SUBSCRIBE, topic)
    sock.connect(endpoint)
    return sock


def wait_until_joined(pub: MaskPublisher, sock: zmq.Socket, timeout: float = 5.0) -> list:
    """PUB/SUB drops messages until the subscription arrives: publish probes until one lands."""
    probe = np.zeros((2, 2), np.uint8)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pub.publish_mask(header_for(probe, frame_id=0), probe)
        if sock.poll(20):
            frames = sock.recv_multipart()
            while sock.poll(20):  # drop further probes
                sock.recv_multipart()
            return frames
    raise AssertionError("subscriber never joined")


def test_mask_arrives_byte_exact_with_publish_time_stamped(context):
    mask = np.random.default_rng(0).integers(0, 19, size=(512, 1024), dtype=np.uint8)
    with MaskPublisher(EPHEMERAL) as pub:
        sock = raw_subscriber(context, pub.endpoint)
        wait_until_joined(pub, sock)
        sent = header_for(mask, frame_id=42)
        before = time.time_ns()
        assert pub.publish_mask(sent, mask)
        frames = sock.recv_multipart()
        sock.close()
    assert len(frames) == 3 and frames[0] == TOPIC_MASK and frames[2] == mask.tobytes()
    _, header, array = decode_mask_message(frames)
    assert before <= header.publish_ns <= time.time_ns()
    assert header.frame_id == 42 and header.capture_ns == sent.capture_ns
    assert np.array_equal(array, mask)
    assert pub.counters.bytes_published >= mask.nbytes


def test_conf_and_status_topics(context):
    conf = np.full((8, 16), 128, np.uint8)
    with MaskPublisher(EPHEMERAL) as pub:
        sock = raw_subscriber(context, pub.endpoint)
        wait_until_joined(pub, sock)
        pub.publish_mask(header_for(conf, encoding=ENCODING_CONFIDENCE), conf, topic=TOPIC_CONF)
        pub.publish_status({"kind": "heartbeat", "engine_version": 1, "fps": 30.0})
        conf_frames, status_frames = sock.recv_multipart(), sock.recv_multipart()
        sock.close()
        assert pub.counters.status_published == 1
    assert decode_mask_message(conf_frames)[0] == TOPIC_CONF
    status = decode_status(status_frames)
    assert status_frames[0] == TOPIC_STATUS and status["kind"] == "heartbeat" and status["fps"] == 30.0


def test_stalled_subscriber_does_not_slow_the_publisher(context):
    mask = np.zeros((512, 1024), np.uint8)  # 512 KiB per message, ~1 GiB in total
    n = 2000
    with MaskPublisher(EPHEMERAL, sndhwm=4) as pub:
        stalled = raw_subscriber(context, pub.endpoint, rcvhwm=4)
        wait_until_joined(pub, stalled)  # connected, and from now on it never reads
        durations = np.empty(n)
        for i in range(n):
            start = time.perf_counter()
            pub.publish_mask(header_for(mask, frame_id=i), mask)
            durations[i] = time.perf_counter() - start
        counters = pub.counters
        queued = drain(stalled)
        stalled.close()
    assert counters.masks_published + counters.dropped >= n
    # Generous bounds for a shared 2-core machine: sending is a hand-off, never a wait.
    assert np.median(durations) < 2e-3, f"median publish {np.median(durations) * 1e3:.2f} ms"
    assert durations.sum() < 10.0
    # Only what the high-water marks and kernel socket buffers hold reached the stalled reader.
    assert len(queued) < n // 10, f"{len(queued)} of {n} messages were queued for a stalled reader"


def drain(sock: zmq.Socket) -> list:
    frames = []
    while sock.poll(200):
        frames.append(sock.recv_multipart())
    return frames


def test_a_subscriber_waiting_before_the_bind_receives_the_first_frame(context):
    """A replay subscribes before the runtime starts: after the grace the runtime gives at
    start, its very first message reaches that subscriber (no probes, no retries)."""
    from iapc.replay.launch import free_loopback_port

    address = f"tcp://127.0.0.1:{free_loopback_port()}"
    sock = raw_subscriber(context, address)  # connects before anything is bound
    time.sleep(0.05)
    pub = MaskPublisher(address, context=context)
    try:
        pub.let_early_subscribers_join()
        mask = np.full((4, 6), 7, np.uint8)
        assert pub.publish_mask(header_for(mask, frame_id=0), mask)
        assert sock.poll(2000), "the first frame did not reach the waiting subscriber"
        _, header, received = decode_mask_message(sock.recv_multipart())
        assert header.frame_id == 0 and np.array_equal(received, mask)
    finally:
        sock.close()
        pub.close()


def test_non_loopback_bind_is_refused_unless_allowed():
    with pytest.raises(UserError, match="binding 0.0.0.0 exposes the masks to the network: "
                                        "pass --curve-keys DIR or --insecure"):
        MaskPublisher("tcp://0.0.0.0:*")
    with pytest.raises(UserError, match="exposes"):
        MaskPublisher("tcp://eth0:5555")
    check_bind_address("tcp://0.0.0.0:5555", allow_remote=True)  # no error: caller opted in
    for loopback in ("tcp://127.0.0.1:1", "tcp://localhost:1", "tcp://127.0.0.2:1",
                     "tcp://[::1]:1", "ipc:///tmp/iapc.sock"):
        check_bind_address(loopback, allow_remote=False)


@pytest.mark.parametrize("address", ["127.0.0.1:5555", "tcp://127.0.0.1", "tcp://127.0.0.1:port",
                                     "udp://127.0.0.1:5555"])
def test_bad_address_is_a_user_error(address):
    with pytest.raises(UserError, match="bad address"):
        MaskPublisher(address)


def test_port_in_use_is_a_user_error():
    with MaskPublisher(EPHEMERAL) as first:
        with pytest.raises(UserError, match="cannot bind .* pick a free port"):
            MaskPublisher(first.endpoint)


def test_close_is_idempotent_and_publishing_after_close_fails():
    pub = MaskPublisher(EPHEMERAL)
    pub.close()
    pub.close()
    mask = np.zeros((2, 2), np.uint8)
    with pytest.raises(RuntimeError, match="closed"):
        pub.publish_mask(header_for(mask), mask)


# -- metrics -----------------------------------------------------------------------------------


def test_metrics_endpoint_serves_the_metric_names_on_loopback():
    with RuntimeMetrics() as metrics:
        port = metrics.start_http(0)
        metrics.observe_frame(capture_ns=0, publish_ns=4_000_000)  # 4 ms
        metrics.count_drop("publish")
        metrics.count_swap(new_version=5)
        metrics.observe_adaptation(loss=0.25)
        metrics.fps.set(29.5)
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
        assert metrics._server.server_address[0] == "127.0.0.1"
    for line in ('iapc_frames_published_total 1.0', 'iapc_frames_dropped_total{stage="publish"} 1.0',
                 'iapc_engine_swaps_total 1.0', 'iapc_engine_version 5.0', 'iapc_fps 29.5',
                 'iapc_adaptation_loss 0.25', 'iapc_adaptation_steps_total 1.0',
                 'iapc_latency_seconds_bucket{le="0.005"} 1.0',
                 'iapc_latency_seconds_bucket{le="0.003"} 0.0'):
        assert line in body, line


def test_latency_stats_percentiles_over_a_bounded_window():
    stats = LatencyStats(window=100)
    assert np.isnan(stats.percentiles()["p50"])
    for value in range(1000):  # only the last 100 (900..999) stay in the window
        stats.add(float(value))
    found = stats.percentiles()
    assert found["p50"] == pytest.approx(np.percentile(np.arange(900, 1000), 50))
    assert found["p99"] == pytest.approx(np.percentile(np.arange(900, 1000), 99))
    assert stats.count == 1000 and stats.window_values().size == 100


def test_rate_meter_measures_fps_over_its_window():
    now = [0.0]
    meter = RateMeter(window_s=1.0, clock=lambda: now[0])
    assert meter.rate() == 0.0
    for _ in range(31):  # 30 intervals of 1/30 s
        meter.tick()
        now[0] += 1 / 30
    assert meter.rate() == pytest.approx(30.0)
    now[0] += 5.0  # nothing for 5 s: the window empties
    assert meter.rate() == 0.0
