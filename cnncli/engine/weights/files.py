"""Reading a weights file a user hands us, never running code from it.

safetensors, a cnncli run (its `model.safetensors`), or a .pth/.bin state dict read with
`torch.load(weights_only=True)`, which refuses any pickled object that is not plain tensors and
containers; the refusal becomes one clear line.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

import torch

from cnncli.errors import InputError


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors file, a cnncli run directory or a plain .pth/.bin state dict."""
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
