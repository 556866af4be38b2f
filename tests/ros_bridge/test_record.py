"""`iapc bridge --record` read back with rosbags and mcap; the Foxglove view over a real WebSocket."""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import struct
import threading
import time

import numpy as np
import pytest
from mcap.reader import make_reader
from rosbags.rosbag2 import Reader

from iapc.ros_bridge import cli
from iapc.ros_bridge.foxglove_view import FoxgloveView
from iapc.ros_bridge.ros_messages import deserialize_image, mask_image
from iapc.runtime.protocol import MaskHeader
from iapc.runtime.publisher import MaskPublisher

COUNT = 30
HEIGHT, WIDTH = 12, 20
BASE_NS = 1_700_000_000_000_000_000


def published_mask(frame_id: int) -> np.ndarray:
    """Known content per frame: a gradient shifted by the frame id."""
    return ((np.arange(HEIGHT * WIDTH) + frame_id) % 19).astype(np.uint8).reshape(HEIGHT, WIDTH)


def capture_ns(frame_id: int) -> int:
    return BASE_NS + frame_id * 33_333_333


def publish_until(pub: MaskPublisher, done: threading.Event) -> None:
    """A runtime at about 50 fps: frame i carries published_mask(i) captured at capture_ns(i)."""
    frame_id = 0
    while not done.is_set():
        mask = published_mask(frame_id)
        pub.publish_mask(MaskHeader(frame_id=frame_id, capture_ns=capture_ns(frame_id),
                                    engine_version=1, height=HEIGHT, width=WIDTH,
                                    num_classes=19), mask)
        frame_id += 1
        time.sleep(0.02)


def run_cli(*argv: str) -> int:
    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    return cli.run(parser.parse_args(list(argv)))


def check_frame(frame_id: int, stamp: tuple[int, int], pixels: bytes) -> None:
    assert stamp == divmod(capture_ns(frame_id), 1_000_000_000)
    assert pixels == published_mask(frame_id).tobytes()


def frame_id_of(sec: int, nanosec: int) -> int:
    return round((sec * 1_000_000_000 + nanosec - BASE_NS) / 33_333_333)


def test_record_writes_a_rosbag2_mcap_that_rosbags_and_mcap_read_back(tmp_path):
    record = tmp_path / "run.mcap"
    done = threading.Event()
    with MaskPublisher("tcp://127.0.0.1:*") as pub:
        runtime = threading.Thread(target=publish_until, args=(pub, done), daemon=True)
        runtime.start()
        try:
            assert run_cli("--address", pub.endpoint, "--transport", "none", "--record",
                           str(record), "--count", str(COUNT), "--timeout", "10") == 0
        finally:
            done.set()
            runtime.join()

    bag_dir, mcap_file = tmp_path / "run", tmp_path / "run" / "run.mcap"
    with Reader(bag_dir) as reader:
        assert [c.topic for c in reader.connections] == ["/iapc/mask"]
        assert reader.connections[0].msgtype == "sensor_msgs/msg/Image"
        messages = [deserialize_image(data) for _, _, data in reader.messages()]
    assert len(messages) == COUNT
    frame_ids = [frame_id_of(m.header.stamp.sec, m.header.stamp.nanosec) for m in messages]
    assert frame_ids == sorted(set(frame_ids))  # in publishing order, none twice
    for frame_id, message in zip(frame_ids, messages):
        check_frame(frame_id, (message.header.stamp.sec, message.header.stamp.nanosec),
                    message.data.tobytes())
        assert (message.encoding, message.height, message.width, message.step) == \
            ("mono8", HEIGHT, WIDTH, WIDTH)
        assert message.header.frame_id == "camera"

    # The mcap library, with the CDR read by hand: stamp after the encapsulation header,
    # pixels at the end after their uint32 length.
    with open(mcap_file, "rb") as stream:
        records = list(make_reader(stream).iter_messages())
    assert len(records) == COUNT
    log_times = [message.log_time for _, _, message in records]
    assert log_times == sorted(log_times)
    for (schema, channel, message), frame_id in zip(records, frame_ids):
        assert (schema.name, channel.topic, channel.message_encoding) == \
            ("sensor_msgs/msg/Image", "/iapc/mask", "cdr")
        stamp = struct.unpack_from("<iI", message.data, 4)
        length = struct.unpack_from("<I", message.data, len(message.data) - HEIGHT * WIDTH - 4)[0]
        assert length == HEIGHT * WIDTH
        check_frame(frame_id, stamp, message.data[-HEIGHT * WIDTH:])


