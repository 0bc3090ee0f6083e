"""The resumable training state as one safetensors file (no pickle anywhere).

`train_state.safetensors` holds the network's weights (`model.*`), the optimizer's tensors
(`optim.<param index>.<name>`) and, in its metadata, a JSON document with the optimizer's
param groups, the epoch and step reached, the best metric so far and the metrics history.
Everything needed to resume is in this one file, written atomically, so a crash can never
pair new weights with an old optimizer.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from cnncli.checkpoint import load_tensors, save_checkpoint
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
                     progress: dict[str, Any], meta: dict[str, Any]) -> None:
    tensors = {f"model.{k}": v for k, v in model.state_dict().items()}
    optim_tensors, optim_doc = optimizer_to_tensors(optimizer)
    tensors.update(optim_tensors)
    doc = dict(meta)
    doc["train_state"] = {"optimizer": optim_doc, **progress}
    save_checkpoint(path, tensors, doc)


def load_train_state(path: str | Path) -> tuple[dict, dict, dict[str, Any]]:
    """(model state dict, optimizer state dict, document) from a train_state file."""
    tensors, metadata = load_tensors(path)
    try:
        doc = json.loads(metadata["cnncli"])
        progress = doc["train_state"]
    except (KeyError, TypeError, json.JSONDecodeError, RecursionError):
        raise InputError(f"{path} is not a cnncli training state") from None
    model_sd = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    optim_sd = optimizer_from_tensors({k: v for k, v in tensors.items() if k.startswith("optim.")},
                                      progress["optimizer"])
    return model_sd, optim_sd, doc
