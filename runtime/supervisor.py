"""The supervisor: starts the inference process and the adaptation daemon, restarts the daemon
when it dies or hangs (inference goes on), and shuts both down cleanly on SIGINT/SIGTERM.

Watchdog: the daemon touches ``RUN/daemon.heartbeat`` every second or so; when it has not for
``daemon_timeout`` seconds (``daemon_start_timeout`` before its first beat) the daemon is killed (SIGKILL: a hung process may ignore SIGTERM) and
restarted. A daemon that exits with status 2 hit a user error (wrong checkpoint, bad option):
restarting cannot help, so the runtime stops with that status. Restarts are announced to the
inference process as events, which it republishes on the status topic.

Both children are plain ``python -m`` processes so the inference process never imports torch.
Their logs go to ``RUN/inference.log`` and ``RUN/daemon.log``; one-line user errors reach the
terminal.
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

from iapc.runtime import run_folder
from iapc.runtime.config import RuntimeConfig

log = logging.getLogger("iapc.runtime.supervisor")

RESTART_BACKOFF_S = (0.5, 1.0, 2.0, 5.0, 10.0)
STABLE_AFTER_S = 60.0  # a daemon that ran this long without trouble resets the backoff
USER_ERROR_EXIT = 2  # iapc.errors.run_cli's status for a UserError


def prepare_run_dir(cfg: RuntimeConfig) -> Path:
    """Owner-only run folder holding the resolved config, logs, sockets and state."""
    run_dir = cfg.resolved_run_dir()
    run_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(run_dir, 0o700)
    (run_dir / run_folder.CONFIG).write_text(json.dumps(cfg.to_dict(), indent=1))
    return run_dir


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
    def __init__(self, cfg: RuntimeConfig, checkpoint: str, on_status=None):
        self.cfg = cfg
        self.run_dir = prepare_run_dir(cfg)
        config_arg = ["--config", str(self.run_dir / run_folder.CONFIG)]
        self.inference = Child("inference", "iapc.runtime.inference", config_arg, self.run_dir)
        self.daemon = Child("daemon", "iapc.daemon.process",
                            config_arg + ["--checkpoint", checkpoint], self.run_dir)
        self.on_status = on_status
        self.stopping = threading.Event()
        self.daemon_restarts = 0
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
        if self.daemon.poll() is not None or self.cfg.daemon_timeout <= 0:
            return
        beat = self._last_heartbeat()
        silent = time.time() - (beat or self.daemon.started_at)
        limit = self.cfg.daemon_timeout if beat else max(self.cfg.daemon_start_timeout,
                                                         self.cfg.daemon_timeout)
        if silent > limit:
            log.warning("adaptation daemon silent for %.0f s: killing it", silent)
            self._announce("daemon_hung", f"no heartbeat for {silent:.0f} s")
            self.daemon.kill()

    def _restart_daemon_if_dead(self) -> int | None:
        """Restart a dead daemon; returns the exit status when it must not be restarted."""
        code = self.daemon.poll()
        if code is None or self.stopping.is_set():
            return None
        if code == USER_ERROR_EXIT:
            self.daemon.relay.join(timeout=5.0)  # its one-line error reaches the terminal
            return code
        if time.time() - self.daemon.started_at > STABLE_AFTER_S:
            self.daemon_restarts = 0
        delay = RESTART_BACKOFF_S[min(self.daemon_restarts, len(RESTART_BACKOFF_S) - 1)]
        log.warning("adaptation daemon exited with %s: restarting in %.1f s", code, delay)
        if self.stopping.wait(delay):
            return None
        self.daemon_restarts += 1
        self.daemon.start()
        self._announce("daemon_restart", f"exit status {code}")
        return None

    def _announce(self, kind: str, reason: str) -> None:
        if self.events is not None:
            self.events.send({"type": kind, "reason": reason, "restarts": self.daemon_restarts})

    def run(self) -> int:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_: self.stopping.set())
        from iapc.runtime.handoff import EventSender

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
            self.daemon.stop()
            self.events.close()
        return code if code is not None else (inference_code or 0)
