"""Hand-offs between the inference process and the adaptation daemon, over ZeroMQ ``ipc://``.

- frames, loop -> daemon: :class:`FrameHandoff` never blocks the loop. ``offer`` appends to a
  bounded deque (the oldest frame is dropped and counted when it is full); a sender thread
  forwards frames with non-blocking sends, so a slow, hung or dead daemon costs the loop nothing.
- events, daemon and supervisor -> loop: :class:`EventSender` / :class:`EventReceiver` carry
  small JSON events, one of the typed list :class:`~iapc.contracts.events.EventType` (a new
  engine in the store, a rejected candidate, a rollback, a failed export, a domain shift,
  adaptation figures, a hung or restarted daemon; docs/PROTOCOL.md has the table).

The inference side binds both sockets (it lives longest); the daemon connects, so a restarted
daemon simply reconnects.
"""

from __future__ import annotations

import json
import threading
from collections import deque
from typing import Any

import numpy as np
import zmq

from iapc.contracts.events import EventType, event


class FrameHandoff:
    """Loop side of the frame hand-off: ``offer(frame_id, capture_ns, image)`` is O(1)."""

    def __init__(self, address: str, capacity: int = 8, context: zmq.Context | None = None):
        self._context = context or zmq.Context.instance()
        self._socket = self._context.socket(zmq.PUSH)
        self._socket.setsockopt(zmq.SNDHWM, 2)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.bind(address)
        self._queue: deque[tuple[dict[str, Any], np.ndarray]] = deque()
        self._capacity = capacity
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._closed = threading.Event()
        self.offered = 0
        self.sent = 0
        self.dropped = 0
        self._thread = threading.Thread(target=self._send_forever, name="handoff", daemon=True)
        self._thread.start()

    def offer(self, frame_id: int, capture_ns: int, image: np.ndarray) -> None:
        """Queue a uint8 (H, W, 3) BGR frame for the daemon; drops the oldest when full."""
        meta = {"frame_id": int(frame_id), "capture_ns": int(capture_ns),
                "height": int(image.shape[0]), "width": int(image.shape[1])}
        with self._lock:
            if len(self._queue) >= self._capacity:
                self._queue.popleft()
                self.dropped += 1
            self._queue.append((meta, image))
            self.offered += 1
        self._wake.set()

    def _send_forever(self) -> None:
        while not self._closed.is_set():
            with self._lock:
                item = self._queue.popleft() if self._queue else None
            if item is None:
                self._wake.wait(0.05)
                self._wake.clear()
                continue
            meta, image = item
            try:
                self._socket.send_multipart(
                    [json.dumps(meta).encode(), np.ascontiguousarray(image)],
                    flags=zmq.NOBLOCK, copy=False)
                self.sent += 1
            except zmq.Again:  # no daemon, or it is busy: keep the frame unless newer ones wait
                with self._lock:
                    if len(self._queue) < self._capacity:
                        self._queue.appendleft(item)
                    else:
                        self.dropped += 1
                self._closed.wait(0.02)
            except zmq.ZMQError:
                return  # socket closed during shutdown

    def close(self) -> None:
        if self._closed.is_set():
            return
        self._closed.set()
        self._wake.set()
        self._thread.join(timeout=1.0)
        self._socket.close(linger=0)


class FrameReceiver:
    """Daemon side of the frame hand-off."""

    def __init__(self, address: str, context: zmq.Context | None = None):
        self._context = context or zmq.Context.instance()
        self._socket = self._context.socket(zmq.PULL)
        self._socket.setsockopt(zmq.RCVHWM, 4)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.connect(address)

    def receive_all(self, timeout_ms: int = 0) -> list[tuple[dict[str, Any], np.ndarray]]:
        """Every frame waiting now (after waiting up to ``timeout_ms`` for the first one)."""
        frames = []
        if not self._socket.poll(timeout_ms):
            return frames
        while True:
            try:
                meta_bytes, payload = self._socket.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.Again:
                return frames
            meta = json.loads(meta_bytes)
            image = np.frombuffer(payload, dtype=np.uint8).reshape(meta["height"], meta["width"], 3)
            frames.append((meta, image))

    def close(self) -> None:
        self._socket.close(linger=0)


class EventSender:
    """Daemon side: JSON events to the inference process, dropped if it cannot take them."""

    def __init__(self, address: str, context: zmq.Context | None = None):
        self._context = context or zmq.Context.instance()
        self._socket = self._context.socket(zmq.PUSH)
        self._socket.setsockopt(zmq.SNDHWM, 64)
        self._socket.setsockopt(zmq.LINGER, 500)
        self._socket.connect(address)

    def send(self, kind: EventType, **fields: Any) -> bool:
        """Send an event of type ``kind``; False when the inference process cannot take it."""
        try:
            self._socket.send(json.dumps(event(kind, **fields)).encode(), flags=zmq.NOBLOCK)
            return True
        except zmq.Again:
            return False

    def close(self) -> None:
        self._socket.close()


class EventReceiver:
    """Inference side: receives the daemon's events without blocking."""

    def __init__(self, address: str, context: zmq.Context | None = None):
        self._context = context or zmq.Context.instance()
        self._socket = self._context.socket(zmq.PULL)
        self._socket.setsockopt(zmq.LINGER, 0)
        self._socket.bind(address)

    def poll(self, timeout_ms: int = 0) -> list[dict[str, Any]]:
        events = []
        if not self._socket.poll(timeout_ms):
            return events
        while True:
            try:
                data = self._socket.recv(flags=zmq.NOBLOCK)
            except zmq.Again:
                return events
            try:
                events.append(json.loads(data))
            except ValueError:
                continue  # a malformed event is ignored; the store stays the source of truth

    def close(self) -> None:
        self._socket.close(linger=0)
