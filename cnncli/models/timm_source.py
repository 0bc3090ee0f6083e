"""timm's networks as a source of the registry: `timm/<arch>` for any `timm.list_models()` name.
timm is imported on first use only."""

from __future__ import annotations

from typing import Any

from cnncli.errors import InputError, UnknownNameError
from cnncli.models.info import IMAGENET_MEAN, IMAGENET_STD, TIMM_PREFIX, ModelInfo, count_params


def timm():
    try:
        import timm
    except ImportError as e:  # pragma: no cover - timm is a dependency
        raise InputError("timm is not installed: pip install timm") from e
    return timm


def is_model(arch: str) -> bool:
    return timm().is_model(arch)


def unknown(arch: str) -> UnknownNameError:
    return UnknownNameError("timm model", arch, timm().list_models(), "see 'cnncli models --source timm'")


def info(arch: str, with_params: bool = False) -> ModelInfo:
    t = timm()
    cfg = t.models.get_pretrained_cfg(arch)
    if cfg is None:
        input_size, mean, std, classes, tag = (3, 224, 224), IMAGENET_MEAN, IMAGENET_STD, 1000, ""
        crop_pct = interpolation = None
    else:
        crop_pct = getattr(cfg, "crop_pct", None)  # the eval crop of streaming datasets (data/stream.py)
        interpolation = getattr(cfg, "interpolation", None)  # and the resizes' (bicubic for most weights)
        input_size = tuple(cfg.input_size)
        mean, std = tuple(cfg.mean), tuple(cfg.std)
        classes = cfg.num_classes or 1000
        tag = cfg.tag or ""
    params = None
    if with_params:
        import torch

        with torch.device("meta"):
            params = count_params(create(arch))
    description = f"timm {t.models.get_arch_name(arch)}" + (f" (default weights: {tag})" if tag else "")
    return ModelInfo(
        name=TIMM_PREFIX + arch,
        source="timm",
        description=description,
        input_size=input_size,
        num_classes=classes,
        mean=mean,
        std=std,
        params=params,
        extra={k: v for k, v in (("crop_pct", crop_pct), ("interpolation", interpolation)) if v},
    )


def list_archs(pattern: str) -> list[str]:
    return timm().list_models(pattern)


def create(arch: str, num_classes: int | None = None, in_chans: int | None = None, pretrained: bool = False,
           **kwargs: Any):
    args: dict[str, Any] = dict(kwargs)
    if num_classes is not None:
        args["num_classes"] = num_classes
    if in_chans is not None:
        args["in_chans"] = in_chans
    return timm().create_model(arch, pretrained=pretrained, **args)
