"""The rasteriser: projects a :class:`~iapc.synth.layout.SceneLayout` through a pinhole camera and
draws it far to near into image, label and depth buffers, then runs the photometric effects.
"""

from __future__ import annotations

import functools
import math
from dataclasses import replace

import cv2
import numpy as np

from iapc.errors import UserError
from iapc.synth import effects
from iapc.synth.layout import (FAR, NEAR, SEQUENCE_FPS, SEQUENCE_LENGTH, Block, Camera,
                               SceneLayout, Thing, sample_layout)
from iapc.synth.styles import ID, DomainStyle

class View:
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
        z = np.maximum(np.asarray(z, np.float64), NEAR)
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
        z = max(z, NEAR)
        x = 0.5 * self.cam.curvature * z * z + d - self.cam.lateral
        k = self.f / z
        return self.cx + k * x, self.v0 + k * self.cam.height, k


class Canvas:
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


def _draw_sky_and_ground(canvas: Canvas, view: View, style: DomainStyle) -> None:
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


def _strip(view: View, d0: float, d1: float, z0: float, z1: float, n: int = 24) -> np.ndarray:
    """Polygon of a ground strip between lateral d0..d1 and depths z0..z1 (curved road)."""
    z = np.geomspace(max(z0, NEAR), max(z1, NEAR * 1.01), n)
    near_to_far = view.project(d0, z, 0.0)
    far_to_near = view.project(d1, z[::-1], 0.0)
    return np.concatenate([near_to_far, far_to_near])


def _draw_road(canvas: Canvas, view: View, style: DomainStyle, layout: SceneLayout) -> None:
    half, sw = layout.road_half, layout.sidewalk_width
    z_near = NEAR  # strips run from just in front of the camera to the end of the road
    for side in (-1, 1):
        canvas.fill([_strip(view, side * half, side * (half + sw), z_near, FAR)],
                    style.palette["sidewalk"], "sidewalk", None)
        curb = _shade(style.palette["sidewalk"], 0.8)
        canvas.fill([_strip(view, side * half, side * (half + 0.25), z_near, FAR)], curb,
                    "sidewalk", None)
    canvas.fill([_strip(view, -half, half, z_near, FAR)], style.palette["road"], "road", None)
    _draw_markings(canvas, view, style, layout)


def _draw_markings(canvas: Canvas, view: View, style: DomainStyle, layout: SceneLayout) -> None:
    """Dashed lines between lanes (3 m dash, 9 m period, moving with the camera), solid edges."""
    half, width = layout.road_half, 0.15
    period, dash = 9.0, 3.0
    first = np.floor(view.s_cam / period) * period
    starts = first + period * np.arange(0, 16) - view.s_cam  # depth of each dash start, (16,)
    starts = starts[starts + dash > NEAR]
    lines = np.array([k * layout.lane_width - half for k in range(1, layout.lanes)])
    # every dash of every line as one quad: (lines, dashes, 4 corners)
    d = lines[:, None, None] + np.array([-width, width, width, -width]) / 2
    z = starts[None, :, None] + np.array([0, 0, dash, dash])
    polygons = list(view.project(d, z, 0.0).reshape(-1, 4, 2))
    for d in (-half + 0.3, half - 0.3):
        polygons.append(_strip(view, d - width / 2, d + width / 2, NEAR, 120.0, n=16))
    color = style.palette["marking"]
    cv2.fillPoly(canvas.image, polygons, tuple(int(c) for c in color))


def _draw_skyline(canvas: Canvas, view: View, style: DomainStyle, layout: SceneLayout) -> None:
    """Far buildings and tree lines at the end of the road, so the road never meets bare sky."""
    base = view.v0 + view.f * view.cam.height / FAR
    for (column, height, label_id), nxt in zip(layout.skyline, layout.skyline[1:]):
        u0, u1 = column * view.width, nxt[0] * view.width
        top = base - view.f * height / FAR
        poly = np.array([[u0, base], [u1, base], [u1, top], [u0, top]]).round().astype(np.int32)
        label = "vegetation" if label_id == ID["vegetation"] else "building"
        canvas.fill([poly], _shade(style.palette[label], 0.9), label, FAR)


def _sun_vector(layout: SceneLayout) -> np.ndarray:
    return np.array([np.sin(layout.sun_azimuth), np.cos(layout.sun_azimuth)])  # (d, z) to sun


def _cast_shadow(canvas: Canvas, view: View, style: DomainStyle, layout: SceneLayout,
                 d0: float, d1: float, z0: float, z1: float, height: float) -> None:
    """Queue the shadow of a box standing on (d0..d1, z0..z1); see :func:`_draw_shadows`."""
    if style.shadow_strength > 0 and z1 >= NEAR:
        canvas.shadow_boxes.append((d0, d1, z0, z1, height))


def _draw_shadows(canvas: Canvas, view: View, style: DomainStyle, layout: SceneLayout) -> None:
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


