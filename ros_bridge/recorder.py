"""Record the bridged messages as a rosbag2 with MCAP storage, written by ``rosbags``.

A rosbag2 is a folder: ``run/metadata.yaml`` plus ``run/run.mcap``. ``--record run.mcap`` names
the MCAP file; the folder is the same path without the suffix. ``ros2 bag info run`` reads the
folder, Foxglove opens ``run/run.mcap``. Messages are stamped with the time the bridge wrote them
(as ``ros2 bag record`` does); the capture time is in each image's ``header.stamp``.
"""

from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from iapc.errors import UserError
from iapc.ros_bridge.ros_messages import (
    IMAGE_TYPE,
    STRING_TYPE,
    ImageMessage,
    ros2_typestore,
    serialize_image,
    serialize_string,
)

if TYPE_CHECKING:
    from rosbags.interfaces import Connection
    from rosbags.typesys.store import Typestore

# rosbag2 metadata version 8 (ROS 2 Iron and newer); the oldest that rosbags writes.
BAG_VERSION = 8


def bag_paths(record: str | Path) -> tuple[Path, Path]:
    """``run.mcap`` (or ``run``) -> (bag folder ``run``, MCAP file ``run/run.mcap``)."""
    path = Path(record)
    folder = path.with_suffix("") if path.suffix == ".mcap" else path
    return folder, folder / f"{folder.name}.mcap"


class McapRecorder:
    """A bridge sink that appends every image and status message to a rosbag2 (MCAP)."""

    def __init__(self, record: str | Path, typestore: "Typestore | None" = None) -> None:
        from rosbags.rosbag2 import StoragePlugin, Writer

        self.bag_dir, self.mcap_path = bag_paths(record)
        if self.bag_dir.exists():
            raise UserError(
                f"{self.bag_dir} exists: pass a new --record path (a bag is never overwritten)"
            )
        if not self.bag_dir.parent.is_dir():
            raise UserError(f"folder {self.bag_dir.parent} does not exist: create it first")
        self.typestore = typestore or ros2_typestore()
        self.messages = 0
        self._connections: dict[str, "Connection"] = {}
        self._writer = Writer(self.bag_dir, version=BAG_VERSION,
                              storage_plugin=StoragePlugin.MCAP)
        self._writer.open()

    def _connection(self, topic: str, msgtype: str) -> "Connection":
        if self._writer is None:
            raise RuntimeError("McapRecorder is closed")
        connection = self._connections.get(topic)
        if connection is None:
            connection = self._writer.add_connection(topic, msgtype, typestore=self.typestore)
            self._connections[topic] = connection
        return connection

    def _write(self, topic: str, msgtype: str, data: bytes) -> None:
        self._writer.write(self._connection(topic, msgtype), time.time_ns(), data)
        self.messages += 1

    def publish_image(self, topic: str, image: ImageMessage) -> None:
        self._write(topic, IMAGE_TYPE, serialize_image(image, self.typestore))

    def publish_status(self, topic: str, text: str) -> None:
        self._write(topic, STRING_TYPE, serialize_string(text, self.typestore))

    def close(self) -> None:
        """Write the MCAP summary and metadata.yaml; the bag is readable only after this.

        A bag that recorded nothing (the runtime never published, or the bridge failed) is
        removed, so a failed run leaves no empty folder; either way one line says what happened.
        """
        if self._writer is None:
            return
        writer, self._writer = self._writer, None
        writer.close()
        if self.messages == 0:
            shutil.rmtree(self.bag_dir, ignore_errors=True)
            print(f"iapc bridge: nothing recorded, no bag written ({self.bag_dir} removed)",
                  file=sys.stderr, flush=True)
            return
        print(f"iapc bridge: recorded {self.messages} messages in {self.mcap_path} (a rosbag2 "
              f"folder: 'ros2 bag info {self.bag_dir}'; Foxglove opens the .mcap)",
              file=sys.stderr, flush=True)
