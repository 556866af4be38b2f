"""A small DeepLab-style network that adapts at useful speed on two CPU cores.

Four conv-BN-ReLU stages (16-32-64-96 channels times ``width``, output stride 8, the last one
dilated) and a two-branch dilated classifier summed like DeepLabV2's ASPP. Registered as ``tiny``
(width 1: about 0.2 M parameters, ~0.2 GFLOP per 256x128 forward) and ``small`` (width 2: about
0.9 M parameters, ~4x the compute). Same interface as the large models: ``(logits, features)``.
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
    output_stride = 8

    def __init__(self, num_classes: int = 19, width: int = 1):
        super().__init__()
        self.num_classes = num_classes
        c1, c2, c3, c4 = (channels * width for channels in (16, 32, 64, 96))
        self.feature_channels = c4
        self.backbone = nn.Sequential(
            _conv_bn_relu(3, c1, stride=2), _conv_bn_relu(c1, c1),  # H/2
            _conv_bn_relu(c1, c2, stride=2), _conv_bn_relu(c2, c2),  # H/4
            _conv_bn_relu(c2, c3, stride=2), _conv_bn_relu(c3, c3),  # H/8
            _conv_bn_relu(c3, c4, dilation=2), _conv_bn_relu(c4, c4, dilation=4),  # H/8
        )
        self.classifier = nn.ModuleList(
            nn.Conv2d(c4, num_classes, 3, padding=d, dilation=d) for d in (1, 6)
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.backbone(x)  # (N, 96 * width, H/8, W/8)
        logits = self.classifier[0](feats) + self.classifier[1](feats)  # (N, K, H/8, W/8)
        return logits, feats

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"backbone": list(self.backbone.parameters()),
                "classifier": list(self.classifier.parameters())}
