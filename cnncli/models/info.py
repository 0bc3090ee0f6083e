"""What describes a network without building it: `ModelInfo`, normalisation constants and the
rules for names. Dependency-free (no torch, no timm): every source and caller may import it.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

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


@dataclass(frozen=True)
class BuiltModel:
    """A network as `cnncli.models.build_model` returns it: the nn.Module, the spec a checkpoint
    stores to rebuild exactly this network, and its ModelInfo (at the channels it was built for)."""

    module: Any  # torch.nn.Module
    spec: dict[str, Any]
    info: ModelInfo


def is_model_file(name: str) -> bool:
    """A TOML model file is named by its path."""
    return name.endswith(".toml")


def is_timm_name(name: str) -> bool:
    return name.startswith(TIMM_PREFIX)


def timm_arch(name: str) -> str:
    """'timm/resnet18' -> 'resnet18'."""
    return name[len(TIMM_PREFIX):] if is_timm_name(name) else name


def default_norm(channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(mean, std) for an input of this many channels when nothing else says."""
    if channels == 1:
        return GRAY_MEAN, GRAY_STD
    if channels == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    return (0.5,) * channels, (0.5,) * channels


def count_params(model) -> int:
    """Parameters of an nn.Module (any object with `.parameters()`)."""
    return sum(p.numel() for p in model.parameters())
