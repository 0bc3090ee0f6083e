"""'valid', 'same' or pixels: checking a padding, and 'same' at run time (seed: "Padding", fig. 10;
the arithmetic is in cnncli.geometry)."""

from __future__ import annotations

import torch

from cnncli.errors import InputError
from cnncli.geometry import Pair, pair, same_padding

PADDINGS = ("valid", "same")


def _check_padding(padding) -> str | Pair:
    if isinstance(padding, str):
        if padding.lower() not in PADDINGS:
            raise InputError(f"unknown padding '{padding}'; use 'valid', 'same' or a number of pixels")
        return padding.lower()
    return pair(padding, "padding")


def _is_static_same(kernel: Pair, stride: Pair, dilation: Pair) -> bool:
    """'same' padding is the same symmetric amount for every input size only at stride 1
    with an odd effective kernel; then the conv/pool's own padding argument does the job."""
    return all(s == 1 and ((k - 1) * d) % 2 == 0 for k, s, d in zip(kernel, stride, dilation))


def _same_pad_arg(x: torch.Tensor, kernel: Pair, stride: Pair, dilation: Pair) -> list[int]:
    """F.pad's (left, right, top, bottom) for 'same' padding of x's last two axes."""
    top, bottom = same_padding(x.shape[-2], kernel[0], stride[0], dilation[0])
    left, right = same_padding(x.shape[-1], kernel[1], stride[1], dilation[1])
    return [left, right, top, bottom]
