"""A network used as a model file's backbone: the probe that learns its feature-map shape and
the parameters `forward_features` never uses (on the meta device), the surgery that removes
those, and timm's coarse stage groups. Shared with `cnncli.finetune`.

The networks themselves come from a factory given by the caller (the registry's
`create_model`), so nothing here imports the registry.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from cnncli.errors import CnnError, InputError
from cnncli.models.info import ModelInfo
from cnncli.models.model_file.schema import _prefix, _shape_str


@dataclass(frozen=True)
class BackboneFactory:
    """What a model file's [backbone] is resolved with: `describe(name) -> ModelInfo` (no build)
    and `create(name, in_chans=..., device=...) -> nn.Module` (fresh weights)."""

    describe: Callable[[str], ModelInfo]
    create: Callable[..., nn.Module]

    def feature_shape(self, name: str, input_size: tuple[int, int, int], source: str = "") -> tuple[int, ...]:
        return backbone_feature_shape(self.create, name, input_size, source)

    def build(self, name: str, input_size: tuple[int, int, int]) -> nn.Module:
        """The backbone without its classifier and without what `forward_features` never uses."""
        backbone = self.create(name, in_chans=input_size[0])
        _, unused = _probe_backbone(self.create, name, tuple(input_size))
        return _without_unused(backbone, unused)


@functools.lru_cache(maxsize=32)
def _probe_backbone(create: Callable[..., nn.Module], model_name: str,
                    input_size: tuple[int, int, int]) -> tuple[tuple[int, ...], frozenset[str]]:
    """(feature-map shape, names of parameters forward_features never uses) of a backbone, from a
    build and a forward/backward on the meta device: shapes only, no memory, no weights."""
    # gradients are needed even when a caller runs under no_grad or inference_mode
    with torch.inference_mode(False), torch.enable_grad():
        backbone = create(model_name, in_chans=input_size[0], device="meta").eval()
        if hasattr(backbone, "reset_classifier"):
            backbone.reset_classifier(0)
        named = [(n, p) for n, p in backbone.named_parameters() if p.requires_grad]
        out = backbone.forward_features(torch.empty(1, *input_size, device="meta"))
        grads = torch.autograd.grad(out.sum(), [p for _, p in named], allow_unused=True) if named else []
    unused = frozenset(n for (n, _), g in zip(named, grads) if g is None)
    return tuple(out.shape[1:]), unused


def backbone_feature_shape(create: Callable[..., nn.Module], model_name: str, input_size: tuple[int, int, int],
                           source: str = "") -> tuple[int, ...]:
    """The shape of a backbone's `forward_features` output for one image (built on the meta
    device: no memory, no weights)."""
    try:
        return _probe_backbone(create, model_name, tuple(input_size))[0]
    except CnnError:
        raise
    except (RuntimeError, ValueError, AssertionError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"{_prefix(source)}[backbone] {model_name} does not take a "
                         f"{_shape_str(input_size)} input ({first}); change [model] input") from None



def _timm_groups(model: nn.Module) -> list[tuple[str, list[nn.Module]]]:
    """timm's coarse parameter groups (stem, each block stage, the final conv) as modules:
    for each group, the largest modules whose parameters all belong to it."""
    from timm.models import group_parameters

    matcher = getattr(model, "group_matcher", None)
    if matcher is None:
        return [("all", [model])]
    groups = []
    for params in group_parameters(model, matcher(coarse=True)).values():
        members = set(params)
        chosen: list[tuple[str, nn.Module]] = []
        for name, module in model.named_modules():
            if not name or any(name.startswith(c + ".") for c, _ in chosen):
                continue
            own = [f"{name}.{p}" for p, _ in module.named_parameters()]
            if own and all(p in members for p in own):
                chosen.append((name, module))
        # parameters of the model itself (a ViT's cls_token, pos_embed) in a holder sharing them
        loose = [p for p in params if "." not in p]
        if loose:
            holder = nn.Module()
            for p in loose:
                holder.register_parameter(p, getattr(model, p))
            chosen.insert(0, ("+".join(loose), holder))
        if chosen:
            groups.append(("+".join(n for n, _ in chosen), [m for _, m in chosen]))
    return groups


def _without_unused(backbone: nn.Module, unused: frozenset[str]) -> nn.Module:
    """Replace the backbone's modules that `forward_features` never uses (its own head: the
    classifier's hidden layers, timm's conv_head of some families) by identities, so that no
    dead parameter is counted, trained, saved or trips DistributedDataParallel."""
    if hasattr(backbone, "reset_classifier"):
        backbone.reset_classifier(0)
    for name, module in list(backbone.named_modules()):
        if not name:
            continue
        params = [f"{name}.{p}" for p, _ in module.named_parameters()]
        if params and all(p in unused for p in params):
            try:
                backbone.get_submodule(name)
            except AttributeError:  # already inside a module replaced above
                continue
            parent, _, child = name.rpartition(".")
            setattr(backbone.get_submodule(parent) if parent else backbone, child, nn.Identity())
    return backbone

