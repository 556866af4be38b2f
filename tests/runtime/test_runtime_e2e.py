"""End to end: the real runtime (supervisor, inference process, adaptation daemon) on a synthetic
stream, observed through the client library."""

import json
import signal
import time

import pytest

from support import FRAMES, collect, free_port, runtime_args, start_runtime
from iapc.contracts import run_folder
from iapc.runtime.client import MaskSubscriber

pytestmark = pytest.mark.process  # starts real runtime or command processes: not in make test-fast


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
