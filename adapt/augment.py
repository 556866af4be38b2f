"""The two input views of an IAPC step (see ``docs/METHOD.md``, "IAPC").

- :func:`random_rescale_crop`: ``x1`` (rescaled x0.8-1.2, cropped) for the source and target
  networks, ``x0`` (the un-rescaled image cropped at the same place) for the memory network, and
  any full-resolution label map (offline pseudo-labels) cropped exactly like ``x1``.
- :func:`photometric_augment`: ``x2`` from ``x1`` with AutoAugment's ImageNet policy restricted
  to its photometric operations (no geometry, so ``x2`` stays pixel-aligned with ``x1``).

All images are uint8 (N, 3, H, W) RGB. Random choices come from an optional
``torch.Generator`` (on the CPU), so a run is reproducible from its seed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from iapc.adapt.losses import IGNORE_INDEX, resize_label
from iapc.errors import UserError

PHOTOMETRIC_OPS = ("Solarize", "AutoContrast", "Equalize", "Posterize", "Invert", "Color",
                   "Contrast", "Sharpness")
_NUM_BINS = 10  # AutoAugment's magnitude bins; policy magnitude indices point into these


@dataclass(frozen=True)
class PolicyOp:
    """One operation of a sub-policy: applied with ``probability``; ``magnitude`` is None for
    operations without one; ``signed`` ones get a random sign, as in AutoAugment."""

    name: str
    probability: float
    magnitude: float | None
    signed: bool


def imagenet_photometric_policy() -> list[tuple[PolicyOp, ...]]:
    """torchvision's ``AutoAugmentPolicy.IMAGENET`` sub-policies with their geometric operations
    (Rotate, ShearX) removed, and sub-policies left empty dropped.

    The policy table and magnitude bins are read from torchvision itself (its
    ``_policies``/``_AUGMENTATION_SPACE`` attributes, pinned by the project's torchvision
    version) so the magnitudes cannot drift from AutoAugment's.
    """
    auto = v2.AutoAugment(v2.AutoAugmentPolicy.IMAGENET)
    space = auto._AUGMENTATION_SPACE
    policy = []
    for sub_policy in auto._policies:
        ops = []
        for name, probability, magnitude_index in sub_policy:
            if name not in PHOTOMETRIC_OPS:
                continue
            bins_fn, signed = space[name]
            bins = bins_fn(_NUM_BINS, 1, 1)  # image size only matters for translations
            magnitude = None if magnitude_index is None else float(bins[magnitude_index])
            ops.append(PolicyOp(name, float(probability), magnitude, bool(signed)))
        if ops:
            policy.append(tuple(ops))
    return policy


def apply_op(images: torch.Tensor, name: str, magnitude: float | None) -> torch.Tensor:
    """One photometric operation on a uint8 (B, 3, H, W) batch, as torchvision's AutoAugment."""
    if name == "Solarize":
        return TF.solarize(images, threshold=255.0 * magnitude)
    if name == "AutoContrast":
        return TF.autocontrast(images)
    if name == "Equalize":
        return TF.equalize(images)
    if name == "Posterize":
        return TF.posterize(images, bits=int(magnitude))
    if name == "Invert":
        return TF.invert(images)
    if name == "Color":
        return TF.adjust_saturation(images, saturation_factor=1.0 + magnitude)
    if name == "Contrast":
        return TF.adjust_contrast(images, contrast_factor=1.0 + magnitude)
    if name == "Sharpness":
        return TF.adjust_sharpness(images, sharpness_factor=1.0 + magnitude)
    raise UserError(f"unknown photometric operation {name!r}: use one of {', '.join(PHOTOMETRIC_OPS)}")


_POLICY: list[tuple[PolicyOp, ...]] | None = None


def _policy() -> list[tuple[PolicyOp, ...]]:
    global _POLICY
    if _POLICY is None:
        _POLICY = imagenet_photometric_policy()
    return _POLICY


def _check_images(images: torch.Tensor) -> None:
    if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise UserError(f"expected uint8 (N, 3, H, W) RGB images, got {images.dtype} "
                        f"{tuple(images.shape)}: convert camera frames with camera_to_rgb first")


