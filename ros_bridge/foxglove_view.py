"""Live view in Foxglove: a WebSocket server (foxglove-sdk) with the masks as RawImage and status as JSON.

Open Foxglove, "Open connection", ``ws://HOST:PORT`` (default ``ws://127.0.0.1:8765``), then an
Image panel on ``/iapc/mask/color`` (or ``/iapc/mask``) and a Raw Messages panel on the status
topic. The view uses its own ``foxglove.Context`` so that several views (and tests) do not share
channels; ``mcap_path`` additionally logs the same channels to an MCAP file through the SDK.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from iapc.errors import UserError
from iapc.ros_bridge.ros_messages import ImageMessage

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8765
STATUS_SCHEMA = {"type": "object", "description": "iapc runtime status (docs/PROTOCOL.md)"}


class FoxgloveView:
    """A bridge sink that serves its messages over the Foxglove WebSocket protocol."""

    def __init__(self, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                 mcap_path: str | Path | None = None) -> None:
        import foxglove

        if not 0 <= port <= 65535:
            raise UserError(f"--foxglove-port {port} is outside 0..65535 (0 picks a free port)")
        self._foxglove = foxglove
        self._context = foxglove.Context()
        self._mcap = None
        if mcap_path is not None:
            self._mcap = foxglove.open_mcap(str(mcap_path), context=self._context)
        try:
            self._server = foxglove.start_server(name="iapc bridge", host=host, port=port,
                                                 context=self._context)
        except RuntimeError as err:  # foxglove reports a bind failure as RuntimeError
            raise UserError(
                f"cannot serve Foxglove on {host}:{port} ({err}): pick another --foxglove-port"
            ) from err
        self.host = host
        self.port: int = self._server.port  # the real port when 0 was asked
        self._channels: dict[str, Any] = {}

    def _image_channel(self, topic: str) -> Any:
        channel = self._channels.get(topic)
        if channel is None:
            channel = self._foxglove.channels.RawImageChannel(topic, context=self._context)
            self._channels[topic] = channel
        return channel

    def _status_channel(self, topic: str) -> Any:
        channel = self._channels.get(topic)
        if channel is None:
            channel = self._foxglove.Channel(topic, schema=STATUS_SCHEMA, message_encoding="json",
                                             context=self._context)
            self._channels[topic] = channel
        return channel

    def publish_image(self, topic: str, image: ImageMessage) -> None:
        from foxglove.messages import RawImage, Timestamp

        sec, nanosec = image.stamp
        message = RawImage(timestamp=Timestamp(sec, nanosec), frame_id=image.frame_id,
                           width=image.width, height=image.height, encoding=image.encoding,
                           step=image.step, data=image.pixels.tobytes())
        self._image_channel(topic).log(message, log_time=image.stamp_ns)

    def publish_status(self, topic: str, text: str) -> None:
        self._status_channel(topic).log(text.encode("utf-8"))

    def close(self) -> None:
        """Stop the server and finish the MCAP file, if any; safe to call more than once."""
        for channel in self._channels.values():
            channel.close()
        self._channels.clear()
        if self._server is not None:
            self._server.stop()
            self._server = None
        if self._mcap is not None:
            self._mcap.close()
            self._mcap = None
