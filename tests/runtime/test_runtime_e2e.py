"""End to end: the real runtime (supervisor, inference process, adaptation daemon) on a synthetic
stream, observed through the client library."""

import json
import signal
import time

from support import free_port, start_runtime
from iapc.runtime import run_folder
from iapc.runtime.client import MaskSubscriber

FRAMES = 240


def runtime_args(run_dir, port, checkpoint, frames=FRAMES):
    config = run_dir.parent / "runtime.yaml"
    # Small export interval so that several versions are deployed within the test; the daemon
    # keeps normal priority and no duty-cycle limit so the test does not depend on how busy
    # the machine is.
    config.write_text("adaptation:\n  nice: 0\n  duty_cycle: 1.0\n  export_every_steps: 3\n"
                      "  batch_size: 2\n")
    return ["--config", str(config), "--synthetic", "fog", "--fps", "20", "--max-frames", str(frames),
            "--checkpoint", str(checkpoint), "--model", "tiny", "--input-size", "128x64",
            "--run-dir", str(run_dir), "--publish", f"tcp://127.0.0.1:{port}",
            "--quiet"]


def collect(port, args, timeout=100.0):
    """Start the runtime with ``args``; every mask header it publishes until it exits."""
    headers = []
    # subscribed before the runtime starts, so that not even the first mask is missed
    with MaskSubscriber(f"tcp://127.0.0.1:{port}", newest_wins=False) as sub:
        process = start_runtime(*args)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                header, mask = sub.receive(timeout=0.5)
            except TimeoutError:
                if process.poll() is not None:
                    break
                continue
            assert mask.shape == (64, 128) and mask.max() < 19
            headers.append(header)
    return headers, process


def test_runtime_streams_adapts_swaps_and_resumes(tmp_path, tiny_checkpoint):
    run_dir, port = tmp_path / "run", free_port()
    headers, process = collect(port, runtime_args(run_dir, port, tiny_checkpoint))
    out, err = process.communicate(timeout=30)
    assert process.returncode == 0, err.decode()[-2000:]

    ids = [h.frame_id for h in headers]
    assert ids == list(range(FRAMES)), f"frames missing or out of order: {ids[:10]}..."
    versions = [h.engine_version for h in headers]
    assert versions == sorted(versions), "engine version went backwards"
    assert len(set(versions)) >= 3, f"expected at least two hot swaps, saw versions {set(versions)}"

    summary = json.loads((run_dir / run_folder.INFERENCE_SUMMARY).read_text())
    assert summary["frames_published"] == FRAMES
    assert summary["frames_failed"] == 0 and summary["capture_dropped"] == 0
    assert len(summary["swaps"]) >= 2
    assert summary["torch_loaded"] is False, "the inference process imported torch"
    last_version = summary["engine_version"]

    # A restart resumes from the last engine in the store (and the daemon from its checkpoint).
    port = free_port()
    headers, process = collect(port, runtime_args(run_dir, port, tiny_checkpoint, frames=20))
    process.communicate(timeout=30)
    assert process.returncode == 0
    assert headers and headers[0].engine_version >= last_version


def test_sigterm_shuts_down_cleanly(tmp_path, tiny_checkpoint):
    run_dir, port = tmp_path / "run", free_port()
    process = start_runtime(*runtime_args(run_dir, port, tiny_checkpoint, frames=100000))
    with MaskSubscriber(f"tcp://127.0.0.1:{port}") as sub:
        sub.receive(timeout=60)  # running
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=40)
    assert process.returncode == 0, err.decode()[-2000:]
    assert (run_dir / run_folder.INFERENCE_SUMMARY).is_file()
