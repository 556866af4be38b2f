"""Every adaptation method through the same real runtime: masks flow, and the methods that
change the model deploy new engines through the same export, gates and hot swap."""

from __future__ import annotations

import json

import pytest

from support import collect, free_port, runtime_args
from iapc.engines.store import EngineStore
from iapc.contracts import run_folder

pytestmark = pytest.mark.process  # starts real runtime or command processes: not in make test-fast

FRAMES = 120


@pytest.mark.parametrize("method", ["none", "bn", "tent", "iapc"])
def test_runtime_serves_each_method(tmp_path, tiny_checkpoint, method):
    run_dir, port = tmp_path / "run", free_port()
    args = runtime_args(run_dir, port, tiny_checkpoint, frames=FRAMES) + ["--method", method]
    headers, process = collect(port, args)
    _, err = process.communicate(timeout=30)
    assert process.returncode == 0, err.decode()[-2000:]
    assert [h.frame_id for h in headers] == list(range(FRAMES))
    versions = [h.engine_version for h in headers]
    summary = json.loads((run_dir / run_folder.INFERENCE_SUMMARY).read_text())
    if method == "none":  # nothing to adapt: the first engine serves the whole run
        assert set(versions) == {1} and not summary["swaps"]
    else:
        assert len(set(versions)) >= 2, f"{method}: no hot swap, versions {set(versions)}"
    current = EngineStore(run_dir / run_folder.STORE).current()
    assert current.number >= max(versions)  # the daemon may deploy after the last frame
    assert current.manifest["method"] == method and current.manifest["input_size"] == [128, 64]
