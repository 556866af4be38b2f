"""The one definition of input preprocessing, shared by training, export and inference.

Frames arrive as OpenCV delivers them: uint8, (N, H, W, 3), BGR. Training code converts them once
with :func:`camera_to_rgb` to uint8 (N, 3, H, W) RGB (what torchvision's photometric ops expect),
and every network input is made by :func:`normalize`. The exported ONNX graph runs exactly
``normalize(camera_to_rgb(frames))`` in-graph, so training, export and inference cannot drift.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class NormSpec:
    """How a network wants its input: channel order, value scale, per-channel mean/std.

    ``mean`` and ``std`` are given in the network's channel order and in the scaled range.
    """

    channel_order: str  # "RGB" or "BGR"
    scale: float  # multiply uint8 values by this first (1.0 keeps 0..255, 1/255 gives 0..1)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


# DeepLabV2 / AdvEnt / IAPC: BGR, caffe means, no division, 0..255 range.
CAFFE_BGR = NormSpec("BGR", 1.0, (104.00698793, 116.66876762, 122.67891434), (1.0, 1.0, 1.0))
# torchvision models: RGB in 0..1, ImageNet mean/std.
IMAGENET_RGB = NormSpec("RGB", 1.0 / 255.0, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def camera_to_rgb(frames: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, 3) BGR camera frames -> uint8 (N, 3, H, W) RGB."""
    return frames.permute(0, 3, 1, 2).flip(1)


def normalize(images: torch.Tensor, spec: NormSpec) -> torch.Tensor:
    """uint8 (N, 3, H, W) RGB -> float32 (N, 3, H, W) network input, as ``spec`` says."""
    x = images.float()
    if spec.channel_order == "BGR":
        x = x.flip(1)
    mean = torch.tensor(spec.mean, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    std = torch.tensor(spec.std, dtype=x.dtype, device=x.device).view(1, 3, 1, 1)
    return (x * spec.scale - mean) / std
