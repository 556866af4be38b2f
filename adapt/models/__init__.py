"""Model registry. Every model maps uint8-derived input (see ``iapc.adapt.preprocessing``) to
``(logits, features)`` and exposes:

- ``norm``: the :class:`~iapc.adapt.preprocessing.NormSpec` its input needs;
- ``num_classes``, ``feature_channels``, ``output_stride``;
- ``parameter_groups()``: ``{"backbone": [...], "classifier": [...]}`` (IAPC trains the
  classifier at 10x the backbone's learning rate).

Models with architecture options (ESPNetv2's width ``s``) also have ``build_options()``, the
keyword arguments that rebuild them: ``build_model("espnetv2", 19, width=1.0)``, or the name
``espnetv2_s1.0``; ``espnetv2`` alone is s=2.0 (a checkpoint's own width wins when loading).

A user's own network is named by its factory, ``package.module:function`` (see
:mod:`iapc.adapt.models.contract`), and checked against this contract when it is built.
"""

from __future__ import annotations

import re
from typing import Any, Callable

from torch import nn

from iapc.adapt.models.contract import build_user_model, is_factory_name
from iapc.adapt.models.deeplabv2 import DeepLabV2ResNet
from iapc.adapt.models.espnetv2 import DEFAULT_WIDTH, WIDTH_CHANNELS, ESPNetv2Seg
from iapc.adapt.models.tiny import TinySegNet
from iapc.adapt.models.torchvision_models import deeplabv3_mobilenet_v3_large, deeplabv3_resnet50
from iapc.errors import UserError

MODELS: dict[str, Callable[..., nn.Module]] = {
    "deeplabv2_resnet101": lambda num_classes=19: DeepLabV2ResNet(num_classes),
    "espnetv2": lambda num_classes=19, width=DEFAULT_WIDTH: ESPNetv2Seg(num_classes, width),
    "deeplabv3_mobilenet_v3_large": deeplabv3_mobilenet_v3_large,
    "deeplabv3_resnet50": deeplabv3_resnet50,
    "tiny": lambda num_classes=19: TinySegNet(num_classes),
    "small": lambda num_classes=19: TinySegNet(num_classes, width=2),
}


_WIDTH_NAME = re.compile(r"(espnetv2)_s(\d+(?:\.\d+)?)")  # espnetv2_s1.0 -> width 1.0


def parse_model_name(name: str) -> tuple[str, dict[str, Any]]:
    """``(registry name, options)`` a model name stands for: ``espnetv2_s0.5`` is
    ``("espnetv2", {"width": 0.5})``; every other name stands for itself with no options."""
    match = _WIDTH_NAME.fullmatch(name)
    if match is None:
        return name, {}
    width = float(match.group(2))
    if width not in WIDTH_CHANNELS:
        raise UserError(f"unknown model {name!r}: ESPNetv2 widths are "
                        f"{', '.join(f'espnetv2_s{s}' for s in WIDTH_CHANNELS)}")
    return match.group(1), {"width": width}


def build_model(name: str, num_classes: int = 19, **options: Any) -> nn.Module:
    """A freshly initialised model from the registry (no weights are downloaded).

    ``options`` (e.g. ``width=1.0`` for ``espnetv2``) override those the name carries; a
    ``package.module:function`` name builds a user's network with ``function(num_classes)``."""
    if is_factory_name(name):
        return build_user_model(name, num_classes)
    base, named = parse_model_name(name)
    if base not in MODELS:
        raise UserError(f"unknown model {name!r}: choose one of {', '.join(sorted(MODELS))}")
    options = {**named, **options}
    try:
        return MODELS[base](num_classes, **options)
    except (TypeError, ValueError) as err:
        if not options:
            raise
        raise UserError(f"model {name!r} cannot be built with {options}: {err}") from None
