"""Hot-swap of engines, off the hot path.

A watcher thread notices a new current version in the engine store (woken by the daemon's
"version" event, or by polling the cheap ``CURRENT`` pointer), verifies it, builds a runner,
activates it and warms it on a frame of the input size. Only then is it offered to the loop,
which switches between two frames with :meth:`EngineManager.activate_pending`; the old runner is
deactivated later by the watcher thread, never while a frame may use it.

Only stored engines are served: the runner loader (:func:`iapc.engines.targets.serving_runner`)
loads the file the daemon built and gated for this process's target and refuses any other, so
nothing is built here. With TensorRT each version is a fresh engine the daemon built (the store's
timing cache shortens rebuilds), deserialised here into its own engine object; no engine is
refit, and none in use ever changes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

import numpy as np

log = logging.getLogger("iapc.runtime.swap")


@dataclass
class ReadyEngine:
    version: int
    runner: object
    ready_seconds: float  # store pointer change noticed -> runner warm


class EngineManager:
    def __init__(self, store, load_runner: Callable[[object], object], input_size: tuple[int, int],
                 poll_interval: float = 0.25):
        self.store = store
        self.load_runner = load_runner  # store Version -> inactive Runner
        self.input_size = input_size  # (width, height)
        self.poll_interval = poll_interval
        self.runner = None
        self.version = 0
        self.rejected: dict[int, str] = {}  # versions that failed to load, with the reason
        self._reports: deque[dict] = deque(maxlen=64)  # new rejections, for the status topic
        self._pending: ReadyEngine | None = None
        self._retired: list[object] = []
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # loading ---------------------------------------------------------------------------------
    def _warm(self, runner) -> None:
        width, height = self.input_size
        runner.infer(np.zeros((1, height, width, 3), dtype=np.uint8))

    def _prepare(self, version) -> ReadyEngine | None:
        start = time.perf_counter()
        runner = None
        try:
            runner = self.load_runner(version)  # refuses a version built for another target
            runner.activate()
            self._warm(runner)
        except Exception as err:  # a corrupt or foreign engine must not take the loop down
            self._reject(version.number, f"{type(err).__name__}: {str(err)[:300]}")
            if runner is not None:
                runner.deactivate()
            return None
        return ReadyEngine(version.number, runner, time.perf_counter() - start)

    def load_initial(self, timeout: float, stop: threading.Event | None = None) -> bool:
        """Load the store's current version before the loop starts; False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and not (stop and stop.is_set()):
            version = self.store.current()
            if version is not None and version.number not in self.rejected:
                ready = self._prepare(version)
                if ready is not None:
                    self.runner, self.version = ready.runner, ready.version
                    return True
            time.sleep(self.poll_interval)
        return False

    def _reject(self, number: int, reason: str) -> None:
        """Never try ``number`` again; report it once."""
        if number in self.rejected:
            return
        self.rejected[number] = reason
        self._reports.append({"version": number, "reason": reason})
        log.error("engine v%d rejected, keeping v%d: %s", number, self.version, reason)

    def take_reports(self) -> list[dict]:
        """Versions rejected since the last call: ``{"version", "reason"}`` each."""
        reports = []
        while self._reports:
            reports.append(self._reports.popleft())
        return reports

    def _newer_version(self):
        name = self.store.current_name()
        if name is None:
            return None
        number = self.store.version_number(name)
        pending = self._pending.version if self._pending else self.version
        if number <= pending or number in self.rejected:
            return None
        resolution = self.store.resolve_current()  # verified: hashes checked, or falls back
        if resolution.problems and (resolution.version is None
                                    or resolution.version.number != number):
            self._reject(number, "; ".join(resolution.problems))  # damaged: hash, manifest
        return resolution.version

    def _watch(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.poll_interval)
            self._wake.clear()
            self._release_retired()
            try:
                version = self._newer_version()
            except OSError as err:
                log.warning("engine store unreadable: %s", err)
                continue
            if version is None or version.number <= self.version:
                continue
            ready = self._prepare(version)
            if ready is not None:
                with self._lock:
                    if self._pending is not None:
                        self._retired.append(self._pending.runner)
                    self._pending = ready

    def _release_retired(self) -> None:
        with self._lock:
            retired, self._retired = self._retired, []
        for runner in retired:
            runner.deactivate()

    # loop side -------------------------------------------------------------------------------
    def take_pending(self) -> ReadyEngine | None:
        if self._pending is None:  # cheap unlocked check on the hot path
            return None
        with self._lock:
            ready, self._pending = self._pending, None
            return ready

    def activate_pending(self, ready: ReadyEngine) -> None:
        """Switch to ``ready`` (between two frames); the old runner is retired off the hot path."""
        old = self.runner
        self.runner, self.version = ready.runner, ready.version
        if old is not None:
            with self._lock:
                self._retired.append(old)
            self._wake.set()

    def notify(self) -> None:
        """A new version may be in the store: look now rather than at the next poll."""
        self._wake.set()

    def start(self) -> None:
        self._thread = threading.Thread(target=self._watch, name="engine-watcher", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5.0)
        self._release_retired()
        if self._pending is not None:
            self._pending.runner.deactivate()
        if self.runner is not None:
            self.runner.deactivate()
