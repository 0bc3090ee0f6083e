"""VGG-16 (Simonyan & Zisserman 2014, configuration D).

Thirteen 3x3 convolutions (stride 1, 1-pixel padding, ReLU) in five blocks of 64, 128, 256,
512, 512 filters, each block closed by 2x2 max pooling; then dense 4096-4096 with dropout 0.5
and the output layer. As torchvision, a 7x7 adaptive average pool sits before the dense layers
so that other input sizes work; parameters match torchvision's vgg16 in order and shape.
"""

from __future__ import annotations

import torch
from torch import nn

from cnncli.layers import (
    AdaptiveAvgPool,
    ConvLayer,
    Dense,
    Dropout,
    Flatten,
    MaxPool,
    Network,
    init_conv_relu,
)

VGG16_BLOCKS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


class VGG(Network):
    classifier_name = "fc8"

    def __init__(self, blocks=VGG16_BLOCKS, num_classes: int = 1000, in_chans: int = 3, dropout: float = 0.5):
        super().__init__()
        channels = in_chans
        self._blocks: list[tuple[str, ...]] = []
        for b, widths in enumerate(blocks, start=1):
            names = []
            for i, width in enumerate(widths, start=1):
                setattr(self, f"conv{b}_{i}", ConvLayer(channels, width, 3, 1, padding=1))
                names.append(f"conv{b}_{i}")
                channels = width
            setattr(self, f"pool{b}", MaxPool(2, 2))
            names.append(f"pool{b}")
            self._blocks.append(tuple(names))
        self.avgpool = AdaptiveAvgPool((7, 7))
        self.flatten = Flatten()
        self.fc6 = Dense(channels * 7 * 7, 4096, activation="relu")
        self.drop6 = Dropout(dropout)
        self.fc7 = Dense(4096, 4096, activation="relu")
        self.drop7 = Dropout(dropout)
        self.fc8 = nn.Linear(4096, num_classes)
        self.num_features = channels
        self.num_classes = num_classes
        init_conv_relu(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for names in self._blocks:
            for n in names:
                x = getattr(self, n)(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.flatten(self.avgpool(x))
        x = self.drop7(self.fc7(self.drop6(self.fc6(x))))
        return x if pre_logits else self.fc8(x)

    def stages(self) -> list[tuple[str, nn.Module]]:
        blocks = [(f"block{b}", self._group(*names)) for b, names in enumerate(self._blocks, start=1)]
        return blocks + [("fc6", self.fc6), ("fc7", self.fc7)]


def vgg16(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> VGG:
    """VGG-16 (configuration D), torchvision-compatible parameters."""
    return VGG(VGG16_BLOCKS, num_classes=num_classes, in_chans=in_chans, **kwargs)
