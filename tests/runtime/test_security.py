"""Security and bad input: CURVE keys (owner-only, allow-list enforced on real sockets), loopback
by default, and one-line errors from the real ``iapc-runtime`` command."""

import os
import stat
import subprocess
import sys
import time

import numpy as np
import pytest

from support import free_port, runtime_command
from iapc.errors import UserError
from iapc.runtime.client import MaskSubscriber
from iapc.runtime.protocol import MaskHeader
from iapc.runtime.publisher import MaskPublisher
from iapc.runtime.security import (generate_keys, load_client_keys, load_public_key,
                                   load_server_keys)


def mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    return generate_keys(tmp_path_factory.mktemp("k") / "keys", clients=("car", "laptop"))


def test_keys_are_owner_only_and_clients_are_allow_listed(keys):
    assert mode(keys) == 0o700 and mode(keys / "authorized") == 0o700
    files = list(keys.rglob("*.key*"))
    assert {p.name for p in files} >= {"server.key", "server.key_secret", "car.key_secret"}
    assert all(mode(p) == 0o600 for p in files)
    assert sorted(p.name for p in (keys / "authorized").iterdir()) == ["car.key", "laptop.key"]
    with pytest.raises(UserError, match="already holds keys"):
        generate_keys(keys)


def test_a_secret_readable_by_others_is_refused(tmp_path):
    keys = generate_keys(tmp_path / "keys")
    os.chmod(keys / "server.key_secret", 0o644)
    with pytest.raises(UserError, match="chmod 600"):
        load_server_keys(keys)
    with pytest.raises(UserError, match="is not a folder"):
        load_server_keys(tmp_path / "keys" / "missing")


def test_store_and_run_folders_are_owner_only(tmp_path):
    from iapc.engines.store import EngineStore
    from iapc.runtime.config import RuntimeConfig
    from iapc.runtime.supervisor import lock_run_dir

    onnx = tmp_path / "model.onnx"
    onnx.write_bytes(b"not really onnx")
    store = EngineStore(tmp_path / "store")
    version = store.publish(onnx)
    assert mode(store.root) == 0o700 and mode(version.path) == 0o700
    assert all(mode(p) == 0o600 for p in version.path.iterdir())
    run_dir, locks = lock_run_dir(RuntimeConfig(run_dir=str(tmp_path / "run")))
    assert mode(run_dir) == 0o700
    for lock in locks:
        lock.close()


def send_until_received(publisher, subscriber, seconds):
    """Publish masks for ``seconds``; the frame ids the subscriber received."""
    mask = np.zeros((8, 16), np.uint8)
    got, frame_id, deadline = [], 0, time.monotonic() + seconds
    while time.monotonic() < deadline:
        publisher.publish_mask(MaskHeader(frame_id=frame_id, capture_ns=1, engine_version=1,
                                          height=8, width=16, num_classes=19), mask)
        frame_id += 1
        try:
            got.append(subscriber.receive(timeout=0.05)[0].frame_id)
        except TimeoutError:
            pass
    return got


def test_only_allow_listed_clients_receive(keys, tmp_path):
    server_key = load_public_key(keys / "server.key")
    stranger = generate_keys(tmp_path / "stranger", clients=("stranger",))
    with MaskPublisher("tcp://127.0.0.1:*", curve=load_server_keys(keys)) as pub:
        allowed = MaskSubscriber(pub.endpoint, curve_server_key=server_key,
                                 curve_client_keys=load_client_keys(keys / "car.key_secret"))
        unlisted = MaskSubscriber(pub.endpoint, curve_server_key=server_key,
                                  curve_client_keys=load_client_keys(stranger / "stranger.key_secret"))
        plain = MaskSubscriber(pub.endpoint)
        with allowed, unlisted, plain:
            assert send_until_received(pub, allowed, 2.0), "the allow-listed client got nothing"
            assert send_until_received(pub, unlisted, 1.0) == []
            assert send_until_received(pub, plain, 1.0) == []


