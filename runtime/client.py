"""ZeroMQ SUB client of the wire protocol (docs/PROTOCOL.md), newest message wins.

It lives beside the protocol it speaks so that every client (`iapc subscribe`, `iapc replay`, the
live figures, the ROS 2 bridge) imports the runtime package and never the reverse.

A background thread owns the SUB socket and drains it continuously, decoding every message and
keeping only the newest one per topic (or a short FIFO with ``newest_wins=False``). So the socket's
queue never fills with stale masks, and ``receive()`` returns the freshest mask not yet returned.
(ZMQ_CONFLATE would do this inside libzmq but does not support multipart messages.)

Malformed messages are rejected with the specific :class:`ProtocolError`, counted by error class
in ``counters.rejected``, and skipped; with ``strict=True`` the next ``receive`` raises the error.

A runtime started with ``--curve-keys`` admits only allow-listed clients: pass
``curve_server_key`` (its ``server.key``, see :func:`iapc.runtime.security.load_public_key`) and
``curve_client_keys`` (this client's pair, :func:`iapc.runtime.security.load_client_keys`).
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Iterable

import numpy as np
import zmq

from iapc.errors import UserError
from iapc.runtime.protocol import (
    TOPIC_MASK,
    TOPIC_STATUS,
    TOPICS,
    MaskHeader,
    ProtocolError,
    decode_mask_message,
    decode_status,
)

if TYPE_CHECKING:
    from iapc.runtime.security import CurveClientKeys

DEFAULT_ADDRESS = "tcp://127.0.0.1:5555"
DEFAULT_RCVHWM = 8
FIFO_DEPTH = 64  # messages kept per topic when newest_wins=False
_POLL_MS = 50  # how often the receive thread checks for close()


@dataclass(frozen=True)
class Received:
    """One decoded message: ``header`` and ``array`` for mask/conf, ``status`` for status."""

    topic: bytes
    received_ns: int  # time.time_ns() when the receive thread decoded it
    header: MaskHeader | None = None
    array: np.ndarray | None = None  # (H, W) read-only view over the received payload
    status: dict[str, Any] | None = None


@dataclass
class SubscriberCounters:
    received: int = 0  # well-formed messages decoded
    replaced: int = 0  # decoded but overwritten by a newer one before being read
    rejected: dict[str, int] = field(default_factory=dict)  # ProtocolError class name -> count
    ignored: int = 0  # well-formed but on a topic this subscriber did not ask for

    @property
    def rejected_total(self) -> int:
        return sum(self.rejected.values())


def decode_message(frames: list[Any], received_ns: int) -> Received:
    """Frames -> :class:`Received`, by topic; raises the specific :class:`ProtocolError`."""
    topic = bytes(getattr(frames[0], "bytes", frames[0])) if frames else b""
    if topic == TOPIC_STATUS:
        return Received(TOPIC_STATUS, received_ns, status=decode_status(frames))
    topic, header, array = decode_mask_message(frames)
    return Received(topic, received_ns, header=header, array=array)


class MaskSubscriber:
    """Connects to a runtime's PUB socket and keeps the newest message per topic.

    >>> with MaskSubscriber("tcp://127.0.0.1:5555", topics=(b"mask", b"status")) as sub:
    ...     header, mask = sub.receive(timeout=1.0)
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        topics: Iterable[bytes] = (TOPIC_MASK,),
        *,
        newest_wins: bool = True,
        rcvhwm: int = DEFAULT_RCVHWM,
        fifo_depth: int = FIFO_DEPTH,
        strict: bool = False,
        context: zmq.Context | None = None,
        curve_server_key: bytes | None = None,
        curve_client_keys: "CurveClientKeys | None" = None,
    ) -> None:
        self.topics = tuple(_check_topic(t) for t in topics)
        if not self.topics:
            raise UserError("subscribe to at least one topic: mask, conf or status")
        if (curve_server_key is None) != (curve_client_keys is None):
            raise UserError("CURVE needs both the server's public key and this client's key "
                            "pair (curve_server_key and curve_client_keys)")
        self._curve = (curve_server_key, curve_client_keys)
        self.address = address
        self.strict = strict
        self.counters = SubscriberCounters()
        # newest_wins keeps one message per topic; otherwise a FIFO of fifo_depth (oldest dropped)
        depth = 1 if newest_wins else max(1, fifo_depth)
        self._pending = {t: collections.deque(maxlen=depth) for t in self.topics}
        self._arrivals = 0  # sequence number so receive_any() returns messages in arrival order
        self._error: BaseException | None = None  # strict-mode error or a dead receive thread
        self._ready = threading.Condition()
        self._stop = threading.Event()
        self._closed = False
        self._own_context = context is None
        self._context = context if context is not None else zmq.Context()
        self.handshake_failure: str | None = None
        self._handshake_news = False  # a failure not yet reported to a waiting receive()
        self._socket, self._monitor = self._open_socket(address, rcvhwm)
        # The socket is created and connected here so that a bad address fails in the caller;
        # from now on only the receive thread touches it (ZeroMQ sockets are not thread-safe).
        self._thread = threading.Thread(target=self._receive_loop, name="mask-subscriber",
                                        daemon=True)
        self._thread.start()

    def _open_socket(self, address: str, rcvhwm: int) -> tuple[zmq.Socket, zmq.Socket]:
        """The connected SUB socket and its monitor. Handshake failures are invisible to a SUB
        socket (it just receives nothing): the monitor watches them, attached before the
        connect so that a refusal in the first milliseconds is not missed, and a timeout can say
        "this runtime needs CURVE keys" instead of "not running"."""
        socket = self._context.socket(zmq.SUB)
        socket.setsockopt(zmq.RCVHWM, rcvhwm)
        socket.setsockopt(zmq.LINGER, 0)
        for topic in self.topics:
            socket.setsockopt(zmq.SUBSCRIBE, topic)
        server_key, client_keys = self._curve
        if server_key is not None:
            from iapc.runtime.security import secure_client_socket

            secure_client_socket(socket, server_key, client_keys)
        monitor = socket.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL | zmq.EVENT_HANDSHAKE_FAILED_AUTH
            | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL)
        try:
            socket.connect(address)
        except zmq.ZMQError as err:
            socket.disable_monitor()
            monitor.close()
            socket.close()
            if self._own_context:
                self._context.term()
            self._closed = True
            raise UserError(
                f"cannot connect to {address!r}: {err.strerror}; use tcp://HOST:PORT, e.g. "
                f"{DEFAULT_ADDRESS}"
            ) from err
        return socket, monitor

    # -- receive thread -------------------------------------------------------------------

    def _receive_loop(self) -> None:
        try:
            poller = zmq.Poller()
            poller.register(self._socket, zmq.POLLIN)
            poller.register(self._monitor, zmq.POLLIN)
            while not self._stop.is_set():
                ready = dict(poller.poll(_POLL_MS))
                if self._monitor in ready:
                    self._note_handshake_failure()
                if self._socket in ready:
                    self._drain()
        except Exception as err:  # noqa: BLE001 - surfaced to receive() instead of a silent hang
            with self._ready:
                self._error = RuntimeError(f"subscriber receive thread died: {err!r}")
                self._ready.notify_all()
        finally:
            self._socket.disable_monitor()
            self._monitor.close()
            self._socket.close()

    def _note_handshake_failure(self) -> None:
        """Records why the runtime refused the connection and wakes a waiting receive(): keys
        that do not match will not match on the next try either, so nobody waits out a timeout
        for nothing."""
        from zmq.utils.monitor import recv_monitor_message

        event = recv_monitor_message(self._monitor)
        curve = self._curve[0] is not None
        reason = (
            "the runtime refused this client's CURVE keys: add its public key to the runtime's "
            "authorized/ folder ('iapc keys') and pass the runtime's server.key" if curve else
            "the runtime requires CURVE encryption: pass its public key and this client's key "
            "pair (iapc subscribe --curve-server-key server.key --curve-client-secret "
            "NAME.key_secret)")
        with self._ready:
            self.handshake_failure = f"{reason} (handshake event {event['event']})"
            self._handshake_news = True
            self._ready.notify_all()

    def _drain(self) -> None:
        """Take every queued message, so the newest one is what stays."""
        while True:
            try:
                frames = self._socket.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            self._handle(frames)

    def _handle(self, frames: list[Any]) -> None:
        try:
            message = decode_message(frames, time.time_ns())
        except ProtocolError as err:
            self._reject(err)
            return
        with self._ready:
            if message.topic not in self._pending:  # SUB filters by prefix; be exact anyway
                self.counters.ignored += 1
                return
            queue = self._pending[message.topic]
            if len(queue) == queue.maxlen:
                self.counters.replaced += 1
            self._arrivals += 1
            queue.append((self._arrivals, message))
            self.counters.received += 1
            self._ready.notify_all()

    def _reject(self, err: ProtocolError) -> None:
        with self._ready:
            name = type(err).__name__
            self.counters.rejected[name] = self.counters.rejected.get(name, 0) + 1
            if self.strict and self._error is None:
                self._error = err
                self._ready.notify_all()

    # -- public API -----------------------------------------------------------------------

    def receive(self, timeout: float | None = None,
                topic: bytes = TOPIC_MASK) -> tuple[MaskHeader, np.ndarray]:
        """Newest unread (header, (H, W) uint8 array) on ``topic``; TimeoutError after ``timeout`` s."""
        if topic == TOPIC_STATUS:
            raise UserError("receive() returns maps: use receive_status() for the status topic")
        message = self._take((self._subscribed(topic),), timeout)
        return message.header, message.array

    def receive_status(self, timeout: float | None = None) -> dict[str, Any]:
        """Newest unread status dict; TimeoutError after ``timeout`` seconds."""
        return self._take((self._subscribed(TOPIC_STATUS),), timeout).status

    def receive_any(self, timeout: float | None = None) -> Received:
        """The oldest unread message over all subscribed topics (newest per topic)."""
        return self._take(self.topics, timeout)

    def _subscribed(self, topic: bytes) -> bytes:
        if topic not in self._pending:
            raise UserError(f"not subscribed to {topic!r}: pass topics=(..., {topic!r})")
        return topic

    def _take(self, topics: tuple[bytes, ...], timeout: float | None) -> Received:
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._ready:
            while True:
                self._raise_pending_error()
                ready = [t for t in topics if self._pending[t]]
                if ready:
                    first = min(ready, key=lambda t: self._pending[t][0][0])
                    return self._pending[first].popleft()[1]
                if self._closed:
                    raise RuntimeError("MaskSubscriber is closed")
                if self._handshake_news:  # each refusal ends one wait, with its reason
                    self._handshake_news = False
                    raise TimeoutError(f"no {' or '.join(t.decode() for t in topics)} message "
                                       f"from {self.address}: {self.handshake_failure}")
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    names = " or ".join(t.decode() for t in topics)
                    why = f": {self.handshake_failure}" if self.handshake_failure else ""
                    raise TimeoutError(f"no {names} message from {self.address} in {timeout} s"
                                       f"{why}")
                self._ready.wait(remaining)

    def _raise_pending_error(self) -> None:
        if self._error is not None:
            err, self._error = self._error, None
            if isinstance(err, RuntimeError):
                self._error = err  # a dead thread stays dead: keep raising
            raise err

    # -- lifetime -------------------------------------------------------------------------

    def close(self) -> None:
        """Stop the receive thread and close the socket; safe to call more than once."""
        if self._closed:
            return
        self._stop.set()
        self._thread.join()
        with self._ready:
            self._closed = True
            self._ready.notify_all()
        if self._own_context:
            self._context.term()

    def __enter__(self) -> "MaskSubscriber":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _check_topic(topic: bytes | str) -> bytes:
    raw = topic.encode() if isinstance(topic, str) else bytes(topic)
    if raw not in TOPICS:
        names = ", ".join(t.decode() for t in TOPICS)
        raise UserError(f"unknown topic {raw!r}: choose from {names}")
    return raw
