"""Live synthetic frames: the endless driving stream of a domain, and a fixed batch of frames."""

from __future__ import annotations

import time
from typing import Iterator

import numpy as np

from iapc.synth.layout import SEQUENCE_FPS, SEQUENCE_LENGTH, sample_layout, scene_rng
from iapc.synth.rendering import check_size, render_scene
from iapc.synth.styles import get_domain

def stream(domain: str, size: tuple[int, int] = (256, 128), seed: int = 0,
           fps: float | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless (image BGR, label ids) frames: consecutive 30-frame scenes of ``domain``.

    Within a scene the camera drives forward smoothly; ``fps`` (if given) paces the stream in
    wall-clock time and sets the scene's time step, otherwise frames come as fast as they render
    with the Cityscapes time step (1/17 s).
    """
    style = get_domain(domain)
    check_size(size)
    step = 1.0 / (fps or SEQUENCE_FPS)
    next_due = time.monotonic()
    scene = 0
    while True:
        rng = scene_rng(seed, domain, "stream", scene)
        layout = sample_layout(rng, style, duration=SEQUENCE_LENGTH * step)
        for frame in range(SEQUENCE_LENGTH):
            yield render_scene(rng, style, size, frame * step, layout)
            if fps:
                next_due += step
                time.sleep(max(0.0, next_due - time.monotonic()))
        scene += 1


def sample_frames(count: int, size: tuple[int, int], seed: int = 0,
                  domain: str = "city") -> np.ndarray:
    """uint8 (count, H, W, 3) BGR frames of ``count`` independent scenes of ``domain``.

    The parity and health gates check engines on these: street scenes with regions and
    boundaries like real frames (pure noise makes argmax ties, and a gate would test rounding
    only). Reproducible from ``seed``.
    """
    style = get_domain(domain)
    width, height = check_size(size)
    batch = np.empty((count, height, width, 3), np.uint8)
    for index in range(count):
        batch[index] = render_scene(scene_rng(seed, domain, "frames", index), style, size)[0]
    return batch
