"""``iapc replay``: replay recorded Cityscapes drives through the real runtime and report mIoU over
time, latency, dropped frames, hot-swaps and adaptation.

    iapc replay --cityscapes ROOT --split val --out replay/
    iapc replay --cycle FOG NIGHT RAIN --rounds 10 --fast --out continual/

The runtime is started as a child process exactly as a user starts it (``iapc-runtime
--cityscapes-sequence ...``) with a private run folder and a free loopback port, so the replay
measures the same supervisor, inference process, adaptation daemon, engine store, hot-swaps and
ZeroMQ stream that a vehicle runs. This process only subscribes: it scores every mask whose frame
has a ``gtFine`` label as it arrives, keeping the engine version that produced it, and then runs
the runtime a second time with ``--no-adapt`` over the same frames for the source-only baseline.

Frame ids are positions in the source's order (the runtime numbers captured frames from 0), so a
mask's ``frame_id`` maps back to the file it came from: ``round = id // F``, ``position = id % F``
for ``F`` frames per round. Recorded sources are lossless in the runtime, so a missing id is a
frame lost on the way (publisher or subscriber), and the report counts it.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from iapc.errors import UserError

RECORDED_FPS = 17.0  # Cityscapes capture rate
RUN_NAMES = {True: "adapted", False: "source_only"}
RECEIVE_POLL_S = 0.5  # how often the collector checks whether the runtime is still alive
SUBSCRIBER_RCVHWM = 10000  # buffer masks in the socket rather than lose them to a busy collector


# ----------------------------------------------------------------------------------------------
# What to replay
# ----------------------------------------------------------------------------------------------

@dataclass
class ReplayConfig:
    roots: list[Path]  # one Cityscapes root, or the target roots of the continual cycle in turn
    split: str = "val"
    rounds: int = 1  # passes over all roots within one runtime run (adaptation carries over)
    rate: float | None = RECORDED_FPS  # frames per second; None = as fast as the runtime goes
    checkpoint: str | None = None  # None: the runtime's embedded synthetic source model
    model: str | None = None
    input_size: tuple[int, int] | None = None  # (width, height) of the engine
    classes: str = "19"  # "16"/"13" for SYNTHIA-trained models
    runtime_config: str | None = None  # YAML handed to iapc-runtime --config
    export_every_steps: int | None = None
    baseline: bool = True  # also replay the same frames with --no-adapt
    out: Path = Path("replay")
    save_masks: bool = False  # write the masks of annotated frames (train ids) under OUT/masks
    stall_timeout_s: float = 600.0  # no message for this long while the runtime lives: give up
    progress: bool = True


@dataclass(frozen=True)
class PlannedFrame:
    position: int  # index within one round, in the runtime source's order
    domain: str
    image: Path
    label: Path | None  # *_gtFine_labelIds.png, or None for unannotated sequence frames

    @property
    def name(self) -> str:
        return self.image.name.removesuffix("_leftImg8bit.png")


@dataclass
class ReplayPlan:
    domains: list[str]
    locations: list[str]  # what the runtime reads for each domain (root or split folder)
    frames: list[PlannedFrame]  # one round
    rounds: int

    @property
    def frames_per_round(self) -> int:
        return len(self.frames)

    @property
    def total_frames(self) -> int:
        return self.frames_per_round * self.rounds

    @property
    def runtime_location(self) -> str:
        """The ``--cityscapes-sequence`` argument: several roots play in turn (os.pathsep)."""
        return os.pathsep.join(self.locations)

    def locate(self, frame_id: int) -> tuple[int, PlannedFrame]:
        """frame_id -> (round from 0, the planned frame)."""
        return frame_id // self.frames_per_round, self.frames[frame_id % self.frames_per_round]


def domain_names(roots: list[Path]) -> list[str]:
    """Folder names, made unique with a suffix where two roots share one."""
    names: list[str] = []
    for root in roots:
        name = root.resolve().name or str(root)
        while name in names:
            name += "'"
        names.append(name)
    return names


def runtime_location(root: Path, split: str) -> tuple[str, bool]:
    """(what to give the runtime for ``split`` of ``root``, whether it is a sequence folder).

    The runtime reads a root's ``val`` split by itself; other splits are given as their folder.
    """
    if not root.is_dir():
        raise UserError(f"Cityscapes root {root} does not exist: give a folder containing "
                        f"leftImg8bit_sequence/{split} or leftImg8bit/{split}")
    for sequence, folder in ((True, "leftImg8bit_sequence"), (False, "leftImg8bit")):
        if (root / folder / split).is_dir():
            return (str(root) if split == "val" else str(root / folder / split)), sequence
    raise UserError(f"{root} has neither leftImg8bit_sequence/{split} nor leftImg8bit/{split}: "
                    "give a Cityscapes root (e.g. one written by 'iapc synth') and its --split")


def plan_domain(root: Path, domain: str, split: str, start: int) -> tuple[str, list[PlannedFrame]]:
    """The frames of one root in the order the runtime plays them, with their labels."""
    from iapc.adapt.data import find_cityscapes
    from iapc.runtime.sources import cityscapes_source

    location, sequence = runtime_location(root, split)
    images = cityscapes_source(location).images  # the runtime's own listing, hence its order
    labels = {s.image: s.label for s in find_cityscapes(root, split, sequence=sequence)}
    frames = [PlannedFrame(start + i, domain, image, labels.get(image))
              for i, image in enumerate(images)]
    return location, frames


def build_plan(roots: list[Path], split: str, rounds: int) -> ReplayPlan:
    if rounds < 1:
        raise UserError(f"--rounds must be 1 or more, got {rounds}")
    domains, locations, frames = domain_names(roots), [], []
    for root, domain in zip(roots, domains):
        location, domain_frames = plan_domain(root, domain, split, len(frames))
        locations.append(location)
        frames.extend(domain_frames)
    if not any(f.label is not None for f in frames):
        raise UserError(f"no frame under {', '.join(map(str, roots))} has a gtFine/{split} "
                        "*_gtFine_labelIds.png label: nothing to evaluate")
    return ReplayPlan(domains, locations, frames, rounds)


# ----------------------------------------------------------------------------------------------
# Starting the runtime as a user does
# ----------------------------------------------------------------------------------------------

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
    args += ["--cityscapes-sequence", plan.runtime_location,
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
    if not adapt:
        args.append("--no-adapt")
    return args


# ----------------------------------------------------------------------------------------------
# Recording what the runtime publishes
# ----------------------------------------------------------------------------------------------

@dataclass
class ScoredFrame:
    frame_id: int
    round: int
    domain: str
    name: str
    engine_version: int
    confusion: object  # numpy int64 (K, K), rows = ground truth, columns = prediction
    mask_file: str | None = None


@dataclass
class RunRecord:
    """Everything one runtime run published, as received."""

    adapted: bool
    rounds: int
    # per mask, in arrival order: (frame_id, engine_version, capture_ns, publish_ns, received_ns)
    masks: list[tuple[int, int, int, int, int]] = field(default_factory=list)
    scored: list[ScoredFrame] = field(default_factory=list)
    statuses: list[dict] = field(default_factory=list)
    num_classes: int = 0
    subscriber: dict = field(default_factory=dict)  # received / replaced / rejected counters
    exit_code: int | None = None
    wall_s: float = 0.0

    @property
    def name(self) -> str:
        return RUN_NAMES[self.adapted]


def score_mask(mask, label_path: Path, num_classes: int):
    """(K, K) confusion of one published mask against its gtFine label, at the label's size
    (the mask, at the engine's size, is upsampled by nearest neighbour as an image would be)."""
    import cv2

    from iapc.adapt.data import read_train_ids
    from iapc.adapt.metrics import ConfusionMatrix

    label = read_train_ids(label_path)  # uint8 (H, W) train ids, 255 = ignore
    if mask.shape != label.shape:
        mask = cv2.resize(mask, (label.shape[1], label.shape[0]), interpolation=cv2.INTER_NEAREST)
    matrix = ConfusionMatrix(num_classes)
    matrix.update(mask, label)
    return matrix.mat


def save_mask(mask, folder: Path, scored: ScoredFrame) -> str:
    """The received mask as a train-id PNG, named after its frame; returns the path."""
    import cv2

    path = folder / f"r{scored.round + 1:02d}_{scored.domain}_{scored.name}_trainIds.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), mask):
        raise UserError(f"cannot write {path}: check that --out is writable")
    return str(path)


class StreamRecorder:
    """Consumes the mask and status messages of one run; scores annotated frames as they pass."""

    def __init__(self, plan: ReplayPlan, record: RunRecord, masks_folder: Path | None):
        self.plan = plan
        self.record = record
        self.masks_folder = masks_folder

    def add_mask(self, header, mask, received_ns: int) -> None:
        self.record.masks.append((header.frame_id, header.engine_version, header.capture_ns,
                                  header.publish_ns, received_ns))
        self.record.num_classes = header.num_classes
        if header.frame_id >= self.plan.total_frames:
            return  # not a frame of this replay (cannot happen with --max-frames; be safe)
        round_index, planned = self.plan.locate(header.frame_id)
        if planned.label is None:
            return
        scored = ScoredFrame(header.frame_id, round_index, planned.domain, planned.name,
                             header.engine_version,
                             score_mask(mask, planned.label, header.num_classes))
        if self.masks_folder is not None:
            scored.mask_file = save_mask(mask, self.masks_folder, scored)
        self.record.scored.append(scored)

    def add_status(self, status: dict) -> None:
        self.record.statuses.append(status)


def collect(subscriber, process: subprocess.Popen, recorder: StreamRecorder, progress,
            stall_timeout_s: float) -> None:
    """Receive until the runtime has exited and nothing is left in flight."""
    last_message = time.monotonic()
    while True:
        try:
            message = subscriber.receive_any(timeout=RECEIVE_POLL_S)
        except TimeoutError:
            if process.poll() is not None:
                return
            if time.monotonic() - last_message > stall_timeout_s:
                raise UserError(f"the runtime published nothing for {stall_timeout_s:.0f} s: "
                                "see the logs under --out/logs") from None
            continue
        last_message = time.monotonic()
        if message.status is not None:
            recorder.add_status(message.status)
        else:
            recorder.add_mask(message.header, message.array, message.received_ns)
            progress.update(1)
            progress.set_postfix(engine=f"v{message.header.engine_version}", refresh=False)


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
    for name in ("inference.log", "daemon.log", "config.json", "inference_summary.json"):
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, logs / name)


