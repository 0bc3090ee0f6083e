"""Xception (Chollet 2016, "Xception: Deep Learning with Depthwise Separable Convolutions").

Entry flow: two 3x3 convolutions (32 stride 2, 64; 'valid'), three blocks (128, 256, 728) that
halve the size; middle flow: eight blocks of three 728-channel separable convolutions; exit
flow: a 728 -> 1024 block, separable convolutions 1536 and 2048, global average pooling,
output layer. Every block adds a skip connection (a strided 1x1 convolution with batch norm
where the shape changes).

Parameters match timm's `legacy_xception` (the Keras port) in order and shape, and the
padding too (1-pixel symmetric 3x3/2 max pooling where Keras uses 'same'), so its weights
give the same outputs here. 22,855,952 parameters at 299x299x3 and 1000 classes.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import nn

from cnncli.layers import ConvLayer, GlobalAvgPool, MaxPool, Network, SeparableConv2d


class XceptionBlock(nn.Module):
    """`reps` times (ReLU, 3x3 separable convolution, batch norm), an optional 3x3/2 max pool,
    plus the skip connection. `grow_first` widens on the first convolution (else on the last);
    the entry flow's first block starts without the ReLU (its input is already activated)."""

    layer_type = "Xception block"
    atomic = False

    def __init__(self, in_channels: int, out_channels: int, reps: int, stride: int = 1,
                 start_with_relu: bool = True, grow_first: bool = True):
        super().__init__()
        # registered first: timm's Block holds the skip before the separable convolutions
        if out_channels != in_channels or stride != 1:
            self.skip = ConvLayer(in_channels, out_channels, 1, stride, padding=0, activation=None,
                                  batch_norm=True)
        else:
            self.skip = None
        layers: list[nn.Module] = []
        for i in range(reps):
            if grow_first:
                inc, outc = (in_channels if i == 0 else out_channels), out_channels
            else:
                inc, outc = in_channels, (in_channels if i < reps - 1 else out_channels)
            if i > 0 or start_with_relu:
                layers.append(nn.ReLU(inplace=i > 0))  # not in place on the block input: the skip needs it
            layers += [SeparableConv2d(inc, outc, 3, 1, padding="same"), nn.BatchNorm2d(outc)]
        if stride != 1:
            layers.append(MaxPool(3, stride, padding=1))
        self.rep = nn.Sequential(*layers)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.stride = (stride, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.skip is None else self.skip(x)
        return self.rep(x) + skip


class Xception(Network):
    classifier_name = "fc"

    def __init__(self, num_classes: int = 1000, in_chans: int = 3):
        super().__init__()
        self.conv1 = ConvLayer(in_chans, 32, 3, 2, "valid", batch_norm=True)
        self.conv2 = ConvLayer(32, 64, 3, 1, "valid", batch_norm=True)
        self.block1 = XceptionBlock(64, 128, 2, 2, start_with_relu=False)
        self.block2 = XceptionBlock(128, 256, 2, 2)
        self.block3 = XceptionBlock(256, 728, 2, 2)
        for i in range(4, 12):
            setattr(self, f"block{i}", XceptionBlock(728, 728, 3, 1))
        self.block12 = XceptionBlock(728, 1024, 2, 2, grow_first=False)
        self.conv3 = SeparableConv2d(1024, 1536, 3, 1, "same")
        self.bn3 = nn.BatchNorm2d(1536)
        self.act3 = nn.ReLU(inplace=True)
        self.conv4 = SeparableConv2d(1536, 2048, 3, 1, "same")
        self.bn4 = nn.BatchNorm2d(2048)
        self.act4 = nn.ReLU(inplace=True)
        self.global_pool = GlobalAvgPool()
        self.fc = nn.Linear(2048, num_classes)
        self.num_features = 2048
        self.num_classes = num_classes
        if not self.fc.weight.is_meta:  # random fills on meta tensors are slow and pointless
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")

    _STAGES: ClassVar[dict[str, tuple[str, ...]]] = {
        "entry": ("conv1", "conv2", "block1", "block2", "block3"),
        "middle": tuple(f"block{i}" for i in range(4, 12)),
        "exit": ("block12", "conv3", "bn3", "act3", "conv4", "bn4", "act4"),
    }

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for names in self._STAGES.values():
            for n in names:
                x = getattr(self, n)(x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.global_pool(x)
        return x if pre_logits else self.fc(x)

    def stages(self) -> list[tuple[str, nn.Module]]:
        # finer than entry/middle/exit so that unfreezing "the top one or two" is useful
        names = ["conv1", "conv2"] + [f"block{i}" for i in range(1, 13)]
        return ([(n, getattr(self, n)) for n in names]
                + [("conv3", self._group("conv3", "bn3")), ("conv4", self._group("conv4", "bn4"))])


def xception(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> Xception:
    """Xception for 299x299 images, timm legacy_xception-compatible."""
    return Xception(num_classes=num_classes, in_chans=in_chans, **kwargs)
