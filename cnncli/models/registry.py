"""One namespace for every network cnncli knows: hand-built ones and all of timm's.

A name is either a hand-built network (`alexnet`, `resnet18`, ...), `timm/<name>` for any
model in `timm.list_models()`, or a path to a TOML model file. This module dispatches over the
three sources (`cnncli.models.hand`, `cnncli.models.timm_source`, `cnncli.models.model_file`),
none of which imports it back: a model file's backbone is built through the factory given
here. `build_model` is the one door in (`create_model` when only the nn.Module is wanted). The
table of hand-built networks is plain data (no torch import), so that `cnncli models --source
hand` answers instantly; `tests/test_models.py` checks every figure in it against the built
network and against an independent reference.
"""

from __future__ import annotations

import contextlib
import copy
import fnmatch
from dataclasses import replace
from pathlib import Path
from typing import Any

from cnncli.errors import InputError, UnknownNameError
from cnncli.models import hand, timm_source
from cnncli.models.hand import HAND_BUILT
from cnncli.models.info import (  # noqa: F401 - the registry's public names, as before
    GRAY_MEAN,
    GRAY_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    INCEPTION_MEAN,
    INCEPTION_STD,
    TIMM_PREFIX,
    BuiltModel,
    ModelInfo,
    count_params,
    is_model_file,
    is_timm_name,
    timm_arch,
)


def hand_built_names() -> list[str]:
    return list(HAND_BUILT)


def get_model_info(name: str) -> ModelInfo:
    """Describe a network by name without building it (timm needs its import, not a build)."""
    if name in HAND_BUILT:
        return HAND_BUILT[name]
    if is_timm_name(name):
        arch = timm_arch(name)
        if not timm_source.is_model(arch):
            raise timm_source.unknown(arch)
        return timm_source.info(arch)
    if is_model_file(name):
        from cnncli.models import model_file

        return model_file.model_file_info(name, backbones=_backbones())
    raise unknown_model(name)


def unknown_model(name: str) -> UnknownNameError:
    """The error for a name in no source, suggesting the closest hand-built and timm names
    (timm's imported only here, on the error path: 'vgg19x' -> 'timm/vgg19'). A path is no
    misspelt name: it is said what the file is, or that it is not there."""
    import os

    if os.sep in name or name.endswith((".txt", ".png", ".jpg", ".jpeg", ".onnx", ".pt", ".xml", ".json")) \
            or os.path.exists(name):
        takes = "a registry name, a .toml model file, or a cnncli run or .safetensors checkpoint"
        if not os.path.exists(name):
            return UnknownNameError("model", name, [], f"no such file or folder either; give {takes}")
        if name.endswith((".onnx", ".pt", ".xml")):
            return UnknownNameError("model", name, [], "an exported file; give the checkpoint it was "
                                    "exported from (or predict/benchmark the export)")
        return UnknownNameError("model", name, [], f"a file that is not a network; give {takes}")
    known = hand_built_names()
    try:
        import timm

        if timm.is_model(name):  # a timm model without the prefix
            return UnknownNameError("model", name, [TIMM_PREFIX + name], "timm models take the 'timm/' prefix")
        known = [*known, *(TIMM_PREFIX + n for n in timm.list_models())]
    except ImportError:  # pragma: no cover
        pass
    return UnknownNameError("model", name, known, "see 'cnncli models'")


def list_models(pattern: str | None = None, source: str = "all", with_params: bool = False) -> list[ModelInfo]:
    """Models whose name matches a glob (a plain word matches as a substring)."""
    if pattern and not any(c in pattern for c in "*?["):
        pattern = f"*{pattern}*"
    found: list[ModelInfo] = []
    if source in ("hand", "all"):
        found += [m for n, m in HAND_BUILT.items() if not pattern or fnmatch.fnmatch(n, pattern)]
    if source in ("timm", "all"):
        timm_pattern = pattern or ""
        if timm_pattern.startswith(TIMM_PREFIX):
            timm_pattern = timm_pattern[len(TIMM_PREFIX):]
        elif timm_pattern.startswith("*" + TIMM_PREFIX):
            timm_pattern = "*" + timm_pattern[len(TIMM_PREFIX) + 1:]
        archs = timm_source.list_archs(timm_pattern or "")
        found += [timm_source.info(a, with_params=with_params) for a in archs]
    return found


