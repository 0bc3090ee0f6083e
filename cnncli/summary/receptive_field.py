"""Receptive fields, propagated through the operations that actually run.

`ReceptiveFieldMode` is a `TorchFunctionMode`: it sees every conv/pool/linear call with its real
kernel, stride and dilation and carries a field (rf_h, rf_w, jump_h, jump_w) per tensor, in
input pixels, from the input to the output of each call:

    r_out = r_in + (k_eff - 1) * j_in,   j_out = j_in * s,   k_eff = (k - 1) * d + 1

Element-wise operations and concatenation take the largest field of their inputs (ignoring
inputs broadcast over space, such as an SE block's per-channel weights); dense layers on a
vector, global pooling and attention cover the whole image. A call whose arguments it cannot
read leaves its output's field unknown rather than guessing.

This module imports torch: import it only where a forward pass runs.
"""

from __future__ import annotations

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_leaves

from cnncli.summary.rows import pair_or_none

Field = tuple[float, float, float, float]  # rf_h, rf_w, jump_h, jump_w

_SPATIAL_REDUCTIONS = {"mean", "sum", "amax", "amin", "max", "min", "std", "var", "logsumexp",
                       "norm", "prod", "nanmean", "nansum"}
_MIXING = {"matmul", "__matmul__", "__rmatmul__", "bmm", "mm", "baddbmm", "einsum",
           "scaled_dot_product_attention"}
_CONVOLUTIONS = ("conv2d", "conv_transpose2d")
_POOLING = ("max_pool2d", "max_pool2d_with_indices", "avg_pool2d", "lp_pool2d")
_ADAPTIVE_POOLING = ("adaptive_avg_pool2d", "adaptive_max_pool2d")


def _arg(args, kwargs, index, name, default=None):
    """A call's argument, given by keyword or by position."""
    if name in kwargs:
        return kwargs[name]
    return args[index] if len(args) > index else default


