"""Frame sources (camera, video, images, Cityscapes and CamVid sequences, synthetic stream) and the capture
thread that feeds the inference loop. No torch here: this runs in the inference process.

A source yields :class:`Frame` objects with uint8 (H, W, 3) BGR images, as OpenCV delivers them.
A source whose device goes away raises :class:`SourceOutage`; the capture thread then reopens it
with backoff until it is back (the loop reports the outage on the status topic).
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
import logging
from pathlib import Path

import cv2
import numpy as np

from iapc.errors import UserError
from iapc.runtime.protocol import StatusKind

log = logging.getLogger("iapc.runtime.sources")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
RETRY_FIRST_S = 0.1  # first wait before reopening a lost source; doubles up to retry_max_s


class SourceOutage(Exception):
    """The device is gone or failing (unplugged camera, read errors): retry later."""


@dataclass
class Frame:
    image: np.ndarray  # uint8 (H, W, 3) BGR
    index: int  # position in the source, from 0
    capture_ns: int  # wall clock (time.time_ns) when the frame was captured
    label: np.ndarray | None = None  # uint8 (H, W) train ids, when the source has them
    name: str = ""


class FrameSource:
    """Base: ``frames()`` yields frames; ``live`` sources run at their own rate (a camera), so the
    capture thread keeps only the newest frame; other sources wait for the loop (lossless)."""

    live = False

    def open(self) -> None:
        """Acquire the device or file; raise :class:`UserError` if it cannot be used."""

    def frames(self) -> Iterator[Frame]:
        raise NotImplementedError

    def close(self) -> None:
        """Release the device or file."""

    def reopen(self) -> None:
        """After a :class:`SourceOutage`: release and acquire again (raises while still gone)."""
        self.close()
        self.open()


class CaptureSource(FrameSource):
    """A V4L2 camera (``/dev/video0`` or an index) or a video file, through ``cv2.VideoCapture``."""

    def __init__(self, location: str, camera: bool):
        self.location = location
        self.camera = camera
        self.live = camera
        self._capture: cv2.VideoCapture | None = None

    def _check_device(self) -> None:
        """A camera path must be a readable character device (checked before OpenCV, whose
        failures are multi-line warnings rather than errors)."""
        if self.location.isdigit():
            return
        try:
            mode = os.stat(self.location).st_mode
        except OSError as err:
            raise UserError(f"camera {self.location}: {err.strerror}; check that it is plugged in "
                            "and that /dev/video* exists, or use --video/--images/--synthetic") from None
        if not stat.S_ISCHR(mode):
            raise UserError(f"camera {self.location} is not a video device: give a V4L2 device "
                            "such as /dev/video0 (a file goes to --video)")
        if not os.access(self.location, os.R_OK):
            raise UserError(f"camera {self.location} is not readable: add your user to group "
                            "'video' or fix its permissions")

    def open(self) -> None:
        if self.camera:
            self._check_device()
            device = int(self.location) if self.location.isdigit() else self.location
            capture = cv2.VideoCapture(device, cv2.CAP_V4L2)
            hint = ("check that it is plugged in, that /dev/video* exists and that you may read "
                    "it (group 'video'), or use --video/--images/--synthetic")
        else:
            if not Path(self.location).is_file():
                raise UserError(f"video file {self.location} does not exist")
            capture = cv2.VideoCapture(self.location)
            hint = "is it a video file OpenCV can decode (mp4, avi, mkv)?"
        if not capture.isOpened():
            raise UserError(f"cannot open {'camera' if self.camera else 'video'} "
                            f"{self.location}: {hint}")
        self._capture = capture

    def native_fps(self) -> float | None:
        """The file's own frame rate (CAP_PROP_FPS), None when it records none (or a camera)."""
        if self.camera or self._capture is None:
            return None
        fps = self._capture.get(cv2.CAP_PROP_FPS)
        return float(fps) if fps and 0 < fps < 1000 else None

    def read(self) -> np.ndarray | None:
        """One frame, or None when the device fails or the file ends."""
        ok, image = self._capture.read()
        return image if ok and image is not None else None

    def frames(self) -> Iterator[Frame]:
        if not self.camera and self._capture.get(cv2.CAP_PROP_POS_FRAMES) > 0:
            self.reopen()  # another pass (--loop) starts from the file's first frame
        index = 0
        while True:
            image = self.read()
            if image is None:
                if self.camera:  # a camera does not end: it failed or was unplugged
                    raise SourceOutage(f"camera {self.location} stopped delivering frames")
                return  # end of the video file
            yield Frame(image, index, time.time_ns())
            index += 1

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None


