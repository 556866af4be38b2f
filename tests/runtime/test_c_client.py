"""The C client of examples/c_client/, written from docs/PROTOCOL.md alone, against the real
runtime and the Python client: what the document says is what the runtime sends.

Also a PUB socket sending broken messages, so that the client's checks (the document's
"Validation a client must do") are seen to fire."""

import re
import shutil
import subprocess
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import zmq

from support import free_port, start_runtime
from iapc.runtime.client import MaskSubscriber
from iapc.runtime.protocol import MaskHeader, encode_mask_message, encode_status

SOURCE = Path(__file__).resolve().parents[2] / "examples" / "c_client"
FRAMES = 40
SYSTEM_DEPS = "run 'make system-deps' (apt-get installs gcc make pkg-config libzmq3-dev libjansson-dev)"
MASK_LINE = re.compile(r"mask frame_id=(\d+) engine_version=(\d+) boot_id=(\S+) "
                       r"width=(\d+) height=(\d+) crc32=([0-9a-f]{8})")


@pytest.fixture(scope="module")
def c_client(tmp_path_factory) -> Path:
    """Builds examples/c_client with its Makefile and the system compiler (warnings are errors)."""
    missing = [tool for tool in ("gcc", "make", "pkg-config") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"cannot build the C client: {', '.join(missing)} not installed: "
                    f"{SYSTEM_DEPS}")
    for package in ("libzmq", "jansson"):
        if subprocess.run(["pkg-config", "--exists", package]).returncode != 0:
            pytest.skip(f"cannot build the C client: pkg-config finds no {package} headers: "
                        f"{SYSTEM_DEPS}")
    out = tmp_path_factory.mktemp("c_client")
    build = subprocess.run(["make", "-s", "-C", str(SOURCE), f"OUT={out}", "CC=gcc",
                            "WARNINGS=-Wall -Wextra -Werror"], capture_output=True, text=True)
    assert build.returncode == 0, f"the C client does not build:\n{build.stdout}{build.stderr}"
    return out / "mask_client"


@pytest.fixture(scope="module")
def varied_checkpoint(tmp_path_factory) -> Path:
    """The 'tiny' model of tiny_checkpoint with its classifier biases zeroed: random biases make
    every pixel the same class, and equal checksums for every frame would prove little."""
    import torch

    from iapc.adapt.checkpoint import save_checkpoint
    from iapc.adapt.models import build_model

    torch.manual_seed(0)
    model = build_model("tiny")
    with torch.no_grad():
        for conv in model.classifier:
            conv.bias.zero_()
    path = tmp_path_factory.mktemp("ckpt") / "tiny_varied.pt"
    save_checkpoint(path, "tiny", model, {"note": "test: masks that differ between frames"})
    return path


def mask_lines(stdout: str) -> list[tuple]:
    """(frame_id, engine_version, boot_id, width, height, crc32) per mask line, in order."""
    rows = []
    for line in stdout.splitlines():
        if line.startswith("mask "):
            match = MASK_LINE.fullmatch(line)
            assert match, f"unexpected mask line {line!r}"
            f, e, b, w, h, crc = match.groups()
            rows.append((int(f), int(e), b, int(w), int(h), crc))
    return rows


