"""Scene layout: one sampled world in road coordinates (metres), renderable at any time ``t``.

A scene is a road with sidewalks, roadside blocks, poles, trees, vehicles and people, seen from a
forward-moving camera; its randomness comes from :func:`scene_rng`, so a scene depends only on
(seed, domain, split, index).
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, replace

import numpy as np

from iapc.synth.styles import BGR, ID, DomainStyle

SEQUENCE_LENGTH = 30  # frames per sequence, as in Cityscapes leftImg8bit_sequence
ANNOTATED_FRAME = 19  # the frame of each sequence that has a label (the 20th)
SEQUENCE_FPS = 17.0  # Cityscapes capture rate

NEAR = 1.0  # metres: nothing nearer than this is drawn
FAR = 300.0  # metres: end of the modelled road; beyond it a skyline backdrop


_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}


def scene_key(seed: int, domain: str, split: str, index: int) -> list[int]:
    """Entropy for one scene: independent, reproducible randomness per (seed, domain, split,
    index), whatever else is written."""
    split_code = _SPLIT_CODES.get(split, zlib.crc32(split.encode()))
    return [seed, zlib.crc32(domain.encode()), split_code, index]


def scene_rng(seed: int, domain: str, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng(scene_key(seed, domain, split, index))


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
