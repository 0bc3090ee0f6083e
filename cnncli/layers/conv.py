"""Convolution (seed: "Convolutional Layer", equation 2): 'same' for any stride, the seed's
conv (+ batch norm) (+ activation) layer, and Xception's depthwise-separable convolution."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cnncli.geometry import pair
from cnncli.layers.activations import make_activation
from cnncli.layers.padding import _check_padding, _is_static_same, _same_pad_arg


class Conv2dSame(nn.Conv2d):
    """nn.Conv2d whose padding is 'valid', 'same' (TF semantics, any stride) or pixels.

    Its parameters are exactly nn.Conv2d's (`weight`, `bias`), so state dicts load either way.
    'same' uses the convolution's own symmetric padding when that is right for every input
    size (stride 1, odd kernel) and otherwise pads each input with F.pad (like timm's
    `Conv2dSame`): PyTorch's own padding='same' refuses stride > 1.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding="same",
                 dilation=1, groups: int = 1, bias: bool = True):
        kernel, strides, dil = pair(kernel_size, "kernel"), pair(stride, "stride"), pair(dilation, "dilation")
        spec = _check_padding(padding)
        self.dynamic_same = spec == "same" and not _is_static_same(kernel, strides, dil)
        if spec == "same":
            static = (0, 0) if self.dynamic_same else tuple((k - 1) * d // 2 for k, d in zip(kernel, dil))
        elif spec == "valid":
            static = (0, 0)
        else:
            static = spec
        super().__init__(in_channels, out_channels, kernel, strides, static, dil, groups, bias)
        self.padding_spec = spec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dynamic_same:
            x = F.pad(x, _same_pad_arg(x, self.kernel_size, self.stride, self.dilation))
        return super().forward(x)


class ConvLayer(nn.Module):
    """A convolutional layer as the seed's tables list it: conv (+ batch norm) (+ activation).

    `padding` is "valid" (no zeros; what does not fit is dropped), "same" (ceil(in/stride)
    outputs, TF/Keras placement, any stride) or a number of pixels (PyTorch style, used where a
    network must match torchvision exactly). The bias defaults to on without batch norm and off
    with it (the norm's shift replaces it).
    """

    layer_type = "Convolution"
    atomic = True

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding="valid",
                 activation: str | None = "relu", batch_norm: bool = False, bias: bool | None = None,
                 groups: int = 1, dilation=1):
        super().__init__()
        if bias is None:
            bias = not batch_norm
        self.conv = Conv2dSame(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        self.bn = nn.BatchNorm2d(out_channels) if batch_norm else None
        self.act = make_activation(activation)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = self.conv.kernel_size
        self.stride = self.conv.stride
        self.padding = self.conv.padding_spec
        self.activation = None if activation in (None, "none", "linear", "identity") else activation
        self.batch_norm = batch_norm
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return self.act(x)


class SeparableConv2d(nn.Module):
    """Depthwise-separable convolution (Xception): a per-channel k x k convolution, then a 1x1
    convolution that mixes channels. Parameters: in*k*k + in*out (no bias by default)."""

    layer_type = "Separable convolution"
    atomic = True

    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, stride=1, padding="same",
                 bias: bool = False, dilation=1):
        super().__init__()
        self.depthwise = Conv2dSame(in_channels, in_channels, kernel_size, stride, padding, dilation,
                                    groups=in_channels, bias=bias)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=bias)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = self.depthwise.kernel_size
        self.stride = self.depthwise.stride
        self.padding = self.depthwise.padding_spec
        self.activation = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))