def _draw_block(canvas: Canvas, view: View, style: DomainStyle, layout: SceneLayout,
                block: Block) -> None:
    z0, z1 = block.s0 - view.s_cam, block.s1 - view.s_cam
    if z1 < NEAR or z0 > 200.0:  # beyond 200 m the skyline stands in
        return
    d = block.side * block.offset
    depth_outward = 15.0 if block.kind == "building" else 0.5
    _cast_shadow(canvas, view, style, layout, min(d, d + block.side * depth_outward),
                 max(d, d + block.side * depth_outward), z0, z1, block.height)
    label = block.kind
    color = _shade(block.color, _face_light(style, layout, -block.side, 0.0))
    # the road-facing side, in pieces of <= 10 m so it follows the road's curve
    cuts = np.linspace(max(z0, NEAR), z1, int(np.ceil((z1 - max(z0, NEAR)) / 10)) + 1)
    near, far = cuts[:-1, None], cuts[1:, None]  # (pieces, 1)
    pieces = view.project(d, np.hstack([near, far, far, near]),
                          np.array([0, 0, block.height, block.height]))  # (pieces, 4, 2)
    for poly, depth in zip(pieces[::-1], cuts[:0:-1]):  # far piece first
        canvas.fill([poly], color, label, float(depth))
    if z0 > NEAR:  # the near end face, turned towards the camera
        front = view.project([d, d + block.side * depth_outward] * 2, [z0] * 4,
                             [0, 0, block.height, block.height])[[0, 1, 3, 2]]
        canvas.fill([front], _shade(block.color, _face_light(style, layout, 0, -1)), label, z0)
    if block.kind == "building":
        _draw_windows(canvas, view, style, block, max(z0, NEAR), z1)
    elif block.kind == "fence":
        _draw_fence_mesh(canvas, view, block, max(z0, NEAR), z1)


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


def _draw_windows(canvas: Canvas, view: View, style: DomainStyle, block: Block,
                  z0: float, z1: float) -> None:
    """A grid of 1.2 x 1.6 m windows on the road-facing side (part of the building class)."""
    stations, sills, lit = _window_grid(block, style.window_lit)
    zz = stations - view.s_cam  # depth of each window's near edge
    visible = (zz > z0) & (zz + 1.2 < z1) & (view.f * 1.2 > 1.5 * np.maximum(zz, NEAR))
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


def _draw_fence_mesh(canvas: Canvas, view: View, block: Block, z0: float, z1: float) -> None:
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


def _thing_position(thing: Thing, view: View, t: float) -> tuple[float, float]:
    """(depth z ahead of the camera, lateral d) of a thing at time t."""
    return thing.s + thing.speed * t - view.s_cam, thing.d + thing.lateral_speed * t


def _draw_vehicle(canvas: Canvas, view: View, style: DomainStyle, layout: SceneLayout,
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


def _draw_person(canvas: Canvas, view: View, style: DomainStyle, thing: Thing, z: float,
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


def _draw_rider(canvas: Canvas, view: View, style: DomainStyle, layout: SceneLayout,
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


def _draw_pole(canvas: Canvas, view: View, style: DomainStyle, layout: SceneLayout,
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


def _draw_tree(canvas: Canvas, view: View, style: DomainStyle, layout: SceneLayout,
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


def _draw_thing(canvas: Canvas, view: View, style: DomainStyle, layout: SceneLayout,
                thing: Thing, t: float) -> None:
    z, d = _thing_position(thing, view, t)
    if z < NEAR + 0.5 or z > 200:
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


def _draw_hood(canvas: Canvas, style: DomainStyle) -> None:
    """The ego vehicle's bonnet at the bottom of the frame (ignored by evaluation)."""
    h, w = canvas.label.shape
    rise = int(style.ego_hood * h)
    if rise <= 0:
        return
    center, axes = (w // 2, h + rise), (int(w * 0.75), 2 * rise)
    cv2.ellipse(canvas.image, center, axes, 0, 180, 360, style.palette["ego vehicle"], -1)
    cv2.ellipse(canvas.label, center, axes, 0, 180, 360, ID["ego vehicle"], -1)
    cv2.ellipse(canvas.depth, center, axes, 0, 180, 360, 1.0, -1)


def _draw_geometry(canvas: Canvas, view: View, style: DomainStyle, layout: SceneLayout,
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


def check_size(size: tuple[int, int]) -> tuple[int, int]:
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
    width, height = check_size(size)
    if layout is None:
        layout = sample_layout(rng, style)
    style = replace(style, palette=layout.palette)
    view = View(layout.camera, width, height, layout.camera.speed * t)
    canvas = Canvas(width, height, with_depth=style.fog_density > 0)
    _draw_geometry(canvas, view, style, layout, t)
    img = canvas.image.astype(np.float32)
    effects.apply_shadows(img, canvas, style)
    effects.apply_texture(img, canvas.label, style, layout.texture_seed)
    img = effects.apply_grading(img, style)
    effects.apply_lights(img, canvas, style)
    img = effects.apply_wet_road(img, canvas, view, style)
    img = effects.apply_fog(img, canvas, style)
    img = effects.apply_rain(img, rng, style)
    img = effects.apply_blur(img, view, style)
    return effects.apply_sensor(img, rng, style), canvas.label


def render_sequence(rng: np.random.Generator, style: DomainStyle, size: tuple[int, int] = (256, 128),
                    length: int = SEQUENCE_LENGTH, fps: float = SEQUENCE_FPS,
                    layout: SceneLayout | None = None) -> list[tuple[np.ndarray, np.ndarray]]:
    """``length`` consecutive frames of one scene, the camera driving forward at ``fps``."""
    if layout is None:
        layout = sample_layout(rng, style, duration=length / fps)
    return [render_scene(rng, style, size, i / fps, layout) for i in range(length)]