def photometric_augment(images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """``x2``: each image gets one random sub-policy of :func:`imagenet_photometric_policy`.

    uint8 (N, 3, H, W) -> uint8 (N, 3, H, W). Images that drew the same operation and magnitude
    at the same position of their sub-policy are transformed together in one batched call.
    """
    _check_images(images)
    policy = _policy()
    n = images.shape[0]
    chosen = torch.randint(len(policy), (n,), generator=generator).tolist()
    out = images.clone()
    for position in range(max(len(sub) for sub in policy)):
        applies = torch.rand(n, generator=generator).tolist()
        signs = torch.randint(2, (n,), generator=generator).tolist()
        groups: dict[tuple[str, float | None], list[int]] = {}
        for i in range(n):
            sub = policy[chosen[i]]
            if position >= len(sub) or applies[i] >= sub[position].probability:
                continue
            op = sub[position]
            magnitude = -op.magnitude if op.signed and signs[i] else op.magnitude
            groups.setdefault((op.name, magnitude), []).append(i)
        for (name, magnitude), members in groups.items():
            index = torch.tensor(members, device=images.device)
            out[index] = apply_op(out[index], name, magnitude)
    return out


@dataclass
class RescaledCrop:
    """The views of one batch: ``x1`` and ``x0`` uint8 (N, 3, h, w); ``label`` (N, h, w) long
    cropped like ``x1`` (None if no label map was given). Pixels outside the image (when the
    rescaled image is smaller than the crop) are 0 in images and 255 in labels."""

    x1: torch.Tensor
    x0: torch.Tensor
    label: torch.Tensor | None


def _crop_or_pad(x: torch.Tensor, top: int, left: int, size: tuple[int, int], fill: int) -> torch.Tensor:
    """(..., H, W) window [top, top+h) x [left, left+w), padded at the bottom/right with ``fill``."""
    h, w = size
    window = x[..., top:top + h, left:left + w]
    pad_h, pad_w = h - window.shape[-2], w - window.shape[-1]
    if pad_h or pad_w:
        window = torch.nn.functional.pad(window, (0, pad_w, 0, pad_h), value=fill)
    return window


def _corresponding_start(start: int, crop: int, scale: float, full: int) -> int:
    """Where the un-rescaled crop starts so that its centre matches the rescaled crop's centre,
    clipped so the window stays inside the image."""
    centre = (start + crop / 2.0) / scale
    return int(min(max(round(centre - crop / 2.0), 0), max(full - crop, 0)))


def random_rescale_crop(images: torch.Tensor, crop: tuple[int, int],
                        scale_range: tuple[float, float] = (0.8, 1.2),
                        label: torch.Tensor | None = None,
                        generator: torch.Generator | None = None) -> RescaledCrop:
    """``x1``, ``x0`` and the matching label crop of a uint8 (N, 3, H, W) batch.

    Each image gets its own scale ``s ~ U(scale_range)``: ``x1`` is the image resized to
    ``round(s*H) x round(s*W)`` (bilinear, antialiased) and cropped to ``crop = (h, w)`` at a
    random place; ``x0`` is the original image cropped (same size) around the same centre,
    clipped to the image bounds. ``label`` (N, H, W), e.g. offline pseudo-labels, is resized
    with ``nearest`` and cropped exactly like ``x1``.
    """
    _check_images(images)
    n, _, height, width = images.shape
    if label is not None and tuple(label.shape) != (n, height, width):
        raise UserError(f"label map has shape {tuple(label.shape)}, the images are {n}x{height}x{width}: "
                        "give one full-resolution label per image")
    low, high = scale_range
    if not 0 < low <= high:
        raise UserError(f"scale_range {scale_range} is not an interval of positive scales: use e.g. (0.8, 1.2)")
    ch, cw = crop
    scales = (low + (high - low) * torch.rand(n, generator=generator, dtype=torch.float64)).tolist()
    offsets = torch.rand(n, 2, generator=generator, dtype=torch.float64).tolist()
    x1, x0, labels = [], [], []
    for i in range(n):
        s = scales[i]
        size = (max(1, round(height * s)), max(1, round(width * s)))
        # Random window inside the rescaled image (at 0 when it is smaller than the crop).
        top = int(offsets[i][0] * (max(size[0] - ch, 0) + 1))
        left = int(offsets[i][1] * (max(size[1] - cw, 0) + 1))
        rescaled = TF.resize(images[i], list(size), antialias=True)  # (3, sH, sW)
        x1.append(_crop_or_pad(rescaled, top, left, crop, 0))
        top0 = _corresponding_start(top, ch, s, height)
        left0 = _corresponding_start(left, cw, s, width)
        x0.append(_crop_or_pad(images[i], top0, left0, crop, 0))
        if label is not None:
            rescaled_label = resize_label(label[i:i + 1].long(), size)[0]  # (sH, sW)
            labels.append(_crop_or_pad(rescaled_label, top, left, crop, IGNORE_INDEX))
    return RescaledCrop(torch.stack(x1), torch.stack(x0),
                        torch.stack(labels) if label is not None else None)
