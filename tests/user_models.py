"""Factories of a user's own networks, named ``user_models:FUNCTION`` in tests (on sys.path through
pytest's ``pythonpath = tests``): one that keeps the model contract and some that each miss a part."""

import torch
from torch import nn

from iapc.adapt.preprocessing import IMAGENET_RGB


class TwoLayerSegNet(nn.Module):
    """The smallest network that keeps the contract: conv-BN-ReLU, then a 1x1 classifier."""

    norm = IMAGENET_RGB
    output_stride = 2

    def __init__(self, num_classes: int):
        super().__init__()
        self.num_classes, self.feature_channels = num_classes, 8
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False),
                                  nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Conv2d(8, num_classes, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(x)  # (N, 8, H/2, W/2)
        return self.head(features), features  # (N, K, H/2, W/2)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"backbone": list(self.body.parameters()), "classifier": list(self.head.parameters())}


def good(num_classes: int) -> nn.Module:
    return TwoLayerSegNet(num_classes)


def without_norm(num_classes: int) -> nn.Module:
    model = TwoLayerSegNet(num_classes)
    model.norm = None
    return model


def without_batchnorm(num_classes: int) -> nn.Module:
    model = TwoLayerSegNet(num_classes)
    model.body[1] = nn.Identity()
    return model


def logits_only(num_classes: int) -> nn.Module:
    model = TwoLayerSegNet(num_classes)
    model.forward = lambda x: model.head(model.body(x))
    return model


def without_groups(num_classes: int) -> nn.Module:
    model = TwoLayerSegNet(num_classes)
    model.parameter_groups = lambda: list(model.parameters())
    return model


def not_a_module(num_classes: int) -> object:
    return {"num_classes": num_classes}
