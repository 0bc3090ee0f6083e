"""The composite blocks `inspect --depth` may open: the inception module (seed fig. 15), the SE
block (figs. 21-23) and ResNet's residual and bottleneck units (figs. 17-20)."""

from __future__ import annotations

import torch
from torch import nn

from cnncli.layers.conv import ConvLayer
from cnncli.layers.pool import MaxPool


class InceptionModule(nn.Module):
    """GoogLeNet's inception module (seed fig. 15; Szegedy et al. 2014, table 1).

    Four branches on the same input, concatenated along depth: 1x1; 1x1 reduce then 3x3;
    1x1 reduce then 5x5; 3x3 max pool (stride 1) then 1x1 projection. Every convolution is
    stride 1, 'same', ReLU. Output depth: c1x1 + c3x3 + c5x5 + pool_proj.
    """

    layer_type = "Inception module"
    atomic = False

    def __init__(self, in_channels: int, c1x1: int, c3x3_reduce: int, c3x3: int,
                 c5x5_reduce: int, c5x5: int, pool_proj: int):
        super().__init__()
        self.branch1 = ConvLayer(in_channels, c1x1, 1, padding="same")
        self.branch2 = nn.Sequential(ConvLayer(in_channels, c3x3_reduce, 1, padding="same"),
                                     ConvLayer(c3x3_reduce, c3x3, 3, padding="same"))
        self.branch3 = nn.Sequential(ConvLayer(in_channels, c5x5_reduce, 1, padding="same"),
                                     ConvLayer(c5x5_reduce, c5x5, 5, padding="same"))
        self.branch4 = nn.Sequential(MaxPool(3, 1, padding="same"),
                                     ConvLayer(in_channels, pool_proj, 1, padding="same"))
        self.in_channels = in_channels
        self.out_channels = c1x1 + c3x3 + c5x5 + pool_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], dim=1)


def se_reduced_channels(channels: int, reduction: int = 16, divisor: int = 8) -> int:
    """Hidden width of an SE block: channels / reduction rounded to the nearest multiple of
    `divisor` (at least `divisor`), as timm's SEModule (make_divisible, round_limit=0)."""
    return max(divisor, int(channels / reduction + divisor / 2) // divisor * divisor)


class SEBlock(nn.Module):
    """Squeeze-and-excitation (seed fig. 23; Hu et al. 2017): global average pooling, a dense
    layer of C/r units with ReLU ("squeeze"), a dense layer of C units with sigmoid
    ("excite"), then each feature map is multiplied by its recalibration weight in (0, 1).

    The two dense layers are written as 1x1 convolutions with bias on the pooled (N, C, 1, 1)
    tensor (the same arithmetic), so that the parameters have timm SEModule's shapes and
    pretrained SE-ResNet weights load.
    """

    layer_type = "SE block"
    atomic = False

    def __init__(self, channels: int, reduction: int = 16, divisor: int = 8):
        super().__init__()
        hidden = se_reduced_channels(channels, reduction, divisor)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, 1)
        self.gate = nn.Sigmoid()
        self.in_channels = self.out_channels = channels
        self.hidden_channels = hidden

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """The recalibration vector, shape (N, C, 1, 1), values in (0, 1)."""
        return self.gate(self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weights(x)


def _projection(in_channels: int, out_channels: int, stride: int) -> ConvLayer | None:
    """Skip connection (seed fig. 20): identity when the shape is kept, else a 1x1 convolution
    with the unit's stride and batch norm, so that input and output can be added."""
    if stride == 1 and in_channels == out_channels:
        return None
    return ConvLayer(in_channels, out_channels, 1, stride, padding=0, activation=None, batch_norm=True)


class ResidualUnit(nn.Module):
    """ResNet's residual unit (seed figs. 19-20): two 3x3 convolutions with batch norm (ReLU
    after the first, after the addition for the second) plus the skip connection.

    Same parameters, in the same order, as torchvision's BasicBlock (symmetric 1-pixel padding,
    stride on the first conv), so torchvision weights load. With se=True an SE block rescales
    the residual before the addition (SE-ResNet, timm's placement).
    """

    layer_type = "Residual unit"
    atomic = False
    expansion = 1

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, se: bool = False):
        super().__init__()
        self.conv1 = ConvLayer(in_channels, out_channels, 3, stride, padding=1, batch_norm=True)
        self.conv2 = ConvLayer(out_channels, out_channels, 3, 1, padding=1, batch_norm=True, activation=None)
        self.se = SEBlock(out_channels) if se else None
        self.downsample = _projection(in_channels, out_channels, stride)
        self.act = nn.ReLU(inplace=True)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.stride = (stride, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.downsample is None else self.downsample(x)
        y = self.conv2(self.conv1(x))
        if self.se is not None:
            y = self.se(y)
        return self.act(y + skip)


class BottleneckUnit(nn.Module):
    """ResNet-50/101/152's bottleneck unit: 1x1 reduce, 3x3, 1x1 expand (x `expansion`), each
    with batch norm, plus the skip connection. The stride sits on the 3x3 convolution
    ("ResNet v1.5", as torchvision and timm); parameters match torchvision's Bottleneck in
    order and shape. With se=True an SE block rescales the residual before the addition.
    """

    layer_type = "Bottleneck unit"
    atomic = False

    def __init__(self, in_channels: int, mid_channels: int, stride: int = 1, expansion: int = 4,
                 se: bool = False):
        super().__init__()
        out_channels = mid_channels * expansion
        self.conv1 = ConvLayer(in_channels, mid_channels, 1, padding=0, batch_norm=True)
        self.conv2 = ConvLayer(mid_channels, mid_channels, 3, stride, padding=1, batch_norm=True)
        self.conv3 = ConvLayer(mid_channels, out_channels, 1, padding=0, batch_norm=True, activation=None)
        self.se = SEBlock(out_channels) if se else None
        self.downsample = _projection(in_channels, out_channels, stride)
        self.act = nn.ReLU(inplace=True)
        self.in_channels, self.mid_channels, self.out_channels = in_channels, mid_channels, out_channels
        self.stride = (stride, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.downsample is None else self.downsample(x)
        y = self.conv3(self.conv2(self.conv1(x)))
        if self.se is not None:
            y = self.se(y)
        return self.act(y + skip)
