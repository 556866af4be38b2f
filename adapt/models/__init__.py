"""Model registry. Every model maps uint8-derived input (see ``iapc.adapt.preprocessing``) to
``(logits, features)`` and exposes:

- ``norm``: the :class:`~iapc.adapt.preprocessing.NormSpec` its input needs;
- ``num_classes``, ``feature_channels``, ``output_stride``;
- ``parameter_groups()``: ``{"backbone": [...], "classifier": [...]}`` (IAPC trains the
  classifier at 10x the backbone's learning rate).
"""

from __future__ import annotations

from typing import Callable

from torch import nn

from iapc.adapt.models.deeplabv2 import DeepLabV2ResNet
from iapc.adapt.models.tiny import TinySegNet
from iapc.adapt.models.torchvision_models import deeplabv3_mobilenet_v3_large, deeplabv3_resnet50
from iapc.errors import UserError

MODELS: dict[str, Callable[[int], nn.Module]] = {
    "deeplabv2_resnet101": lambda num_classes=19: DeepLabV2ResNet(num_classes),
    "deeplabv3_mobilenet_v3_large": deeplabv3_mobilenet_v3_large,
    "deeplabv3_resnet50": deeplabv3_resnet50,
    "tiny": lambda num_classes=19: TinySegNet(num_classes),
    "small": lambda num_classes=19: TinySegNet(num_classes, width=2),
}


def build_model(name: str, num_classes: int = 19) -> nn.Module:
    """A freshly initialised model from the registry (no weights are downloaded)."""
    if name not in MODELS:
        raise UserError(f"unknown model {name!r}: choose one of {', '.join(sorted(MODELS))}")
    return MODELS[name](num_classes)