class FileListSource(FrameSource):
    """Images read in order from a list of files, with labels where they exist (Cityscapes
    label ids, or CamVid classes with ``label_set="camvid"``), delivered as train ids."""

    WARN_FIRST = 10  # unreadable files named one by one; the rest are only counted

    def __init__(self, images: list[Path], labels: list[Path | None] | None = None,
                 label_set: str = "cityscapes"):
        self.images = images
        self.labels = labels or [None] * len(images)
        self.label_set = label_set
        self.unreadable = 0  # files OpenCV could not decode: skipped, counted, warned

    def frames(self) -> Iterator[Frame]:
        from iapc.data import read_train_ids

        for index, (path, label_path) in enumerate(zip(self.images, self.labels)):
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:  # skipped (its index stays unused), counted and warned
                self.unreadable += 1
                if self.unreadable <= self.WARN_FIRST:
                    log.warning("skipped %s: not an image OpenCV can decode (%d unreadable so "
                                "far)", path, self.unreadable)
                continue
            label = read_train_ids(label_path, self.label_set) if label_path is not None else None
            yield Frame(image, index, time.time_ns(), label, path.name)


def images_source(folder: str) -> FileListSource:
    root = Path(folder)
    if not root.is_dir():
        raise UserError(f"image folder {folder} does not exist")
    images = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not images:
        raise UserError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {folder}")
    return FileListSource(images)


def cityscapes_source(folder: str, split: str = "val") -> FileListSource:
    """A Cityscapes root (``leftImg8bit_sequence``, else ``leftImg8bit``) or a folder of
    ``*_leftImg8bit.png`` files, in (city, sequence, frame) order; ``gtFine`` labels attached."""
    from iapc.data import find_cityscapes

    root = Path(folder)
    if not root.exists():
        raise UserError(f"Cityscapes folder {folder} does not exist")
    if (root / "leftImg8bit_sequence" / split).is_dir():
        samples = find_cityscapes(root, split, sequence=True)
    elif (root / "leftImg8bit" / split).is_dir():
        samples = find_cityscapes(root, split)
    else:
        images = sorted(root.rglob("*_leftImg8bit.png"))
        if not images:
            raise UserError(f"no *_leftImg8bit.png under {folder}: give a Cityscapes root or a "
                            "leftImg8bit_sequence folder")
        return FileListSource(images)
    return FileListSource([s.image for s in samples], [s.label for s in samples])


def playlist_source(locations: list[str]) -> FileListSource:
    """Several Cityscapes roots (or split folders) played one after the other as one recorded
    source, for the continual protocol's cycle of target domains; with ``--loop`` each pass over
    all of them is one round. Frame ids run on across roots and rounds."""
    parts = [cityscapes_source(location) for location in locations]
    return FileListSource([image for part in parts for image in part.images],
                          [label for part in parts for label in part.labels])


def camvid_source(spec: str) -> FileListSource:
    """CamVid sequences played in turn: ``ROOT[:SEQ[/SPLIT][,SEQ[/SPLIT]...]]`` (every sequence
    when none is named; a sequence's frames of every split unless it names one), each in frame
    order, with its labels as train ids."""
    from iapc.data import find_camvid_spec, parse_camvid_spec

    root, _ = parse_camvid_spec(spec)
    if not root.is_dir():
        raise UserError(f"CamVid root {root} does not exist: give ROOT[:SEQ[,SEQ...]], e.g. "
                        "CamVid:0016E5,0001TP,Seq05VD")
    samples = find_camvid_spec(spec, "all")
    return FileListSource([s.image for s in samples], [s.label for s in samples], "camvid")


class SyntheticSource(FrameSource):
    """The project's generated driving stream (``iapc.synth``), with its labels."""

    def __init__(self, domain: str, size: tuple[int, int], seed: int = 0):
        from iapc import synth

        if domain not in synth.DOMAINS:
            raise UserError(f"unknown synthetic domain {domain!r}: choose one of "
                            f"{', '.join(sorted(synth.DOMAINS))}")
        self.domain, self.size, self.seed = domain, size, seed

    def frames(self) -> Iterator[Frame]:
        from iapc import synth
        from iapc.labels import label_ids_to_train_ids

        for index, (image, label_ids) in enumerate(synth.stream(self.domain, self.size, self.seed)):
            yield Frame(image, index, time.time_ns(), label_ids_to_train_ids(label_ids),
                        f"{self.domain}_{index:06d}")


