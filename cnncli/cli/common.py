"""Option helpers shared by the subcommands (light: no torch at import time)."""

from __future__ import annotations

from enum import Enum, StrEnum

from cnncli.errors import InputError


class Device(StrEnum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"


class Optimizer(StrEnum):
    sgd = "sgd"
    adamw = "adamw"


class Schedule(StrEnum):
    cosine = "cosine"
    onecycle = "onecycle"
    step = "step"
    constant = "constant"


def enum_value(value):
    return value.value if isinstance(value, Enum) else value


def parse_size(text: str, what: str = "--input") -> tuple[int, int, int]:
    """'3x224x224' (or '3,224,224') -> (3, 224, 224)."""
    parts = text.lower().replace(",", "x").split("x")
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        dims = ()
    if len(dims) != 3 or min(dims) <= 0:
        raise InputError(f"{what} must be CxHxW with positive integers, like 3x224x224; got '{text}'")
    return dims  # type: ignore[return-value]
