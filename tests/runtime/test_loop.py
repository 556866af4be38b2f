"""The inference loop's contract, with stand-ins for its parts (no sockets, no processes): every
frame is segmented and published in order with the version that segmented it; a bad frame is
skipped and counted, never fatal; a standby engine is switched in between two frames and the swap
is announced before the first mask it made; the daemon's events become status messages and
decision counts; sampled frames go to the hand-off; the stream ends with an ``end`` status."""

from __future__ import annotations

import time
from collections import deque
from types import SimpleNamespace

import numpy as np

from iapc.contracts.events import EventType, event
from iapc.runtime.loop import InferenceLoop
from iapc.runtime.protocol import StatusKind
from iapc.runtime.sources import Frame

SIZE = (32, 16)  # (width, height) of the engine


class Capture:
    def __init__(self, images):
        self.frames = deque(Frame(image, i, time.time_ns()) for i, image in enumerate(images))
        self.finished = False
        self.dropped = 0
        self.source_events = deque()
        self.before_get = lambda index: None  # called with the index of the frame handed out

    def get(self, timeout=None):
        if not self.frames:
            self.finished = True
            return None
        frame = self.frames.popleft()
        self.before_get(frame.index)
        return frame


class Publisher:
    def __init__(self):
        self.sent = []  # ("mask", header) / ("status", dict) in order

    def publish_mask(self, header, mask, topic=b"mask"):
        self.sent.append(("mask", header))
        return True

    def publish_status(self, status):
        self.sent.append(("status", dict(status)))
        return True

    def statuses(self, kind):
        return [s for what, s in self.sent if what == "status" and s["kind"] == kind]

    def masks(self):
        return [h for what, h in self.sent if what == "mask"]


class Runner:
    """Masks of one class id (its version), so a mask says which engine made it."""

    def __init__(self, value):
        self.value = value

    def infer(self, batch):
        assert batch.shape == (1, SIZE[1], SIZE[0], 3)  # resized to the engine's size
        return {"mask": np.full((1, SIZE[1], SIZE[0]), self.value, np.uint8)}


class Engines:
    def __init__(self):
        self.runner, self.version = Runner(1), 1
        self.pending = None
        self.notified = 0
        self.reports = []

    def take_pending(self):
        ready, self.pending = self.pending, None
        return ready

    def activate_pending(self, ready):
        self.runner, self.version = ready.runner, ready.version

    def take_reports(self):
        reports, self.reports = self.reports, []
        return reports

    def notify(self):
        self.notified += 1


class Events:
    def __init__(self):
        self.queue = []

    def poll(self, timeout_ms=0):
        out, self.queue = self.queue, []
        return out


class Handoff:
    dropped = 0

    def __init__(self):
        self.offered = []

    def offer(self, frame_id, capture_ns, image):
        self.offered.append(frame_id)


def images(count, size=(64, 32)):
    return [np.full((size[1], size[0], 3), i, np.uint8) for i in range(count)]


def make_loop(capture, **kwargs):
    engines, publisher = Engines(), Publisher()
    loop = InferenceLoop(capture, publisher, engines, SIZE, num_classes=19, **kwargs)
    return loop, engines, publisher


def test_every_frame_is_published_in_order_and_the_stream_ends_with_end():
    loop, _, publisher = make_loop(Capture(images(5)))
    stats = loop.run()
    assert [h.frame_id for h in publisher.masks()] == [0, 1, 2, 3, 4]
    assert {h.engine_version for h in publisher.masks()} == {1}
    assert stats.frames_in == stats.frames_published == 5 and stats.frames_failed == 0
    last = publisher.sent[-1][1]
    assert last["kind"] == StatusKind.END and last["reason"] == "source_ended"
    assert last["frames_published"] == 5
    before = publisher.sent[-2][1]  # the final heartbeat, just before the end
    assert before["kind"] == StatusKind.HEARTBEAT and before["frames_published"] == 5


