"""One namespace for every network cnncli knows: hand-built ones and all of timm's.

A name is either a hand-built network (`alexnet`, `resnet18`, ...), `timm/<name>` for any
model in `timm.list_models()`, or a path to a TOML model file. `create_model` is the one door
in. The table of hand-built networks is plain data (no torch import), so that `cnncli models
--source hand` answers instantly; `tests/test_models.py` checks every figure in it against the
built network and against an independent reference.
"""

from __future__ import annotations

import fnmatch
import importlib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from cnncli.errors import InputError, UnknownNameError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)
GRAY_MEAN = (0.5,)
GRAY_STD = (0.5,)

TIMM_PREFIX = "timm/"


@dataclass(frozen=True)
class ModelInfo:
    """What a user needs to know about a network before building it."""

    name: str
    source: str  # "hand", "timm" or "file"
    description: str
    input_size: tuple[int, int, int]  # C, H, W
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    params: int | None = None  # at the default input channels and classes
    entrypoint: str = ""  # "module:function" for hand-built networks
    extra: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["input_size"] = list(self.input_size)
        d["mean"] = list(self.mean)
        d["std"] = list(self.std)
        d.pop("entrypoint")
        d.pop("extra")
        return d


def _hand(name, entry, description, input_size, num_classes, params, mean=None, std=None):
    if mean is None:
        mean, std = (GRAY_MEAN, GRAY_STD) if input_size[0] == 1 else (IMAGENET_MEAN, IMAGENET_STD)
    return ModelInfo(
        name=name,
        source="hand",
        description=description,
        input_size=input_size,
        num_classes=num_classes,
        mean=mean,
        std=std,
        params=params,
        entrypoint=f"cnncli.models.{entry}",
    )


_IMAGENET = (3, 224, 224)

# Parameter counts are at the default channels and classes; tests rebuild each network and
# compare them with torchvision / timm or with the paper's table.
HAND_BUILT: dict[str, ModelInfo] = {
    m.name: m
    for m in [
        _hand("lenet5", "lenet:lenet5", "LeNet-5 (LeCun et al. 1998): tanh, average pooling, C5 120, F6 84",
              (1, 32, 32), 10, 61_706),
        _hand("typical_cnn", "typical_cnn:typical_cnn",
              "The seed's typical CNN for Fashion-MNIST: 64-128-256 filters, 3x3 after a 7x7, dense 128-64",
              (1, 28, 28), 10, 1_413_834),
        _hand("alexnet", "alexnet:alexnet",
              "AlexNet as in the seed's table: 227x227 input, 96-256-384-384-256, LRN, dropout 0.5",
              (3, 227, 227), 1000, 62_378_344),
        _hand("googlenet", "googlenet:googlenet",
              "GoogLeNet (Szegedy et al. 2014, table 1): nine inception modules with real 5x5 branches",
              _IMAGENET, 1000, 6_998_552),
        _hand("vgg16", "vgg:vgg16", "VGG-16 (Simonyan & Zisserman 2014): 13 3x3 convolutions, 3 dense layers",
              _IMAGENET, 1000, 138_357_544),
        _hand("resnet18", "resnet:resnet18", "ResNet-18 (He et al. 2015): residual units of two 3x3 convolutions",
              _IMAGENET, 1000, 11_689_512),
        _hand("resnet34", "resnet:resnet34", "ResNet-34 (He et al. 2015), the seed's fig. 19",
              _IMAGENET, 1000, 21_797_672),
        _hand("resnet50", "resnet:resnet50", "ResNet-50 (He et al. 2015): bottleneck units 1x1-3x3-1x1",
              _IMAGENET, 1000, 25_557_032),
        _hand("resnet101", "resnet:resnet101", "ResNet-101 (He et al. 2015): bottleneck units",
              _IMAGENET, 1000, 44_549_160),
        _hand("resnet152", "resnet:resnet152", "ResNet-152 (He et al. 2015): bottleneck units",
              _IMAGENET, 1000, 60_192_808),
        _hand("se_resnet50", "resnet:se_resnet50",
              "SE-ResNet-50 (Hu et al. 2017): ResNet-50 with an SE block in every unit",
              _IMAGENET, 1000, 28_088_024),
        _hand("xception", "xception:xception",
              "Xception (Chollet 2016): depthwise-separable convolutions with residual links",
              (3, 299, 299), 1000, 22_855_952, INCEPTION_MEAN, INCEPTION_STD),
    ]
}


def is_model_file(name: str) -> bool:
    return name.endswith(".toml")


def hand_built_names() -> list[str]:
    return list(HAND_BUILT)


def _timm():
    try:
        import timm
    except ImportError as e:  # pragma: no cover - timm is a dependency
        raise InputError("timm is not installed: pip install timm") from e
    return timm