def last_error_line(stderr_file: Path) -> str:
    lines = [l for l in stderr_file.read_text(errors="replace").splitlines() if l.strip()]
    return lines[-1] if lines else "no message"


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


# ----------------------------------------------------------------------------------------------
# The command
# ----------------------------------------------------------------------------------------------

def embedded_checkpoint(model: str) -> Path:
    """The runtime's default source model, trained here first if it is not cached yet, so that
    the runtime starts at once instead of training in silence while the replay waits."""
    from iapc.adapt.embedded import ensure_source_model

    return ensure_source_model(model)


def run_replay(cfg: ReplayConfig) -> dict:
    """Replay (adapted, then source-only), write the report; returns the report dict.

    The source-only engine never changes, so it gives the same masks in every round: its
    baseline replays one round and stands for all of them.
    """
    from iapc.runtime.report import build_report, write_report

    plan = build_plan(cfg.roots, cfg.split, cfg.rounds)
    cfg.out.mkdir(parents=True, exist_ok=True)
    if cfg.checkpoint is None:
        cfg.checkpoint = str(embedded_checkpoint(cfg.model or "tiny"))
    adapted = replay_once(cfg, plan, adapt=True, rounds=cfg.rounds)
    baseline = replay_once(cfg, plan, adapt=False, rounds=1) if cfg.baseline else None
    report = build_report(plan, adapted, baseline, cfg)
    write_report(report, cfg.out, adapted, baseline, plan)
    return report


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from iapc.runtime.config import parse_size

    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--cityscapes", type=Path, metavar="ROOT",
                      help="a Cityscapes root: leftImg8bit_sequence snippets (else leftImg8bit)")
    what.add_argument("--cycle", type=Path, nargs="+", metavar="ROOT",
                      help="continual protocol: these target roots in turn, --rounds times")
    parser.add_argument("--split", default="val", help="split to replay (default: val)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="passes over the roots within one runtime run (default 1)")
    pace = parser.add_mutually_exclusive_group()
    pace.add_argument("--rate", type=float, default=RECORDED_FPS,
                      help=f"frames per second (default {RECORDED_FPS:g}, the recorded rate)")
    pace.add_argument("--fast", action="store_true", help="as fast as the runtime goes")
    parser.add_argument("--checkpoint", help="source checkpoint (default: the embedded one)")
    parser.add_argument("--model", help="architecture of the checkpoint (default: tiny)")
    parser.add_argument("--input-size", type=parse_size, metavar="WxH",
                        help="engine input size, e.g. 1024x512")
    parser.add_argument("--classes", choices=("19", "16", "13"), default="19",
                        help="classes in the mIoU: 19 (Cityscapes), 16/13 (SYNTHIA mIoU/mIoU*)")
    parser.add_argument("--runtime-config", metavar="FILE.yaml",
                        help="iapc-runtime config file (adaptation settings, backend, ...)")
    parser.add_argument("--export-every-steps", type=int, metavar="N",
                        help="adaptation steps between engine exports")
    parser.add_argument("--out", type=Path, default=Path("replay"),
                        help="report folder (default ./replay)")
    parser.add_argument("--no-baseline", dest="baseline", action="store_false",
                        help="skip the source-only run")
    parser.add_argument("--save-masks", action="store_true",
                        help="keep the masks of annotated frames as train-id PNGs under OUT/masks")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bar")


# --fast runs frames as fast as inference goes; the daemon adapts at its own pace, so it sees a
# fraction of them and "adapted" is compared with source-only after little adaptation.
FAST_WARNING = ("iapc replay: warning: --fast plays the frames as fast as inference runs, so "
                "the adaptation daemon trains on few of them and 'adapted' vs 'source-only' "
                "measures little adaptation: use --rate FPS (as recorded) for that comparison")


def config_from_args(args: argparse.Namespace) -> ReplayConfig:
    if args.rate is not None and args.rate <= 0:
        raise UserError(f"--rate must be positive frames per second (or use --fast), got {args.rate}")
    if args.checkpoint is not None and not Path(args.checkpoint).is_file():
        raise UserError(f"checkpoint {args.checkpoint} does not exist: give a .pth/.pt file")
    roots = [args.cityscapes] if args.cityscapes is not None else list(args.cycle)
    return ReplayConfig(roots=roots, split=args.split, rounds=args.rounds,
                        rate=None if args.fast else args.rate, checkpoint=args.checkpoint,
                        model=args.model, input_size=args.input_size, classes=args.classes,
                        runtime_config=args.runtime_config,
                        export_every_steps=args.export_every_steps, baseline=args.baseline,
                        out=args.out, save_masks=args.save_masks, progress=args.progress)


def run(args: argparse.Namespace) -> int:
    from iapc.runtime.report import headline

    cfg = config_from_args(args)
    if cfg.rate is None and cfg.baseline:
        print(FAST_WARNING, file=sys.stderr, flush=True)
    report = run_replay(cfg)
    print(headline(report))
    print(f"report: {cfg.out / 'report.json'}, {cfg.out / 'report.md'}")
    return 0
