"""On-device-class models from torchvision, behind the project's (logits, features) interface.

torchvision's segmentation models return a dict with logits already upsampled to the input size;
IAPC needs the raw stride-16 logits and the backbone features, so the wrapper calls the backbone
and the head itself. Weights are random at construction (nothing is downloaded).
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models import segmentation

from iapc.adapt.preprocessing import IMAGENET_RGB


class TorchvisionSegmenter(nn.Module):
    norm = IMAGENET_RGB

    def __init__(self, builder, num_classes: int, feature_channels: int, output_stride: int):
        super().__init__()
        net = builder(weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False)
        self.backbone = net.backbone
        self.classifier = net.classifier
        self.num_classes = num_classes
        self.feature_channels = feature_channels
        self.output_stride = output_stride

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feats = self.backbone(x)["out"]  # (N, C, H/os, W/os)
        return self.classifier(feats), feats  # logits (N, K, H/os, W/os)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        return {"backbone": list(self.backbone.parameters()),
                "classifier": list(self.classifier.parameters())}


def deeplabv3_mobilenet_v3_large(num_classes: int = 19) -> TorchvisionSegmenter:
    return TorchvisionSegmenter(segmentation.deeplabv3_mobilenet_v3_large, num_classes, 960, 16)


def deeplabv3_resnet50(num_classes: int = 19) -> TorchvisionSegmenter:
    return TorchvisionSegmenter(segmentation.deeplabv3_resnet50, num_classes, 2048, 8)
