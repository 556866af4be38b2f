"""The inference loop: newest frame -> resize -> engine -> publish, timed at every stage.

Runs in the inference process (no torch). Between two frames it takes a standby engine that the
:class:`~iapc.runtime.swap.EngineManager` has already loaded and warmed, so a swap costs one
pointer assignment on the hot path. Frames for adaptation are offered to the daemon through a
non-blocking hand-off; nothing here ever waits on the daemon or on subscribers.

Every decision and fault reaches the status topic (``kind`` ``adaptation``, ``engine``,
``source``) and the ``iapc_runtime_events`` metric: the daemon's and the supervisor's events
(:mod:`iapc.contracts.events`: engines deployed or rejected by the gates, rollbacks, failed
exports, domain shifts, hung and restarted daemons), engines that failed to load here, and camera
outages. Bad frames are skipped and counted (``frames_failed``), never fatal.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field

import cv2
import numpy as np

from iapc.contracts.events import EventType, decision_of, event_type
from iapc.runtime.metrics import LatencyStats, RateMeter
from iapc.runtime.protocol import TOPIC_CONF, ENCODING_CONFIDENCE, MaskHeader, StatusKind

log = logging.getLogger("iapc.runtime.loop")


@dataclass
class LoopStats:
    frames_in: int = 0
    frames_published: int = 0
    frames_failed: int = 0  # frames the engine could not process (bad frame, engine fault)
    publish_dropped: int = 0  # masks the PUB socket refused (subscriber queues full)
    swaps: int = 0
    swap_log: list[dict] = field(default_factory=list)
    last_frame_id: int = -1
    decisions: dict[str, int] = field(default_factory=dict)  # event kind -> count


class InferenceLoop:
    def __init__(self, capture, publisher, engines, input_size: tuple[int, int], num_classes: int,
                 handoff=None, sample_every: int = 2, metrics=None, events=None,
                 status_every: float = 1.0, confidence: bool = False, frame_observer=None):
        self.capture = capture
        self.publisher = publisher
        self.engines = engines
        self.input_size = input_size  # (width, height)
        self.num_classes = num_classes
        self.handoff = handoff
        self.sample_every = max(1, sample_every)
        self.metrics = metrics
        self.events = events
        self.status_every = status_every
        self.confidence = confidence
        self.frame_observer = frame_observer  # called with (frame, mask, version, batch): live scoring
        self.stats = LoopStats()
        self.latency = LatencyStats()
        self.rate = RateMeter()
        self.extra_status = lambda: {}  # more heartbeat fields (e.g. live mIoU)
        self.adaptation: dict = {}
        self.stopped = threading.Event()  # set by stop(); waits elsewhere can watch it
        self._last_status = 0.0

    def stop(self) -> None:
        self.stopped.set()

    # one step at a time ----------------------------------------------------------------------
    def _prepare(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) BGR -> (1, h, w, 3) at the engine's input size; bad frames raise ValueError."""
        if image is None or image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8 \
                or image.shape[0] == 0 or image.shape[1] == 0:
            raise ValueError(f"unusable frame {getattr(image, 'shape', None)}")
        if (image.shape[1], image.shape[0]) != self.input_size:
            image = cv2.resize(image, self.input_size, interpolation=cv2.INTER_LINEAR)
        return image[None]

    def _swap_if_ready(self) -> None:
        ready = self.engines.take_pending()
        if ready is None:
            return
        old_version = self.engines.version
        start = time.perf_counter()
        self.engines.activate_pending(ready)
        entry = {"kind": StatusKind.SWAP.value, "from": old_version, "to": self.engines.version,
                 "at_frame": self.stats.last_frame_id + 1,
                 "switch_ms": (time.perf_counter() - start) * 1e3,
                 "ready_s": ready.ready_seconds, "time_ns": time.time_ns()}
        self.stats.swaps += 1
        self.stats.swap_log.append(entry)
        self.publisher.publish_status(entry)
        if self.metrics:
            self.metrics.count_swap(self.engines.version)
        log.info("engine v%d in service (was v%s)", self.engines.version, old_version)

    def _publish(self, frame, outputs: dict[str, np.ndarray]) -> None:
        mask = outputs["mask"][0]
        header = MaskHeader(frame_id=frame.index, capture_ns=frame.capture_ns,
                            engine_version=self.engines.version, height=mask.shape[0],
                            width=mask.shape[1], num_classes=self.num_classes)
        if not self.publisher.publish_mask(header, mask):
            self.stats.publish_dropped += 1
        if self.confidence and "confidence" in outputs:
            conf = outputs["confidence"][0]
            conf_header = MaskHeader(frame_id=frame.index, capture_ns=frame.capture_ns,
                                     engine_version=self.engines.version, height=conf.shape[0],
                                     width=conf.shape[1], num_classes=self.num_classes,
                                     encoding=ENCODING_CONFIDENCE)
            self.publisher.publish_mask(conf_header, conf, topic=TOPIC_CONF)

    def _count(self, kind: str) -> None:
        self.stats.decisions[kind] = self.stats.decisions.get(kind, 0) + 1
        if self.metrics:
            self.metrics.count_event(kind)

    def _drain_events(self) -> None:
        """The daemon's and the supervisor's events: figures to the heartbeat, decisions to the
        status topic and the counters; a new version wakes the engine watcher."""
        if self.events is None:
            return
        for event in self.events.poll(0):
            kind = event_type(event)
            if kind is EventType.VERSION:
                self.engines.notify()
            if kind is EventType.STATS:
                self.adaptation = event
                if self.metrics and "total" in event:
                    self.metrics.observe_adaptation(event["total"], event.get("new_steps", 1))
                continue
            self._count(decision_of(event))
            self.publisher.publish_status({"kind": StatusKind.ADAPTATION.value, **event})

    def _report_faults(self) -> None:
        """Engines that failed to load here, and source outages, onto the status topic."""
        for report in self.engines.take_reports():
            self._count("engine_rejected")
            self.publisher.publish_status({"kind": StatusKind.ENGINE.value, "state": "rejected",
                                           "in_service": self.engines.version, **report})
        events = getattr(self.capture, "source_events", None)
        while events:
            event = events.popleft()
            self._count(f"source_{event['state']}")
            self.publisher.publish_status({**event, "time_ns": time.time_ns()})

    def _status(self, now: float) -> None:
        if now - self._last_status < self.status_every:
            return
        self._last_status = now
        self.publisher.publish_status({
            "kind": StatusKind.HEARTBEAT.value, "time_ns": time.time_ns(),
            "engine_version": self.engines.version, "frames_in": self.stats.frames_in,
            "frames_published": self.stats.frames_published,
            "frames_failed": self.stats.frames_failed, "swaps": self.stats.swaps,
            "frames_unreadable": getattr(self.capture, "unreadable", 0),
            "capture_dropped": self.capture.dropped,
            "handoff_dropped": self.handoff.dropped if self.handoff else 0,
            "publish_dropped": self.stats.publish_dropped,
            "fps": round(self.rate.rate(), 2),
            "source": {"state": "lost" if getattr(self.capture, "in_outage", False) else "ok",
                       "outages": getattr(self.capture, "outages", 0)},
            "decisions": dict(self.stats.decisions),
            "latency_ms": {k: (round(v * 1e3, 3) if v == v else None)  # NaN before any frame
                           for k, v in self.latency.percentiles().items()},
            "adaptation": {k: v for k, v in self.adaptation.items() if k != "type"},
            **self.extra_status(),
        })

    def step(self, frame) -> None:
        """Segment and publish one frame."""
        self.stats.frames_in += 1
        try:
            batch = self._prepare(frame.image)
            outputs = self.engines.runner.infer(batch)
        except Exception as err:  # a bad frame or an engine fault must never stop the loop
            self.stats.frames_failed += 1
            self._count("bad_frame")
            log.warning("frame %d skipped: %s", frame.index, err)
            return
        self._publish(frame, outputs)
        self.stats.frames_published += 1
        self.stats.last_frame_id = frame.index
        if self.handoff is not None and frame.index % self.sample_every == 0:
            self.handoff.offer(frame.index, frame.capture_ns, batch[0])
        publish_ns = time.time_ns()
        self.latency.add((publish_ns - frame.capture_ns) / 1e9)
        self.rate.tick()
        if self.metrics:
            self.metrics.observe_frame(frame.capture_ns, publish_ns)
            self.metrics.fps.set(self.rate.rate())
        if self.frame_observer is not None:
            self.frame_observer(frame, outputs["mask"][0], self.engines.version, batch)

    def run(self) -> LoopStats:
        """Process frames until the source ends or :meth:`stop` is called."""
        while not self.stopped.is_set():
            self._drain_events()
            self._report_faults()
            self._swap_if_ready()
            now = time.monotonic()
            self._status(now)
            frame = self.capture.get(timeout=0.05)
            if frame is None:
                if self.capture.finished:
                    break
                continue
            self.step(frame)
        self._last_status = 0.0
        self._status(time.monotonic())
        self._end()
        return self.stats

    def _end(self) -> None:
        """The stream's last message: a client can tell "ended" from "the runtime hung"."""
        self.publisher.publish_status({
            "kind": StatusKind.END.value, "time_ns": time.time_ns(),
            "reason": "stopped" if self.stopped.is_set() else "source_ended",
            "frames_published": self.stats.frames_published,
            "engine_version": self.engines.version})
