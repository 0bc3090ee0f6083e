"""Sizes of feature maps: padding and output-size arithmetic, torch-free.

One set of helpers for both the layers that run (`cnncli.layers`) and the checks that run
before anything is built (`cnncli.models.model_file.schema`), so that a model file's shapes
are computed exactly as its layers will produce them.
"""

from __future__ import annotations

from collections.abc import Sequence

from cnncli.errors import InputError

Pair = tuple[int, int]

# a whitening layer (cnncli.layers.whiten) eigen-decomposes a (C*k*k)^2 matrix: its patches stay small
MAX_WHITEN_PATCH = 1024


def pair(v: int | Sequence[int], what: str = "value") -> Pair:
    """An int or a pair of ints as (height, width)."""
    if isinstance(v, int):
        return (v, v)
    v = tuple(int(x) for x in v)
    if len(v) != 2:
        raise InputError(f"{what} must be an int or a pair of ints, got {v}")
    return v  # type: ignore[return-value]


def same_padding(in_size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """Zeros to add before and after one spatial axis for TF/Keras 'same' padding.

    The seed: with 'same' the layer has ceil(in / stride) units and the zeros are spread "as
    evenly as possible"; when the total is odd the extra zero goes at the bottom/right (as in
    TensorFlow, timm's `pad_same`). Works for any stride, unlike PyTorch's padding='same'.
    """
    out = -(-in_size // stride)  # ceil division on ints (also works on symbolic sizes)
    total = max((out - 1) * stride + (kernel - 1) * dilation + 1 - in_size, 0)
    before = total // 2
    return before, total - before


def output_size(in_size: int, kernel: int, stride: int, padding: str | int = "valid", dilation: int = 1) -> int:
    """Units along one axis after a convolution or pooling window.

    'same': in / stride rounded up; 'valid' (or 0): rows/cols that do not fit are dropped;
    a number: that many zeros on both sides first. May be < 1 when the input is too small.
    """
    if padding == "same":
        return -(-in_size // stride)
    pixels = 0 if padding == "valid" else padding
    return (in_size + 2 * pixels - dilation * (kernel - 1) - 1) // stride + 1
