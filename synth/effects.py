"""The photometric pipeline on float32 (H, W, 3) BGR in 0..255: texture, cast shadows, colour
grading, lights, wet road, fog, rain, blur and sensor noise, each driven by the domain's style.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING

import cv2
import numpy as np

from iapc.synth.styles import GROUND_CLASSES, ID, DomainStyle

if TYPE_CHECKING:  # only for annotations: rendering imports this module
    from iapc.synth.rendering import Canvas, View

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


def apply_texture(img: np.ndarray, label: np.ndarray, style: DomainStyle, seed: int) -> None:
    if not style.texture:
        return
    grain, blotch = _texture_fields(seed, label.shape[1], label.shape[0])
    grain_amp = _class_table({k: v[0] for k, v in style.texture.items()})[label]  # (H, W)
    blotch_amp = _class_table({k: v[1] for k, v in style.texture.items()})[label]
    img += (grain_amp * grain + blotch_amp * blotch)[..., None]


def apply_shadows(img: np.ndarray, canvas: Canvas, style: DomainStyle) -> None:
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


def apply_grading(img: np.ndarray, style: DomainStyle) -> np.ndarray:
    return cv2.transform(img, _grading_matrix(style))


def apply_lights(img: np.ndarray, canvas: Canvas, style: DomainStyle) -> None:
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


def apply_wet_road(img: np.ndarray, canvas: Canvas, view: View, style: DomainStyle) -> np.ndarray:
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


def apply_fog(img: np.ndarray, canvas: Canvas, style: DomainStyle) -> np.ndarray:
    if style.fog_density <= 0:
        return img
    transmittance = np.exp(-style.fog_density * canvas.depth)[..., None]  # (H, W, 1)
    return img * transmittance + np.asarray(style.fog_color, np.float32) * (1 - transmittance)


def apply_rain(img: np.ndarray, rng: np.random.Generator, style: DomainStyle) -> np.ndarray:
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


def apply_blur(img: np.ndarray, view: View, style: DomainStyle) -> np.ndarray:
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


def apply_sensor(img: np.ndarray, rng: np.random.Generator, style: DomainStyle) -> np.ndarray:
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
