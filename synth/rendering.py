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

Public API::

    DOMAINS: dict[str, DomainStyle]
    sample_layout(rng, style, duration=SEQUENCE_LENGTH / SEQUENCE_FPS) -> SceneLayout
    render_scene(rng, style, size=(256, 128), t=0.0, layout=None) -> (image_bgr, label_ids)
    render_sequence(rng, style, size=(256, 128), length=30, fps=17.0) -> list of (image, labels)
    write_domain(root, domain, split_sizes=None, size=(256, 128), sequences=0, seed=0,
                 progress=None) -> int
    stream(domain, size=(256, 128), seed=0, fps=None) -> endless iterator of (image, labels)

Images are uint8 (H, W, 3) BGR as a camera delivers them; labels uint8 (H, W) Cityscapes label
ids (``*_gtFine_labelIds.png``), mapped to train ids by :mod:`iapc.adapt.labels`.
"""

from __future__ import annotations

import functools
import json
import math
import os
import time
import zlib
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Iterator

import cv2
import numpy as np

from iapc.adapt.labels import NAME_TO_ID, colorize, label_ids_to_train_ids
from iapc.errors import UserError

SEQUENCE_LENGTH = 30  # frames per sequence, as in Cityscapes leftImg8bit_sequence
ANNOTATED_FRAME = 19  # the frame of each sequence that has a label (the 20th)
SEQUENCE_FPS = 17.0  # Cityscapes capture rate

BGR = tuple[int, int, int]

# Cityscapes label ids by name; never retyped, always looked up in cityscapesscripts' table.
ID: dict[str, int] = {name: NAME_TO_ID[name] for name in (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign",
    "vegetation", "terrain", "sky", "person", "rider", "car", "truck", "bus", "motorcycle",
    "bicycle", "ego vehicle")}
GROUND_CLASSES = ("road", "sidewalk", "terrain")  # surfaces that receive cast shadows

_NEAR = 1.0  # metres: nothing nearer than this is drawn
_FAR = 300.0  # metres: end of the modelled road; beyond it a skyline backdrop


# ----------------------------------------------------------------------------------------------
# Domain styles
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class DomainStyle:
    """Everything that makes one domain look the way it does.

    Lengths are in metres, blur and streak sizes in fractions of the image width (so a domain
    looks the same at every resolution), intensities in 0..255 units.
    """

    city: str  # city name used in the Cityscapes file names, e.g. "synthsource"
    # --- object appearance
    palette: dict[str, BGR]  # base colour per class name (plus "window", "marking", "sky_top")
    car_colors: tuple[BGR, ...]  # body colours of vehicles
    clothes_colors: tuple[BGR, ...]  # clothes of persons and riders
    color_jitter: float = 0.08  # per-instance multiplicative colour variation
    scene_jitter: float = 0.1  # per-scene, per-class variation of the palette (B, G, R apart)
    # --- texture: class -> (fine grain, low-frequency blotch) amplitude in intensity units
    texture: dict[str, tuple[float, float]] = field(default_factory=dict)
    window_lit: float = 0.0  # probability a window glows (night)
    # --- lighting
    sun_elevation: float = 45.0  # degrees; shadows get longer as it drops
    shadow_strength: float = 0.0  # 0 = no cast shadows, 0.6 = dark hard shadows
    shadow_softness: float = 0.004  # shadow edge blur, fraction of width
    face_shading: float = 0.25  # how much darker faces turned away from the sun are
    gain: float = 1.0  # global illumination
    tint: tuple[float, float, float] = (1.0, 1.0, 1.0)  # B, G, R multipliers
    contrast: float = 1.0  # around mid grey
    saturation: float = 1.0
    gamma: float = 1.0  # applied last, on 0..1 intensities
    vignette: float = 0.0  # corner darkening
    lamp_glow: float = 0.0  # street lamps, headlights and lit windows glow (night)
    # --- weather
    fog_density: float = 0.0  # 1/m; transmittance exp(-density * depth)
    fog_color: BGR = (200, 200, 200)
    rain_streaks: float = 0.0  # streaks per 1000 pixels
    rain_length: float = 0.03  # streak length, fraction of width
    wet_road: float = 0.0  # strength of the mirrored reflection on the road
    # --- optics and sensor
    motion_blur: float = 0.0  # radial zoom blur from forward motion, fraction of width
    defocus: float = 0.0  # Gaussian blur sigma, fraction of width
    noise_sigma: float = 0.0  # read noise (Gaussian), intensity units
    shot_noise: float = 0.0  # signal-dependent noise: sigma = shot_noise * sqrt(intensity)
    jpeg_quality: int = 0  # 0 = none, else re-encode with this JPEG quality (blockiness)
    ego_hood: float = 0.0  # height of the ego vehicle's bonnet, fraction of image height
    # --- scene statistics: expected count per 100 m of road
    rates: dict[str, float] = field(default_factory=dict)
    vegetation_share: float = 0.3  # chance a roadside block is vegetation instead of buildings
    wall_fence_share: float = 0.15  # chance a roadside block is fronted by a wall or fence
    building_height: tuple[float, float] = (8.0, 24.0)
    camera_height: tuple[float, float] = (1.3, 1.7)
    horizon: tuple[float, float] = (0.40, 0.48)  # horizon row, fraction of image height
    focal: tuple[float, float] = (0.9, 1.2)  # focal length, fraction of width
    curvature: float = 0.0015  # max |road curvature| (1/m)
    lanes: tuple[int, ...] = (2, 3, 4)
    sidewalk_width: tuple[float, float] = (2.0, 4.0)
    speed: tuple[float, float] = (6.0, 13.0)  # camera speed, m/s


_SOURCE = DomainStyle(
    city="synthsource",
    # clean, saturated, flat game-like colours
    palette={
        "sky": (240, 190, 110), "sky_top": (220, 150, 60), "road": (110, 104, 104),
        "marking": (235, 240, 240), "sidewalk": (175, 170, 185), "terrain": (80, 190, 140),
        "building": (110, 150, 205), "window": (210, 170, 110), "wall": (150, 170, 190),
        "fence": (60, 110, 150), "pole": (90, 90, 95), "traffic light": (40, 50, 40),
        "traffic sign": (40, 40, 220), "vegetation": (50, 170, 60), "skin": (150, 185, 230),
        "tyre": (30, 30, 30), "glass": (120, 80, 50), "ego vehicle": (40, 40, 40),
    },
    car_colors=((40, 40, 220), (220, 90, 30), (40, 200, 240), (230, 230, 230), (60, 170, 40),
                (200, 60, 200), (20, 20, 20)),
    clothes_colors=((200, 60, 40), (40, 40, 200), (40, 180, 230), (60, 160, 60), (230, 230, 230)),
    # every scene repaints each class (hue and brightness) so that a model trained here must
    # learn shapes and context, not one colour per class
    color_jitter=0.15, scene_jitter=0.25,
    # light, regular textures and a clean sensor (rendered-game look)
    texture={"road": (4.0, 5.0), "sidewalk": (3.0, 5.0), "building": (3.0, 5.0),
             "vegetation": (8.0, 8.0), "terrain": (5.0, 6.0), "car": (2.0, 2.0)},
    sun_elevation=50.0, shadow_strength=0.5, shadow_softness=0.0015, noise_sigma=1.5,
    rates={"car": 9.0, "parked": 6.0, "truck": 1.0, "bus": 0.6, "person": 2.0, "rider": 0.6,
           "pole": 5.0, "tree": 3.0},
    vegetation_share=0.25,
)

DOMAINS: dict[str, DomainStyle] = {
    "source": _SOURCE,
    # real-looking: muted palette, strong fine textures, soft shadows, optics and sensor effects,
    # lower camera, busier sidewalks and more greenery
    "city": replace(
        _SOURCE, city="synthcity",
        palette={**_SOURCE.palette,
                 "sky": (225, 222, 215), "sky_top": (200, 185, 170), "road": (88, 90, 92),
                 "marking": (190, 200, 205), "sidewalk": (130, 140, 150),
                 "terrain": (70, 130, 120), "building": (120, 130, 150), "window": (70, 65, 60),
                 "wall": (135, 140, 150), "fence": (90, 100, 100), "pole": (110, 110, 105),
                 "traffic sign": (160, 90, 40), "vegetation": (50, 95, 60),
                 "glass": (60, 55, 50)},
        car_colors=((40, 40, 40), (180, 180, 180), (220, 220, 220), (90, 60, 40), (60, 60, 120),
                    (120, 120, 115)),
        clothes_colors=((40, 40, 40), (90, 70, 60), (120, 120, 120), (60, 60, 100)),
        color_jitter=0.15,
        texture={"road": (7.0, 8.0), "sidewalk": (6.0, 9.0), "building": (8.0, 11.0),
                 "vegetation": (16.0, 13.0), "terrain": (10.0, 10.0), "sky": (2.0, 8.0),
                 "wall": (6.0, 8.0), "car": (3.0, 3.0), "person": (4.0, 3.0)},
        sun_elevation=35.0, shadow_strength=0.3, shadow_softness=0.008, face_shading=0.15,
        saturation=0.75, contrast=0.9, vignette=0.35, defocus=0.0018, motion_blur=0.004,
        noise_sigma=2.5, shot_noise=0.35, jpeg_quality=75, ego_hood=0.12,
        rates={"car": 5.0, "parked": 9.0, "truck": 0.5, "bus": 0.5, "person": 12.0,
               "rider": 3.0, "pole": 8.0, "tree": 7.0},
        vegetation_share=0.45, wall_fence_share=0.3, camera_height=(1.1, 1.4),
        horizon=(0.36, 0.44), focal=(1.0, 1.3), lanes=(2, 2, 3), sidewalk_width=(3.0, 5.0),
    ),
    # dark and noisy, lit by street lamps, headlights and windows; few pedestrians
    "night": replace(
        _SOURCE, city="synthnight",
        palette={**_SOURCE.palette,
                 "sky": (40, 25, 20), "sky_top": (20, 10, 5), "road": (70, 70, 75),
                 "sidewalk": (100, 105, 110), "building": (90, 100, 120), "window": (40, 40, 40),
                 "vegetation": (40, 80, 45), "terrain": (45, 80, 70), "glass": (30, 30, 30)},
        car_colors=((40, 40, 40), (150, 150, 150), (200, 200, 200), (40, 40, 120), (100, 50, 30)),
        texture={"road": (6.0, 8.0), "sidewalk": (5.0, 8.0), "building": (6.0, 10.0),
                 "vegetation": (10.0, 10.0)},
        window_lit=0.35, shadow_strength=0.0, face_shading=0.0, gain=0.5,
        tint=(1.15, 1.0, 0.9), saturation=0.6, gamma=1.15, lamp_glow=1.0, vignette=0.3,
        motion_blur=0.012, noise_sigma=5.0, shot_noise=1.2, jpeg_quality=60,
        rates={"car": 3.0, "parked": 2.5, "truck": 1.2, "bus": 0.3, "person": 0.8, "rider": 0.3,
               "pole": 9.0, "tree": 2.0},
        vegetation_share=0.2,
    ),
    # depth fog: far objects fade into a bright veil, low contrast, no shadows, sparse traffic
    "fog": replace(
        _SOURCE, city="synthfog",
        palette={**_SOURCE.palette,
                 "sky": (205, 205, 200), "sky_top": (195, 195, 190), "road": (95, 95, 95),
                 "vegetation": (60, 110, 70), "terrain": (90, 140, 120),
                 "building": (130, 135, 145)},
        texture={"road": (4.0, 6.0), "sidewalk": (4.0, 6.0), "vegetation": (8.0, 8.0),
                 "building": (4.0, 6.0)},
        shadow_strength=0.0, face_shading=0.1, saturation=0.6, contrast=0.9,
        fog_density=0.022, fog_color=(205, 205, 200), defocus=0.002, noise_sigma=2.0,
        rates={"car": 5.0, "parked": 5.0, "truck": 1.5, "bus": 0.8, "person": 1.5, "rider": 0.2,
               "pole": 6.0, "tree": 4.0},
        vegetation_share=0.4,
    ),
    # rain: dark wet road mirroring the scene, streaks, blur, overcast; more trucks and buses
    "rain": replace(
        _SOURCE, city="synthrain",
        palette={**_SOURCE.palette,
                 "sky": (170, 165, 160), "sky_top": (130, 125, 120), "road": (60, 60, 62),
                 "sidewalk": (105, 105, 110), "building": (100, 110, 125),
                 "vegetation": (45, 90, 50), "terrain": (60, 100, 90)},
        car_colors=((40, 40, 40), (150, 150, 150), (200, 200, 200), (40, 40, 160),
                    (120, 70, 40)),
        clothes_colors=((40, 40, 40), (60, 60, 60), (30, 120, 200), (120, 40, 40)),
        texture={"road": (3.0, 8.0), "sidewalk": (5.0, 8.0), "vegetation": (10.0, 10.0),
                 "building": (5.0, 8.0)},
        shadow_strength=0.0, face_shading=0.05, gain=0.8, saturation=0.7, contrast=0.8,
        fog_density=0.008, fog_color=(160, 160, 160), rain_streaks=3.0, rain_length=0.05,
        wet_road=0.45, motion_blur=0.008, defocus=0.0015, noise_sigma=3.0, shot_noise=0.5,
        rates={"car": 8.0, "parked": 4.0, "truck": 2.5, "bus": 1.5, "person": 0.6, "rider": 0.2,
               "pole": 5.0, "tree": 3.0},
    ),
}


def get_domain(name: str) -> DomainStyle:
    """The style of domain ``name``; a :class:`UserError` lists the known ones otherwise."""
    if name not in DOMAINS:
        raise UserError(f"unknown synthetic domain {name!r}: choose one of {', '.join(DOMAINS)}")
    return DOMAINS[name]


# ----------------------------------------------------------------------------------------------
# Scene layout (world, in road coordinates)
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Camera:
    focal: float  # fraction of image width
    horizon: float  # fraction of image height
    yaw: float  # vanishing point column offset, fraction of width
    height: float  # metres above the road
    lateral: float  # metres right of the road centre
    curvature: float  # 1/m; the road centre is at x = curvature * z^2 / 2 in camera coordinates
    speed: float  # m/s along the road


@dataclass(frozen=True)
class Thing:
    """An object standing on the ground. ``s``: station of its near end (m along the road),
    ``d``: lateral position of its centre (m right of the road centre)."""

    kind: str  # car, truck, bus, person, bicycle, motorcycle, tree, pole, sign, light, lamp
    s: float
    d: float
    width: float
    length: float
    height: float
    color: BGR
    speed: float = 0.0  # m/s along the road
    lateral_speed: float = 0.0  # m/s across it (crossing pedestrians)
    facing: int = 1  # +1: seen from behind, -1: seen from the front (oncoming)
    phase: float = 0.0  # walking phase, lamp colour, shape variant


@dataclass(frozen=True)
class Block:
    """A roadside block between stations ``s0`` and ``s1`` on ``side`` (-1 left, +1 right)."""

    kind: str  # building, vegetation, wall, fence
    side: int
    s0: float
    s1: float
    offset: float  # lateral distance of its road-facing side from the road centre (m)
    height: float
    color: BGR
    seed: int = 0  # windows and lit windows


@dataclass(frozen=True)
class SceneLayout:
    """One sampled scene; render it at any time ``t`` (seconds) of its sequence."""

    camera: Camera
    lanes: int
    lane_width: float
    sidewalk_width: float
    blocks: tuple[Block, ...]
    things: tuple[Thing, ...]
    skyline: tuple[tuple[float, float, int], ...]  # (column fraction, height m, label id)
    sun_azimuth: float  # radians; 0 = sun ahead, pi/2 = sun on the right
    texture_seed: int
    palette: dict[str, BGR]  # this scene's colours: the domain's palette, varied per scene

    @property
    def road_half(self) -> float:
        return self.lanes * self.lane_width / 2


def _jitter(rng: np.random.Generator, color: BGR, amount: float) -> BGR:
    """Vary a colour: brightness by ``amount`` (relative sd), each channel by half of it."""
    scale = (1.0 + amount * rng.standard_normal()) * (1.0 + 0.5 * amount * rng.standard_normal(3))
    return tuple(int(c) for c in np.clip(np.asarray(color) * np.maximum(scale, 0.2), 0, 255))


def _count(rng: np.random.Generator, style: DomainStyle, kind: str, length: float) -> int:
    return int(rng.poisson(style.rates.get(kind, 0.0) * length / 100.0))


def _sample_camera(rng: np.random.Generator, style: DomainStyle, lanes: int,
                   lane_width: float) -> Camera:
    own_lane = int(rng.integers(lanes // 2, lanes))  # drive in a right-hand lane
    return Camera(
        focal=float(rng.uniform(*style.focal)), horizon=float(rng.uniform(*style.horizon)),
        yaw=float(rng.uniform(-0.06, 0.06)), height=float(rng.uniform(*style.camera_height)),
        lateral=(own_lane + 0.5) * lane_width - lanes * lane_width / 2,
        curvature=float(rng.uniform(-style.curvature, style.curvature)),
        speed=float(rng.uniform(*style.speed)))


def _sample_blocks(rng: np.random.Generator, style: DomainStyle, road_edge: float,
                   s_range: tuple[float, float]) -> list[Block]:
    blocks = []
    for side in (-1, 1):
        s = s_range[0]
        while s < s_range[1]:
            length = float(rng.uniform(8, 35))
            setback = float(rng.choice([0.0, 0.0, rng.uniform(1, 6)]))
            if rng.random() < style.vegetation_share:
                kind, height = "vegetation", float(rng.uniform(1.0, 3.0))
            else:
                kind, height = "building", float(rng.uniform(*style.building_height))
            blocks.append(Block(kind, side, s, s + length, road_edge + setback, height,
                                _jitter(rng, style.palette[kind], style.color_jitter),
                                int(rng.integers(1 << 30))))
            if rng.random() < style.wall_fence_share:
                front = "wall" if rng.random() < 0.5 else "fence"
                blocks.append(Block(front, side, s + 1, s + length - 1, road_edge + 0.2,
                                    float(rng.uniform(1.0, 2.2)),
                                    _jitter(rng, style.palette[front], style.color_jitter)))
            s += length + float(rng.choice([0.0, rng.uniform(3, 15)]))  # gaps show the sky
    return blocks


def _vehicle(rng: np.random.Generator, style: DomainStyle, kind: str, s: float, d: float,
             speed: float, facing: int) -> Thing:
    width, length, height = {"car": (1.8, 4.4, 1.5), "truck": (2.5, 8.0, 3.4),
                             "bus": (2.6, 12.0, 3.2)}[kind]
    scale = float(rng.uniform(0.9, 1.1))
    color = style.car_colors[int(rng.integers(len(style.car_colors)))]
    return Thing(kind, s, d, width * scale, length * scale, height * scale,
                 _jitter(rng, color, style.color_jitter), speed, 0.0, facing,
                 float(rng.random()))


def _sample_traffic(rng: np.random.Generator, style: DomainStyle, cam: Camera, lanes: int,
                    lane_width: float, s_range: tuple[float, float], duration: float) -> list[Thing]:
    half = lanes * lane_width / 2
    length = s_range[1] - s_range[0]
    things = []
    for kind in ("car", "truck", "bus"):
        for _ in range(_count(rng, style, kind, length)):
            lane = int(rng.integers(lanes))
            d = (lane + 0.5) * lane_width - half
            if d > 0:  # same direction as the camera
                speed = cam.speed + float(rng.uniform(-2, 2))
                # keep the camera's own lane clear for the whole sequence
                own = abs(d - cam.lateral) < 0.5
                s = float(rng.uniform(12 if own else s_range[0], s_range[1]))
                if own:
                    speed = max(speed, cam.speed)
                things.append(_vehicle(rng, style, kind, s, d, speed, 1))
            else:
                s = float(rng.uniform(s_range[0], s_range[1] + 2 * cam.speed * duration))
                things.append(_vehicle(rng, style, kind, s, d, -cam.speed, -1))
    for _ in range(_count(rng, style, "parked", length)):
        side = 1 if rng.random() < 0.7 else -1
        d = side * (half - 1.1)
        if abs(d - cam.lateral) < 2.0:  # it would block the camera's lane: park on the kerb
            d = side * (half + 0.3)
        things.append(_vehicle(rng, style, "car", float(rng.uniform(*s_range)), d, 0.0, side))
    return things


def _person(rng: np.random.Generator, style: DomainStyle, s: float, d: float, speed: float,
            lateral_speed: float = 0.0) -> Thing:
    clothes = style.clothes_colors[int(rng.integers(len(style.clothes_colors)))]
    return Thing("person", s, d, 0.5, 0.4, float(rng.uniform(1.55, 1.9)),
                 _jitter(rng, clothes, style.color_jitter), speed, lateral_speed, 1,
                 float(rng.uniform(0, 2 * np.pi)))


def _sample_people(rng: np.random.Generator, style: DomainStyle, half: float, sidewalk: float,
                   s_range: tuple[float, float]) -> list[Thing]:
    length = s_range[1] - s_range[0]
    things = []
    for _ in range(_count(rng, style, "person", length)):
        side = 1 if rng.random() < 0.5 else -1
        s = float(rng.uniform(*s_range))
        if rng.random() < 0.12:  # crossing the road
            things.append(_person(rng, style, s, float(rng.uniform(-half, half)), 0.0,
                                  float(rng.choice([-1.3, 1.3]))))
        else:
            d = side * (half + float(rng.uniform(0.5, sidewalk - 0.3)))
            things.append(_person(rng, style, s, d, float(rng.choice([-1.4, 1.4, 0.0]))))
    for _ in range(_count(rng, style, "rider", length)):
        kind = "bicycle" if rng.random() < 0.6 else "motorcycle"
        clothes = style.clothes_colors[int(rng.integers(len(style.clothes_colors)))]
        things.append(Thing(kind, float(rng.uniform(*s_range)), half - float(rng.uniform(0.6, 1.4)),
                            0.6, 1.8, 1.7, _jitter(rng, clothes, style.color_jitter),
                            float(rng.uniform(4, 7) if kind == "bicycle" else rng.uniform(8, 13)),
                            0.0, 1, float(rng.random())))
    return things


def _sample_street_furniture(rng: np.random.Generator, style: DomainStyle, half: float,
                             sidewalk: float, s_range: tuple[float, float]) -> list[Thing]:
    length = s_range[1] - s_range[0]
    things = []
    for _ in range(_count(rng, style, "pole", length)):
        side = 1 if rng.random() < 0.6 else -1
        kind = str(rng.choice(["pole", "sign", "sign", "light", "lamp", "lamp"]))
        height = {"pole": 5.0, "sign": 2.8, "light": 4.5, "lamp": 7.0}[kind] * rng.uniform(0.85, 1.2)
        color = style.palette["traffic sign"] if kind == "sign" else style.palette["pole"]
        things.append(Thing(kind, float(rng.uniform(*s_range)), side * (half + 0.4), 0.15, 0.15,
                            float(height), _jitter(rng, color, style.color_jitter),
                            phase=float(rng.random())))
    for _ in range(_count(rng, style, "tree", length)):
        side = 1 if rng.random() < 0.5 else -1
        things.append(Thing("tree", float(rng.uniform(*s_range)),
                            side * (half + sidewalk - float(rng.uniform(0.3, 0.8))),
                            float(rng.uniform(2.5, 5.0)), 0.4, float(rng.uniform(4, 9)),
                            _jitter(rng, style.palette["vegetation"], style.color_jitter),
                            phase=float(rng.random())))
    return things


def _sample_skyline(rng: np.random.Generator, style: DomainStyle) -> tuple:
    columns = np.sort(rng.uniform(-0.5, 1.5, size=14))
    return tuple((float(c), float(rng.uniform(5, 40)),
                  ID["vegetation"] if rng.random() < style.vegetation_share else ID["building"])
                 for c in columns)


def sample_layout(rng: np.random.Generator, style: DomainStyle,
                  duration: float = SEQUENCE_LENGTH / SEQUENCE_FPS) -> SceneLayout:
    """Sample one scene, long enough for the camera to drive for ``duration`` seconds."""
    palette = {name: _jitter(rng, color, style.scene_jitter) for name, color in style.palette.items()}
    style = replace(style, palette=palette)  # objects below are coloured from the scene palette
    lanes = int(rng.choice(style.lanes))
    lane_width = float(rng.uniform(3.0, 3.6))
    sidewalk = float(rng.uniform(*style.sidewalk_width))
    cam = _sample_camera(rng, style, lanes, lane_width)
    half = lanes * lane_width / 2
    # objects anywhere the camera can see during the sequence (up to ~150 m ahead)
    s_range = (-10.0, cam.speed * duration + 150.0)
    things = (_sample_traffic(rng, style, cam, lanes, lane_width, s_range, duration)
              + _sample_people(rng, style, half, sidewalk, s_range)
              + _sample_street_furniture(rng, style, half, sidewalk, s_range))
    blocks = _sample_blocks(rng, style, half + sidewalk, (s_range[0] - 20, s_range[1] + 60))
    return SceneLayout(cam, lanes, lane_width, sidewalk, tuple(blocks), tuple(things),
                       _sample_skyline(rng, style), float(rng.uniform(-np.pi, np.pi)),
                       int(rng.integers(1 << 30)), palette)


# ----------------------------------------------------------------------------------------------
# Projection and drawing
# ----------------------------------------------------------------------------------------------

class _View:
    """The camera at one instant, for one image size (pixels)."""

    def __init__(self, cam: Camera, width: int, height: int, s_cam: float):
        self.cam, self.width, self.height, self.s_cam = cam, width, height, s_cam
        self.f = cam.focal * width  # focal length in pixels
        self.cx = width * (0.5 + cam.yaw)  # column of the vanishing point
        self.v0 = cam.horizon * height  # row of the horizon
        self.limit = 16.0 * width  # keeps far-off points inside cv2's drawing range

    def project(self, d, z, y) -> np.ndarray:
        """Road coordinates (lateral d, depth z ahead of the camera, height y), broadcastable
        arrays of any shape S -> pixel coordinates int32 (*S, 2). Depth is clamped to the near
        plane."""
        z = np.maximum(np.asarray(z, np.float64), _NEAR)
        x = (0.5 * self.cam.curvature) * z * z + (np.asarray(d) - self.cam.lateral)
        u = self.cx + self.f * x / z
        v = self.v0 + self.f * (self.cam.height - np.asarray(y)) / z
        u, v = np.broadcast_arrays(u, v)
        out = np.empty(u.shape + (2,), np.int32)
        out[..., 0] = np.minimum(np.maximum(u, -self.limit), self.limit)
        out[..., 1] = np.minimum(np.maximum(v, -self.limit), self.limit)
        return out

    def billboard(self, z: float, d: float) -> tuple[float, float, float]:
        """(column, row) of the ground point at depth z, lateral d, and pixels per metre there:
        scalar arithmetic, cheaper than :meth:`project` for one point."""
        z = max(z, _NEAR)
        x = 0.5 * self.cam.curvature * z * z + d - self.cam.lateral
        k = self.f / z
        return self.cx + k * x, self.v0 + k * self.cam.height, k


class _Canvas:
    """Image, label and depth buffers drawn together, far to near (painter's algorithm)."""

    def __init__(self, width: int, height: int, with_depth: bool = True):
        self.image = np.zeros((height, width, 3), np.uint8)
        self.label = np.zeros((height, width), np.uint8)
        # metres; sky stays "infinite". Only depth-dependent effects (fog) need it.
        self.depth = np.full((height, width), 1e4, np.float32) if with_depth else None
        self.shadow = np.zeros((height, width), np.uint8)  # cast-shadow mask on the ground
        self.shadow_boxes: list[tuple[float, float, float, float, float]] = []  # d0 d1 z0 z1 h
        # glows added after grading: (u, v, radius px, BGR, label id the light sits on)
        self.lights: list[tuple[int, int, float, tuple[float, float, float], int]] = []

    def fill(self, polygons: list[np.ndarray], color, label: str, depth: float | None) -> None:
        """Fill polygons; ``depth=None`` for ground surfaces, which keep their per-row depth."""
        cv2.fillPoly(self.image, polygons, color)  # color: a tuple of Python numbers
        cv2.fillPoly(self.label, polygons, ID[label])
        if depth is not None and self.depth is not None:
            cv2.fillPoly(self.depth, polygons, float(depth))

    def ellipse(self, center, axes, color, label: str, depth: float) -> None:
        center = (int(center[0]), int(center[1]))
        axes = (max(int(axes[0]), 1), max(int(axes[1]), 1))
        cv2.ellipse(self.image, center, axes, 0, 0, 360, tuple(int(c) for c in color), -1)
        cv2.ellipse(self.label, center, axes, 0, 0, 360, ID[label], -1)
        if self.depth is not None:
            cv2.ellipse(self.depth, center, axes, 0, 0, 360, float(depth), -1)


def _shade(color, factor: float) -> tuple[int, ...]:
    return tuple(int(min(255, c * factor)) for c in color)


def _draw_sky_and_ground(canvas: _Canvas, view: _View, style: DomainStyle) -> None:
    h, w = canvas.label.shape
    v0 = int(np.clip(round(view.v0), 0, h))
    top, bottom = np.array(style.palette["sky_top"], np.float32), np.array(style.palette["sky"], np.float32)
    ramp = np.linspace(0, 1, max(v0, 1), dtype=np.float32)[:, None]  # (v0, 1)
    canvas.image[:v0] = (top * (1 - ramp) + bottom * ramp)[:, None, :].astype(np.uint8)
    canvas.label[:v0] = ID["sky"]
    canvas.image[v0:] = style.palette["terrain"]
    canvas.label[v0:] = ID["terrain"]
    if canvas.depth is None:
        return
    rows = np.arange(v0, h, dtype=np.float32) + 0.5
    canvas.depth[v0:] = (view.f * view.cam.height / np.maximum(rows - view.v0, 0.5))[:, None]


def _strip(view: _View, d0: float, d1: float, z0: float, z1: float, n: int = 24) -> np.ndarray:
    """Polygon of a ground strip between lateral d0..d1 and depths z0..z1 (curved road)."""
    z = np.geomspace(max(z0, _NEAR), max(z1, _NEAR * 1.01), n)
    near_to_far = view.project(d0, z, 0.0)
    far_to_near = view.project(d1, z[::-1], 0.0)
    return np.concatenate([near_to_far, far_to_near])


def _draw_road(canvas: _Canvas, view: _View, style: DomainStyle, layout: SceneLayout) -> None:
    half, sw = layout.road_half, layout.sidewalk_width
    z_near = _NEAR  # strips run from just in front of the camera to the end of the road
    for side in (-1, 1):
        canvas.fill([_strip(view, side * half, side * (half + sw), z_near, _FAR)],
                    style.palette["sidewalk"], "sidewalk", None)
        curb = _shade(style.palette["sidewalk"], 0.8)
        canvas.fill([_strip(view, side * half, side * (half + 0.25), z_near, _FAR)], curb,
                    "sidewalk", None)
    canvas.fill([_strip(view, -half, half, z_near, _FAR)], style.palette["road"], "road", None)
    _draw_markings(canvas, view, style, layout)


def _draw_markings(canvas: _Canvas, view: _View, style: DomainStyle, layout: SceneLayout) -> None:
    """Dashed lines between lanes (3 m dash, 9 m period, moving with the camera), solid edges."""
    half, width = layout.road_half, 0.15
    period, dash = 9.0, 3.0
    first = np.floor(view.s_cam / period) * period
    starts = first + period * np.arange(0, 16) - view.s_cam  # depth of each dash start, (16,)
    starts = starts[starts + dash > _NEAR]
    lines = np.array([k * layout.lane_width - half for k in range(1, layout.lanes)])
    # every dash of every line as one quad: (lines, dashes, 4 corners)
    d = lines[:, None, None] + np.array([-width, width, width, -width]) / 2
    z = starts[None, :, None] + np.array([0, 0, dash, dash])
    polygons = list(view.project(d, z, 0.0).reshape(-1, 4, 2))
    for d in (-half + 0.3, half - 0.3):
        polygons.append(_strip(view, d - width / 2, d + width / 2, _NEAR, 120.0, n=16))
    color = style.palette["marking"]
    cv2.fillPoly(canvas.image, polygons, tuple(int(c) for c in color))


def _draw_skyline(canvas: _Canvas, view: _View, style: DomainStyle, layout: SceneLayout) -> None:
    """Far buildings and tree lines at the end of the road, so the road never meets bare sky."""
    base = view.v0 + view.f * view.cam.height / _FAR
    for (column, height, label_id), nxt in zip(layout.skyline, layout.skyline[1:]):
        u0, u1 = column * view.width, nxt[0] * view.width
        top = base - view.f * height / _FAR
        poly = np.array([[u0, base], [u1, base], [u1, top], [u0, top]]).round().astype(np.int32)
        label = "vegetation" if label_id == ID["vegetation"] else "building"
        canvas.fill([poly], _shade(style.palette[label], 0.9), label, _FAR)


def _sun_vector(layout: SceneLayout) -> np.ndarray:
    return np.array([np.sin(layout.sun_azimuth), np.cos(layout.sun_azimuth)])  # (d, z) to sun


def _cast_shadow(canvas: _Canvas, view: _View, style: DomainStyle, layout: SceneLayout,
                 d0: float, d1: float, z0: float, z1: float, height: float) -> None:
    """Queue the shadow of a box standing on (d0..d1, z0..z1); see :func:`_draw_shadows`."""
    if style.shadow_strength > 0 and z1 >= _NEAR:
        canvas.shadow_boxes.append((d0, d1, z0, z1, height))


def _draw_shadows(canvas: _Canvas, view: _View, style: DomainStyle, layout: SceneLayout) -> None:
    """Project every queued box's footprint and its copy pushed away from the sun by
    height / tan(elevation), in one call; each shadow is the convex hull of those 8 points."""
    if not canvas.shadow_boxes:
        return
    boxes = np.asarray(canvas.shadow_boxes)  # (n, 5): d0, d1, z0, z1, height
    reach = boxes[:, 4:5] / np.tan(np.radians(style.sun_elevation))  # (n, 1)
    dd, dz = -_sun_vector(layout)[:, None, None] * reach  # each (n, 1)
    d = boxes[:, [0, 1, 1, 0]]  # (n, 4) footprint corners
    z = boxes[:, [2, 2, 3, 3]]
    points = view.project(np.concatenate([d, d + dd], 1), np.concatenate([z, z + dz], 1), 0.0)
    cv2.fillPoly(canvas.shadow, [cv2.convexHull(p) for p in points], 255)


def _face_light(style: DomainStyle, layout: SceneLayout, normal_d: float, normal_z: float) -> float:
    """Brightness factor of a vertical face with ground-plane normal (d, z)."""
    facing = math.sin(layout.sun_azimuth) * normal_d + math.cos(layout.sun_azimuth) * normal_z
    return 1.0 - style.face_shading * (1.0 - max(facing, 0.0))


def _draw_block(canvas: _Canvas, view: _View, style: DomainStyle, layout: SceneLayout,
                block: Block) -> None:
    z0, z1 = block.s0 - view.s_cam, block.s1 - view.s_cam
    if z1 < _NEAR or z0 > 200.0:  # beyond 200 m the skyline stands in
        return
    d = block.side * block.offset
    depth_outward = 15.0 if block.kind == "building" else 0.5
    _cast_shadow(canvas, view, style, layout, min(d, d + block.side * depth_outward),
                 max(d, d + block.side * depth_outward), z0, z1, block.height)
    label = block.kind
    color = _shade(block.color, _face_light(style, layout, -block.side, 0.0))
    # the road-facing side, in pieces of <= 10 m so it follows the road's curve
    cuts = np.linspace(max(z0, _NEAR), z1, int(np.ceil((z1 - max(z0, _NEAR)) / 10)) + 1)
    near, far = cuts[:-1, None], cuts[1:, None]  # (pieces, 1)
    pieces = view.project(d, np.hstack([near, far, far, near]),
                          np.array([0, 0, block.height, block.height]))  # (pieces, 4, 2)
    for poly, depth in zip(pieces[::-1], cuts[:0:-1]):  # far piece first
        canvas.fill([poly], color, label, float(depth))
    if z0 > _NEAR:  # the near end face, turned towards the camera
        front = view.project([d, d + block.side * depth_outward] * 2, [z0] * 4,
                             [0, 0, block.height, block.height])[[0, 1, 3, 2]]
        canvas.fill([front], _shade(block.color, _face_light(style, layout, 0, -1)), label, z0)
    if block.kind == "building":
        _draw_windows(canvas, view, style, block, max(z0, _NEAR), z1)
    elif block.kind == "fence":
        _draw_fence_mesh(canvas, view, block, max(z0, _NEAR), z1)


@functools.lru_cache(maxsize=512)
def _window_grid(block: Block, window_lit: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stations (n,) and sill heights (n,) of a building's windows, and which are lit (n,);
    fixed per block so windows do not flicker along a sequence."""
    rng = np.random.default_rng(block.seed)
    spacing = rng.uniform(2.5, 4.0)
    columns = np.arange(block.s0 + 1.0, block.s1 - 1.5, spacing)
    floors = np.arange(1.5, block.height - 1.5, 3.2)
    stations, sills = (a.ravel() for a in np.meshgrid(columns, floors))
    return stations, sills, rng.random(stations.size) < window_lit


def _draw_windows(canvas: _Canvas, view: _View, style: DomainStyle, block: Block,
                  z0: float, z1: float) -> None:
    """A grid of 1.2 x 1.6 m windows on the road-facing side (part of the building class)."""
    stations, sills, lit = _window_grid(block, style.window_lit)
    zz = stations - view.s_cam  # depth of each window's near edge
    visible = (zz > z0) & (zz + 1.2 < z1) & (view.f * 1.2 > 1.5 * np.maximum(zz, _NEAR))
    if not visible.any():
        return
    zz, yy, lit = zz[visible], sills[visible], lit[visible]
    corners_z = np.stack([zz, zz + 1.2, zz + 1.2, zz], 1)  # (n, 4)
    corners_y = np.stack([yy, yy, yy + 1.6, yy + 1.6], 1)
    quads = view.project(block.side * block.offset, corners_z, corners_y)  # (n, 4, 2)
    if (~lit).any():
        cv2.fillPoly(canvas.image, list(quads[~lit]), style.palette["window"])
    if lit.any():
        cv2.fillPoly(canvas.image, list(quads[lit]), (120, 200, 255))
        for quad, z in zip(quads[lit], zz[lit]):
            u, v = quad.mean(0)
            canvas.lights.append((int(u), int(v), view.f * 0.5 / z, (30, 80, 130), ID["building"]))


def _draw_fence_mesh(canvas: _Canvas, view: _View, block: Block, z0: float, z1: float) -> None:
    """Vertical bars drawn over the fence colour (the whole panel is labelled fence)."""
    posts = np.arange(z0, z1, 0.6)
    d = block.side * block.offset
    bottoms = view.project(d, posts, 0.0)
    tops = view.project(d, posts, block.height)
    dark = _shade(block.color, 0.5)
    cv2.polylines(canvas.image, list(np.stack([bottoms, tops], 1)), False, dark, 1)


def _rect(u: float, v: float, k: float, x0: float, x1: float, y0: float, y1: float) -> np.ndarray:
    """Billboard rectangle x0..x1 (m right), y0..y1 (m up) around the base point (u, v)."""
    return np.array([[u + k * x0, v - k * y0], [u + k * x1, v - k * y0],
                     [u + k * x1, v - k * y1], [u + k * x0, v - k * y1]]).round().astype(np.int32)


def _thing_position(thing: Thing, view: _View, t: float) -> tuple[float, float]:
    """(depth z ahead of the camera, lateral d) of a thing at time t."""
    return thing.s + thing.speed * t - view.s_cam, thing.d + thing.lateral_speed * t


def _draw_vehicle(canvas: _Canvas, view: _View, style: DomainStyle, layout: SceneLayout,
                  thing: Thing, z: float, d: float) -> None:
    w, l, h = thing.width, thing.length, thing.height
    _cast_shadow(canvas, view, style, layout, d - w / 2, d + w / 2, z, z + l, h)
    body = thing.color
    side_d = d - w / 2 if d > view.cam.lateral else d + w / 2  # the side the camera can see
    side = view.project([side_d] * 4, [z, z + l, z + l, z], [0.25, 0.25, h * 0.6, h * 0.6])
    canvas.fill([side], _shade(body, 0.8 * _face_light(style, layout, np.sign(side_d - d), 0)),
                thing.kind, z + l / 2)
    if thing.kind == "car":
        cabin = view.project([side_d] * 4, [z + 1.0, z + l - 0.8, z + l - 1.2, z + 1.4],
                             [h * 0.6, h * 0.6, h, h])
        canvas.fill([cabin], _shade(style.palette["glass"], 0.9), thing.kind, z + l / 2)
    else:
        upper = view.project([side_d] * 4, [z, z + l, z + l, z], [h * 0.6, h * 0.6, h, h])
        canvas.fill([upper], _shade(body, 0.75), thing.kind, z + l / 2)
    for wheel_z in (z + 0.8, z + l - 0.9):  # wheels on the visible side
        u, v, k = view.billboard(wheel_z, side_d)
        canvas.ellipse((u, v - 0.33 * k), (0.18 * k, 0.33 * k), style.palette["tyre"],
                       thing.kind, wheel_z)
    u, v, k = view.billboard(z, d)
    x = w / 2
    canvas.fill([_rect(u, v, k, -x, x, 0.0, 0.25)], style.palette["tyre"], thing.kind, z)
    canvas.fill([_rect(u, v, k, -x, x, 0.2, h * 0.6)], body, thing.kind, z)
    top = 0.8 * x if thing.kind == "car" else x
    canvas.fill([_rect(u, v, k, -top, top, h * 0.6, h)], body, thing.kind, z)
    canvas.fill([_rect(u, v, k, -top + 0.12, top - 0.12, h * 0.64, h * 0.94)],
                style.palette["glass"], thing.kind, z)
    lamp = (230, 240, 255) if thing.facing < 0 else (40, 40, 220)
    for sign in (-1, 1):
        lamp_rect = _rect(u, v, k, sign * x - 0.25 * sign - 0.15, sign * x - 0.25 * sign + 0.15,
                          h * 0.42, h * 0.5)
        cv2.fillPoly(canvas.image, [lamp_rect], lamp)
        if style.lamp_glow > 0:
            glow = (200, 220, 255) if thing.facing < 0 else (30, 30, 200)
            canvas.lights.append((int(u + sign * (x - 0.25) * k), int(v - 0.46 * h * k),
                                  (0.6 if thing.facing < 0 else 0.25) * k, glow, ID[thing.kind]))


def _draw_person(canvas: _Canvas, view: _View, style: DomainStyle, thing: Thing, z: float,
                 d: float, t: float, label: str = "person", lift: float = 0.0) -> None:
    u, v, k = view.billboard(z, d)
    h = thing.height
    swing = 0.12 * np.sin(thing.phase + 7.0 * t) if abs(thing.speed) + abs(thing.lateral_speed) > 0 else 0
    pants = _shade(thing.color, 0.6)
    legs_from = lift * 0.4  # a rider's legs reach down to the pedals
    canvas.fill([_rect(u, v, k, -0.2 + swing, -0.03 + swing, legs_from, lift + 0.48 * h),
                 _rect(u, v, k, 0.03 - swing, 0.2 - swing, legs_from, lift + 0.48 * h)],
                pants, label, z)
    canvas.fill([_rect(u, v, k, -0.24, 0.24, lift + 0.46 * h, lift + 0.83 * h)], thing.color, label, z)
    canvas.ellipse((u, v - k * (lift + 0.9 * h)), (0.1 * k, 0.12 * k), style.palette["skin"], label, z)


def _draw_rider(canvas: _Canvas, view: _View, style: DomainStyle, layout: SceneLayout,
                thing: Thing, z: float, d: float, t: float) -> None:
    """A two-wheeler seen from behind and a little from the side (it leans into the lane),
    with its rider on top."""
    _cast_shadow(canvas, view, style, layout, d - 0.3, d + 0.3, z, z + thing.length, 1.7)
    u, v, k = view.billboard(z, d)
    far_u, far_v, far_k = view.billboard(z + thing.length, d - 0.6)  # front wheel, angled
    wheel = 0.34 if thing.kind == "bicycle" else 0.32
    thickness = 0.12 if thing.kind == "bicycle" else 0.2
    for uu, vv, kk in ((far_u, far_v, far_k), (u, v, k)):  # far wheel first
        canvas.ellipse((uu, vv - wheel * kk), (thickness * kk, wheel * kk),
                       style.palette["tyre"], thing.kind, z)
    frame = np.array([[u, v - wheel * k], [far_u, far_v - wheel * far_k],
                      [far_u, far_v - 1.0 * far_k], [u, v - 0.9 * k]]).round().astype(np.int32)
    frame_color = (30, 30, 30) if thing.kind == "motorcycle" else thing.color
    canvas.fill([frame], frame_color, thing.kind, z)
    rider = replace(thing, height=1.2)
    _draw_person(canvas, view, style, rider, z + 0.3, d, t, label="rider", lift=0.5)


def _draw_pole(canvas: _Canvas, view: _View, style: DomainStyle, layout: SceneLayout,
               thing: Thing, z: float, d: float) -> None:
    _cast_shadow(canvas, view, style, layout, d - 0.1, d + 0.1, z, z + 0.2, thing.height)
    u, v, k = view.billboard(z, d)
    h = thing.height
    pole_color = style.palette["pole"]
    canvas.fill([_rect(u, v, k, -0.07, 0.07, 0, h)], pole_color, "pole", z)
    inward = -np.sign(d)  # towards the road
    if thing.kind == "sign":
        r = 0.35
        if thing.phase < 0.5:  # round sign
            canvas.ellipse((u, v - k * h), (r * k, r * k), thing.color, "traffic sign", z)
            canvas.ellipse((u, v - k * h), (0.7 * r * k, 0.7 * r * k), (240, 240, 240),
                           "traffic sign", z)
        else:  # square sign
            canvas.fill([_rect(u, v, k, -r, r, h - r, h + r)], thing.color, "traffic sign", z)
    elif thing.kind == "light":
        canvas.fill([_rect(u, v, k, -0.18, 0.18, h, h + 0.9)], style.palette["traffic light"],
                    "traffic light", z)
        lamp = int(thing.phase * 3)
        colors = ((40, 40, 230), (40, 200, 240), (60, 220, 60))
        cy = h + 0.75 - 0.3 * lamp
        canvas.ellipse((u, v - k * cy), (0.1 * k, 0.1 * k), colors[lamp], "traffic light", z)
        if style.lamp_glow > 0:
            canvas.lights.append((int(u), int(v - k * cy), 0.5 * k, colors[lamp], ID["traffic light"]))
    elif thing.kind == "lamp":  # street lamp: an arm over the road and a lamp head
        arm = _rect(u, v, k, min(0, inward * 1.5), max(0, inward * 1.5), h - 0.12, h)
        canvas.fill([arm], pole_color, "pole", z)
        head = (u + inward * 1.5 * k, v - k * (h - 0.1))
        canvas.ellipse(head, (0.3 * k, 0.1 * k), (230, 240, 250), "pole", z)
        if style.lamp_glow > 0:
            canvas.lights.append((int(head[0]), int(head[1]), 1.0 * k, (120, 200, 255), ID["pole"]))
            # the pool of light it throws on the road below
            pu, pv, pk = view.billboard(z, d + inward * 1.5)
            canvas.lights.append((int(pu), int(pv), 2.0 * pk, (20, 35, 45), ID["road"]))


def _draw_tree(canvas: _Canvas, view: _View, style: DomainStyle, layout: SceneLayout,
               thing: Thing, z: float, d: float) -> None:
    r = thing.width / 2
    _cast_shadow(canvas, view, style, layout, d - r, d + r, z - r, z + r, thing.height)
    u, v, k = view.billboard(z, d)
    trunk = _shade(style.palette["vegetation"], 0.5)
    canvas.fill([_rect(u, v, k, -0.15, 0.15, 0, thing.height * 0.6)], trunk, "vegetation", z)
    crown_y = thing.height - r
    for dx, dy, scale in ((-0.4, -0.2, 0.7), (0.4, -0.1, 0.75), (0.0, 0.2, 0.8)):
        shade = 0.8 + 0.3 * scale * thing.phase
        canvas.ellipse((u + dx * r * k, v - (crown_y + dy * r) * k), (scale * r * k, scale * r * k * 0.9),
                       _shade(thing.color, shade), "vegetation", z)


def _draw_thing(canvas: _Canvas, view: _View, style: DomainStyle, layout: SceneLayout,
                thing: Thing, t: float) -> None:
    z, d = _thing_position(thing, view, t)
    if z < _NEAR + 0.5 or z > 200:
        return
    u, _, k = view.billboard(z, d)
    margin = k * max(thing.length, thing.width, 3.0)
    if k * thing.height < 2.0 or u + margin < 0 or u - margin > view.width:
        return  # under two pixels tall, or wholly outside the frame
    if thing.kind in ("car", "truck", "bus"):
        _draw_vehicle(canvas, view, style, layout, thing, z, d)
    elif thing.kind == "person":
        _cast_shadow(canvas, view, style, layout, d - 0.25, d + 0.25, z, z + 0.3, thing.height)
        _draw_person(canvas, view, style, thing, z, d, t)
    elif thing.kind in ("bicycle", "motorcycle"):
        _draw_rider(canvas, view, style, layout, thing, z, d, t)
    elif thing.kind == "tree":
        _draw_tree(canvas, view, style, layout, thing, z, d)
    else:
        _draw_pole(canvas, view, style, layout, thing, z, d)


def _draw_hood(canvas: _Canvas, style: DomainStyle) -> None:
    """The ego vehicle's bonnet at the bottom of the frame (ignored by evaluation)."""
    h, w = canvas.label.shape
    rise = int(style.ego_hood * h)
    if rise <= 0:
        return
    center, axes = (w // 2, h + rise), (int(w * 0.75), 2 * rise)
    cv2.ellipse(canvas.image, center, axes, 0, 180, 360, style.palette["ego vehicle"], -1)
    cv2.ellipse(canvas.label, center, axes, 0, 180, 360, ID["ego vehicle"], -1)
    cv2.ellipse(canvas.depth, center, axes, 0, 180, 360, 1.0, -1)


def _draw_geometry(canvas: _Canvas, view: _View, style: DomainStyle, layout: SceneLayout,
                   t: float) -> None:
    _draw_sky_and_ground(canvas, view, style)
    _draw_road(canvas, view, style, layout)
    _draw_skyline(canvas, view, style, layout)
    blocks = sorted(layout.blocks, key=lambda b: -(b.s1 - view.s_cam))  # far to near
    for block in blocks:
        _draw_block(canvas, view, style, layout, block)
    depth_now = [(_thing_position(th, view, t)[0], i) for i, th in enumerate(layout.things)]
    for _, i in sorted(depth_now, reverse=True):  # far to near: nearer objects occlude
        _draw_thing(canvas, view, style, layout, layout.things[i], t)
    _draw_hood(canvas, style)
    _draw_shadows(canvas, view, style, layout)


# ----------------------------------------------------------------------------------------------
# Photometric pipeline (float32 (H, W, 3) BGR in 0..255)
# ----------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=16)
def _texture_fields(seed: int, width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    """Fine grain (H, W) and low-frequency blotches (H, W), unit variance, fixed per scene so
    textures do not flicker along a sequence."""
    rng = np.random.default_rng(seed)
    grain = rng.standard_normal((height, width), dtype=np.float32)
    small = rng.standard_normal((max(height // 12, 2), max(width // 12, 2)), dtype=np.float32)
    blotch = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    blotch /= max(float(blotch.std()), 1e-6)
    grain.setflags(write=False)
    blotch.setflags(write=False)
    return grain, blotch


@functools.lru_cache(maxsize=16)
def _vignette(width: int, height: int, strength: float) -> np.ndarray:
    y, x = np.mgrid[-1:1:height * 1j, -1:1:width * 1j].astype(np.float32)
    falloff = 1.0 - strength * ((x * x + y * y) / 2.0)  # (H, W), 1 at the centre
    return falloff[..., None]


def _class_table(values: dict[str, float], default: float = 0.0) -> np.ndarray:
    table = np.full(256, default, np.float32)
    for name, value in values.items():
        if name in ID:
            table[ID[name]] = value
    return table


def _apply_texture(img: np.ndarray, label: np.ndarray, style: DomainStyle, seed: int) -> None:
    if not style.texture:
        return
    grain, blotch = _texture_fields(seed, label.shape[1], label.shape[0])
    grain_amp = _class_table({k: v[0] for k, v in style.texture.items()})[label]  # (H, W)
    blotch_amp = _class_table({k: v[1] for k, v in style.texture.items()})[label]
    img += (grain_amp * grain + blotch_amp * blotch)[..., None]


def _apply_shadows(img: np.ndarray, canvas: _Canvas, style: DomainStyle) -> None:
    if style.shadow_strength <= 0 or not canvas.shadow.any():
        return
    w = canvas.shadow.shape[1]
    sigma = style.shadow_softness * w
    h = canvas.shadow.shape[0]
    if sigma > 1.5:  # soft edges: blur at quarter size, where it is 16x cheaper
        small = cv2.resize(canvas.shadow, (max(w // 4, 1), max(h // 4, 1)), interpolation=cv2.INTER_AREA)
        small = cv2.GaussianBlur(small, (0, 0), sigma / 4)
        mask = cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR).astype(np.float32) / 255.0
    else:
        mask = canvas.shadow.astype(np.float32) / 255.0
        if sigma > 0.3:
            mask = cv2.GaussianBlur(mask, (0, 0), sigma)
    ground = _class_table({name: 1.0 for name in GROUND_CLASSES})[canvas.label]
    img *= (1.0 - style.shadow_strength * mask * ground)[..., None]


def _grading_matrix(style: DomainStyle) -> np.ndarray:
    """Gain, tint, saturation and contrast as one affine colour transform, (3, 4) on BGR."""
    gain = np.diag(np.asarray(style.tint, np.float64) * style.gain)  # (3, 3)
    to_grey = np.full((3, 3), 1.0 / 3.0)
    saturation = style.saturation * np.eye(3) + (1.0 - style.saturation) * to_grey
    linear = style.contrast * saturation @ gain
    offset = (1.0 - style.contrast) * 128.0 * style.gain * np.ones((3, 1))
    return np.hstack([linear, offset]).astype(np.float32)


def _apply_grading(img: np.ndarray, style: DomainStyle) -> np.ndarray:
    return cv2.transform(img, _grading_matrix(style))


def _apply_lights(img: np.ndarray, canvas: _Canvas, style: DomainStyle) -> None:
    """Glows of lamps, headlights and lit windows: drawn at quarter size, blurred, added."""
    if style.lamp_glow <= 0 or not canvas.lights:
        return
    h, w = canvas.label.shape
    small = np.zeros((max(h // 4, 1), max(w // 4, 1), 3), np.float32)
    for u, v, radius, color, label_id in canvas.lights:
        if not (0 <= u < w and 0 <= v < h) or canvas.label[v, u] != label_id:
            continue  # off-screen, or hidden behind something nearer
        r = int(min(max(radius / 4, 1), w / 100))  # quarter-size pixels; near lamps capped
        cv2.circle(small, (u // 4, v // 4), r, tuple(float(c) for c in color), -1)
    small = cv2.GaussianBlur(small, (0, 0), max(w / 200, 0.8))
    img += style.lamp_glow * cv2.resize(small, (w, h), interpolation=cv2.INTER_LINEAR)


def _apply_wet_road(img: np.ndarray, canvas: _Canvas, view: _View, style: DomainStyle) -> np.ndarray:
    """Wet asphalt mirrors the scene above it: flip about the horizon, smear, blend on road."""
    if style.wet_road <= 0:
        return img
    h, w = canvas.label.shape
    v0 = int(np.clip(round(view.v0), 1, h - 1))
    source_rows = np.clip(2 * v0 - np.arange(v0, h), 0, h - 1)
    mirrored = cv2.blur(img[source_rows], (3, max(h // 20, 1)))  # (H - v0, W, 3)
    road = (canvas.label[v0:] == ID["road"]).astype(np.float32)[..., None] * style.wet_road
    img[v0:] = img[v0:] * (1 - road) + mirrored * road
    return img


def _apply_fog(img: np.ndarray, canvas: _Canvas, style: DomainStyle) -> np.ndarray:
    if style.fog_density <= 0:
        return img
    transmittance = np.exp(-style.fog_density * canvas.depth)[..., None]  # (H, W, 1)
    return img * transmittance + np.asarray(style.fog_color, np.float32) * (1 - transmittance)


def _apply_rain(img: np.ndarray, rng: np.random.Generator, style: DomainStyle) -> np.ndarray:
    if style.rain_streaks <= 0:
        return img
    h, w = img.shape[:2]
    n = int(style.rain_streaks * w * h / 1000)
    starts = rng.uniform((0, 0), (w, h), size=(n, 2))
    length = style.rain_length * w * rng.uniform(0.5, 1.0, size=(n, 1))
    direction = np.array([0.15, 1.0]) / np.hypot(0.15, 1.0)  # slanted by the wind
    ends = starts + length * direction
    streaks = np.zeros((h, w), np.float32)
    cv2.polylines(streaks, list(np.stack([starts, ends], 1).round().astype(np.int32)), False,
                  40.0, 1)
    return img + cv2.blur(streaks, (2, 2))[..., None]


def _apply_blur(img: np.ndarray, view: _View, style: DomainStyle) -> np.ndarray:
    h, w = img.shape[:2]
    if style.motion_blur > 0:  # forward motion smears radially from the vanishing point
        center = (w * (0.5 + view.cam.yaw), view.v0)
        taps = [img]
        for step in (1.0,):
            zoom = 1.0 + step * style.motion_blur
            matrix = cv2.getRotationMatrix2D(center, 0.0, zoom)
            taps.append(cv2.warpAffine(img, matrix, (w, h), borderMode=cv2.BORDER_REFLECT))
        img = sum(taps) / len(taps)
    if style.defocus > 0:
        img = cv2.GaussianBlur(img, (0, 0), style.defocus * w)
    return img


@functools.lru_cache(maxsize=8)
def _noise_bank(width: int, height: int) -> np.ndarray:
    """A fixed (H + 32, W + 32, 3) field of unit Gaussian noise; frames take random crops of it
    (with random flips and sign) instead of drawing millions of fresh normals per frame."""
    bank = np.random.default_rng(12345).standard_normal((height + 32, width + 32, 3), np.float32)
    bank.setflags(write=False)
    return bank


def _frame_noise(rng: np.random.Generator, width: int, height: int) -> np.ndarray:
    """(H, W, 3) unit Gaussian noise, different every frame."""
    dy, dx = rng.integers(0, 33, size=2)
    flip_y, flip_x, sign = rng.integers(0, 2, size=3)
    crop = _noise_bank(width, height)[dy:dy + height, dx:dx + width]
    crop = crop[::-1] if flip_y else crop
    crop = crop[:, ::-1] if flip_x else crop
    return -crop if sign else crop


def _apply_sensor(img: np.ndarray, rng: np.random.Generator, style: DomainStyle) -> np.ndarray:
    if style.vignette > 0:
        img = img * _vignette(img.shape[1], img.shape[0], style.vignette)
    if style.noise_sigma > 0 or style.shot_noise > 0:
        # read noise plus shot noise, whose variance grows with the signal
        variance = style.noise_sigma ** 2 + style.shot_noise ** 2 * np.maximum(img, 0)
        img = img + cv2.sqrt(variance) * _frame_noise(rng, img.shape[1], img.shape[0])
    out = np.clip(img, 0, 255).astype(np.uint8)
    if style.gamma != 1.0:
        lut = (255.0 * (np.arange(256) / 255.0) ** style.gamma).round().astype(np.uint8)
        out = cv2.LUT(out, lut)
    if style.jpeg_quality > 0:
        _, encoded = cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, style.jpeg_quality])
        out = cv2.imdecode(encoded, cv2.IMREAD_COLOR)
    return out


# ----------------------------------------------------------------------------------------------
# Rendering
# ----------------------------------------------------------------------------------------------

def _check_size(size: tuple[int, int]) -> tuple[int, int]:
    width, height = (int(v) for v in size)
    if width < 16 or height < 16:
        raise UserError(f"synthetic frame size {width}x{height} is too small: use at least 16x16")
    return width, height


def render_scene(rng: np.random.Generator, style: DomainStyle, size: tuple[int, int] = (256, 128),
                 t: float = 0.0, layout: SceneLayout | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Render one frame: (image BGR uint8 (H, W, 3), Cityscapes label ids uint8 (H, W)).

    ``size`` is (width, height). ``layout`` (from :func:`sample_layout`) fixes the scene so a
    sequence re-renders it at successive times ``t`` (seconds); without it a new scene is
    sampled from ``rng``. ``rng`` also drives per-frame effects (sensor noise, rain).
    """
    width, height = _check_size(size)
    if layout is None:
        layout = sample_layout(rng, style)
    style = replace(style, palette=layout.palette)
    view = _View(layout.camera, width, height, layout.camera.speed * t)
    canvas = _Canvas(width, height, with_depth=style.fog_density > 0)
    _draw_geometry(canvas, view, style, layout, t)
    img = canvas.image.astype(np.float32)
    _apply_shadows(img, canvas, style)
    _apply_texture(img, canvas.label, style, layout.texture_seed)
    img = _apply_grading(img, style)
    _apply_lights(img, canvas, style)
    img = _apply_wet_road(img, canvas, view, style)
    img = _apply_fog(img, canvas, style)
    img = _apply_rain(img, rng, style)
    img = _apply_blur(img, view, style)
    return _apply_sensor(img, rng, style), canvas.label


def render_sequence(rng: np.random.Generator, style: DomainStyle, size: tuple[int, int] = (256, 128),
                    length: int = SEQUENCE_LENGTH, fps: float = SEQUENCE_FPS,
                    layout: SceneLayout | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """``length`` consecutive frames of one scene, the camera driving forward at ``fps``."""
    if layout is None:
        layout = sample_layout(rng, style, duration=length / fps)
    return [render_scene(rng, style, size, i / fps, layout) for i in range(length)]


# ----------------------------------------------------------------------------------------------
# Datasets on disk and live streams
# ----------------------------------------------------------------------------------------------

_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}


def _scene_key(seed: int, domain: str, split: str, index: int) -> list[int]:
    """Entropy for one scene: independent, reproducible randomness per (seed, domain, split,
    index), whatever else is written."""
    split_code = _SPLIT_CODES.get(split, zlib.crc32(split.encode()))
    return [seed, zlib.crc32(domain.encode()), split_code, index]


def _scene_rng(seed: int, domain: str, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng(_scene_key(seed, domain, split, index))


def _write_png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if not cv2.imwrite(str(path), array):
        raise UserError(f"cannot write {path}: check that the output folder is writable")


def _write_labelled(root: Path, split: str, name: str, image: np.ndarray, label: np.ndarray) -> None:
    city = name.split("_")[0]
    _write_png(root / "leftImg8bit" / split / city / f"{name}_leftImg8bit.png", image)
    gt = root / "gtFine" / split / city
    _write_png(gt / f"{name}_gtFine_labelIds.png", label)
    color_rgb = colorize(label_ids_to_train_ids(label))
    _write_png(gt / f"{name}_gtFine_color.png", color_rgb[..., ::-1])


def _write_scene(root: Path, style: DomainStyle, domain: str, split: str, index: int,
                size: tuple[int, int], with_sequence: bool, seed: int) -> None:
    """Write scene ``index`` of ``split``: its annotated frame (the 20th of its sequence) and,
    if ``with_sequence``, all 30 frames under ``leftImg8bit_sequence``."""
    rng = _scene_rng(seed, domain, split, index)
    layout = sample_layout(rng, style)
    frames = range(SEQUENCE_LENGTH) if with_sequence else [ANNOTATED_FRAME]
    for frame in frames:
        # per-frame effects (noise, rain) drawn from the scene's key and the frame number
        frame_rng = np.random.default_rng(_scene_key(seed, domain, split, index) + [1 + frame])
        image, label = render_scene(frame_rng, style, size, frame / SEQUENCE_FPS, layout)
        name = f"{style.city}_{index:06d}_{frame:06d}"
        if with_sequence:
            _write_png(root / "leftImg8bit_sequence" / split / style.city
                       / f"{name}_leftImg8bit.png", image)
        if frame == ANNOTATED_FRAME:
            _write_labelled(root, split, name, image, label)


def _write_config(root: Path, domain: str, style: DomainStyle, split_sizes: dict[str, int],
                  size: tuple[int, int], sequences: int, seed: int) -> None:
    """``root/synth_config.json``: everything needed to regenerate the tree."""
    config = {"domain": domain, "seed": seed, "size": list(size), "split_sizes": split_sizes,
              "sequences": sequences, "style": asdict(style)}
    try:
        root.mkdir(parents=True, exist_ok=True)
        (root / "synth_config.json").write_text(json.dumps(config, indent=1))
    except OSError as err:
        raise UserError(f"cannot write {root}: {err.strerror}; choose a writable output folder")


def write_domain(root: str | os.PathLike, domain: str, split_sizes: dict[str, int] | None = None,
                 size: tuple[int, int] = (256, 128), sequences: int = 0, seed: int = 0,
                 progress=None) -> int:
    """Write ``domain`` under ``root`` in the Cityscapes layout (plus ``synth_config.json``, the
    settings and style it was made with); returns the number of images written.

    ``split_sizes`` maps split -> number of annotated frames (default train 100, val 20).
    The first ``sequences`` scenes of each split (all of them if the split is smaller) also get
    their 30-frame ``leftImg8bit_sequence`` snippet, the annotated frame being frame 19.
    A scene is the same whatever ``sequences`` is: it depends only on (seed, domain, split, index).
    ``progress``: optional callable(n) told after each scene (e.g. a tqdm bar's ``update``).
    """
    style = get_domain(domain)
    _check_size(size)
    split_sizes = {"train": 100, "val": 20} if split_sizes is None else split_sizes
    if any(n < 0 for n in split_sizes.values()) or sequences < 0:
        raise UserError("split sizes and --sequences must be zero or positive")
    root = Path(root)
    _write_config(root, domain, style, split_sizes, size, sequences, seed)
    written = 0
    for split, count in split_sizes.items():
        for index in range(count):
            with_sequence = index < sequences
            _write_scene(root, style, domain, split, index, size, with_sequence, seed)
            written += SEQUENCE_LENGTH + 1 if with_sequence else 1
            if progress is not None:
                progress(1)
    return written


def stream(domain: str, size: tuple[int, int] = (256, 128), seed: int = 0,
           fps: float | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Endless (image BGR, label ids) frames: consecutive 30-frame scenes of ``domain``.

    Within a scene the camera drives forward smoothly; ``fps`` (if given) paces the stream in
    wall-clock time and sets the scene's time step, otherwise frames come as fast as they render
    with the Cityscapes time step (1/17 s).
    """
    style = get_domain(domain)
    _check_size(size)
    step = 1.0 / (fps or SEQUENCE_FPS)
    next_due = time.monotonic()
    scene = 0
    while True:
        rng = _scene_rng(seed, domain, "stream", scene)
        layout = sample_layout(rng, style, duration=SEQUENCE_LENGTH * step)
        for frame in range(SEQUENCE_LENGTH):
            yield render_scene(rng, style, size, frame * step, layout)
            if fps:
                next_due += step
                time.sleep(max(0.0, next_due - time.monotonic()))
        scene += 1