# -- Foxglove ------------------------------------------------------------------------------------


def websocket_connect(port: int) -> socket.socket:
    """Open a WebSocket with the Foxglove subprotocol (RFC 6455 handshake, no library needed)."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: foxglove.sdk.v1\r\n\r\n"
                  ).encode())
    response = b""
    while b"\r\n\r\n" not in response:
        response += sock.recv(1)
    assert response.startswith(b"HTTP/1.1 101"), response
    return sock


def read_exact(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        assert chunk, "server closed the WebSocket"
        data += chunk
    return data


def read_frame(sock: socket.socket) -> tuple[int, bytes]:
    """One unmasked server frame -> (opcode, payload)."""
    first, second = read_exact(sock, 2)
    length = second & 0x7F
    if length == 126:
        length = struct.unpack(">H", read_exact(sock, 2))[0]
    elif length == 127:
        length = struct.unpack(">Q", read_exact(sock, 8))[0]
    return first & 0x0F, read_exact(sock, length)


def send_text(sock: socket.socket, text: str) -> None:
    """One masked client text frame (clients must mask)."""
    payload, mask = text.encode(), os.urandom(4)
    header = bytes([0x81]) + (bytes([0x80 | len(payload)]) if len(payload) < 126
                              else bytes([0x80 | 126]) + struct.pack(">H", len(payload)))
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    sock.sendall(header + mask + masked)


def read_json_until(sock: socket.socket, op: str) -> dict:
    while True:
        opcode, payload = read_frame(sock)
        if opcode == 1 and json.loads(payload).get("op") == op:
            return json.loads(payload)


def test_foxglove_view_serves_images_to_a_websocket_client(tmp_path):
    mask = published_mask(5)
    image = mask_image(MaskHeader(frame_id=5, capture_ns=capture_ns(5), engine_version=1,
                                  height=HEIGHT, width=WIDTH, num_classes=19), mask, "camera")
    view = FoxgloveView(port=0, mcap_path=tmp_path / "view.mcap")
    try:
        view.publish_image("/iapc/mask", image)  # creates the channel
        view.publish_status("/iapc/status", '{"kind":"heartbeat"}')
        sock = websocket_connect(view.port)
        advertised = read_json_until(sock, "advertise")["channels"]
        by_topic = {channel["topic"]: channel for channel in advertised}
        assert by_topic["/iapc/mask"]["schemaName"] == "foxglove.RawImage"
        assert by_topic["/iapc/status"]["encoding"] == "json"
        send_text(sock, json.dumps({"op": "subscribe", "subscriptions": [
            {"id": 1, "channelId": by_topic["/iapc/mask"]["id"]}]}))
        deadline = time.monotonic() + 5
        while True:  # re-log until the subscription is in effect and a message frame arrives
            assert time.monotonic() < deadline, "no message data over the WebSocket"
            view.publish_image("/iapc/mask", image)
            sock.settimeout(0.2)
            try:
                opcode, payload = read_frame(sock)
            except TimeoutError:
                continue
            if opcode == 2 and payload[0] == 0x01:  # binary "message data" op
                break
        subscription_id, log_time = struct.unpack_from("<IQ", payload, 1)
        assert subscription_id == 1 and log_time == capture_ns(5)
        assert mask.tobytes() in payload[13:]  # RawImage.data inside the protobuf
        sock.close()
    finally:
        view.close()
    with open(tmp_path / "view.mcap", "rb") as stream:
        topics = [channel.topic for _, channel, _ in make_reader(stream).iter_messages()]
    assert "/iapc/mask" in topics and "/iapc/status" in topics


def test_record_says_where_the_bag_is_and_leaves_nothing_when_nothing_arrived(tmp_path, capsys):
    """`--record rec1.mcap` writes rec1/rec1.mcap and says so; a failed run leaves no folder."""
    from iapc.errors import UserError
    from iapc.runtime.publisher import MaskPublisher

    record = tmp_path / "rec1.mcap"
    with MaskPublisher("tcp://127.0.0.1:*") as pub:  # publishes nothing: the bridge times out
        with pytest.raises(UserError, match="check that the runtime is running"):
            run_cli("--address", pub.endpoint, "--transport", "none", "--record", str(record),
                    "--count", "1", "--timeout", "0.5")
    assert not (tmp_path / "rec1").exists() and not record.exists()
    assert f"nothing recorded, no bag written ({tmp_path / 'rec1'} removed)" in \
        capsys.readouterr().err