@pytest.mark.process
def test_c_client_agrees_with_the_python_client_on_a_real_runtime(tmp_path, varied_checkpoint,
                                                                  c_client):
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    started = time.monotonic()
    # Both subscribers connect before the runtime binds (ZeroMQ retries the connection until it
    # listens); the C client's silence timeout covers the runtime's start-up.
    client = subprocess.Popen([str(c_client), address, "60"], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    python_masks, statuses = {}, []
    with MaskSubscriber(address, topics=(b"mask", b"status"), newest_wins=False) as sub:
        runtime = start_runtime(
            "--checkpoint", str(varied_checkpoint), "--model", "tiny", "--synthetic", "fog",
            "--max-frames", str(FRAMES), "--fps", "20", "--input-size", "128x64", "--no-adapt",
            "--run-dir", str(tmp_path / "run"), "--publish", address, "--quiet")
        try:
            while time.monotonic() - started < 50:
                try:
                    message = sub.receive_any(timeout=1.0)
                except TimeoutError:
                    assert runtime.poll() is None, "the runtime exited without an end status"
                    continue
                if message.header is not None:
                    h = message.header
                    python_masks[h.frame_id] = (h.frame_id, h.engine_version, h.boot_id, h.width,
                                                h.height, f"{zlib.crc32(message.array.tobytes()):08x}")
                elif message.status["kind"] == "end":
                    statuses.append(message.status)
                    break
            _out, runtime_err = runtime.communicate(timeout=30)
        finally:
            if runtime.poll() is None:
                runtime.kill()
                runtime.wait()
    out, err = client.communicate(timeout=30)
    assert runtime.returncode == 0, runtime_err.decode()[-2000:]
    assert statuses, "the Python client saw no end status"
    # The runtime publishes as soon as it binds, so a subscriber can miss the first masks (PUB/SUB
    # slow joiner, as the document says); after that, neither may lose one.
    python_ids = sorted(python_masks)
    assert len(python_ids) >= FRAMES - 5 and python_ids == list(range(python_ids[0], FRAMES))

    assert client.returncode == 0, f"C client exited {client.returncode}: {err.strip()}"
    assert err == ""
    lines = out.splitlines()
    assert lines[-1] == f"end reason=source_ended frames_published={FRAMES}", lines[-3:]
    assert "status kind=heartbeat" in lines
    rows = mask_lines(out)
    c_ids = [r[0] for r in rows]
    assert len(c_ids) >= FRAMES - 5 and c_ids == list(range(c_ids[0], FRAMES)), c_ids
    # The same frames with the same engine, boot, size and bytes, as the Python client saw them.
    common = sorted(set(c_ids) & set(python_ids))
    assert len(common) >= FRAMES - 5
    assert [r for r in rows if r[0] in python_masks] == [python_masks[i] for i in common]
    assert len({r[2] for r in rows}) == 1 and re.fullmatch(r"[0-9a-f]{16}", rows[0][2])
    assert rows[0][3:5] == (128, 64)
    assert len({r[5] for r in rows}) >= len(rows) // 2, "masks barely differ: a weak comparison"
    assert statuses[0]["boot_id"] == rows[0][2]

PIXELS = np.array([[0, 0, 10], [13, 255, 1]], np.uint8)  # the document's 2 x 3 example
GOOD_LINE = (7, 2, "00112233aabbccdd", 3, 2, f"{zlib.crc32(PIXELS.tobytes()):08x}")


def good_mask() -> list[bytes]:
    header = MaskHeader(frame_id=7, capture_ns=time.time_ns(), engine_version=2, height=2, width=3,
                        num_classes=19, publish_ns=time.time_ns(), boot_id="00112233aabbccdd")
    return [bytes(memoryview(f)) for f in encode_mask_message(b"mask", header, PIXELS)]


def edited(old: str, new: str) -> list[bytes]:
    """The good mask with ``old`` replaced by ``new`` in its header text."""
    topic, header, payload = good_mask()
    assert old.encode() in header
    return [topic, header.replace(old.encode(), new.encode(), 1), payload]


END = encode_status({"kind": "end", "reason": "source_ended", "frames_published": 1})

BROKEN = [  # (what, message, part of the client's error line)
    ("two frames", good_mask()[:2], "has 2 frames"),
    ("four frames", good_mask() + [b""], "has 4 frames"),
    ("truncated JSON", edited('"00112233aabbccdd"}', '"00112233aabbccdd"'), "not UTF-8 JSON"),
    ("not UTF-8", [b"mask", good_mask()[1].replace(b"uint8", b"uint8\xff"), bytes(6)],
     "not UTF-8 JSON"),
    ("not an object", [b"mask", b"[1]", b""], "not a JSON object"),
    ("version 2", edited('"v":1', '"v":2'), "protocol version 2 is not supported"),
    ("no version", edited('"v":1,', ""), "missing required key 'v'"),
    ("version 1.0", edited('"v":1', '"v":1.0'), "key 'v' is not a JSON integer"),
    ("no width", edited('"width":3,', ""), "missing required key 'width'"),
    ("boolean frame id", edited('"frame_id":7', '"frame_id":true'), "'frame_id' is not a JSON integer"),
    ("negative engine", edited('"engine_version":2', '"engine_version":-1'), "'engine_version'=-1 is outside"),
    ("height 16385", edited('"height":2', '"height":16385'), "'height'=16385 is outside 1..16384"),
    ("uint16", edited('"uint8"', '"uint16"'), "key 'dtype' is 'uint16'"),
    ("conf encoding on mask", edited('"class_ids"', '"confidence_u8"'), "key 'encoding' is 'confidence_u8'"),
    ("numeric boot id", edited('"00112233aabbccdd"', "12"), "'boot_id' is not a JSON string"),
    ("short payload", good_mask()[:2] + [bytes(5)], "payload has 5 bytes, 2x3 uint8 needs 6"),
    ("status without kind", [b"status", b'{"v":1,"publish_ns":1}', b""], "without the key 'kind'"),
]


def run_client_against(c_client, messages, timeout_s="5"):
    """Runs the C client against a PUB socket that sends ``messages`` once the client has
    subscribed; its (exit status, stdout, stderr)."""
    context = zmq.Context()
    pub = context.socket(zmq.XPUB)  # XPUB: subscriptions arrive as messages, so no sleeping
    pub.setsockopt(zmq.LINGER, 0)
    port = pub.bind_to_random_port("tcp://127.0.0.1")
    client = subprocess.Popen([str(c_client), f"tcp://127.0.0.1:{port}", timeout_s],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        subscribed = set()
        while subscribed != {b"mask", b"status"}:
            assert pub.poll(10000), "the C client did not subscribe"
            subscribed.add(pub.recv()[1:])
        for frames in messages:
            pub.send_multipart(frames)
        out, err = client.communicate(timeout=20)
        return client.returncode, out, err
    finally:
        if client.poll() is None:
            client.kill()
            client.communicate()
        pub.close()
        context.term()


@pytest.mark.parametrize("what, frames, why", BROKEN, ids=[b[0] for b in BROKEN])
def test_c_client_stops_with_one_line_at_a_malformed_message(c_client, what, frames, why):
    status, out, err = run_client_against(c_client, [good_mask(), frames, END])
    assert status == 1, (out, err)
    assert mask_lines(out) == [GOOD_LINE]  # the good mask before it was printed
    assert "end" not in out
    assert err.count("\n") == 1 and err.startswith("mask_client: malformed message: "), err
    assert why in err


def test_c_client_ignores_what_a_later_revision_may_add(c_client):
    unknown_key = edited('"v":1,', '"v":1,"new_key":{"a":[1,2.5,null]},')
    messages = [
        [b"masks", b"not even JSON", b""],  # a topic that only starts with "mask"
        encode_status({"kind": "weather", "rain": True}),  # a kind it does not know
        [*encode_status({"kind": "heartbeat"})[:2], b"xyz"],  # a status payload is ignored
        unknown_key, END,
    ]
    status, out, err = run_client_against(c_client, messages)
    assert (status, err) == (0, ""), err
    assert out.splitlines() == ["status kind=weather", "status kind=heartbeat",
                                " ".join(["mask frame_id=7 engine_version=2",
                                          "boot_id=00112233aabbccdd width=3 height=2",
                                          f"crc32={GOOD_LINE[5]}"]),
                                "end reason=source_ended frames_published=1"]


def test_c_client_times_out_without_an_end_status(c_client):
    status, out, err = run_client_against(c_client, [good_mask()], timeout_s="0.5")
    assert status == 2 and mask_lines(out) == [GOOD_LINE]
    assert re.fullmatch(r"mask_client: no message from tcp://127\.0\.0\.1:\d+ in 0\.5 s "
                        r"\(1 masks received, no end status\)\n", err), err
