"""Device choice (`--device auto` is cuda, then mps, then cpu) and CPU thread settings."""

from __future__ import annotations

import torch

from cnncli.errors import InputError


def resolve_device(name: str = "auto", local_rank: int | None = None) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError("--device cuda asked for, but this machine has no usable CUDA device")
        if name == "cuda" and local_rank is not None:
            name = f"cuda:{local_rank}"
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InputError("--device mps asked for, but MPS is not available here")
    return torch.device(name)


def set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)
