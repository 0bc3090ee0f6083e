"""GoogLeNet (Szegedy et al. 2014, "Going deeper with convolutions", table 1; seed fig. 16).

    conv 7x7/2 64 -> max pool 3x3/2 -> LRN -> conv 1x1 64 -> conv 3x3 192 -> LRN
    -> max pool 3x3/2 -> inception 3a, 3b -> max pool 3x3/2 -> inception 4a..4e
    -> max pool 3x3/2 -> inception 5a, 5b -> global average pool -> dropout 40% -> linear

As in the paper: real 5x5 branches, no batch norm, no auxiliary classifiers (they only help
training in the paper and are dropped at inference). Every layer uses 'same' padding, so
224 -> 112 -> 56 -> 28 -> 14 -> 7. LRN uses the reference Caffe model's numbers (window 5,
alpha 1e-4 / 5 per eq. 3 since Caffe divides by the window, beta 0.75, k 1).
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from cnncli.layers import (
    ConvLayer,
    Dropout,
    GlobalAvgPool,
    InceptionModule,
    LocalResponseNorm,
    MaxPool,
    Network,
    init_conv_relu,
)

# name: (1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj), from table 1
INCEPTION = {
    "3a": (64, 96, 128, 16, 32, 32),
    "3b": (128, 128, 192, 32, 96, 64),
    "4a": (192, 96, 208, 16, 48, 64),
    "4b": (160, 112, 224, 24, 64, 64),
    "4c": (128, 128, 256, 24, 64, 64),
    "4d": (112, 144, 288, 32, 64, 64),
    "4e": (256, 160, 320, 32, 128, 128),
    "5a": (256, 160, 320, 32, 128, 128),
    "5b": (384, 192, 384, 48, 128, 128),
}


def _lrn() -> LocalResponseNorm:
    return LocalResponseNorm(size=5, alpha=1e-4 / 5, beta=0.75, k=1.0)


class GoogLeNet(Network):
    classifier_name = "fc"

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, dropout: float = 0.4):
        super().__init__()
        self.conv1 = ConvLayer(in_chans, 64, 7, 2, "same")
        self.pool1 = MaxPool(3, 2, "same")
        self.lrn1 = _lrn()
        self.conv2_reduce = ConvLayer(64, 64, 1, 1, "same")
        self.conv2 = ConvLayer(64, 192, 3, 1, "same")
        self.lrn2 = _lrn()
        self.pool2 = MaxPool(3, 2, "same")
        channels = 192
        for name, widths in INCEPTION.items():
            if name in ("4a", "5a"):
                setattr(self, f"pool{int(name[0]) - 1}", MaxPool(3, 2, "same"))
            module = InceptionModule(channels, *widths)
            setattr(self, f"inception{name}", module)
            channels = module.out_channels
        self.avgpool = GlobalAvgPool()
        self.dropout = Dropout(dropout)
        self.fc = nn.Linear(channels, num_classes)
        self.num_features = channels
        self.num_classes = num_classes
        init_conv_relu(self)

    def _run(self, x: torch.Tensor, names) -> torch.Tensor:
        for n in names:
            x = getattr(self, n)(x)
        return x

    _STEM = ("conv1", "pool1", "lrn1", "conv2_reduce", "conv2", "lrn2", "pool2")
    _STAGES: ClassVar[dict[str, tuple[str, ...]]] = {
        "stem": _STEM,
        "inception3": ("inception3a", "inception3b"),
        "inception4": ("pool3", "inception4a", "inception4b", "inception4c", "inception4d", "inception4e"),
        "inception5": ("pool4", "inception5a", "inception5b"),
    }

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for names in self._STAGES.values():
            x = self._run(x, names)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.dropout(self.avgpool(x))
        return x if pre_logits else self.fc(x)

    def stages(self) -> list[tuple[str, nn.Module]]:
        return [(stage, self._group(*names)) for stage, names in self._STAGES.items()]


def googlenet(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> GoogLeNet:
    """GoogLeNet (Inception v1) as table 1 of the paper, without auxiliary classifiers."""
    return GoogLeNet(num_classes=num_classes, in_chans=in_chans, **kwargs)
