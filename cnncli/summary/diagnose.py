"""An input the network cannot take: one line that names the layer where it stops fitting.

"input 3x32x32 is too small for alexnet: at layer S4 (Max pooling), the feature map is 2x2
but the kernel is 3x3; the smallest square input that works is 3x227x227". The smallest
working input comes from a binary search on plain forward passes of zero images.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from cnncli.errors import InputError
from cnncli.summary.geometry import geometry
from cnncli.summary.roles import layer_type_of
from cnncli.summary.rows import format_size

if TYPE_CHECKING:
    from cnncli.summary.trace import ForwardFailed


def input_error(name, model, input_size, default_input, failed: ForwardFailed) -> BaseException:
    """The error to raise for a forward pass that failed: an InputError saying what does not
    fit where, or the original error when the model's own input fails (a bug, not the input)."""
    if default_input is not None and tuple(input_size) == tuple(default_input):
        return failed.error  # the model's own input fails: a bug, not the user's input
    module, path = failed.module, failed.path
    where = ""
    if module is not None and path:
        where = f"at layer {path} ({layer_type_of(module)})"
    kernel = geometry(module)[0] if module is not None else None
    shape = failed.input_shape
    hw = list(shape[-2:]) if shape and len(shape) >= 4 else None
    in_features = _in_features(module) if module is not None else None
    message = str(failed.error).strip().splitlines()[0].rstrip(".") if str(failed.error).strip() \
        else type(failed.error).__name__
    collapsed = any(s in message for s in ("too small", "can't be greater", "Kernel size"))
    if kernel and hw and any(h < k for h, k in zip(hw, kernel)):
        collapsed = True
        detail = f"the feature map is {format_size(hw)} but the kernel is {format_size(kernel)}"
    elif in_features and shape and shape[-1] != in_features:
        detail = f"it takes {in_features:,} features but gets {shape[-1]:,}"
        if failed.previous:
            detail += f" ({failed.previous[0]} outputs {format_size(failed.previous[1])})"
    elif hw:
        detail = f"on a {format_size(hw)} feature map: {message}"
    else:
        detail = message
    head = f"input {format_size(input_size)} is too small for {name}" if collapsed \
        else f"input {format_size(input_size)} does not fit {name}"
    text = f"{head}: {where + ', ' if where else ''}{detail}"
    hint = _working_input_hint(model, input_size, default_input)
    return InputError(text + (f"; {hint}" if hint else ""))


def _in_features(module) -> int | None:
    for sub in module.modules():
        value = getattr(sub, "in_features", None)
        if isinstance(value, int):
            return value
    return None


def _working_input_hint(model, input_size, default_input) -> str:
    """The smallest square input that runs (binary search on plain forwards), or the default."""
    if default_input is None:
        return ""
    import torch

    from cnncli.summary.trace import device_of

    channels = input_size[0]
    device = device_of(model)

    def runs(h, w) -> bool:
        try:
            with torch.no_grad():
                model(torch.zeros((1, channels, h, w), device=device))
            return True
        except Exception:  # noqa: BLE001 - any failure means "does not run"
            return False

    hi = max(default_input[1:])
    if not runs(hi, hi):
        return ""
    if max(input_size[1:]) > hi:
        return f"its default input {format_size((channels, *default_input[1:]))} works"
    lo = 1
    while lo < hi:
        mid = (lo + hi) // 2
        if runs(mid, mid):
            hi = mid
        else:
            lo = mid + 1
    return f"the smallest square input that works is {format_size((channels, hi, hi))}"