def test_a_bad_frame_is_skipped_and_counted_not_fatal():
    frames = images(4)
    frames[1] = np.zeros((10, 10), np.uint8)  # one channel
    frames[2] = np.zeros((0, 10, 3), np.uint8)  # no pixels
    loop, _, publisher = make_loop(Capture(frames))
    stats = loop.run()
    assert [h.frame_id for h in publisher.masks()] == [0, 3]
    assert stats.frames_failed == 2 and stats.decisions == {"bad_frame": 2}


def test_a_standby_engine_is_switched_in_between_two_frames_and_announced_first():
    capture = Capture(images(6))
    loop, engines, publisher = make_loop(capture)

    def offer_v2(index):
        if index == 2:  # ready while frame 2 is being segmented: frame 3 is the new engine's
            engines.pending = SimpleNamespace(version=2, runner=Runner(2), ready_seconds=0.5)

    capture.before_get = offer_v2
    stats = loop.run()
    versions = [h.engine_version for h in publisher.masks()]
    assert versions == [1, 1, 1, 2, 2, 2]
    swap_at = next(i for i, (what, s) in enumerate(publisher.sent)
                   if what == "status" and s["kind"] == StatusKind.SWAP)
    first_v2 = next(i for i, (what, h) in enumerate(publisher.sent)
                    if what == "mask" and h.engine_version == 2)
    assert swap_at < first_v2  # announced before the first mask of the new engine
    swap = publisher.sent[swap_at][1]
    assert (swap["from"], swap["to"], swap["at_frame"], swap["ready_s"]) == (1, 2, 3, 0.5)
    assert stats.swaps == 1 and stats.swap_log[0]["to"] == 2


def test_events_become_status_messages_and_decision_counts():
    events = Events()
    capture = Capture(images(3))
    loop, engines, publisher = make_loop(capture, events=events)
    events.queue = [event(EventType.STATS, step=5, new_steps=5, buffer=8, total=0.5),
                    event(EventType.VERSION, version=2, step=5, parity=1.0),
                    event(EventType.REJECTED, gate="health", step=10, reason="collapse"),
                    event(EventType.DAEMON_RESTART, reason="exit status -9", restarts=1)]
    stats = loop.run()
    assert engines.notified == 1  # a new version wakes the engine watcher
    adaptation = publisher.statuses(StatusKind.ADAPTATION)
    assert [s["type"] for s in adaptation] == ["version", "rejected", "daemon_restart"]
    assert stats.decisions == {"deployed": 1, "rejected_health": 1, "daemon_restart": 1}
    heartbeat = publisher.statuses(StatusKind.HEARTBEAT)[-1]
    assert heartbeat["adaptation"] == {"step": 5, "new_steps": 5, "buffer": 8, "total": 0.5}
    assert heartbeat["decisions"] == stats.decisions


def test_sampled_frames_go_to_the_handoff_and_faults_to_the_status_topic():
    handoff = Handoff()
    capture = Capture(images(7))
    loop, engines, publisher = make_loop(capture, handoff=handoff, sample_every=3)
    engines.reports = [{"version": 4, "reason": "built for tensorrt fp16"}]
    capture.source_events.append({"kind": StatusKind.SOURCE.value, "state": "lost", "reason": "x"})
    stats = loop.run()
    assert handoff.offered == [0, 3, 6]
    engine = publisher.statuses(StatusKind.ENGINE)
    assert engine == [{"kind": "engine", "state": "rejected", "in_service": 1, "version": 4,
                       "reason": "built for tensorrt fp16"}]
    assert publisher.statuses(StatusKind.SOURCE)[0]["state"] == "lost"
    assert stats.decisions == {"engine_rejected": 1, "source_lost": 1}


def test_stop_ends_the_loop_with_reason_stopped():
    capture = Capture(images(100))
    loop, _, publisher = make_loop(capture)
    capture.before_get = lambda index: loop.stop() if index == 1 else None
    stats = loop.run()
    assert stats.frames_published == 2
    assert publisher.sent[-1][1]["reason"] == "stopped"
