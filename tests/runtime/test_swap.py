"""EngineManager's contract, on a real engine store with stand-in runners: the current version is
loaded and warmed before the loop starts; a newer version is loaded, activated and warmed off the
hot path and only then offered; the loop's switch retires the old runner, which is released by
the watcher, never while it serves; a version that cannot be loaded (damaged, or refused by the
loader, e.g. built for another engine target) is rejected once, reported once and never retried,
and the engine in service stays."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from iapc.errors import UserError
from iapc.engines.store import EngineStore
from iapc.runtime.swap import EngineManager

SIZE = (32, 16)


class Runner:
    def __init__(self, version, fail=False):
        self.version, self.fail = version, fail
        self.active = False
        self.warmed = []
        self.deactivated_by = None

    def activate(self):
        if self.fail:
            raise RuntimeError("engine file is garbage")
        self.active = True

    def infer(self, batch):
        self.warmed.append(batch.shape)
        return {"mask": np.zeros(batch.shape[:3], np.uint8)}

    def deactivate(self):
        self.active = False
        self.deactivated_by = threading.current_thread().name


class Loader:
    """Runner per version; versions whose manifest says ``bad`` fail to activate, ``foreign``
    ones are refused by the loader itself."""

    def __init__(self):
        self.runners = {}

    def __call__(self, version):
        if version.manifest.get("foreign"):
            raise UserError(f"{version.name} was built for tensorrt fp16 on another GPU")
        runner = Runner(version.number, fail=bool(version.manifest.get("bad")))
        self.runners[version.number] = runner
        return runner


def publish(store, tmp_path, **manifest):
    path = tmp_path / f"m{len(store.versions())}.onnx"
    path.write_bytes(b"stand-in engine %d" % len(store.versions()))
    return store.publish(path, manifest_extra=manifest)


def wait_for(predicate, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


@pytest.fixture()
def parts(tmp_path):
    store = EngineStore(tmp_path / "store")
    loader = Loader()
    manager = EngineManager(store, loader, SIZE, poll_interval=0.02)
    yield store, loader, manager
    manager.close()


def test_the_current_version_is_loaded_and_warmed_before_the_loop(parts, tmp_path):
    store, loader, manager = parts
    assert not manager.load_initial(timeout=0.1)  # nothing published yet
    publish(store, tmp_path)
    assert manager.load_initial(timeout=2)
    assert manager.version == 1 and manager.runner is loader.runners[1]
    assert manager.runner.active and manager.runner.warmed == [(1, SIZE[1], SIZE[0], 3)]


def test_a_new_version_is_prepared_off_the_hot_path_then_switched_in(parts, tmp_path):
    store, loader, manager = parts
    publish(store, tmp_path)
    manager.load_initial(timeout=2)
    old = manager.runner
    manager.start()
    assert manager.take_pending() is None
    publish(store, tmp_path)
    manager.notify()
    wait_for(lambda: manager._pending is not None)
    ready = manager.take_pending()
    assert ready.version == 2 and ready.runner.active and ready.runner.warmed  # warm already
    assert manager.version == 1 and old.active  # nothing changed until the loop switches
    manager.activate_pending(ready)
    assert manager.version == 2 and manager.runner is ready.runner
    wait_for(lambda: not old.active)  # released by the watcher thread, not by the loop
    assert old.deactivated_by == "engine-watcher"


def test_a_version_that_fails_to_load_is_rejected_once_and_the_engine_stays(parts, tmp_path):
    store, loader, manager = parts
    publish(store, tmp_path)
    manager.load_initial(timeout=2)
    manager.start()
    publish(store, tmp_path, bad=True)
    wait_for(lambda: 2 in manager.rejected)
    assert "RuntimeError: engine file is garbage" in manager.rejected[2]
    assert not loader.runners[2].active
    publish(store, tmp_path, foreign=True)
    wait_for(lambda: 3 in manager.rejected)
    assert "built for tensorrt fp16 on another GPU" in manager.rejected[3]
    time.sleep(0.1)  # several more polls: neither is tried again
    reports = manager.take_reports()
    assert [r["version"] for r in reports] == [2, 3] and manager.take_reports() == []
    assert manager.version == 1 and manager.take_pending() is None


def test_a_damaged_current_version_is_rejected_for_its_hash(parts, tmp_path):
    store, loader, manager = parts
    publish(store, tmp_path)
    manager.load_initial(timeout=2)
    damaged = publish(store, tmp_path)
    with open(damaged.onnx_path, "r+b") as f:
        f.truncate(3)
    manager.start()
    wait_for(lambda: 2 in manager.rejected)
    assert "sha256 mismatch" in manager.rejected[2]
    assert 2 not in loader.runners  # never handed to the loader
    assert manager.version == 1


def test_close_releases_every_runner(parts, tmp_path):
    store, loader, manager = parts
    publish(store, tmp_path)
    manager.load_initial(timeout=2)
    manager.start()
    publish(store, tmp_path)
    manager.notify()
    wait_for(lambda: manager._pending is not None)
    manager.close()
    assert not any(r.active for r in loader.runners.values())
