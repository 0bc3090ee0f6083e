"""Reading a weights file a user hands us: safetensors, or a .pth/.bin state dict.

`.pth` files are read with `torch.load(weights_only=True)`, which refuses any pickled object
that is not plain tensors and containers; the refusal becomes one clear line.
"""

from __future__ import annotations

from pathlib import Path

import torch

from cnncli.errors import InputError


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
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle.UnpicklingError, RuntimeError, EOFError, zipfile errors...
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"{path}: refused or unreadable as a state dict ({first[:200]}); "
                         "only plain tensors are loaded, never code") from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if not isinstance(obj, dict) or not all(isinstance(k, str) and torch.is_tensor(v) for k, v in obj.items()):
        raise InputError(f"{path}: not a state dict (a mapping of names to tensors)")
    return obj


def load_initial_weights(model: torch.nn.Module, path: str | Path) -> dict:
    """Load a full state dict into a network, reporting every key that does not fit."""
    from cnncli.checkpoint import load_state_strict

    state = read_state_dict(path)
    load_state_strict(model, state, path)
    return {"kind": "file", "path": str(path)}
