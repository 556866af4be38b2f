"""What the daemon's jobs (stepping, deploying, persistence, domain tracking) count together,
and the heartbeat the supervisor watches."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Progress:
    """Counters shared by the daemon's jobs."""

    updates_since_deploy: int = 0  # gradient steps and statistics updates since the last version
    # received frames left during which updates move only BatchNorm statistics (after a domain
    # change or a fresh start), and such updates since the state left the source model
    statistics_frames_left: int = 0
    statistics_updates: int = 0
    statistics_received: int = 0  # frames received at the last statistics update


class Heartbeat:
    """Tells the supervisor the daemon is alive: the mtime of ``RUN/daemon.heartbeat``, which
    holds the daemon's pid, at most every ``every`` seconds."""

    def __init__(self, path: Path, every: float):
        self.path = path
        self.every = every
        self.last = 0.0

    def __call__(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < self.every:
            return
        self.last = now
        if not force:
            try:
                os.utime(self.path)
                return
            except FileNotFoundError:
                pass
        # the pid, written atomically: the supervisor and tools may read it at any time
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text(f"{os.getpid()}\n")
        os.replace(tmp, self.path)
