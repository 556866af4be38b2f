"""Frame sources (camera, video, images, Cityscapes sequences, synthetic stream) and the capture
thread that feeds the inference loop. No torch here: this runs in the inference process.

A source yields :class:`Frame` objects with uint8 (H, W, 3) BGR images, as OpenCV delivers them.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from iapc.errors import UserError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")


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


class CaptureSource(FrameSource):
    """A V4L2 camera (``/dev/video0`` or an index) or a video file, through ``cv2.VideoCapture``."""

    def __init__(self, location: str, camera: bool):
        self.location = location
        self.camera = camera
        self.live = camera
        self._capture: cv2.VideoCapture | None = None

    def open(self) -> None:
        if self.camera:
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

    def read(self) -> np.ndarray | None:
        """One frame, or None when the device fails or the file ends."""
        ok, image = self._capture.read()
        return image if ok and image is not None else None

    def frames(self) -> Iterator[Frame]:
        index = 0
        while True:
            image = self.read()
            if image is None:
                return
            yield Frame(image, index, time.time_ns())
            index += 1

    def close(self) -> None:
        if self._capture is not None:
            self._capture.release()
            self._capture = None


class FileListSource(FrameSource):
    """Images read in order from a list of files, with Cityscapes labels where they exist."""

    def __init__(self, images: list[Path], labels: list[Path | None] | None = None):
        self.images = images
        self.labels = labels or [None] * len(images)

    def frames(self) -> Iterator[Frame]:
        from iapc.adapt.data import read_train_ids

        for index, (path, label_path) in enumerate(zip(self.images, self.labels)):
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                continue  # unreadable file: skipped here, counted by the loop as a missing index
            label = read_train_ids(label_path) if label_path is not None else None
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
    from iapc.adapt.data import find_cityscapes

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


class SyntheticSource(FrameSource):
    """The project's generated driving stream (``iapc.adapt.synth``), with its labels."""

    def __init__(self, domain: str, size: tuple[int, int], seed: int = 0):
        from iapc.adapt import synth

        if domain not in synth.DOMAINS:
            raise UserError(f"unknown synthetic domain {domain!r}: choose one of "
                            f"{', '.join(sorted(synth.DOMAINS))}")
        self.domain, self.size, self.seed = domain, size, seed

    def frames(self) -> Iterator[Frame]:
        from iapc.adapt import synth
        from iapc.adapt.labels import label_ids_to_train_ids

        for index, (image, label_ids) in enumerate(synth.stream(self.domain, self.size, self.seed)):
            yield Frame(image, index, time.time_ns(), label_ids_to_train_ids(label_ids),
                        f"{self.domain}_{index:06d}")


def make_source(kind: str, location: str, size: tuple[int, int], seed: int = 0) -> FrameSource:
    """The source named by the command line (``--camera``, ``--video``, ...)."""
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
    if kind == "synthetic":
        return SyntheticSource(location, size, seed)
    raise UserError(f"unknown source kind {kind!r}: use camera, video, images, cityscapes or synthetic")


class CaptureThread(threading.Thread):
    """Reads a source in the background and hands frames to the loop.

    Live sources (a camera) keep only the newest frame: a slow loop skips frames rather than
    falling behind (``dropped`` counts them). Recorded sources (files, synthetic stream) are
    lossless, paced at ``fps`` when given: the thread waits until the loop has taken the previous
    frame, so a replay shows every frame even when the loop is briefly slower than the rate.
    """

    def __init__(self, source: FrameSource, fps: float | None = None, max_frames: int | None = None,
                 loop: bool = False):
        super().__init__(name="capture", daemon=True)
        self.source = source
        self.fps = fps
        self.max_frames = max_frames
        self.loop = loop
        self.live = source.live
        self._cond = threading.Condition()
        self._frame: Frame | None = None
        self._stop = threading.Event()
        self.finished = False
        self.captured = 0
        self.dropped = 0

    def run(self) -> None:
        period = 1.0 / self.fps if self.fps else 0.0
        next_due = time.perf_counter()
        try:
            while not self._stop.is_set():
                for frame in self.source.frames():
                    if self._stop.is_set() or self._reached_max():
                        return
                    if period:
                        next_due += period
                        delay = next_due - time.perf_counter()
                        if delay > 0:
                            time.sleep(delay)
                    frame.index = self.captured
                    frame.capture_ns = time.time_ns()
                    self._hand_over(frame)
                    self.captured += 1
                if not self.loop or self.captured == 0:
                    return
        finally:
            with self._cond:
                self.finished = True
                self._cond.notify_all()

    def _reached_max(self) -> bool:
        return self.max_frames is not None and self.captured >= self.max_frames

    def _hand_over(self, frame: Frame) -> None:
        with self._cond:
            if self.live:
                if self._frame is not None:
                    self.dropped += 1  # newest wins
            else:
                while self._frame is not None and not self._stop.is_set():
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

    def stop(self) -> None:
        self._stop.set()
        with self._cond:
            self._cond.notify_all()
