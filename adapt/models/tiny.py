"""A small DeepLab-style network that adapts at useful speed on two CPU cores.

Four conv-BN-ReLU stages (16-32-64-96 channels, output stride 8, the last one dilated) and a
two-branch dilated classifier summed like DeepLabV2's ASPP. About 0.2 M parameters; at 256x128 a
forward costs ~0.2 GFLOP. Same interface as the large models: ``(logits, features)``.
"""

from __future__ import annotations

import torch
from torch import nn

from iapc.adapt.preprocessing import IMAGENET_RGB


def _conv_bn_relu(cin: int, cout: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class TinySegNet(nn.Module):
    norm = IMAGENET_RGB
    feature_channels = 96
    output_stride = 8

    def __init__(self, num_classes: int = 19):
        super().__init__()
        self.num_classes = num_classes
        self.backbone = nn.Sequential(
            _conv_bn_relu(3, 16, stride=2), _conv_bn_relu(16, 16),  # H/2
            _conv_bn_relu(16, 32, stride=2), _conv_bn_relu(32, 32),  # H/4
            _conv_bn_relu(32, 64, stride=2), _conv_bn_relu(64, 64),  # H/8
            _conv_bn_relu(64, 96, dilation=2), _conv_bn_relu(96, 96, dilation=4),  # H/8
        )
        self.classifier = nn.ModuleList(
            nn.Conv2d(96, num_classes, 3, padding=d, dilation=d) for d in (1, 6)
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.backbone(x)  # (N, 96, H/8, W/8)
        logits = self.classifier[0](feats) + self.classifier[1](feats)  # (N, K, H/8, W/8)
        return logits, feats

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"backbone": list(self.backbone.parameters()),
                "classifier": list(self.classifier.parameters())}
