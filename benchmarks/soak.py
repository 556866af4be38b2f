"""Bounded soak run: the real runtime on a long synthetic stream with faults injected at random.

The source injects bad frames, wrong-size frames and camera outages (``source.faults``); from
outside, at random intervals, this script kills the adaptation daemon (``kill -9``), hangs it
(SIGSTOP until the watchdog kills it), stalls a subscriber (connects and never reads), and
publishes corrupt engines into the store. A subscriber records every mask. At the end it reports
frames in, frames published, faults injected and survived, and frames lost outside camera outages
(goal: 0), side by side with a fault-free run of the same length when ``--baseline`` is given.

    .venv/bin/python benchmarks/soak.py --frames 20000
    .venv/bin/python benchmarks/soak.py --frames 3000 --baseline   # quick, with a baseline
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import zmq

from iapc.contracts import run_folder
from iapc.replay.launch import free_loopback_port
from iapc.replay.record import Collector

SOURCE_FAULTS = "bad=0.002,resize=0.002,outage=0.0003,outage_s=0.5"
EXTERNAL_FAULTS = ("daemon_kill", "daemon_hang", "subscriber_stall", "engine_corrupt")


def make_checkpoint(folder: Path) -> Path:
    """A randomly initialised tiny model: the soak tests plumbing, not accuracy."""
    import torch

    from iapc.adapt.checkpoint import save_checkpoint
    from iapc.adapt.models import build_model

    torch.manual_seed(0)
    path = folder / "tiny.pt"
    save_checkpoint(path, "tiny", build_model("tiny"))
    return path


class Injector(threading.Thread):
    """Injects one external fault every ``every_s`` seconds on average, at random."""

    def __init__(self, run_dir: Path, port: int, every_s: float, seed: int):
        super().__init__(daemon=True)
        self.run_dir, self.port, self.every_s = run_dir, port, every_s
        self.rng = random.Random(seed)
        self.injected = {kind: 0 for kind in EXTERNAL_FAULTS}
        self.corrupt_versions: set[int] = set()
        self.stopped = threading.Event()
        self.start()

    def daemon_pid(self) -> int | None:
        try:
            return int((self.run_dir / run_folder.HEARTBEAT).read_text())
        except (OSError, ValueError):
            return None

    def run(self) -> None:
        while not self.stopped.wait(self.rng.expovariate(1.0 / self.every_s)):
            kind = self.rng.choice(EXTERNAL_FAULTS)
            if getattr(self, kind)():
                self.injected[kind] += 1

    def daemon_kill(self) -> bool:
        pid = self.daemon_pid()
        try:
            os.kill(pid, signal.SIGKILL)
        except (TypeError, ProcessLookupError):
            return False
        return True

    def daemon_hang(self) -> bool:
        pid = self.daemon_pid()
        try:
            os.kill(pid, signal.SIGSTOP)  # the supervisor's watchdog kills it
        except (TypeError, ProcessLookupError):
            return False
        return True

    def subscriber_stall(self) -> bool:
        context = zmq.Context.instance()
        stalled = context.socket(zmq.SUB)
        stalled.setsockopt(zmq.RCVHWM, 1)
        stalled.setsockopt(zmq.SUBSCRIBE, b"")
        stalled.connect(f"tcp://127.0.0.1:{self.port}")
        self.stopped.wait(self.rng.uniform(1, 4))  # never reads, then disappears
        stalled.close(linger=0)
        return True

    def engine_corrupt(self) -> bool:
        from iapc.engines.store import EngineStore

        garbage = self.run_dir / "garbage.onnx"
        garbage.write_bytes(os.urandom(4096))
        self.corrupt_versions.add(EngineStore(self.run_dir / run_folder.STORE).publish(garbage).number)
        return True


def soak(frames: int, size: str, fps: float, faults: bool, every_s: float, seed: int,
         workdir: Path, checkpoint: Path) -> dict:
    run_dir, port = workdir / ("run_faults" if faults else "run_clean"), free_loopback_port()
    config = {"adaptation": {"export_every_steps": 20, "heartbeat_every": 0.5},
              "daemon_timeout": 10.0, "daemon_start_timeout": 120.0,
              "source": {"faults": SOURCE_FAULTS if faults else None, "seed": seed,
                         "retry_max_s": 0.4}}
    config_path = workdir / f"soak_{faults}.yaml"
    config_path.write_text(json.dumps(config))
    command = [sys.executable, "-c", "from iapc.runtime.cli import main; main()",
               "--config", str(config_path), "--synthetic", "fog", "--fps", str(fps),
               "--max-frames", str(frames), "--checkpoint", str(checkpoint), "--model", "tiny",
               "--input-size", size, "--run-dir", str(run_dir),
               "--publish", f"tcp://127.0.0.1:{port}", "--quiet"]
    started = time.monotonic()
    process = subprocess.Popen(command, stderr=subprocess.PIPE)
    recorder = Collector(port, rcvhwm=1000)
    while not recorder.headers and process.poll() is None:
        time.sleep(0.1)  # faults start once masks flow
    injector = Injector(run_dir, port, every_s, seed) if faults else None
    _out, err = process.communicate()
    seconds = time.monotonic() - started
    if injector is not None:
        injector.stopped.set()
        injector.join(10)
    time.sleep(0.5)
    recorder.close()
    if process.returncode != 0:
        raise SystemExit(f"runtime failed ({process.returncode}): {err.decode()[-2000:]}")
    return report(run_dir, recorder, injector, seconds)


def report(run_dir: Path, recorder: Collector, injector: Injector | None, seconds: float) -> dict:
    summary = json.loads((run_dir / run_folder.INFERENCE_SUMMARY).read_text())
    injected_source = summary["faults_injected"] or {"bad": 0, "resize": 0, "outage": 0}
    ids = [h.frame_id for h in recorder.headers]
    in_order = ids == sorted(set(ids))
    # frames the runtime captured but never published, other than the corrupt frames
    lost_in_runtime = summary["frames_in"] - summary["frames_published"] - injected_source["bad"]
    missing_at_subscriber = summary["frames_published"] - len(ids)
    decisions = summary["decisions"]
    external = injector.injected if injector else {}
    return {
        "seconds": round(seconds, 1), "frames_in": summary["frames_in"],
        "frames_published": summary["frames_published"], "masks_received": len(ids),
        "in_order": in_order, "fps": round(summary["frames_published"] / seconds, 1),
        "faults_injected": {**injected_source, **external},
        "survived": {"bad_frames_skipped": decisions.get("bad_frame", 0),
                     "outages_resumed": decisions.get("source_resumed", 0),
                     "daemon_restarts": decisions.get("daemon_restart", 0),
                     "daemon_hangs_detected": decisions.get("daemon_hung", 0),
                     "engines_rejected": decisions.get("engine_rejected", 0)},
        "engine_versions_served": sorted(set(s.get("to") for s in recorder.statuses
                                             if s.get("kind") == "swap")),
        "deployed": decisions.get("deployed", 0),
        "decisions": decisions,
        "corrupt_engine_served": bool(injector and injector.corrupt_versions
                                      & {s.get("to") for s in recorder.statuses}),
        "frames_lost_outside_outages": lost_in_runtime,
        "masks_missing_at_subscriber": missing_at_subscriber,
        "publish_dropped": summary["publish_dropped"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--frames", type=int, default=20_000)
    parser.add_argument("--size", default="128x64")
    parser.add_argument("--fps", type=float, default=0, help="0: as fast as possible")
    parser.add_argument("--every", type=float, default=6.0,
                        help="mean seconds between external faults")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--baseline", action="store_true", help="also run without faults")
    parser.add_argument("--out", help="write the report as JSON here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="iapc-soak-") as tmp:
        workdir = Path(tmp)
        checkpoint = make_checkpoint(workdir)
        results = {"faults": soak(args.frames, args.size, args.fps, True, args.every, args.seed,
                                  workdir, checkpoint)}
        if args.baseline:
            results["clean"] = soak(args.frames, args.size, args.fps, False, args.every,
                                    args.seed, workdir, checkpoint)
    print(json.dumps(results, indent=1))
    if args.baseline:
        ratio = results["faults"]["fps"] / max(results["clean"]["fps"], 1e-9)
        print(f"throughput with faults / without: {ratio:.2f}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