@dataclass
class FaultSchedule:
    """Faults a :class:`FaultySource` injects, as probabilities per frame (seeded, repeatable).

    Written ``"bad=0.01,resize=0.01,outage=0.002,outage_s=0.5"`` in ``source.faults``.
    """

    bad: float = 0.0  # corrupt frame: empty, one channel or float pixels (skipped, counted)
    resize: float = 0.0  # frame at another size (resized by the loop)
    outage: float = 0.0  # the device goes away ...
    outage_s: float = 0.5  # ... for this long

    @classmethod
    def parse(cls, text: str) -> "FaultSchedule":
        values = {}
        for item in filter(None, (part.strip() for part in text.split(","))):
            name, _, value = item.partition("=")
            if name not in cls.__dataclass_fields__:
                raise UserError(f"unknown fault {name!r} in {text!r}: use "
                                f"{', '.join(cls.__dataclass_fields__)}")
            try:
                values[name] = float(value)
            except ValueError:
                raise UserError(f"fault {name} needs a number, e.g. {name}=0.01") from None
        return cls(**values)


class FaultySource(FrameSource):
    """Wraps a recorded source and injects :class:`FaultSchedule` faults (tests, soak runs).

    ``injected`` counts what was injected, by kind. The wrapped stream goes on where it was after
    an outage, as a camera's scene would.
    """

    def __init__(self, inner: FrameSource, schedule: FaultSchedule, seed: int = 0):
        self.inner, self.schedule = inner, schedule
        self.rng = np.random.default_rng(seed + 7919)
        self.injected = {"bad": 0, "resize": 0, "outage": 0}
        self._stream: Iterator[Frame] | None = None
        self._back_at = 0.0  # monotonic time the device returns after an outage

    def open(self) -> None:
        if time.monotonic() < self._back_at:
            raise SourceOutage("injected outage: device not back yet")
        if self._stream is None:
            self.inner.open()
            self._stream = self.inner.frames()

    reopen = open  # the wrapped stream stays open across injected outages

    def frames(self) -> Iterator[Frame]:
        for frame in self._stream:
            draw = self.rng.random()
            s = self.schedule
            if draw < s.outage:
                self.injected["outage"] += 1
                self._back_at = time.monotonic() + s.outage_s
                raise SourceOutage("injected outage: device unplugged")
            if draw < s.outage + s.bad:
                self.injected["bad"] += 1
                frame.image = self._corrupt(frame.image)
            elif draw < s.outage + s.bad + s.resize:
                self.injected["resize"] += 1
                height, width = frame.image.shape[:2]
                frame.image = cv2.resize(frame.image, (width * 3 // 2, height // 2 + 1))
            yield frame

    def _corrupt(self, image: np.ndarray) -> np.ndarray:
        kind = self.rng.integers(3)
        if kind == 0:
            return image[:0]  # (0, W, 3): an empty frame
        if kind == 1:
            return image[..., 0]  # (H, W): one channel
        return image.astype(np.float32)  # wrong pixel type

    def close(self) -> None:
        self.inner.close()


def make_source(kind: str, location: str, size: tuple[int, int], seed: int = 0,
                faults: str | None = None) -> FrameSource:
    """The source named by the command line (``--camera``, ``--video``, ...); ``faults``
    (a :class:`FaultSchedule`) wraps a synthetic stream in a :class:`FaultySource`."""
    if faults and kind != "synthetic":
        raise UserError("source.faults works with the synthetic source only")
    if faults:
        return FaultySource(SyntheticSource(location, size, seed), FaultSchedule.parse(faults), seed)
    if kind == "camera":
        return CaptureSource(location, camera=True)
    if kind == "video":
        return CaptureSource(location, camera=False)
    if kind == "images":
        return images_source(location)
    if kind == "cityscapes":
        if os.pathsep in location and not Path(location).exists():  # ROOT1:ROOT2:... in turn
            return playlist_source([part for part in location.split(os.pathsep) if part])
        return cityscapes_source(location)
    if kind == "camvid":
        return camvid_source(location)
    if kind == "synthetic":
        return SyntheticSource(location, size, seed)
    from iapc.runtime.config import SOURCE_KINDS

    raise UserError(f"unknown source kind {kind!r}: use one of {', '.join(SOURCE_KINDS)}")


class CaptureThread(threading.Thread):
    """Reads a source in the background and hands frames to the loop.

    Live sources (a camera) keep only the newest frame: a slow loop skips frames rather than
    falling behind (``dropped`` counts them). Recorded sources (files, synthetic stream) are
    lossless, paced at ``fps`` when given: the thread waits until the loop has taken the previous
    frame, so a replay shows every frame even when the loop is briefly slower than the rate.
    """

    def __init__(self, source: FrameSource, fps: float | None = None, max_frames: int | None = None,
                 loop: bool = False, retry_max_s: float = 5.0):
        super().__init__(name="capture", daemon=True)
        self.retry_max_s = retry_max_s
        self.outages = 0
        self.retries = 0
        self.in_outage = False
        # status messages of kind source, state lost or resumed, for the loop to publish
        self.source_events: deque[dict] = deque(maxlen=64)
        self.source = source
        self.fps = fps
        self.max_frames = max_frames
        self.loop = loop
        self.live = source.live
        self._cond = threading.Condition()
        self._frame: Frame | None = None
        self._stop_event = threading.Event()  # not _stop: Thread uses that name
        self.finished = False
        self.captured = 0
        self.dropped = 0

    @property
    def unreadable(self) -> int:
        """Files of a folder source that could not be decoded (0 for other sources)."""
        return getattr(self.source, "unreadable", 0)

    def run(self) -> None:
        try:
            while not self._stop_event.is_set():
                before = self.captured
                try:
                    if self._pump():
                        return
                except SourceOutage as err:
                    self._recover(str(err))
                    continue
                if not self.loop or self.captured == before:  # a pass without frames ends it
                    return
        finally:
            with self._cond:
                self.finished = True
                self._cond.notify_all()

    def _pump(self) -> bool:
        """Hand over the source's frames; True when stopped or at max_frames, False at its end."""
        period = 1.0 / self.fps if self.fps else 0.0
        next_due = time.perf_counter()
        for frame in self.source.frames():
            if self._stop_event.is_set() or self._reached_max():
                return True
            if period:
                next_due += period
                delay = next_due - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            frame.index = self.captured
            frame.capture_ns = time.time_ns()
            self._hand_over(frame)
            self.captured += 1
        return self._stop_event.is_set() or self._reached_max()

    def _recover(self, reason: str) -> None:
        """Reopen a lost source with backoff (0.1 s doubling up to retry_max_s) until it is back."""
        self.outages += 1
        self.in_outage = True
        lost_at = time.monotonic()
        self.source_events.append({"kind": StatusKind.SOURCE.value, "state": "lost", "reason": reason,
                                   "outages": self.outages, "at_frame": self.captured})
        delay = RETRY_FIRST_S
        while not self._stop_event.wait(delay):
            try:
                self.source.reopen()
                break
            except (SourceOutage, UserError) as err:
                self.retries += 1
                reason = str(err)
                delay = min(delay * 2, self.retry_max_s)
        self.in_outage = False
        self.source_events.append({"kind": StatusKind.SOURCE.value, "state": "resumed",
                                   "outage_s": round(time.monotonic() - lost_at, 3),
                                   "retries": self.retries, "outages": self.outages})

    def _reached_max(self) -> bool:
        return self.max_frames is not None and self.captured >= self.max_frames

    def _hand_over(self, frame: Frame) -> None:
        with self._cond:
            if self.live:
                if self._frame is not None:
                    self.dropped += 1  # newest wins
            else:
                while self._frame is not None and not self._stop_event.is_set():
                    self._cond.wait(0.1)
            self._frame = frame
            self._cond.notify_all()

    def get(self, timeout: float | None = None) -> Frame | None:
        """The next frame, or None on timeout or when the source has ended."""
        with self._cond:
            if self._frame is None and not self.finished:
                self._cond.wait(timeout)
            frame, self._frame = self._frame, None
            self._cond.notify_all()
            return frame

    def stop(self, timeout: float = 5.0) -> None:
        """Stop reading and wait for the thread: a daemon thread still inside OpenCV when the
        interpreter exits aborts the process ("terminate called without an active exception")."""
        self._stop_event.set()
        with self._cond:
            self._cond.notify_all()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout)
