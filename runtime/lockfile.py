"""Exclusive folder locks (``fcntl.flock``) that name the process holding them.

A run folder holds one runtime's config, sockets and summary, and a store has one writer; a second
runtime on either would overwrite the first one's files. The lock is an open file kept for the
holder's lifetime: the kernel releases it when the process ends, even on ``kill -9``, so a stale
lock file never blocks a restart.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO

from iapc.errors import UserError


def holder_pid(lock_path: Path) -> str:
    try:
        return lock_path.read_text().strip() or "unknown"
    except OSError:
        return "unknown"


def lock_folder(folder: Path, what: str, hint: str, name: str = ".lock.pid") -> IO[str]:
    """Hold ``folder/name`` exclusively or raise a one-line UserError naming the holder's pid.

    ``what`` names the folder in the message ("run folder"), ``hint`` says what to do instead.
    Keep the returned file open as long as the lock is needed.
    """
    folder.mkdir(parents=True, exist_ok=True)
    lock_path = folder / name
    handle = open(os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600), "r+")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        raise UserError(f"{what} {folder} is in use by the iapc-runtime with pid "
                        f"{holder_pid(lock_path)}: stop it first, or {hint}") from None
    handle.truncate(0)
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle
