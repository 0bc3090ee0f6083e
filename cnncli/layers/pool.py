"""Pooling (seed: "Pooling Layer", fig. 11; GoogLeNet's global average pooling)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cnncli.geometry import Pair, pair
from cnncli.layers.padding import _check_padding, _is_static_same, _same_pad_arg


class _Pool(nn.Module):
    atomic = True

    def __init__(self, kernel_size, stride=None, padding="valid"):
        super().__init__()
        self.kernel_size = pair(kernel_size, "kernel")
        self.stride = self.kernel_size if stride is None else pair(stride, "stride")
        self.padding = _check_padding(padding)
        self._static_same = self.padding == "same" and _is_static_same(self.kernel_size, self.stride, (1, 1))
        self.activation = None

    def _pixels(self) -> Pair:
        if self.padding == "valid":
            return (0, 0)
        if self.padding == "same":  # only reached when static
            return (self.kernel_size[0] // 2, self.kernel_size[1] // 2)
        return self.padding  # type: ignore[return-value]

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding!r}"


class MaxPool(_Pool):
    """Max pooling. 'same' pads with -inf so that padded cells never win (TF semantics);
    'valid' drops what does not fit; pixels pad like nn.MaxPool2d."""

    layer_type = "Max pooling"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding == "same" and not self._static_same:
            x = F.pad(x, _same_pad_arg(x, self.kernel_size, self.stride, (1, 1)), value=-math.inf)
            return F.max_pool2d(x, self.kernel_size, self.stride)
        return F.max_pool2d(x, self.kernel_size, self.stride, self._pixels())


class AvgPool(_Pool):
    """Average pooling. 'same' averages only the real cells of each window (TF semantics:
    padded zeros are not counted); 'valid' drops what does not fit; pixels pad like
    nn.AvgPool2d (zeros counted)."""

    layer_type = "Average pooling"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding == "same":
            if self._static_same:
                return F.avg_pool2d(x, self.kernel_size, self.stride, self._pixels(), count_include_pad=False)
            pad = _same_pad_arg(x, self.kernel_size, self.stride, (1, 1))
            summed = F.avg_pool2d(F.pad(x, pad), self.kernel_size, self.stride)
            real = torch.ones((1, 1, *x.shape[-2:]), dtype=x.dtype, device=x.device)
            fraction = F.avg_pool2d(F.pad(real, pad), self.kernel_size, self.stride)
            return summed / fraction
        return F.avg_pool2d(x, self.kernel_size, self.stride, self._pixels())


class GlobalAvgPool(nn.Module):
    """Mean of each feature map (GoogLeNet, ResNet, SE block): (N, C, H, W) -> (N, C), or
    (N, C, 1, 1) with flatten=False."""

    layer_type = "Global average pooling"
    atomic = True

    def __init__(self, flatten: bool = True):
        super().__init__()
        self.flatten = flatten

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3), keepdim=not self.flatten)


class AdaptiveAvgPool(nn.AdaptiveAvgPool2d):
    """Average pooling to a fixed grid (VGG's 7x7 before its dense layers, as torchvision)."""

    layer_type = "Adaptive average pooling"
    atomic = True
