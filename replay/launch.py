"""Starting the runtime as a user does (its installed command, a free loopback port, its own run
folder) and stopping it; also used by the runtime benchmarks."""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

from iapc.replay.plan import ReplayConfig, ReplayPlan
from iapc.contracts import run_folder

SUBSCRIBER_RCVHWM = 10000  # buffer masks in the socket rather than lose them to a busy collector


def free_loopback_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def runtime_executable() -> list[str]:
    """The installed ``iapc-runtime`` script (beside this Python first, then on PATH)."""
    beside = Path(sys.executable).with_name("iapc-runtime")
    if beside.is_file():
        return [str(beside)]
    found = shutil.which("iapc-runtime")
    if found:
        return [found]
    # Not installed as a script (a source checkout): the same entry point through Python.
    return [sys.executable, "-c", "from iapc.runtime.cli import main; main()"]


def runtime_arguments(cfg: ReplayConfig, plan: ReplayPlan, run_dir: Path, address: str,
                      adapt: bool, rounds: int) -> list[str]:
    """Command-line options of one runtime run over ``rounds`` passes of the plan."""
    args = []
    if cfg.runtime_config:
        args += ["--config", cfg.runtime_config]  # the options below override it
    args += [plan.source_flag, plan.runtime_location,
             "--fps", str(cfg.rate or 0), "--max-frames", str(plan.frames_per_round * rounds),
             "--run-dir", str(run_dir), "--publish", address, "--quiet",
             # every mask must reach the scorer: let ZeroMQ queue a whole round for it
             "--publish-hwm", str(SUBSCRIBER_RCVHWM)]
    if rounds > 1:
        args.append("--loop")
    if cfg.checkpoint:
        args += ["--checkpoint", cfg.checkpoint]
    if cfg.model:
        args += ["--model", cfg.model]
    if cfg.input_size:
        args += ["--input-size", f"{cfg.input_size[0]}x{cfg.input_size[1]}"]
    if cfg.export_every_steps is not None:
        args += ["--export-every-steps", str(cfg.export_every_steps)]
    if cfg.method is not None and adapt:
        args += ["--method", cfg.method]
    if not adapt:
        args.append("--no-adapt")
    return args


def stop_process(process: subprocess.Popen, timeout: float = 30.0) -> None:
    """SIGTERM (the runtime shuts down cleanly), then kill if it does not."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def keep_logs(run_dir: Path, logs: Path) -> None:
    """Copy the runtime's logs and resolved config out of its private (temporary) run folder."""
    logs.mkdir(parents=True, exist_ok=True)
    for name in (*run_folder.LOGS, run_folder.CONFIG, run_folder.INFERENCE_SUMMARY):
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, logs / name)


def last_error_line(stderr_file: Path) -> str:
    lines = [l for l in stderr_file.read_text(errors="replace").splitlines() if l.strip()]
    return lines[-1] if lines else "no message"
