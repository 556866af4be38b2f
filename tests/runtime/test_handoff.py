"""The hand-offs between the inference process and the daemon, on real ipc sockets: frames arrive
whole with their metadata; offering never blocks the loop, with or without a daemon, and a full
queue drops its oldest frame and counts it; events arrive typed and in order; a malformed event
is ignored; an event nobody can take is dropped, not waited for."""

from __future__ import annotations

import time

import numpy as np
import pytest
import zmq

from iapc.contracts.events import EventType
from iapc.contracts.handoff import EventReceiver, EventSender, FrameHandoff, FrameReceiver
from iapc.contracts.run_folder import EVENTS_SOCKET, FRAMES_SOCKET, ipc_address


@pytest.fixture()
def context():
    ctx = zmq.Context()
    yield ctx
    ctx.destroy(linger=0)


def receive(receiver, count, timeout=5.0):
    got, deadline = [], time.monotonic() + timeout
    while len(got) < count and time.monotonic() < deadline:
        got += receiver.receive_all(50)
    return got


def test_frames_arrive_whole_with_their_metadata(tmp_path, context):
    address = ipc_address(tmp_path, FRAMES_SOCKET)
    handoff = FrameHandoff(address, context=context)
    receiver = FrameReceiver(address, context=context)
    try:
        images = [np.random.default_rng(i).integers(0, 255, (16, 32, 3), dtype=np.uint8)
                  for i in range(3)]
        for i, image in enumerate(images):
            handoff.offer(i * 2, 1000 + i, image)
        got = receive(receiver, 3)
        assert [meta["frame_id"] for meta, _ in got] == [0, 2, 4]
        assert [meta["capture_ns"] for meta, _ in got] == [1000, 1001, 1002]
        for (_, image), sent in zip(got, images):
            assert np.array_equal(image, sent)
        deadline = time.monotonic() + 2  # counted by the sender thread just after the send
        while handoff.sent < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert handoff.sent == 3 and handoff.dropped == 0
    finally:
        receiver.close()
        handoff.close()


def test_offering_never_blocks_and_a_full_queue_drops_its_oldest(tmp_path, context):
    handoff = FrameHandoff(ipc_address(tmp_path, FRAMES_SOCKET), capacity=4, context=context)
    try:  # no daemon connected: nothing can be sent
        image = np.zeros((480, 640, 3), np.uint8)
        started = time.perf_counter()
        for i in range(50):
            handoff.offer(i, i, image)
        assert time.perf_counter() - started < 0.5  # O(1) per frame, no waiting
        time.sleep(0.1)  # the sender thread's failed attempts settle
        assert handoff.offered == 50 and handoff.sent == 0
        assert handoff.dropped == 46  # all but the newest 4
        receiver = FrameReceiver(ipc_address(tmp_path, FRAMES_SOCKET), context=context)
        try:  # a daemon that connects late gets the newest frames, oldest first
            assert [meta["frame_id"] for meta, _ in receive(receiver, 4)] == [46, 47, 48, 49]
        finally:
            receiver.close()
    finally:
        handoff.close()


def test_events_arrive_typed_and_in_order_and_garbage_is_ignored(tmp_path, context):
    address = ipc_address(tmp_path, EVENTS_SOCKET)
    receiver = EventReceiver(address, context=context)
    sender = EventSender(address, context=context)
    raw = context.socket(zmq.PUSH)
    raw.connect(address)
    try:
        assert sender.send(EventType.VERSION, version=3, step=12)
        raw.send(b"{not json")
        assert sender.send(EventType.ROLLBACK, step=13, to_step=12, reason="non-finite loss")
        got, deadline = [], time.monotonic() + 5
        while len(got) < 2 and time.monotonic() < deadline:
            got += receiver.poll(50)
        assert got == [{"type": "version", "version": 3, "step": 12},
                       {"type": "rollback", "step": 13, "to_step": 12,
                        "reason": "non-finite loss"}]
        with pytest.raises(ValueError):
            sender.send("not_an_event")
    finally:
        raw.close(linger=0)
        sender.close()
        receiver.close()


def test_an_event_nobody_can_take_is_dropped_not_waited_for(tmp_path, context):
    sender = EventSender(ipc_address(tmp_path, EVENTS_SOCKET), context=context)
    try:  # no inference process bound: events queue up to the high-water mark, then fail
        started = time.perf_counter()
        sent = [sender.send(EventType.STATS, step=step) for step in range(200)]
        assert time.perf_counter() - started < 0.5  # never waited
        assert sent[0] and not sent[-1] and sum(sent) <= 64
    finally:
        sender._socket.close(linger=0)
