"""Multiply-adds, from PyTorch's own counter `torch.utils.flop_counter.FlopCounterMode`.

MACs = FLOPs / 2, per module through the counter's module hierarchy; convolutions and matrix
products, as is the convention (bias, norms, pooling and activations are not counted).

This is the one module that touches a private torch API. torch wraps every dispatch mode's
`__torch_dispatch__` in `torch._disable_dynamo` (`TorchDispatchMode.__init_subclass__`), whose
first call imports torch._dynamo and sympy: seconds, as long as the rest of `inspect`
together. Nothing is compiled here, so `_skip_dynamo_import` registers the raw function as its
own dynamo-disabled version, the attribute (`__dynamo_disable`) where that wrapper caches it.
Should torch's internals change, the patch does nothing (counting stays right, only slower)
and `private_api_problem()` says what changed; the tests assert that it finds nothing.
"""

from __future__ import annotations

from typing import Any

# the torch internals the patch relies on, named for the message when they change
PRIVATE_API = ("torch.utils.flop_counter._FlopCounterMode.__torch_dispatch__, a "
               "torch._disable_dynamo wrapper (functools.wraps: __wrapped__) that caches "
               "its disabled function in the raw function's `__dynamo_disable` attribute")
_CACHE_ATTRIBUTE = "__dynamo_disable"


def flop_counter():
    """A FlopCounterMode that counts without importing torch._dynamo (see the module doc)."""
    from torch.utils import flop_counter as torch_flop_counter

    _skip_dynamo_import()
    return torch_flop_counter.FlopCounterMode(display=False)


def _skip_dynamo_import() -> bool:
    """Register the raw dispatch function as its own dynamo-disabled version; False where this
    torch does not have the shape the patch expects (then nothing is changed)."""
    if private_api_problem() is not None:
        return False
    from torch.utils import flop_counter as torch_flop_counter

    raw = vars(torch_flop_counter._FlopCounterMode)["__torch_dispatch__"].__wrapped__
    if getattr(raw, _CACHE_ATTRIBUTE, None) is None:
        setattr(raw, _CACHE_ATTRIBUTE, raw)
    return True


def private_api_problem() -> str | None:
    """What no longer matches the torch internals the patch relies on, or None."""
    from torch.utils import flop_counter as torch_flop_counter

    mode = getattr(torch_flop_counter, "_FlopCounterMode", None)
    if not isinstance(mode, type):
        return "torch.utils.flop_counter._FlopCounterMode is gone"
    if "__torch_dispatch__" not in vars(mode):
        return "torch.utils.flop_counter._FlopCounterMode defines no __torch_dispatch__ of its own"
    wrapper = vars(mode)["__torch_dispatch__"]
    raw = getattr(wrapper, "__wrapped__", None)
    if not callable(raw):
        return ("torch.utils.flop_counter._FlopCounterMode.__torch_dispatch__ is no longer a "
                "wrapper (no __wrapped__): torch._disable_dynamo changed")
    code = getattr(wrapper, "__code__", None)
    names = (*code.co_names, *code.co_consts) if code is not None else ()
    if _CACHE_ATTRIBUTE not in names:
        return ("torch._disable_dynamo's wrapper no longer caches in the attribute "
                f"{_CACHE_ATTRIBUTE!r} of the function it wraps")
    return None


def total_macs(counter) -> int:
    """The multiply-adds of the whole forward pass."""
    return int(counter.get_total_flops()) // 2


def module_macs(counts: dict[str, dict[Any, int]], root: str, path: str | None) -> int:
    """The multiply-adds of one module, from `counter.get_flop_counts()`: the counter keys
    modules by the root's class name and the module path ("AlexNet.C1"); path None: the root."""
    key = root if path is None else f"{root}.{path}"
    return int(sum(counts.get(key, {}).values())) // 2
