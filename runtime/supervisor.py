"""The supervisor: starts the inference process and the adaptation daemon, restarts the daemon
when it dies or hangs (inference goes on), and shuts both down cleanly on SIGINT/SIGTERM.

Watchdog: the daemon touches ``RUN/daemon.heartbeat`` every second or so; when it has not for
``daemon_timeout`` seconds (``daemon_start_timeout`` before its first beat) the daemon is killed (SIGKILL: a hung process may ignore SIGTERM) and
restarted. A daemon that exits with status 2 hit a user error (wrong checkpoint, bad option):
restarting cannot help, so the runtime stops with that status; so does a daemon that fails
``FAST_FAILURES_LIMIT`` times in a row before its first heartbeat (it never got going: restarting
would loop forever). Restarts are announced to the inference process as events, which it
republishes on the status topic.

The run folder (and the engine store, which has one writer) is locked for the runtime's lifetime:
a second runtime on either refuses with one line naming the pid of the first.

With adaptation off (``--no-adapt``) no daemon runs: the source checkpoint is exported once into
``RUN/source-engines/<key>`` (``iapc export``) and that engine is served, whatever the adapted
store holds; ``serve_store=True`` (``--resume-latest``) serves the store's newest version instead.

Both children are plain ``python -m`` processes so the inference process never imports torch.
Their logs go to ``RUN/inference.log`` and ``RUN/daemon.log`` (the names are
:func:`~iapc.contracts.run_folder.log_name`'s); one-line user errors reach the terminal.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from iapc.contracts import run_folder
from iapc.runtime.config import RuntimeConfig
from iapc.contracts.events import EventType

log = logging.getLogger("iapc.runtime.supervisor")

RESTART_BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0)
STABLE_AFTER_S = 60.0  # a daemon that ran this long without trouble resets the backoff
USER_ERROR_EXIT = 2  # iapc.errors.run_cli's status for a UserError
FAILED_EXIT = 1  # the runtime gave up on a child that cannot run
FAST_FAILURES_LIMIT = 3  # daemon exits before its first heartbeat, in a row, before giving up
SUMMARY_FILE = run_folder.INFERENCE_SUMMARY


def lock_run_dir(cfg: RuntimeConfig):
    """Owner-only run folder, locked; returns (folder, lock files to keep open)."""
    from iapc.runtime.lockfile import lock_folder

    run_dir = cfg.resolved_run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(run_dir, 0o700)
    locks = [lock_folder(run_dir, "run folder", "pass --run-dir with another folder")]
    store = cfg.resolved_store()
    if cfg.adaptation.enabled:  # the daemon writes the store: one writer per store
        locks.append(lock_folder(store, "engine store", "pass --store with another folder",
                                 name=".writer.pid"))
    return run_dir, locks


def prepare_run_dir(cfg: RuntimeConfig) -> Path:
    """Write the resolved config the children read (only once the folder is locked)."""
    run_dir = cfg.resolved_run_dir()
    (run_dir / run_folder.CONFIG).write_text(json.dumps(cfg.to_dict(), indent=1))
    return run_dir


def source_engine_store(cfg: RuntimeConfig, checkpoint: str) -> Path:
    """The store of the engine exported from ``checkpoint`` as it is, made once and reused.

    Keyed by the file's content, the input size and the engine target (backend, precision,
    device), so another checkpoint, size or target gets its own engine and the adapted store is
    never touched.
    """
    from iapc.engines.targets import engine_target
    from iapc.files import sha256_of

    width, height = cfg.input_size
    target = engine_target(cfg.backend, cfg.precision)
    key = (f"{sha256_of(Path(checkpoint))[:16]}-{cfg.model}-{width}x{height}-{target.key()}"
           f"{'-conf' if cfg.confidence else ''}")
    return cfg.resolved_run_dir() / run_folder.SOURCE_ENGINES / key


def export_source_engine(cfg: RuntimeConfig, checkpoint: str, store: Path) -> None:
    """``iapc export`` of the source checkpoint into ``store`` unless it already holds one."""
    from iapc.errors import UserError
    from iapc.engines.store import EngineStore

    if EngineStore(store).current() is not None:
        return
    width, height = cfg.input_size
    command = [sys.executable, "-c", "from iapc.cli import main; main()", "export",
               "--checkpoint", checkpoint, "--store", str(store), "--input-size", f"{width}x{height}",
               "--backend", cfg.backend, "--precision", cfg.precision, "--keep", "1"]
    command += ["--model", cfg.model] if cfg.model else []
    command += ["--confidence"] if cfg.confidence else []
    log_path = cfg.resolved_run_dir() / run_folder.EXPORT_LOG
    with open(log_path, "ab") as log_file:
        done = subprocess.run(command, stdout=log_file, stderr=subprocess.PIPE)
        log_file.write(done.stderr)
    if done.returncode != 0:
        lines = done.stderr.decode(errors="replace").strip().splitlines() or ["no output"]
        reason = lines[-1].split("error: ", 1)[-1]
        raise UserError(f"exporting the source engine failed: {reason} (see {log_path})")


class Child:
    """One supervised ``python -m module`` process."""

    def __init__(self, name: str, module: str, args: list[str], run_dir: Path):
        self.name, self.module, self.args, self.run_dir = name, module, args, run_dir
        self.process: subprocess.Popen | None = None
        self.starts = 0
        self.started_at = 0.0  # wall clock of the last start

    def start(self) -> None:
        log_file = open(self.run_dir / run_folder.log_name(self.name), "ab")
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.process = subprocess.Popen([sys.executable, "-m", self.module, *self.args],
                                        stdout=log_file, stderr=subprocess.PIPE, env=env)
        log_file.close()
        self.starts += 1
        self.started_at = time.time()
        self.relay = threading.Thread(target=self._relay_errors, args=(self.process,), daemon=True)
        self.relay.start()

    def _relay_errors(self, process: subprocess.Popen) -> None:
        """User errors ('iapc-runtime: error: ...') to the terminal, everything to the log."""
        with open(self.run_dir / run_folder.log_name(self.name), "ab") as log_file:
            for line in process.stderr:
                log_file.write(line)
                log_file.flush()
                if line.startswith(b"iapc-runtime"):
                    sys.stderr.write(line.decode(errors="replace"))

    def poll(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def kill(self) -> int:
        self.process.kill()
        return self.process.wait()

    def stop(self, timeout: float = 15.0) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return self.poll()
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            log.warning("%s did not stop within %.0f s: killing it", self.name, timeout)
            self.process.kill()
            return self.process.wait()


class Supervisor:
    def __init__(self, cfg: RuntimeConfig, checkpoint: str, on_status=None,
                 serve_store: bool = False):
        self.cfg = cfg
        self.run_dir, self._locks = lock_run_dir(cfg)
        self.started_ns = time.time_ns()
        # --no-adapt serves the source model, not whatever the adapted store holds
        self.serve_source = not cfg.adaptation.enabled and not serve_store
        if self.serve_source:
            cfg.store = str(source_engine_store(cfg, checkpoint))
            export_source_engine(cfg, checkpoint, Path(cfg.store))
        prepare_run_dir(cfg)
        config_arg = ["--config", str(self.run_dir / run_folder.CONFIG)]
        self.inference = Child("inference", "iapc.runtime.inference", config_arg, self.run_dir)
        self.daemon = (None if self.serve_source else
                       Child("daemon", "iapc.daemon.process",
                             config_arg + ["--checkpoint", checkpoint], self.run_dir))
        self.on_status = on_status
        self.stopping = threading.Event()
        self.daemon_restarts = 0
        self.fast_failures = 0  # daemon exits before its first heartbeat, in a row
        self.heartbeat_path = self.run_dir / run_folder.HEARTBEAT
        self.events = None  # EventSender to the inference process, made in run()

    def _last_heartbeat(self) -> float | None:
        """Wall-clock time of this daemon's last heartbeat; None before its first."""
        try:
            beat = self.heartbeat_path.stat().st_mtime
        except FileNotFoundError:
            return None
        return beat if beat >= self.daemon.started_at else None  # not a predecessor's

    def _kill_daemon_if_hung(self) -> None:
        if self.daemon is None or self.daemon.poll() is not None or self.cfg.daemon_timeout <= 0:
            return
        beat = self._last_heartbeat()
        silent = time.time() - (beat or self.daemon.started_at)
        limit = self.cfg.daemon_timeout if beat else max(self.cfg.daemon_start_timeout,
                                                         self.cfg.daemon_timeout)
        if silent > limit:
            log.warning("adaptation daemon silent for %.0f s: killing it", silent)
            self._announce(EventType.DAEMON_HUNG, f"no heartbeat for {silent:.0f} s")
            self.daemon.kill()

    def _restart_daemon_if_dead(self) -> int | None:
        """Restart a dead daemon; returns the exit status when it must not be restarted."""
        code = None if self.daemon is None else self.daemon.poll()
        if code is None or self.stopping.is_set():
            return None
        if code == USER_ERROR_EXIT:
            self.daemon.relay.join(timeout=5.0)  # its one-line error reaches the terminal
            return code
        if self._gave_up(code):
            return FAILED_EXIT
        if time.time() - self.daemon.started_at > STABLE_AFTER_S:
            self.daemon_restarts = 0
        delay = RESTART_BACKOFF_S[min(self.daemon_restarts, len(RESTART_BACKOFF_S) - 1)]
        log.warning("adaptation daemon exited with %s: restarting in %.1f s", code, delay)
        if self.stopping.wait(delay):
            return None
        self.daemon_restarts += 1
        self.daemon.start()
        self._announce(EventType.DAEMON_RESTART, f"exit status {code}")
        return None

    def _gave_up(self, code: int) -> bool:
        """True (and one line said why) after FAST_FAILURES_LIMIT exits before a first beat."""
        self.fast_failures = 0 if self._last_heartbeat() is not None else self.fast_failures + 1
        if self.fast_failures < FAST_FAILURES_LIMIT:
            return False
        self.daemon.relay.join(timeout=5.0)
        print(f"iapc-runtime: error: the adaptation daemon exited with {code} before it started, "
              f"{self.fast_failures} times in a row: see {self.run_dir / run_folder.log_name('daemon')}, or pass "
              "--no-adapt to serve the source model", file=sys.stderr)
        return True

    def _announce(self, kind: EventType, reason: str) -> None:
        if self.events is not None:
            self.events.send(kind, reason=reason, restarts=self.daemon_restarts)

    def run(self) -> int:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self.stopping.set())
        from iapc.contracts.handoff import EventSender

        if self.daemon is not None:
            self.daemon.start()  # it publishes the first engine when the store is empty
        self.inference.start()
        self.events = EventSender(run_folder.ipc_address(self.run_dir, run_folder.EVENTS_SOCKET))
        code = 0
        try:
            while not self.stopping.is_set():
                code = self.inference.poll()
                if code is not None:
                    break  # the source ended (or a user error): shut down
                self._kill_daemon_if_hung()
                code = self._restart_daemon_if_dead()
                if code is not None:
                    break
                if self.on_status is not None:
                    self.on_status()
                self.stopping.wait(0.2)
        finally:
            inference_code = self.inference.stop()
            if self.daemon is not None:
                self.daemon.stop()
            self.events.close()
        code = code if code is not None else (inference_code or 0)
        if code == 0:  # an error already said what went wrong in its one line
            print(self.summary_line(), file=sys.stderr)
        return code

    def summary_line(self) -> str:
        """One line on what this run did, from the inference process's summary file."""
        where = f"run folder {self.run_dir}"
        try:
            summary = json.loads((self.run_dir / SUMMARY_FILE).read_text())
        except (OSError, ValueError):
            summary = {}
        if summary.get("finished_ns", 0) < self.started_ns:  # a predecessor's, or none
            return f"iapc-runtime: stopped before the first frame; {where}"
        drops = sum(summary.get(k, 0) for k in ("capture_dropped", "publish_dropped"))
        engine = "source" if self.serve_source else "store"
        return (f"iapc-runtime: {summary.get('frames_published', 0)} frames published "
                f"({summary.get('frames_failed', 0)} failed, {summary.get('frames_unreadable', 0)}"
                f" unreadable files, {drops} dropped), {len(summary.get('swaps', []))} swaps, "
                f"{engine} engine v{summary.get('engine_version')} in service; {where}")
