"""One replay: the runtime over the plan, adapted and then source-only, observed from a subscriber."""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

from iapc.errors import UserError
from iapc.replay.launch import (SUBSCRIBER_RCVHWM, free_loopback_port, keep_logs, last_error_line,
                                runtime_arguments, runtime_executable, stop_process)
from iapc.replay.plan import ReplayConfig, ReplayPlan, plan_replay
from iapc.replay.record import RunRecord, StreamRecorder, collect


def replay_once(cfg: ReplayConfig, plan: ReplayPlan, adapt: bool, rounds: int) -> RunRecord:
    """One runtime run over ``rounds`` passes of the plan, observed from a subscriber."""
    from tqdm import tqdm

    from iapc.runtime.client import MaskSubscriber

    record = RunRecord(adapted=adapt, rounds=rounds)
    logs = cfg.out / "logs" / record.name
    logs.mkdir(parents=True, exist_ok=True)
    masks_folder = cfg.out / "masks" / record.name if cfg.save_masks else None
    address = f"tcp://127.0.0.1:{free_loopback_port()}"
    with tempfile.TemporaryDirectory(prefix="iapc-replay-") as tmp:
        run_dir = Path(tmp) / "run"
        command = runtime_executable() + runtime_arguments(cfg, plan, run_dir, address, adapt, rounds)
        (logs / "command.txt").write_text(" ".join(command) + "\n")
        recorder = StreamRecorder(plan, record, masks_folder)
        # Subscribe before the runtime starts so that no early mask is lost (slow joiner).
        with MaskSubscriber(address, topics=(b"mask", b"status"), newest_wins=False,
                            rcvhwm=SUBSCRIBER_RCVHWM, fifo_depth=SUBSCRIBER_RCVHWM) as subscriber, \
                open(logs / "runtime.stderr", "wb") as stderr, \
                tqdm(total=plan.frames_per_round * rounds, desc=record.name, unit="frame",
                     disable=not cfg.progress, file=sys.stderr) as progress:
            started = time.perf_counter()
            process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr)
            try:
                collect(subscriber, process, recorder, progress, cfg.stall_timeout_s)
            finally:
                stop_process(process)
            record.wall_s = time.perf_counter() - started
            record.exit_code = process.returncode
            counters = subscriber.counters
            record.subscriber = {"received": counters.received, "replaced": counters.replaced,
                                 "rejected": dict(counters.rejected)}
        keep_logs(run_dir, logs)
    if record.exit_code != 0:
        raise UserError(f"the {record.name} runtime exited with status {record.exit_code}: "
                        f"{last_error_line(logs / 'runtime.stderr')} (logs in {logs})")
    return record


def embedded_checkpoint(model: str) -> Path:
    """The runtime's default source model (:func:`iapc.shipped.default_checkpoint`: shipped,
    else cached, else trained once in a child process), found before the runtime starts so that
    it starts at once instead of training in silence while the replay waits. The replay itself
    stays free of torch."""
    from iapc.shipped import default_checkpoint

    return default_checkpoint(model)


def run_replay(cfg: ReplayConfig) -> dict:
    """Replay (adapted, then source-only), write the report; returns the report dict.

    The source-only engine never changes, so it gives the same masks in every round: its
    baseline replays one round and stands for all of them.
    """
    from iapc.replay.output import write_report
    from iapc.replay.report import build_report

    plan = plan_replay(cfg)
    cfg.out.mkdir(parents=True, exist_ok=True)
    if cfg.checkpoint is None:
        cfg.checkpoint = str(embedded_checkpoint(cfg.model or "tiny"))
    adapted = replay_once(cfg, plan, adapt=True, rounds=cfg.rounds)
    baseline = replay_once(cfg, plan, adapt=False, rounds=1) if cfg.baseline else None
    report = build_report(plan, adapted, baseline, cfg)
    write_report(report, cfg.out, adapted, baseline, plan)
    return report
