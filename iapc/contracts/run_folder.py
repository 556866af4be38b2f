"""The names of the files in a run folder (``--run-dir``), spelled once.

The supervisor, the inference process and the daemon meet only through this folder and the
ZeroMQ sockets in it; the replay tooling, the tests and the benchmarks read the same files. One
module for the names keeps them from drifting apart. The embedded source model is not here: it
lives in the shared cache (:func:`iapc.cache.embedded_model_path`), not in a run.
"""

from __future__ import annotations

from pathlib import Path

CONFIG = "config.json"  # the resolved RuntimeConfig, written by the supervisor for both children
EVENTS_SOCKET = "events.sock"  # supervisor and daemon -> inference: new engines, decisions
FRAMES_SOCKET = "frames.sock"  # inference -> daemon: sampled frames to adapt on
HEARTBEAT = "daemon.heartbeat"  # the daemon's pid; its mtime is the watchdog's heartbeat
ADAPTATION_STATE = "adaptation.pt"  # the daemon's state, to resume after a restart
INFERENCE_SUMMARY = "inference_summary.json"  # frame counts, swaps, decisions, at exit
STORE = "store"  # the engine store, unless --store puts it elsewhere
SOURCE_ENGINES = "source-engines"  # --no-adapt: one store per source checkpoint and target
EXPORT_LOG = "export.log"  # the output of the source engine's export (--no-adapt)
PROCESSES = ("inference", "daemon")  # the supervisor's children, each with its log


def log_name(process: str) -> str:
    """The log file of one child process, e.g. ``inference.log``."""
    return f"{process}.log"


LOGS = tuple(log_name(p) for p in PROCESSES)


def ipc_address(run_dir: Path, name: str) -> str:
    """The ZeroMQ address of socket file ``name`` (e.g. :data:`EVENTS_SOCKET`) in ``run_dir``."""
    return f"ipc://{run_dir / name}"
