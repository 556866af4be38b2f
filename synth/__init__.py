"""Procedurally generated driving domains with Cityscapes label ids (no download needed).

A scene is a road in perspective seen from a forward-moving camera: sky, road with lane markings,
sidewalks, roadside blocks (buildings with windows, vegetation, walls, fences), poles carrying
signs, traffic lights or street lamps, trees, parked and moving vehicles, pedestrians and riders.
Everything is placed in road coordinates (metres) and projected with a pinhole camera, so one
:class:`SceneLayout` renders at any resolution and at any time ``t`` of its sequence.

Each domain is a :class:`DomainStyle`: per-class appearance and texture, lighting and cast
shadows, colour grading, weather (depth fog, rain streaks, wet-road reflections), blur, sensor
noise, and the scene statistics (class frequencies, camera geometry). ``DOMAINS`` holds the
labelled ``source`` domain (clear day, flat game-like look) and the targets ``city``, ``night``,
``fog`` and ``rain``, which differ from the source in texture, noise, contrast, depth-dependent
effects and class frequencies, not only in global colour.

The source repaints every class per scene (``scene_jitter``), so a model trained on it must use
shape and context rather than one colour per class; the targets then shift palettes, textures,
optics and statistics beyond that range. A small CNN trained on the source loses most of its
mIoU on every target, and re-estimating its batch-norm statistics on a target recovers less
than half of that loss.

One file per job: :mod:`~iapc.synth.styles` (domains), :mod:`~iapc.synth.layout` (the world),
:mod:`~iapc.synth.rendering` (projection and drawing), :mod:`~iapc.synth.effects` (photometric
pipeline), :mod:`~iapc.synth.writer` (datasets on disk), :mod:`~iapc.synth.stream` (live frames).
No torch: the inference process streams from here.

Public API::

    DOMAINS: dict[str, DomainStyle]
    sample_layout(rng, style, duration=SEQUENCE_LENGTH / SEQUENCE_FPS) -> SceneLayout
    render_scene(rng, style, size=(256, 128), t=0.0, layout=None) -> (image_bgr, label_ids)
    render_sequence(rng, style, size=(256, 128), length=30, fps=17.0) -> list of (image, labels)
    write_domain(root, domain, split_sizes=None, size=(256, 128), sequences=0, seed=0,
                 progress=None) -> int
    stream(domain, size=(256, 128), seed=0, fps=None) -> endless iterator of (image, labels)
    sample_frames(count, size, seed=0, domain="city") -> uint8 (count, H, W, 3) BGR

Images are uint8 (H, W, 3) BGR as a camera delivers them; labels uint8 (H, W) Cityscapes label
ids (``*_gtFine_labelIds.png``), mapped to train ids by :mod:`iapc.labels`.
"""

from iapc.synth.layout import ANNOTATED_FRAME, SEQUENCE_FPS, SEQUENCE_LENGTH, SceneLayout, sample_layout
from iapc.synth.rendering import render_scene, render_sequence
from iapc.synth.styles import DOMAINS, DomainStyle, get_domain
from iapc.synth.writer import write_domain
# Imported last and by name: ``iapc.synth.stream`` is then the function, not its module.
from iapc.synth.stream import sample_frames, stream  # noqa: E402

__all__ = ["ANNOTATED_FRAME", "DOMAINS", "SEQUENCE_FPS", "SEQUENCE_LENGTH", "DomainStyle", "SceneLayout",
           "get_domain", "render_scene", "render_sequence", "sample_frames", "sample_layout", "stream",
           "write_domain"]