def test_remote_addresses_need_curve_or_insecure(keys):
    with pytest.raises(UserError, match="--curve-keys DIR or --insecure"):
        MaskPublisher("tcp://0.0.0.0:*")
    with MaskPublisher("tcp://0.0.0.0:*", curve=load_server_keys(keys)) as pub:
        assert pub.endpoint.startswith("tcp://0.0.0.0:")
    with pytest.raises(UserError, match="both the server's public key"):
        MaskSubscriber("tcp://127.0.0.1:5555", curve_server_key=load_public_key(keys / "server.key"))


def test_iapc_keys_command(tmp_path):
    out = tmp_path / "made"
    done = subprocess.run([sys.executable, "-c", "from iapc.cli import main; main()", "keys",
                           "--out", str(out), "--clients", "a"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    assert f"--curve-keys {out}" in done.stdout
    assert (out / "authorized" / "a.key").is_file() and mode(out / "a.key_secret") == 0o600



@pytest.mark.process
def test_iapc_subscribe_with_curve_keys_receives(keys):
    """The command-line client authenticates with the key files 'iapc keys' wrote."""
    with MaskPublisher("tcp://127.0.0.1:*", curve=load_server_keys(keys)) as pub:
        client = subprocess.Popen(
            [sys.executable, "-c", "from iapc.cli import main; main()", "subscribe",
             "--address", pub.endpoint, "--topics", "mask", "--count", "1", "--timeout", "30",
             "--curve-server-key", str(keys / "server.key"),
             "--curve-client-secret", str(keys / "laptop.key_secret")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        header = MaskHeader(frame_id=7, capture_ns=time.time_ns(), engine_version=3, height=4,
                            width=6, num_classes=19)
        while client.poll() is None:  # publish until the client has connected and printed one
            pub.publish_mask(header, np.zeros((4, 6), dtype=np.uint8))
            time.sleep(0.05)
        out, err = client.communicate(timeout=30)
    assert client.returncode == 0, err
    assert "mask" in out and "7" in out

# -- bad input through the real command: one line on stderr, exit 2 ---------------------------

def bad_input_cases(tmp_path, checkpoint):
    (tmp_path / "broken.yaml").write_text("adaptation: [unclosed\n")
    (tmp_path / "typed.yaml").write_text("input_size: wide\n")
    (tmp_path / "unknown.yaml").write_text("adaptation:\n  learning_rate: 0.1\n")
    (tmp_path / "plain_file").write_text("not a camera")

    def run(name):  # cases that start processes run side by side: own folder and port each
        return ["--run-dir", str(tmp_path / name), "--quiet", "--checkpoint", str(checkpoint),
                "--input-size", "128x64", "--synthetic", "fog",
                "--publish", f"tcp://127.0.0.1:{free_port()}"]

    return {
        "unknown option": (["--frobnicate"], "unrecognized arguments: --frobnicate"),
        "bad size": (["--input-size", "100x7"], "use at least 32x32"),
        "missing config": (["--config", str(tmp_path / "none.yaml")], "does not exist"),
        "malformed config": (["--config", str(tmp_path / "broken.yaml")], "not valid YAML"),
        "wrong type": (["--config", str(tmp_path / "typed.yaml")],
                       "config.input_size must be a list of 2 integers"),
        "unknown key": (["--config", str(tmp_path / "unknown.yaml")],
                        "unknown option config.adaptation.learning_rate"),
        "missing camera": (["--camera", str(tmp_path / "video9"), "--quiet"],
                           "No such file or directory"),
        "not a camera": (["--camera", str(tmp_path / "plain_file"), "--quiet"],
                         "is not a video device"),
        "remote without curve": ([*run("r1"), "--publish", "tcp://0.0.0.0:5599"], "--insecure"),
        "missing keys": ([*run("r2"), "--curve-keys", str(tmp_path / "nokeys")], "is not a folder"),
        "wrong architecture": ([*run("r3"), "--model", "deeplabv3_mobilenet_v3_large"],
                               "holds a tiny, not a deeplabv3_mobilenet_v3_large"),
        "wrong class count": ([*run("r4"), "--num-classes", "7"], "has 19 classes, not 7"),
    }


@pytest.mark.process
def test_bad_input_is_one_line_exit_2(tmp_path, tiny_checkpoint):
    cases = bad_input_cases(tmp_path, tiny_checkpoint)
    # all at once: the checkpoint cases start the real supervisor and daemon
    running = {name: subprocess.Popen(runtime_command(*args), stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True)
               for name, (args, _words) in cases.items()}
    for name, process in running.items():
        _out, err = process.communicate(timeout=120)
        lines = err.strip().splitlines()
        assert process.returncode == 2, f"{name}: exit {process.returncode}: {err[-1500:]}"
        assert len(lines) == 1 and "Traceback" not in err, f"{name}: {err[-1500:]}"
        assert lines[0].startswith("iapc-runtime") and ": error: " in lines[0], f"{name}: {err}"
        assert cases[name][1] in lines[0], f"{name}: {lines[0]}"


# -- a hostile publisher: whatever arrives, the client neither crashes nor hangs ----------------

@pytest.fixture()
def raw_publisher():
    """A bare PUB socket on a loopback port: it sends whatever a test gives it, well-formed or not."""
    import zmq

    context = zmq.Context()
    socket = context.socket(zmq.PUB)
    try:
        socket.bind("tcp://127.0.0.1:*")
        yield socket
    finally:  # also when the test fails: an open socket would keep its context (and pytest) alive
        socket.close(linger=0)
        context.term()


def good_mask_message() -> list[bytes]:
    from iapc.runtime.protocol import TOPIC_MASK, encode_mask_message

    mask = np.ones((4, 4), np.uint8)
    good = encode_mask_message(TOPIC_MASK, MaskHeader(frame_id=0, capture_ns=1, engine_version=1,
                                                      height=4, width=4, num_classes=19), mask)
    return [bytes(good[0]), bytes(good[1]), mask.tobytes()]


def rejection_cases(good: list[bytes]) -> dict[str, list[bytes]]:
    """One message for each kind of rejection the client must survive, by the error it raises."""
    topic, header, payload = good
    return {
        "FrameCountError": [topic, header],
        "UnsupportedVersionError": [topic, header.replace(b'"v":1', b'"v":7'), payload],
        "HeaderJSONError": [topic, b"{not json", payload],
        "PayloadSizeError": [topic, header, payload[:-1]],
        "UnknownTopicError": [b"maskx", header, payload],
    }


def published_until_received(sub: MaskSubscriber, publisher, message: list[bytes]) -> None:
    """Send ``message``, then a good one, and wait until the good one arrives: ZeroMQ keeps the
    order, so the first has then been handled too."""
    received = sub.counters.received
    publisher.send_multipart(message)
    publisher.send_multipart(good_mask_message())
    deadline = time.monotonic() + 5
    while sub.counters.received == received:
        assert time.monotonic() < deadline, "the subscriber stopped receiving"
        time.sleep(0.01)


def test_fuzzed_messages_over_a_real_socket_never_stop_the_subscriber(raw_publisher):
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st
    import zmq

    good = good_mask_message()
    with MaskSubscriber(raw_publisher.getsockopt_string(zmq.LAST_ENDPOINT),
                        topics=(b"mask", b"status")) as sub:
        while sub.counters.received == 0:  # joined
            raw_publisher.send_multipart(good)
            time.sleep(0.02)

        # every required rejection, given explicitly: each is counted under its own error
        for kind, message in rejection_cases(good).items():
            before = sub.counters.rejected.get(kind, 0)
            published_until_received(sub, raw_publisher, message)
            assert sub.counters.rejected.get(kind, 0) == before + 1, kind

        # random messages on a subscribed topic on top (others are filtered out by ZeroMQ before
        # the client), from a fixed seed: whatever they are, the client goes on receiving
        frame = st.one_of(st.binary(max_size=40), st.sampled_from([b"mask", b"conf", b"status"]),
                          st.just(good[1]), st.just(good[1].replace(b'"v":1', b'"v":7')))
        message = st.builds(lambda topic, rest: [topic, *rest],
                            st.sampled_from([b"mask", b"status", b"maskx"]),
                            st.lists(frame, max_size=4))

        @settings(max_examples=150, deadline=None, derandomize=True, database=None,
                  suppress_health_check=list(HealthCheck))
        @given(message)
        def send(frames):
            raw_publisher.send_multipart(frames)

        send()
        published_until_received(sub, raw_publisher, good)
        assert sub.counters.rejected_total >= len(rejection_cases(good))
