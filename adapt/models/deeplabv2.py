"""DeepLabV2 on ResNet-101 ("ResNetMulti" of AdvEnt), the network of the IAPC paper.

Parameter names match the released IAPC/AdvEnt checkpoints: ``conv1, bn1, layer1..layer4`` and the
ASPP classifier ``layer6.conv2d_list.{0..3}``. Caffe-style details that change the logits are kept:
the stride sits on the first 1x1 conv of a bottleneck, every layer's first block has a
``downsample``, the max-pool uses ``ceil_mode``, layer3/layer4 are dilated (2/4) with stride 1,
and the four ASPP branches (dilation 6/12/18/24, with bias) are summed.

Output stride 8. ``forward`` returns ``(logits, features)``: logits (N, K, H/8, W/8) and the
layer3 features (N, 1024, H/8, W/8) that IAPC builds prototypes from.
"""

from __future__ import annotations

import torch
from torch import nn

from iapc.adapt.preprocessing import CAFFE_BGR


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, dilation: int = 1,
                 downsample: nn.Module | None = None):
        super().__init__()
        # caffe-style: the stride is applied by the first 1x1 conv, not the 3x3
        self.conv1 = nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=dilation, dilation=dilation,
                               bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        residual = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + residual)


class ClassifierModule(nn.Module):
    """ASPP of DeepLabV2: parallel dilated 3x3 convs whose outputs are summed."""

    def __init__(self, inplanes: int, dilations: tuple[int, ...], num_classes: int):
        super().__init__()
        self.conv2d_list = nn.ModuleList(
            nn.Conv2d(inplanes, num_classes, 3, padding=d, dilation=d, bias=True) for d in dilations
        )
        for conv in self.conv2d_list:
            nn.init.normal_(conv.weight, 0.0, 0.01)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv2d_list[0](x)
        for conv in self.conv2d_list[1:]:
            out = out + conv(x)
        return out


class DeepLabV2ResNet(nn.Module):
    norm = CAFFE_BGR
    feature_channels = 1024
    output_stride = 8

    def __init__(self, num_classes: int = 19, layers: tuple[int, ...] = (3, 4, 23, 3)):
        super().__init__()
        self.num_classes = num_classes
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1, ceil_mode=True)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=1, dilation=2)
        self.layer4 = self._make_layer(512, layers[3], stride=1, dilation=4)
        self.layer6 = ClassifierModule(2048, (6, 12, 18, 24), num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d) and m not in set(self.layer6.conv2d_list):
                nn.init.normal_(m.weight, 0.0, 0.01)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
        # as in the released code, the first block of every layer has a projection shortcut
        downsample = nn.Sequential(
            nn.Conv2d(self.inplanes, planes * 4, 1, stride=stride, bias=False),
            nn.BatchNorm2d(planes * 4),
        )
        blocks_list = [Bottleneck(self.inplanes, planes, stride, dilation, downsample)]
        self.inplanes = planes * 4
        blocks_list += [Bottleneck(self.inplanes, planes, dilation=dilation) for _ in range(1, blocks)]
        return nn.Sequential(*blocks_list)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (N, 64, H/4, W/4)
        x = self.layer2(self.layer1(x))  # (N, 512, H/8, W/8)
        feats = self.layer3(x)  # (N, 1024, H/8, W/8)
        logits = self.layer6(self.layer4(feats))  # (N, K, H/8, W/8)
        return logits, feats

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        classifier = list(self.layer6.parameters())
        ids = {id(p) for p in classifier}
        return {"backbone": [p for p in self.parameters() if id(p) not in ids],
                "classifier": classifier}
