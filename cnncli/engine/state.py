"""The resumable training state as one safetensors file (no pickle anywhere).

`train_state.safetensors` holds the network's weights (`model.*`), the optimizer's tensors
(`optim.<param index>.<name>`) and, in its metadata, a JSON document with the optimizer's
param groups, the epoch and step reached, the best metric so far and the metrics history.
Everything needed to resume is in this one file, written atomically, so a crash can never
pair new weights with an old optimizer.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from cnncli.checkpoint import META_KEY, RunDocument, as_document, load_tensors, save_checkpoint
from cnncli.errors import InputError

STATE_KEY = "cnncli_train_state"


def optimizer_to_tensors(optimizer: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict]:
    sd = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict[str, Any]] = {}
    for idx, entry in sd["state"].items():
        for name, value in entry.items():
            if torch.is_tensor(value):
                tensors[f"optim.{idx}.{name}"] = value
            else:
                scalars.setdefault(str(idx), {})[name] = value
    groups = [{k: v for k, v in g.items()} for g in sd["param_groups"]]
    return tensors, {"param_groups": groups, "scalars": scalars}


def optimizer_from_tensors(tensors: dict[str, torch.Tensor], doc: dict) -> dict:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = value
    for idx, values in doc.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(values)
    return {"state": state, "param_groups": doc["param_groups"]}


def save_train_state(path: str | Path, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                     progress: dict[str, Any], meta: RunDocument | Mapping[str, Any],
                     extra_tensors: dict[str, torch.Tensor] | None = None) -> None:
    """The run's document with the progress (and the optimizer's param groups) under `train_state`.

    `extra_tensors` (keys with their own prefix, e.g. the weight average's `ema.*`) ride along."""
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    tensors.update(extra_tensors or {})
    optim_tensors, optim_doc = optimizer_to_tensors(optimizer)
    tensors.update(optim_tensors)
    save_checkpoint(path, tensors, as_document(meta).replace(train_state={"optimizer": optim_doc, **progress}))


def load_train_state(path: str | Path, extras: dict | None = None) -> tuple[dict, dict, RunDocument]:
    """(model state dict, optimizer state dict, checked document) from a train_state file.

    `extras`, when given, receives the tensors that are neither the model's nor the optimizer's."""
    tensors, metadata = load_tensors(path)
    if extras is not None:
        extras.update({k: v for k, v in tensors.items() if not k.startswith(("model.", "optim."))})
    if META_KEY not in metadata:
        raise InputError(f"{path} is not a cnncli training state")
    doc = RunDocument.from_json(metadata[META_KEY], source=path)
    progress = doc.get("train_state")
    if not isinstance(progress, dict) or not isinstance(progress.get("optimizer"), dict) \
            or not isinstance(progress["optimizer"].get("param_groups"), list):
        raise InputError(f"{path} is not a cnncli training state")
    model_sd = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    try:
        optim_sd = optimizer_from_tensors({k: v for k, v in tensors.items() if k.startswith("optim.")},
                                          progress["optimizer"])
    except (ValueError, TypeError, AttributeError):
        raise InputError(f"{path}: corrupt training state (the optimizer's entries)") from None
    return model_sd, optim_sd, doc
