"""Receiving what one runtime run publishes: every mask header and status, and a confusion matrix
for each annotated frame, scored as it arrives."""

from __future__ import annotations

import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from iapc.errors import UserError
from iapc.replay.plan import ReplayPlan

RUN_NAMES = {True: "adapted", False: "source_only"}
RECEIVE_POLL_S = 0.5  # how often the collector checks whether the runtime is still alive


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


def score_mask(mask, label_path: Path, num_classes: int, label_set: str = "cityscapes"):
    """(K, K) confusion of one published mask against its label (gtFine, or CamVid's as train
    ids), at the label's size (the mask, at the engine's size, is upsampled by nearest neighbour
    as an image would be)."""
    import cv2

    from iapc.data import read_train_ids
    from iapc.metrics import ConfusionMatrix

    label = read_train_ids(label_path, label_set)  # uint8 (H, W) train ids, 255 = ignore
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
                             score_mask(mask, planned.label, header.num_classes, planned.label_set))
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


class Collector(threading.Thread):
    """Receives every mask header and status message a runtime on a loopback ``port`` publishes,
    in a thread, for the fault tests and the soak benchmark that watch a run while it goes."""

    def __init__(self, port: int, rcvhwm: int = 8):
        from iapc.runtime.client import MaskSubscriber

        super().__init__(daemon=True)
        self.sub = MaskSubscriber(f"tcp://127.0.0.1:{port}", topics=(b"mask", b"status"),
                                  newest_wins=False, rcvhwm=rcvhwm)
        self.headers, self.statuses = [], []
        self.stopped = threading.Event()
        self.start()

    def run(self):
        while not self.stopped.is_set():
            try:
                message = self.sub.receive_any(timeout=0.2)
            except TimeoutError:
                continue
            if message.status is not None:
                self.statuses.append(message.status)
            else:
                self.headers.append(message.header)

    def wait_status(self, predicate, timeout: float, after: int = 0) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for status in self.statuses[after:]:
                if predicate(status):
                    return status
            time.sleep(0.05)
        kinds = [(s.get("kind"), s.get("type"), s.get("state")) for s in self.statuses[after:]]
        raise AssertionError(f"no such status within {timeout} s; saw {kinds[-30:]}")

    def wait_frames(self, count: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        start = len(self.headers)
        while len(self.headers) < start + count:
            assert time.monotonic() < deadline, f"masks stopped flowing ({len(self.headers)})"
            time.sleep(0.05)

    def close(self):
        self.stopped.set()
        self.join(5)
        self.sub.close()
