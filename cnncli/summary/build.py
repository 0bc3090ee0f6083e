"""Building the network for inspection: on PyTorch's `meta` device, then on the CPU.

The network is built on the meta device (no weight initialisation, so even VGG-16 builds
instantly), its weights are then replaced by zero-filled CPU tensors and it runs one forward
pass on the CPU. Why not run on meta: in torch 2.14 many meta kernels are Python references
whose first call imports torch._dynamo and sympy (seconds; more than everything else `inspect`
does), while CPU kernels are C++ and zero-filled memory costs nothing until it is read.
Networks with more than `CPU_WEIGHT_LIMIT` bytes of weights run on the meta device instead;
an operation that cannot run without real data makes the caller rebuild with real weights on
the CPU (`build_on(target, "cpu")`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Networks whose weights fit in this run on the CPU with zero weights; bigger ones on meta.
CPU_WEIGHT_LIMIT = 1 << 30


@dataclass
class Target:
    """A network to inspect, given by name: how to build it, and its own input size."""

    name: str
    build: Any  # device -> BuiltModel (module, spec, info)
    default_input: tuple[int, int, int] | None
    info: Any = None  # the built network's ModelInfo, once built


def declared(target: Target | None) -> tuple[tuple[int, ...] | None, int | None]:
    """The input size and number of classes the built network declares about itself, or None."""
    info = target.info if target is not None else None
    if info is None:
        return None, None
    return tuple(info.input_size), info.num_classes


def resolve_target(name: str, input_size, num_classes) -> Target:
    """A registry name, model file or checkpoint as a Target (a missing name fails here)."""
    from cnncli.checkpoint import is_checkpoint_ref

    in_chans = input_size[0] if input_size else None
    if is_checkpoint_ref(name):
        from cnncli.checkpoint import built_from_meta, read_meta, resolve_checkpoint_path

        meta = read_meta(resolve_checkpoint_path(name))
        spec = dict(meta["model"])
        if num_classes is not None:
            spec["num_classes"] = num_classes
        if in_chans is not None:
            spec["in_chans"] = in_chans
        default = meta.get("input_size")
        return Target(name, lambda device: built_from_meta({**meta, "model": spec}, device=device),
                      tuple(default) if default else None)

    from cnncli.models.registry import build_model, resolve_path_or_name

    resolve_path_or_name(name)

    def build(device):
        return build_model(name, num_classes=num_classes, in_chans=in_chans, device=device)

    return Target(name, build, None)


def build_on(target: Target, device: str):
    """The target's model on `device`, in eval mode; fills in its declared input size."""
    built = target.build(device)
    target.info = built.info
    model = built.module
    model.eval()
    input_size, _ = declared(target)
    if target.default_input is None and input_size is not None:
        target.default_input = input_size
    return model


def build_for_shapes(target: Target):
    """The network on the meta device (no weight initialisation), then, unless its weights
    are huge, on the CPU with zero-filled tensors (see the module doc)."""
    try:
        model = build_on(target, "meta")
    except (NotImplementedError, RuntimeError) as e:  # a constructor that needs real data
        if not meta_unsupported(e):
            raise
        return build_on(target, "cpu")
    if weight_bytes(model) <= CPU_WEIGHT_LIMIT:
        model = zeros_on_cpu(model)
    return model


def weight_bytes(model) -> int:
    """Bytes of the parameters and buffers (each shared tensor once)."""
    tensors = {id(t): t for t in (*model.parameters(), *model.buffers())}.values()
    return sum(t.numel() * t.element_size() for t in tensors)


def zeros_on_cpu(model):
    """Replace every meta parameter and buffer by a zero-filled CPU tensor of the same shape
    (`Module.to_empty` would go through meta's Python kernels, see the module doc)."""
    import torch
    from torch import nn

    replaced: dict[int, tuple] = {}  # id(old) -> (old, new): keeps `old` alive, so ids stay unique

    def zeros(old, parameter: bool):
        entry = replaced.get(id(old))
        if entry is None:
            new = torch.zeros(tuple(old.shape), dtype=old.dtype)
            if parameter:
                new = nn.Parameter(new, requires_grad=old.requires_grad)
            entry = replaced[id(old)] = (old, new)  # tied weights stay tied
        return entry[1]

    for module in model.modules():
        for key, value in module._parameters.items():
            if value is not None and value.is_meta:
                module._parameters[key] = zeros(value, True)
        for key, value in module._buffers.items():
            if value is not None and value.is_meta:
                module._buffers[key] = zeros(value, False)
    return model


def meta_unsupported(error: BaseException) -> bool:
    """Whether an error says the meta device cannot do it (rather than the input is wrong)."""
    return isinstance(error, NotImplementedError) or "meta" in str(error).lower()
