"""ZeroMQ PUB side of the wire protocol: never blocks the inference loop.

Every send is ``zmq.NOBLOCK`` on a PUB socket with a small send high-water mark. A PUB socket
keeps one queue per subscriber and, when a subscriber's queue is full, drops the message *for that
subscriber only*, so a slow or dead client loses frames while the loop and the other clients go on.
libzmq does not report those per-subscriber drops; ``counters.dropped`` counts the messages the
socket refused outright (``zmq.Again``), which the loop sees.

Security: a non-loopback address is refused unless the socket uses CURVE (``curve=`` server keys
from :mod:`iapc.runtime.security`: encrypted, only allow-listed clients receive anything) or the
caller passes ``allow_remote=True`` (``--insecure``).

A socket is not thread-safe: publish from one thread (the inference loop).
"""

from __future__ import annotations

import ipaddress
import time
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, Mapping

import numpy as np
import zmq

from iapc.errors import UserError
from iapc.runtime.protocol import TOPIC_MASK, MaskHeader, encode_mask_message, encode_status

if TYPE_CHECKING:
    from iapc.runtime.security import CurveServerKeys

DEFAULT_ADDRESS = "tcp://127.0.0.1:5555"
# Messages queued per subscriber before that subscriber's messages are dropped: about two frames
# of mask + conf + status. Small on purpose: a stale mask is worse than a missing one.
DEFAULT_SNDHWM = 8
# Kernel send buffer per connection (0: the OS's, auto-tuned). Capping it (64 KiB) did not make a
# slow raw client fresher (its own buffers refill between reads, docs/BENCHMARKS.md) but cost a
# momentarily busy subscriber masks in the fault tests, so freshness is the client's job
# (MaskSubscriber drains continuously) and this stays an option.
DEFAULT_SNDBUF = 0
# How long close() may wait to hand the last (end-of-stream) messages to connected clients.
CLOSE_LINGER_MS = 500
# A subscriber that connected before the runtime bound (a replay, a client started first)
# retries its connection every 100 ms (ZeroMQ's reconnect interval) and then sends its
# subscription; the first frame waits this long after the bind so that it reaches them. The
# runtime never waits for subscribers after that.
EARLY_SUBSCRIBER_GRACE_S = 0.3


@dataclass
class PublisherCounters:
    masks_published: int = 0
    status_published: int = 0
    dropped: int = 0  # refused by the socket (zmq.Again); per-subscriber drops are not visible
    bytes_published: int = 0