def build_model(
    name: str,
    num_classes: int | None = None,
    in_chans: int | None = None,
    pretrained: bool = False,
    device: str | None = None,
    **kwargs: Any,
) -> BuiltModel:
    """Build any registered network: the module, the spec a checkpoint stores to rebuild it, and
    its ModelInfo. `device="meta"` builds shapes only (instant, no memory)."""
    import torch

    if str(device) != "meta":  # price it on the meta device first: a size from a file or flag
        _price(name, num_classes, in_chans, kwargs)
    ctx = torch.device(device) if device else contextlib.nullcontext()
    model_file_doc = None
    if is_timm_name(name):
        arch = timm_arch(name)
        if not timm_source.is_model(arch):
            get_model_info(name)  # raises with suggestions
        with ctx:
            model = timm_source.create(arch, num_classes, in_chans, pretrained, **kwargs)
        info = timm_source.info(arch)
        if in_chans is not None:
            info = replace(info, input_size=(in_chans, *info.input_size[1:]))
    elif is_model_file(name):
        from cnncli.models import model_file

        model_file_doc = model_file.load_spec(name)
        with ctx:
            model, info = model_file.create_model_from_spec(model_file_doc, num_classes=num_classes,
                                                            in_chans=in_chans, source=name, backbones=_backbones())
    else:
        info = get_model_info(name)
        classes = info.num_classes if num_classes is None else num_classes
        chans = info.input_size[0] if in_chans is None else in_chans
        with ctx:
            model = hand.create(info, classes, chans, **kwargs)
        info = replace(info, input_size=(chans, *info.input_size[1:]))
        if pretrained:
            raise InputError(f"'{name}' has no pretrained weights of its own; "
                             "pass --weights FILE or use a timm/ model")
    # What a checkpoint needs to rebuild this exact network (see cnncli.checkpoint).
    spec = {"name": name, "num_classes": num_classes if num_classes is not None else info.num_classes,
            "in_chans": info.input_size[0], "kwargs": kwargs}
    if model_file_doc is not None:
        spec["model_file"] = copy.deepcopy(model_file_doc)
    return BuiltModel(model, spec, info)


def _price(name: str, num_classes, in_chans, kwargs) -> None:
    """Refuse a network whose weights cost more than the memory budget (cnncli.cost)."""
    from cnncli.cost import build_priced

    label = name + "".join(f" with {k}={v}" for k, v in (("num_classes", num_classes), ("in_chans", in_chans))
                           if v is not None)
    build_priced(lambda: build_model(name, num_classes, in_chans, False, "meta", **kwargs).module, label)


def create_model(
    name: str,
    num_classes: int | None = None,
    in_chans: int | None = None,
    pretrained: bool = False,
    device: str | None = None,
    **kwargs: Any,
):
    """The nn.Module of `build_model` (for callers that need nothing else)."""
    return build_model(name, num_classes, in_chans, pretrained, device, **kwargs).module


def build_model_file(doc: dict[str, Any], num_classes: int | None = None, in_chans: int | None = None,
                     source: str = "") -> tuple[Any, ModelInfo]:
    """The network of a parsed model file (the document a checkpoint stores): (module, ModelInfo).
    `source` names the file in error messages."""
    from cnncli.cost import build_priced
    from cnncli.models import model_file

    build_priced(lambda: model_file.create_model_from_spec(doc, num_classes=num_classes, in_chans=in_chans,
                                                           source=source, backbones=_backbones())[0],
                 source or "the model file")
    return model_file.create_model_from_spec(doc, num_classes=num_classes, in_chans=in_chans, source=source,
                                             backbones=_backbones())


def _backbones():
    """What a model file's [backbone] is described and built with: this registry's own doors."""
    from cnncli.models.model_file.backbone import BackboneFactory

    return BackboneFactory(describe=get_model_info, create=create_model)


def resolve_path_or_name(name: str) -> str:
    """A TOML model file is named by its path; anything else is a registry name."""
    if is_model_file(name) and not Path(name).is_file():
        raise InputError(f"model file not found: {name}")
    return name
