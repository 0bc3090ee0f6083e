"""ResNet (He et al. 2015; seed figs. 17-20) and SE-ResNet (Hu et al. 2017; seed figs. 21-23).

Stem (7x7/2 convolution with batch norm and ReLU, 3x3/2 max pooling), four stages of residual
units (`layer1`..`layer4`, the first unit of stages 2-4 halves the size with stride 2 and
doubles the depth, using a 1x1 projection skip), global average pooling, output layer.

Parameters match torchvision's resnet18..152 (and timm's seresnet50 for `se_resnet50`) in
order and shape, so their state dicts load by position; padding is PyTorch's symmetric
k//2 (not TF 'same') to give the same outputs as those weights.
"""

from __future__ import annotations

import torch
from torch import nn

from cnncli.layers import (
    BottleneckUnit,
    ConvLayer,
    GlobalAvgPool,
    MaxPool,
    Network,
    ResidualUnit,
    init_conv_relu,
)


class ResNet(Network):
    classifier_name = "fc"

    def __init__(self, block: type[ResidualUnit | BottleneckUnit], layers: tuple[int, int, int, int],
                 num_classes: int = 1000, in_chans: int = 3, se: bool = False, width: int = 64):
        super().__init__()
        self.conv1 = ConvLayer(in_chans, width, 7, 2, padding=3, batch_norm=True)
        self.maxpool = MaxPool(3, 2, padding=1)
        channels = width
        for i, units in enumerate(layers):
            stage_width = width * 2**i
            stride = 1 if i == 0 else 2
            stage = []
            for u in range(units):
                unit = block(channels, stage_width, stride if u == 0 else 1, se=se)
                stage.append(unit)
                channels = unit.out_channels
            setattr(self, f"layer{i + 1}", nn.Sequential(*stage))
        self.avgpool = GlobalAvgPool()
        self.fc = nn.Linear(channels, num_classes)
        self.num_features = channels
        self.num_classes = num_classes
        init_conv_relu(self)
        # Linear layers keep PyTorch's default init here, as torchvision's ResNet does
        self.fc.reset_parameters()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.conv1(x))
        return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.avgpool(x)
        return x if pre_logits else self.fc(x)

    def stages(self) -> list[tuple[str, nn.Module]]:
        return [("stem", self._group("conv1", "maxpool"))] + [
            (f"layer{i}", getattr(self, f"layer{i}")) for i in range(1, 5)]


def _resnet(block, layers, num_classes: int, in_chans: int, **kwargs) -> ResNet:
    return ResNet(block, layers, num_classes=num_classes, in_chans=in_chans, **kwargs)


def resnet18(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> ResNet:
    """ResNet-18: residual units [2, 2, 2, 2]."""
    return _resnet(ResidualUnit, (2, 2, 2, 2), num_classes, in_chans, **kwargs)


def resnet34(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> ResNet:
    """ResNet-34 (the seed's fig. 19): residual units [3, 4, 6, 3]."""
    return _resnet(ResidualUnit, (3, 4, 6, 3), num_classes, in_chans, **kwargs)


def resnet50(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> ResNet:
    """ResNet-50: bottleneck units [3, 4, 6, 3]."""
    return _resnet(BottleneckUnit, (3, 4, 6, 3), num_classes, in_chans, **kwargs)


def resnet101(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> ResNet:
    """ResNet-101: bottleneck units [3, 4, 23, 3]."""
    return _resnet(BottleneckUnit, (3, 4, 23, 3), num_classes, in_chans, **kwargs)


def resnet152(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> ResNet:
    """ResNet-152: bottleneck units [3, 8, 36, 3]."""
    return _resnet(BottleneckUnit, (3, 8, 36, 3), num_classes, in_chans, **kwargs)


def se_resnet50(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> ResNet:
    """SE-ResNet-50: ResNet-50 with an SE block (reduction 16) in every unit, timm's seresnet50."""
    return _resnet(BottleneckUnit, (3, 4, 6, 3), num_classes, in_chans, se=True, **kwargs)