def is_loopback_host(host: str) -> bool:
    """True for ``localhost``, 127.0.0.0/8 and ``::1`` (brackets allowed)."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # an interface or host name: treat as remote
        return False


def check_bind_address(address: str, allow_remote: bool) -> None:
    """Refuse malformed addresses and, unless allowed, any that reaches beyond this machine."""
    scheme, sep, rest = address.partition("://")
    if not sep or scheme not in ("tcp", "ipc", "inproc") or not rest:
        raise UserError(
            f"bad address {address!r}: use tcp://HOST:PORT (e.g. {DEFAULT_ADDRESS}), ipc://PATH "
            "or inproc://NAME"
        )
    if scheme != "tcp":
        return  # ipc and inproc never leave the machine
    host, colon, port = rest.rpartition(":")
    if not colon or not host or not (port == "*" or port.isdigit()):
        raise UserError(f"bad address {address!r}: use tcp://HOST:PORT, e.g. {DEFAULT_ADDRESS}")
    if port != "*" and not 1 <= int(port) <= 65535:
        raise UserError(f"bad address {address!r}: the port must be 1..65535 (or * for any free one)")
    if not allow_remote and not is_loopback_host(host):
        raise UserError(
            f"binding {host} exposes the masks to the network: pass --curve-keys DIR or "
            "--insecure"
        )


class MaskPublisher:
    """Publishes masks, confidence maps and status on one PUB socket.

    >>> with MaskPublisher("tcp://127.0.0.1:*") as pub:
    ...     pub.publish_mask(header, mask)   # (H, W) uint8, sent without copying
    """

    def __init__(
        self,
        address: str = DEFAULT_ADDRESS,
        *,
        sndhwm: int = DEFAULT_SNDHWM,
        sndbuf: int = DEFAULT_SNDBUF,
        linger: int = 0,
        boot_id: str = "",
        allow_remote: bool = False,
        stamp_publish_time: bool = True,
        context: zmq.Context | None = None,
        curve: "CurveServerKeys | None" = None,
    ) -> None:
        check_bind_address(address, allow_remote or curve is not None)
        self.stamp_publish_time = stamp_publish_time
        self.boot_id = boot_id  # stamped into every header: tells a client the runtime restarted
        self.counters = PublisherCounters()
        self._own_context = context is None
        self._context = context if context is not None else zmq.Context()
        self._socket = self._context.socket(zmq.PUB)
        self._socket.setsockopt(zmq.SNDHWM, sndhwm)
        if sndbuf > 0:
            self._socket.setsockopt(zmq.SNDBUF, sndbuf)
        self._socket.setsockopt(zmq.LINGER, linger)  # close() never waits on a dead subscriber
        self._closed = False
        self._auth = None
        if curve is not None:
            from iapc.runtime.security import secure_server_socket, start_authenticator

            self._auth = start_authenticator(self._context, curve.authorized_dir)
            secure_server_socket(self._socket, curve)
        try:
            self._socket.bind(address)
        except zmq.ZMQError as err:
            self.close()
            raise UserError(
                f"cannot bind {address}: {err.strerror}; pick a free port or stop the process "
                "that holds it"
            ) from err
        self._bound_at = time.monotonic()
        # The resolved address: "tcp://127.0.0.1:*" becomes the real port.
        self.endpoint: str = self._socket.getsockopt_string(zmq.LAST_ENDPOINT)

    def let_early_subscribers_join(self, grace_s: float = EARLY_SUBSCRIBER_GRACE_S) -> None:
        """Sleep until ``grace_s`` after the bind (at once when that has passed), so that
        subscribers that were waiting for this runtime receive its first frame."""
        remaining = self._bound_at + grace_s - time.monotonic()
        if remaining > 0:
            time.sleep(remaining)

    # -- sending --------------------------------------------------------------------------

    def publish_mask(self, header: MaskHeader, mask: np.ndarray, topic: bytes = TOPIC_MASK) -> bool:
        """Send one (H, W) uint8 map without copying; False if the socket dropped it.

        ``publish_ns`` is stamped here unless ``stamp_publish_time=False``. Do not modify ``mask``
        afterwards: ZeroMQ reads it from the I/O thread after this call returns.
        """
        if self.stamp_publish_time:
            header = replace(header, publish_ns=time.time_ns())
        if self.boot_id and not header.boot_id:
            header = replace(header, boot_id=self.boot_id)
        frames = encode_mask_message(topic, header, mask)
        if not self._send(frames):
            return False
        self.counters.masks_published += 1
        self.counters.bytes_published += header.payload_bytes
        return True

    def publish_status(self, status: Mapping[str, Any]) -> bool:
        """Send one status message (needs a ``kind``); False if the socket dropped it."""
        if not self._send(encode_status(status, self.boot_id)):
            return False
        self.counters.status_published += 1
        return True

    def _send(self, frames: list[Any]) -> bool:
        if self._closed:
            raise RuntimeError("MaskPublisher is closed: create a new one to publish")
        try:
            # copy=False: the array's buffer is handed to libzmq (pyzmq still copies parts under
            # zmq.COPY_THRESHOLD, 64 KiB, where copying is cheaper than tracking).
            self._socket.send_multipart(frames, flags=zmq.NOBLOCK, copy=False)
        except zmq.Again:
            self.counters.dropped += 1
            return False
        return True

    # -- lifetime -------------------------------------------------------------------------

    def close(self, linger_ms: int | None = None) -> None:
        """Close the socket (and its context if owned); safe to call more than once.

        ``linger_ms`` bounds how long queued messages (the end-of-stream status) may still be
        sent to connected clients; a dead client never holds close() up for longer.
        """
        if self._closed:
            return
        self._closed = True
        if linger_ms is not None:
            self._socket.setsockopt(zmq.LINGER, linger_ms)
        self._socket.close()
        if self._auth is not None:
            self._auth.stop()
        if self._own_context:
            self._context.term()

    def __enter__(self) -> "MaskPublisher":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
