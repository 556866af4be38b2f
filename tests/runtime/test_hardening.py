"""Bad input to the real runtime and its clients: one line naming what is wrong and what to do,
a sensible exit status, nothing already written lost, nothing that hangs or loops.

Every test runs the real ``iapc-runtime`` (supervisor, inference process, daemon where it runs)
on loopback sockets and real files; adaptation is off where it is not the point (no daemon).
"""

import json
import os
import subprocess
import sys
import time
import urllib.request

import cv2
import numpy as np
import pytest
import torch

from support import free_port, runtime_command, start_runtime
from iapc.runtime.client import MaskSubscriber

pytestmark = pytest.mark.process  # starts real runtime or command processes: not in make test-fast

IAPC = [sys.executable, "-c", "from iapc.cli import main; main()"]
SMALL = ["--model", "tiny", "--input-size", "128x64", "--quiet"]


def run_once(*args, timeout=180):
    done = subprocess.run(runtime_command(*args), capture_output=True, text=True, timeout=timeout)
    return done.returncode, done.stderr.strip().splitlines(), done.stderr


def assert_one_error_line(code, lines, err, expected_code, *words):
    assert code == expected_code, f"exit {code}: {err[-2000:]}"
    assert len(lines) == 1 and "Traceback" not in err, err[-2000:]
    assert lines[0].startswith("iapc-runtime") and ": error: " in lines[0], lines
    for word in words:
        assert word in lines[0], lines[0]


