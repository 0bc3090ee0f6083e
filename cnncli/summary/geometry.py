"""The geometry of a row: kernel, stride and padding, read from the module's own attributes."""

from __future__ import annotations

from cnncli.summary.roles import role
from cnncli.summary.rows import pair_or_none


def geometry(module) -> tuple[list[int] | None, list[int] | None, str | list[int] | None]:
    """(kernel, stride, padding) of a row's module; None where it has none (a norm, a block).
    A pooling layer that gives no stride strides by its kernel, as torch's do."""
    src = _geometry_source(module)
    kernel = pair_or_none(getattr(src, "kernel_size", None))
    stride = pair_or_none(getattr(src, "stride", None))
    if kernel is not None and stride is None:
        stride = kernel
    padding = _padding(src) if kernel is not None else None
    return kernel, stride, padding


def dilation_and_ceil(module) -> tuple[list[int], bool]:
    """([dh, dw], ceil_mode) of a row's kernel: the spacing of its taps (1: adjacent) and
    whether a pooling window that does not fit is kept (ceil) rather than dropped."""
    src = _geometry_source(module)
    dilation = pair_or_none(getattr(src, "dilation", None))
    if dilation is None:  # cnncli's ConvLayer/SeparableConv2d keep theirs on the inner conv
        for sub in src.modules():
            dilation = pair_or_none(getattr(sub, "dilation", None))
            if dilation is not None:
                break
    return dilation or [1, 1], bool(getattr(src, "ceil_mode", False))


def _geometry_source(module):
    """The module whose kernel/stride/padding describe a row: itself, or for a foreign
    conv+norm+act wrapper (timm ConvNormAct, torchvision BasicConv2d) its first conv/pool."""
    if getattr(module, "kernel_size", None) is not None or getattr(module, "stride", None) is not None:
        return module
    if getattr(type(module), "layer_type", None) is None and role(module) == "atomic":
        for sub in module.modules():
            if sub is not module and getattr(sub, "kernel_size", None) is not None:
                return sub
    return module


def _padding(module) -> str | list[int] | None:
    if type(module).__name__ in ("Conv2dSame", "MaxPool2dSame", "AvgPool2dSame"):
        return "same"  # timm's TF-style layers pad per input size, their .padding is 0
    value = getattr(module, "padding_spec", None)
    if value is None:
        value = getattr(module, "padding", None)
    if value is None or callable(value):
        return None
    if isinstance(value, str):
        return value.lower()
    pixels = pair_or_none(value)
    if pixels is None:
        return None
    if pixels == [0, 0] and not getattr(module, "ceil_mode", False):
        return "valid"  # no zeros added and what does not fit is dropped: the seed's 'valid'
    return pixels


def effective_stride(x, y) -> list[int] | None:
    """A composite block's stride, read from its input and output maps (e.g. 28x28 -> 14x14: 2)."""
    if x is None or y is None or x.dim() != 4 or y.dim() != 4:
        return None
    return [max(1, round(i / o)) for i, o in zip(x.shape[-2:], y.shape[-2:])]