def _timm_info(arch: str, with_params: bool = False) -> ModelInfo:
    timm = _timm()
    cfg = timm.models.get_pretrained_cfg(arch)
    if cfg is None:
        input_size, mean, std, classes, tag = (3, 224, 224), IMAGENET_MEAN, IMAGENET_STD, 1000, ""
    else:
        input_size = tuple(cfg.input_size)
        mean, std = tuple(cfg.mean), tuple(cfg.std)
        classes = cfg.num_classes or 1000
        tag = cfg.tag or ""
    params = None
    if with_params:
        params = count_params(create_model(TIMM_PREFIX + arch, device="meta"))
    description = f"timm {timm.models.get_arch_name(arch)}" + (f" (default weights: {tag})" if tag else "")
    return ModelInfo(
        name=TIMM_PREFIX + arch,
        source="timm",
        description=description,
        input_size=input_size,
        num_classes=classes,
        mean=mean,
        std=std,
        params=params,
    )


def get_model_info(name: str) -> ModelInfo:
    """Describe a network by name without building it (timm needs its import, not a build)."""
    if name in HAND_BUILT:
        return HAND_BUILT[name]
    if name.startswith(TIMM_PREFIX):
        arch = name[len(TIMM_PREFIX):]
        if not _timm().is_model(arch):
            raise UnknownNameError("timm model", arch, _timm().list_models(),
                                   "see 'cnncli models --source timm'")
        return _timm_info(arch)
    if is_model_file(name):
        from cnncli.models.model_file import model_file_info

        return model_file_info(name)
    raise unknown_model(name)


def unknown_model(name: str) -> UnknownNameError:
    known = hand_built_names()
    err = UnknownNameError("model", name, known, "see 'cnncli models'")
    if not err.suggestions:
        # maybe the user meant a timm model without the prefix: only then pay for timm's import
        try:
            import timm

            if timm.is_model(name):
                err = UnknownNameError("model", name, [TIMM_PREFIX + name], "timm models take the 'timm/' prefix")
        except ImportError:  # pragma: no cover
            pass
    return err


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
        archs = _timm().list_models(timm_pattern or "")
        found += [_timm_info(a, with_params=with_params) for a in archs]
    return found


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def create_model(
    name: str,
    num_classes: int | None = None,
    in_chans: int | None = None,
    pretrained: bool = False,
    device: str | None = None,
    **kwargs: Any,
):
    """Build any registered network. `device="meta"` builds shapes only (instant, no memory)."""
    import torch

    ctx = torch.device(device) if device else _nullcontext()
    if name.startswith(TIMM_PREFIX):
        timm = _timm()
        arch = name[len(TIMM_PREFIX):]
        if not timm.is_model(arch):
            get_model_info(name)  # raises with suggestions
        args: dict[str, Any] = dict(kwargs)
        if num_classes is not None:
            args["num_classes"] = num_classes
        if in_chans is not None:
            args["in_chans"] = in_chans
        with ctx:
            model = timm.create_model(arch, pretrained=pretrained, **args)
        info = _timm_info(arch)
        if in_chans is not None:
            info = _replace(info, input_size=(in_chans, *info.input_size[1:]))
    elif is_model_file(name):
        from cnncli.models.model_file import create_model_from_file

        with ctx:
            model, info = create_model_from_file(name, num_classes=num_classes, in_chans=in_chans)
    else:
        info = get_model_info(name)
        module_name, fn_name = info.entrypoint.split(":")
        fn = getattr(importlib.import_module(module_name), fn_name)
        args = dict(kwargs)
        args["num_classes"] = info.num_classes if num_classes is None else num_classes
        args["in_chans"] = info.input_size[0] if in_chans is None else in_chans
        with ctx:
            model = fn(**args)
        info = _replace(info, input_size=(args["in_chans"], *info.input_size[1:]))
        if pretrained:
            raise InputError(f"'{name}' has no pretrained weights of its own; "
                             "pass --weights FILE or use a timm/ model")
    # What a checkpoint needs to rebuild this exact network (see cnncli.checkpoint).
    spec = {"name": name, "num_classes": num_classes if num_classes is not None else info.num_classes,
            "in_chans": info.input_size[0], "kwargs": kwargs}
    if is_model_file(name):
        spec["model_file"] = getattr(model, "cnncli_model_file", None)
    model.cnncli_spec = spec
    model.cnncli_info = info
    return model


def _replace(info: ModelInfo, **changes) -> ModelInfo:
    from dataclasses import replace

    return replace(info, **changes)


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def resolve_path_or_name(name: str) -> str:
    """A TOML model file is named by its path; anything else is a registry name."""
    if is_model_file(name) and not Path(name).is_file():
        raise InputError(f"model file not found: {name}")
    return name