@pytest.fixture(scope="module")
def bad_checkpoints(tmp_path_factory, tiny_checkpoint):
    folder = tmp_path_factory.mktemp("bad")
    data = tiny_checkpoint.read_bytes()
    (folder / "empty.pt").write_bytes(b"")
    (folder / "truncated.pt").write_bytes(data[: len(data) // 2])
    (folder / "text.pt").write_text("not a checkpoint\n")
    from iapc.adapt.models import build_model

    torch.save(build_model("tiny"), folder / "pickled.pt")  # a whole module: pickled code
    payload = torch.load(tiny_checkpoint, weights_only=True)
    del payload["num_classes"]  # loads, then the daemon crashes before its first heartbeat
    torch.save(payload, folder / "crashing.pt")
    return folder


@pytest.mark.parametrize("name, words", [
    ("empty.pt", ["is empty (0 bytes)", "copy or download it again"]),
    ("truncated.pt", ["is truncated or damaged", "copy or download it again"]),
    ("text.pt", ["is not a PyTorch checkpoint"]),
])
def test_an_unusable_checkpoint_stops_the_runtime_before_any_process(bad_checkpoints, tmp_path,
                                                                     name, words):
    started = time.monotonic()
    code, lines, err = run_once("--checkpoint", str(bad_checkpoints / name), "--run-dir",
                                str(tmp_path / "run"), "--no-adapt", *SMALL, timeout=60)
    assert_one_error_line(code, lines, err, 2, str(bad_checkpoints / name), *words)
    assert "miniz" not in err
    assert not (tmp_path / "run").exists()  # checked before anything was started or written
    assert time.monotonic() - started < 60


def test_a_pickled_checkpoint_is_refused_by_the_daemon_in_one_line(bad_checkpoints, tmp_path):
    code, lines, err = run_once("--checkpoint", str(bad_checkpoints / "pickled.pt"), "--run-dir",
                                str(tmp_path / "run"), "--synthetic", "fog", *SMALL)
    assert_one_error_line(code, lines, err, 2, "holds pickled Python objects",
                          "state_dict()")


def test_a_checkpoint_without_its_class_count_is_refused_before_any_process(bad_checkpoints,
                                                                            tmp_path):
    code, lines, err = run_once("--checkpoint", str(bad_checkpoints / "crashing.pt"), "--run-dir",
                                str(tmp_path / "run"), "--synthetic", "fog", *SMALL, timeout=120)
    assert_one_error_line(code, lines, err, 2, "could not be loaded", "num_classes")
    assert not (tmp_path / "run" / "daemon.log").exists()  # no daemon was started


def test_a_daemon_that_never_starts_is_given_up_after_a_few_tries(tiny_checkpoint, tmp_path):
    # a device name torch cannot parse: the daemon dies in its constructor, every time
    started = time.monotonic()
    code, lines, err = run_once("--checkpoint", str(tiny_checkpoint), "--run-dir",
                                str(tmp_path / "run"), "--synthetic", "fog", "--adapt-device",
                                "no-such-device", *SMALL, timeout=240)
    assert code == 1 and "Traceback" not in err, err[-2000:]
    # a restart notice per try, then the one line that says why the runtime gave up
    assert all("restarting in" in line for line in lines[:-1]) and len(lines) == 3, lines
    assert_one_error_line(code, lines[-1:], err.splitlines()[-1], 1,
                          "before it started, 3 times in a row", "daemon.log", "--no-adapt")
    assert time.monotonic() - started < 240


@pytest.mark.parametrize("name, words", [
    ("empty.pt", ["is empty (0 bytes)"]),
    ("truncated.pt", ["is truncated or damaged"]),
    ("pickled.pt", ["holds pickled Python objects"]),
])
def test_iapc_evaluate_refuses_bad_checkpoints_in_one_line(bad_checkpoints, name, words):
    done = subprocess.run(IAPC + ["evaluate", "--checkpoint",
                           str(bad_checkpoints / name), "--root", str(bad_checkpoints)],
                          capture_output=True, text=True, timeout=120)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2 and len(lines) == 1, done.stderr[-2000:]
    assert "Traceback" not in done.stderr and "miniz" not in done.stderr
    assert all(word in lines[0] for word in words), lines[0]


def test_a_second_runtime_on_a_run_folder_in_use_refuses_naming_the_pid(tiny_checkpoint,
                                                                         tmp_path):
    run_dir, port = tmp_path / "run", free_port()
    args = ["--checkpoint", str(tiny_checkpoint), "--run-dir", str(run_dir), "--no-adapt",
            "--synthetic", "fog", "--fps", "10", "--publish", f"tcp://127.0.0.1:{port}", *SMALL]
    with MaskSubscriber(f"tcp://127.0.0.1:{port}") as sub:
        first = start_runtime(*args)
        try:
            sub.receive(timeout=120)  # serving
            config = (run_dir / "config.json").read_text()
            code, lines, err = run_once(*args[:-len(SMALL)], "--publish",
                                        f"tcp://127.0.0.1:{free_port()}", *SMALL, timeout=60)
            assert_one_error_line(code, lines, err, 2, f"run folder {run_dir} is in use",
                                  f"pid {first.pid}", "--run-dir")
            assert (run_dir / "config.json").read_text() == config  # the live one's, untouched
            sub.receive(timeout=10)  # and the first one still serves
        finally:
            first.terminate()
            first.communicate(timeout=60)
    assert first.returncode == 0


def make_store(tmp_path, checkpoint):
    """An 'adapted' store: v1 from ``checkpoint``, v2 from other weights (current)."""
    from iapc.adapt.models import build_model
    from iapc.export.onnx_export import export_onnx
    from iapc.engines.store import EngineStore

    store = EngineStore(tmp_path / "adapted")
    source, _ = __import__("iapc.adapt.checkpoint", fromlist=["load_model"]).load_model(
        checkpoint, "tiny")
    store.publish(export_onnx(source.eval(), tmp_path / "v1.onnx", frame_size=(128, 64)))
    torch.manual_seed(123)
    other = build_model("tiny").eval()
    store.publish(export_onnx(other, tmp_path / "v2.onnx", frame_size=(128, 64)))
    return store


def first_masks(args, port, count=3):
    with MaskSubscriber(f"tcp://127.0.0.1:{port}", newest_wins=False) as sub:
        process = start_runtime(*args)
        got = [sub.receive(timeout=120) for _ in range(count)]
        process.terminate()
        _out, err = process.communicate(timeout=60)
    return got, process.returncode, err.decode()


def test_no_adapt_serves_the_source_engine_and_resume_latest_the_store(tiny_checkpoint, tmp_path):
    store = make_store(tmp_path, tiny_checkpoint)
    before = sorted(p.name for p in store.root.iterdir())
    common = ["--checkpoint", str(tiny_checkpoint), "--store", str(store.root), "--no-adapt",
              "--synthetic", "fog", "--fps", "10", *SMALL]
    port = free_port()
    source, code, err = first_masks([*common, "--run-dir", str(tmp_path / "a"), "--publish",
                                     f"tcp://127.0.0.1:{port}"], port)
    assert code == 0, err
    config = json.loads((tmp_path / "a" / "config.json").read_text())
    assert "source-engines" in config["store"]  # not the adapted store
    port = free_port()
    latest, code, err = first_masks([*common, "--resume-latest", "--run-dir",
                                     str(tmp_path / "b"), "--publish",
                                     f"tcp://127.0.0.1:{port}"], port)
    assert code == 0, err
    assert {h.engine_version for h, _ in latest} == {2}  # the store's current version
    # same frames (same seed), different engines: the source masks are the source model's
    assert any(not np.array_equal(a, b) for (_, a), (_, b) in zip(source, latest))
    assert sorted(p.name for p in store.root.iterdir()) == before  # the store is untouched


def test_images_run_ends_with_end_status_summary_and_counts_unreadable(tiny_checkpoint,
                                                                       tmp_path):
    """Corrupt images counted; boot_id in every header; end status; one summary line; the
    engine version metric reads the engine in service; `iapc subscribe` ends on its own."""
    images = tmp_path / "images"
    images.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        cv2.imwrite(str(images / f"{i:03d}.png"), rng.integers(0, 255, (64, 128, 3), np.uint8))
    (images / "004.png").write_bytes(b"\x89PNG broken")
    (images / "009.png").write_bytes(b"")
    port, metrics_port = free_port(), free_port()
    subscribe = subprocess.Popen(IAPC + ["subscribe", "--address",
                                  f"tcp://127.0.0.1:{port}", "--topics", "mask", "--timeout",
                                  "120"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                 text=True)
    with MaskSubscriber(f"tcp://127.0.0.1:{port}", topics=(b"mask", b"status"),
                        newest_wins=False) as sub:
        time.sleep(1.0)  # both subscribers connect before the first frame (PUB drops until then)
        process = start_runtime("--checkpoint", str(tiny_checkpoint), "--images", str(images),
                                "--fps", "2", "--no-adapt", "--run-dir", str(tmp_path / "run"),
                                "--publish", f"tcp://127.0.0.1:{port}", "--metrics-port",
                                str(metrics_port), *SMALL)
        messages = []
        metric = None
        while True:
            message = sub.receive_any(timeout=120)
            messages.append(message)
            if message.header is not None and metric is None:
                body = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics").read()
                metric = [line for line in body.decode().splitlines()
                          if line.startswith("iapc_engine_version ")]
            if message.status is not None and message.status["kind"] == "end":
                break
        _out, err = process.communicate(timeout=60)
    out, sub_err = subscribe.communicate(timeout=60)
    assert process.returncode == 0, err
    assert metric == ["iapc_engine_version 1.0"]
    headers = [m.header for m in messages if m.header is not None]
    statuses = [m.status for m in messages if m.status is not None]
    assert len(headers) == 10
    boot_ids = {h.boot_id for h in headers} | {s["boot_id"] for s in statuses}
    assert len(boot_ids) == 1 and len(boot_ids.pop()) == 16
    assert statuses[-1]["reason"] == "source_ended" and statuses[-1]["frames_published"] == 10
    assert [s for s in statuses if s["kind"] == "heartbeat"][-1]["frames_unreadable"] == 2
    lines = err.decode().strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("iapc-runtime: 10 frames published"), lines
    assert "2 unreadable files" in lines[0] and "source engine v1 in service" in lines[0]
    assert str(tmp_path / "run") in lines[0]
    assert subscribe.returncode == 0, sub_err
    assert out.strip().splitlines()[-1] == "stream ended (source_ended) after 10 frames"


def test_a_video_file_plays_at_its_own_frame_rate_unless_fps_is_given(tmp_path):
    from iapc.runtime.cli import build_parser, config_from_args

    video = tmp_path / "ten.avi"
    writer = cv2.VideoWriter(str(video), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, (64, 32))
    for _ in range(5):
        writer.write(np.zeros((32, 64, 3), np.uint8))
    writer.release()
    assert config_from_args(build_parser().parse_args(["--video", str(video)])).source.fps == 10.0
    given = build_parser().parse_args(["--video", str(video), "--fps", "25"])
    assert config_from_args(given).source.fps == 25.0


def test_a_client_without_curve_keys_is_told_to_use_them(tmp_path):
    from iapc.errors import UserError
    from iapc.runtime import subscribe_cli
    from iapc.runtime.publisher import MaskPublisher
    from iapc.runtime.security import generate_keys, load_server_keys

    keys = generate_keys(tmp_path / "keys", clients=("car",))
    with MaskPublisher("tcp://127.0.0.1:*", curve=load_server_keys(keys)) as pub:
        import argparse

        parser = argparse.ArgumentParser()
        subscribe_cli.add_arguments(parser)
        # the refusal ends the wait as soon as the handshake fails: the timeout is only a bound
        args = parser.parse_args(["--address", pub.endpoint, "--count", "1", "--timeout", "60"])
        with pytest.raises(UserError, match="requires CURVE encryption: pass its public key"):
            subscribe_cli.run(args)
