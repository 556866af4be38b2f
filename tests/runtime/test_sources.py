"""Frame sources on real files: a looping video plays its frames again from the first, in order."""

import cv2
import numpy as np

from iapc.runtime.sources import CaptureSource, CaptureThread

FRAMES = 5


def write_video(path, count: int = FRAMES, size=(64, 48)):
    """``count`` frames of one flat grey level each (level 40 * index), MJPG in an AVI."""
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10.0, size)
    assert writer.isOpened(), "OpenCV cannot write MJPG here"
    for index in range(count):
        writer.write(np.full((size[1], size[0], 3), 40 * index, np.uint8))
    writer.release()
    return path


def played(thread: CaptureThread, limit: int = 100) -> list[int]:
    """The grey level of every frame the thread hands over, until it ends."""
    levels = []
    thread.start()
    try:
        while len(levels) < limit:
            frame = thread.get(timeout=5.0)
            if frame is None:
                break
            levels.append(int(round(float(frame.image.mean()) / 40)))
    finally:
        thread.stop()
    return levels


def test_a_looping_video_starts_again_from_its_first_frame_until_max_frames(tmp_path):
    source = CaptureSource(str(write_video(tmp_path / "clip.avi")), camera=False)
    source.open()
    levels = played(CaptureThread(source, fps=None, max_frames=12, loop=True))
    source.close()
    assert levels == [0, 1, 2, 3, 4, 0, 1, 2, 3, 4, 0, 1]


def test_a_video_without_loop_ends_after_its_last_frame(tmp_path):
    source = CaptureSource(str(write_video(tmp_path / "clip.avi")), camera=False)
    source.open()
    levels = played(CaptureThread(source, fps=None, max_frames=None, loop=False))
    source.close()
    assert levels == [0, 1, 2, 3, 4]
