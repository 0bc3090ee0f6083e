"""How a file's tensors fit a network: its classifier apart, and names from other projects.

A backbone file may carry a classifier for other classes (ImageNet's 1000): every other tensor
must fit exactly (a missing, extra or reshaped tensor is an error naming it); the classifier is
loaded only when its shape fits, and the load report says what happened to it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from cnncli.checkpoint import check_finite, describe_mismatch
from cnncli.errors import InputError


# ---------------------------------------------------------------- the classifier and the base
def classifier_names(model: torch.nn.Module) -> list[str]:
    """Module names of the network's classifier: what `finetune` replaces, the rest is the base.

    Taken from the network itself (`get_classifier()`, timm's and the hand-built networks'
    API; a tuple for timm's distilled heads), by module identity, never by name guessing.
    """
    get = getattr(model, "get_classifier", None)
    heads = get() if callable(get) else None
    if heads is None:
        name = getattr(model, "classifier_name", None) or (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
        if not name:
            raise InputError(f"cannot tell the classifier of {type(model).__name__}: it has no get_classifier()")
        names = [name] if isinstance(name, str) else list(name)
        return [n for n in names if n]
    heads = heads if isinstance(heads, (tuple, list)) else (heads,)
    ids = {id(h) for h in heads}
    return [n for n, m in model.named_modules() if n and id(m) in ids]


def is_classifier_key(key: str, heads: list[str]) -> bool:
    return any(key == h or key.startswith(h + ".") for h in heads)


def load_backbone_state(model: torch.nn.Module, state: dict[str, torch.Tensor], source: str,
                        name: str | None = None) -> dict[str, Any]:
    """Load every tensor of the base exactly; the classifier only when its shape fits.

    Returns a report for the run's record: how many tensors were loaded and what happened to
    the classifier ("loaded", "kept new: ..." or "not in the file").
    """
    own = model.state_dict()
    heads = classifier_names(model)
    base_own = [k for k in own if not is_classifier_key(k, heads)]
    base_file = [k for k in state if not is_classifier_key(k, heads)]
    problem = describe_mismatch(own, state, base_own, base_file)
    if problem:
        name = name or type(model).__name__
        raise InputError(f"weights in {source} do not fit {name}: {problem}")
    head_own = {k: own[k] for k in own if is_classifier_key(k, heads)}
    head_file = {k: state[k] for k in state if is_classifier_key(k, heads)}
    to_load = {k: state[k] for k in base_own}
    check_finite(to_load, source)
    if not head_file:
        classifier = "not in the file (new)"
    elif set(head_file) == set(head_own) and all(tuple(head_file[k].shape) == tuple(head_own[k].shape) for k in head_own):
        to_load.update(head_file)
        classifier = "loaded"
    else:
        shape_of = lambda d: ", ".join(f"{tuple(v.shape)}" for k, v in d.items() if k.endswith("weight"))  # noqa: E731
        classifier = f"not loaded: {shape_of(head_file) or 'other tensors'} in the file, {shape_of(head_own)} in the network"
    result = model.load_state_dict(to_load, strict=False)
    leftover = [k for k in result.missing_keys if not is_classifier_key(k, heads)]
    assert not leftover and not result.unexpected_keys, (leftover, result.unexpected_keys)
    return {"tensors_loaded": len(to_load), "classifier": classifier}


def classes_in_state(model: torch.nn.Module, state: dict[str, torch.Tensor]) -> int | None:
    """The number of classes of the file's own classifier (rows of its weight), if it has a plain one."""
    for head in classifier_names(model):
        weight = state.get(f"{head}.weight")
        if weight is not None and weight.dim() == 2:
            return int(weight.shape[0])
    return None


# ---------------------------------------------------------------- names from other projects
_KINDS = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")


def _kind(name: str) -> str:
    leaf = name.rsplit(".", 1)[-1]
    return leaf if leaf in _KINDS else "other"


def map_in_order(source: dict[str, torch.Tensor], target: dict[str, Any]) -> dict[str, torch.Tensor]:
    """Rename `source`'s tensors to `target`'s names one-to-one, in order.

    For two implementations of the same network whose state dicts list the same tensors in
    the same order under other names (efficientnet_pytorch vs timm). Each pair must agree in
    shape and in kind (weight, bias, running mean, ...), and the counts must be equal, so a
    file of another network cannot slip through: the error names the first disagreement.
    `target` maps names to tensors or shapes.
    """
    if len(source) != len(target):
        raise InputError(f"cannot map {len(source)} tensors onto a network with {len(target)}: "
                         "not the same network")
    mapped = {}
    for i, ((s_name, tensor), (t_name, t_value)) in enumerate(zip(source.items(), target.items())):
        t_shape = tuple(t_value.shape) if hasattr(t_value, "shape") else tuple(t_value)
        if tuple(tensor.shape) != t_shape or _kind(s_name) != _kind(t_name):
            raise InputError(f"tensor {i + 1} of {len(source)} does not map: {s_name} {tuple(tensor.shape)} in the file vs "
                             f"{t_name} {t_shape} in the network")
        mapped[t_name] = tensor
    return mapped


def map_same_names(source: dict[str, torch.Tensor], target: dict[str, Any]) -> dict[str, torch.Tensor]:
    return dict(source)


MAPPINGS: dict[str, Callable[[dict, dict], dict]] = {"in_order": map_in_order, "same_names": map_same_names}