class ReceptiveFieldMode(TorchFunctionMode):
    """Carries (rf_h, rf_w, jump_h, jump_w) from tensor to tensor for an image of `image_hw`.

    Mark the input image with `mark(x, (1.0, 1.0, 1.0, 1.0))`, run the forward inside the
    mode, then read any tensor's field with `get(t)` (None: not derived from the image).
    """

    def __init__(self, image_hw: tuple[int, int]):
        super().__init__()
        self.full = (float(image_hw[0]), float(image_hw[1]))
        self.fields: dict[int, tuple] = {}  # id(tensor) -> (tensor, field); keeps it alive

    def mark(self, tensor, value: Field) -> None:
        self.fields[id(tensor)] = (tensor, value)

    def get(self, tensor) -> Field | None:
        entry = self.fields.get(id(tensor))
        return entry[1] if entry is not None and entry[0] is tensor else None

    def clear(self) -> None:
        self.fields.clear()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        outputs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        if outputs:
            inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
            tracked = [(t, f) for t in inputs if (f := self.get(t)) is not None]
            if tracked:
                try:
                    value = self._propagate(getattr(func, "__name__", ""), args, kwargs,
                                            tracked, outputs[0])
                except (TypeError, ValueError, IndexError, ZeroDivisionError):
                    value = None  # an unusual call signature: leave the field unknown
                if value is not None:
                    for t in outputs:
                        self.mark(t, value)
        return out

    # ------------------------------------------------------------------ the rules per operation

    def _propagate(self, name, args, kwargs, tracked, out) -> Field | None:
        first_tensor, first = tracked[0]
        name = name.lstrip("_") if name.startswith("_max_pool") else name
        if name in _CONVOLUTIONS:
            return self._convolution(name, args, kwargs, first)
        if name in _POOLING:
            return self._pooling(name, args, kwargs, first)
        if name in _ADAPTIVE_POOLING:
            return self._adaptive_pooling(first_tensor, first, out)
        if name == "linear":
            # on a vector every unit sees everything; on (N, ..., C) it is per position
            return self._global(first) if first_tensor.dim() <= 2 else first
        if name in _MIXING:
            spatial = [t for t, _ in tracked if t.dim() > 2]
            if len(tracked) >= 2 or not spatial:
                return self._global(self._widest(tracked, out))
            return first
        if name in _SPATIAL_REDUCTIONS and len(tracked) == 1:
            return self._reduction(args, kwargs, first_tensor, first, out)
        if name == "interpolate":
            if out.dim() >= 3 and first_tensor.dim() >= 3:
                scale = [o / i for o, i in zip(out.shape[-2:], first_tensor.shape[-2:])]
                return (first[0], first[1], first[2] / scale[0], first[3] / scale[1])
            return first
        return self._widest(tracked, out)

    def _convolution(self, name, args, kwargs, first) -> Field:
        weight = _arg(args, kwargs, 1, "weight")
        kernel = list(weight.shape[-2:])
        stride = pair_or_none(_arg(args, kwargs, 3, "stride", 1)) or [1, 1]
        dilation = pair_or_none(_arg(args, kwargs, 5, "dilation", 1)) or [1, 1]
        if name == "conv_transpose2d":
            stride = [1.0 / s for s in stride]
            dilation = pair_or_none(_arg(args, kwargs, 7, "dilation", 1)) or [1, 1]
        return self._window(first, kernel, stride, dilation)

    def _pooling(self, name, args, kwargs, first) -> Field:
        index = 2 if name == "lp_pool2d" else 1
        kernel = pair_or_none(_arg(args, kwargs, index, "kernel_size"))
        stride = pair_or_none(_arg(args, kwargs, index + 1, "stride")) or kernel
        dilation = [1, 1]
        if name.startswith("max_pool"):
            dilation = pair_or_none(_arg(args, kwargs, 4, "dilation", 1)) or [1, 1]
        return self._window(first, kernel, stride, dilation)

    def _adaptive_pooling(self, first_tensor, first, out) -> Field:
        if out.dim() < 2:
            return self._global(first)
        in_hw, out_hw = first_tensor.shape[-2:], out.shape[-2:]
        if tuple(out_hw) == (1, 1):
            return self._global(first)
        kernel, stride = [], []
        for i, o in zip(in_hw, out_hw):  # torch's windows: [floor(j*i/o), ceil((j+1)*i/o))
            starts = [(j * i) // o for j in range(o)]
            ends = [-(-((j + 1) * i) // o) for j in range(o)]
            kernel.append(max(e - s for s, e in zip(starts, ends)))
            stride.append(i / o)
        return self._window(first, kernel, stride, [1, 1])

    def _reduction(self, args, kwargs, first_tensor, first, out) -> Field:
        dim = _arg(args, kwargs, 1, "dim")
        if not isinstance(dim, (int, tuple, list)) or isinstance(dim, bool):
            if dim is None and out.dim() <= 1:
                return self._global(first)  # the whole tensor reduced
            return first
        ndim = first_tensor.dim()
        dims = {d % ndim for d in ([dim] if isinstance(dim, int) else dim)}
        if (ndim == 4 and len(dims & {1, 2, 3}) >= 2) or (ndim == 3 and 1 in dims):
            return self._global(first)  # pooling over the spatial axes / tokens
        return first

    @staticmethod
    def _widest(tracked, out) -> Field:
        # inputs broadcast over space (an SE block's per-channel weights, a scalar gate)
        # scale the map but do not widen what each unit sees through the conv path
        same = [f for t, f in tracked
                if t.dim() >= 2 and out.dim() >= 2 and tuple(t.shape[-2:]) == tuple(out.shape[-2:])]
        fields = same or [f for _, f in tracked]
        return tuple(max(f[i] for f in fields) for i in range(4))

    def _global(self, field_: Field) -> Field:
        full = self.full
        return (max(field_[0], full[0]), max(field_[1], full[1]), full[0], full[1])

    @staticmethod
    def _window(field_: Field, kernel, stride, dilation) -> Field:
        rf_h, rf_w, jump_h, jump_w = field_
        eff = [(k - 1) * d + 1 for k, d in zip(kernel, dilation)]
        return (rf_h + (eff[0] - 1) * jump_h, rf_w + (eff[1] - 1) * jump_w,
                jump_h * stride[0], jump_w * stride[1])
