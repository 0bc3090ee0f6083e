"""The run format: safetensors files that describe themselves.

A cnncli checkpoint is a plain safetensors file whose metadata header has one key, `cnncli`,
holding a JSON document with everything needed to rebuild and use the network:

    {"format": 1, "kind": "model",
     "model": {"name": "lenet5", "num_classes": 10, "in_chans": 1, "kwargs": {},
               "model_file": null},          # a TOML network's whole layer list when it has one
     "num_classes": 10, "class_names": [...], "input_size": [1, 32, 32],
     "mean": [...], "std": [...], "dataset": "fashion-mnist", "epoch": 7,
     "metrics": {...}, "versions": {...}, "recipe": {...}, "weights_source": ...}

The document is a `RunDocument` (cnncli.checkpoint_doc): one typed value, built by
`build_document`, checked value by value when read. Reading is defensive (a weights file is
data, never code): the header length is bounded, and every tensor's dtype, shape and byte range
are checked against the file before anything is allocated, so a truncated or hostile file is
refused with one clear line.
"""

from __future__ import annotations

import json
import os
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cnncli.checkpoint_doc import (  # noqa: F401 - the document is part of this module's interface
    FORMAT_VERSION,
    ModelSpec,
    RunDocument,
    as_document,
    build_document,
)
from cnncli.errors import InputError
from cnncli.fileio import atomic_write_bytes

META_KEY = "cnncli"
MAX_HEADER_BYTES = 100 * 1024 * 1024  # safetensors' own limit

_DTYPE_SIZES = {
    "BOOL": 1, "U8": 1, "I8": 1, "F8_E5M2": 1, "F8_E4M3": 1,
    "I16": 2, "U16": 2, "F16": 2, "BF16": 2,
    "I32": 4, "U32": 4, "F32": 4,
    "I64": 8, "U64": 8, "F64": 8,
}


def read_header(path: str | os.PathLike) -> tuple[dict[str, Any], dict[str, str]]:
    """Validate a safetensors file's header against its size; return (tensors, metadata)."""
    path = Path(path)
    with _open_for_reading(path) as f:
        return _read_valid_header(path, f)


def _open_for_reading(path: Path):
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise InputError(f"file not found: {path}") from None
    except IsADirectoryError:
        raise InputError(f"{path} is a folder, not a safetensors file") from None
    except PermissionError:
        raise InputError(f"cannot read {path}: permission denied") from None
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror or e}") from None


def _read_valid_header(path: Path, f) -> tuple[dict[str, Any], dict[str, str]]:
    # the size comes from the open file, not the name: a writer may replace the name meanwhile
    size = os.fstat(f.fileno()).st_size
    head = f.read(8)
    if len(head) < 8:
        raise InputError(f"{path}: not a safetensors file (only {len(head)} bytes)")
    (n,) = struct.unpack("<Q", head)
    if n > MAX_HEADER_BYTES or n + 8 > size:
        raise InputError(f"{path}: not a safetensors file or truncated (header of {n} bytes "
                         f"in a file of {size})")
    raw = f.read(n)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):  # deep nesting: RecursionError
        raise InputError(f"{path}: corrupt safetensors header (not JSON)") from None
    if not isinstance(header, dict):
        raise InputError(f"{path}: corrupt safetensors header")
    metadata = header.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(v, str) for v in metadata.values()):
        raise InputError(f"{path}: corrupt safetensors metadata")
    data_len = size - 8 - n
    spans = []
    for name, t in header.items():
        if not isinstance(t, dict) or set(t) != {"dtype", "shape", "data_offsets"}:
            raise InputError(f"{path}: corrupt entry for tensor '{name}'")
        dtype, shape, offsets = t["dtype"], t["shape"], t["data_offsets"]
        if dtype not in _DTYPE_SIZES:
            raise InputError(f"{path}: tensor '{name}' has unknown dtype {dtype!r}")
        if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
            raise InputError(f"{path}: tensor '{name}' has an invalid shape")
        if not (isinstance(offsets, list) and len(offsets) == 2
                and all(isinstance(o, int) for o in offsets) and 0 <= offsets[0] <= offsets[1]):
            raise InputError(f"{path}: tensor '{name}' has invalid data offsets")
        count = 1
        for d in shape:
            count *= d
        if count * _DTYPE_SIZES[dtype] != offsets[1] - offsets[0]:
            raise InputError(f"{path}: tensor '{name}' shape {shape} does not match its {offsets[1] - offsets[0]} bytes")
        if offsets[1] > data_len:
            raise InputError(f"{path}: truncated (tensor '{name}' ends past the end of the file)")
        spans.append(tuple(offsets))
    spans.sort()
    for (_a0, a1), (b0, _b1) in zip(spans, spans[1:]):
        if b0 < a1:
            raise InputError(f"{path}: corrupt safetensors file (tensors overlap)")
    return header, metadata


def load_tensors(path: str | os.PathLike, device: str = "cpu") -> tuple[dict, dict[str, str]]:
    """All tensors and the raw metadata of a validated safetensors file.

    The file is opened once and read whole through that one handle. safetensors' own
    `load_file` maps the file by its name a second time, so a reader racing a writer that
    atomically replaces the file (rank 0 rewriting model.safetensors while another rank, or
    `cnncli eval` in a second terminal, loads it) could pair one version's header with the
    other's bytes and get shifted, wrong weights without any error.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load

    path = Path(path)
    with _open_for_reading(path) as f:
        _, metadata = _read_valid_header(path, f)  # refuses a hostile file before reading the rest
        f.seek(0)
        try:
            data = f.read()
        except OSError as e:  # an I/O error of the disk, not a wrong file: still one line
            raise InputError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        tensors = load(data)
    except (SafetensorError, ValueError) as e:
        raise InputError(f"{path}: unreadable safetensors file ({e})") from None
    del data
    if str(device) != "cpu":
        tensors = {k: v.to(device) for k, v in tensors.items()}
    return tensors, metadata


def read_meta(path: str | os.PathLike) -> RunDocument:
    """The cnncli document of a checkpoint, or a clear error for a file from another tool."""
    _, metadata = read_header(path)
    return _parse_meta(path, metadata)


def _parse_meta(path, metadata: dict[str, str]) -> RunDocument:
    if META_KEY not in metadata:
        raise InputError(
            f"{path} has no cnncli metadata (network name, classes, input size); it is plain "
            "weights from another tool: pass it as --weights FILE together with a model name"
        )
    return RunDocument.from_json(metadata[META_KEY], source=path)


def checkpoint_bytes(state_dict: dict, doc: RunDocument | Mapping[str, Any], dtype: str | None = None) -> bytes:
    """A checkpoint as bytes: the tensors (floating ones cast to `dtype` when given) and the document."""
    from safetensors.torch import save

    doc = as_document(doc)
    if dtype is not None:
        import torch

        target = getattr(torch, dtype)
        state_dict = {k: v.to(target) if v.is_floating_point() else v for k, v in state_dict.items()}
    tensors = {k: v.detach().contiguous().cpu() for k, v in state_dict.items()}
    return save(_untie(tensors), metadata={META_KEY: doc.to_json(), "format": "pt"})


def save_checkpoint(path: str | os.PathLike, state_dict: dict, meta: RunDocument | Mapping[str, Any]) -> Path:
    """Write weights plus the cnncli document atomically (a mapping is checked as a document first)."""
    return atomic_write_bytes(path, checkpoint_bytes(state_dict, meta))


def _untie(tensors: dict) -> dict:
    # safetensors refuses tensors that share memory; clone the later aliases
    seen: dict[tuple, str] = {}
    out = {}
    for k, v in tensors.items():
        key = (v.data_ptr(), v.numel(), v.dtype) if v.numel() else None
        out[k] = v.clone() if key is not None and key in seen else v
        if key is not None:
            seen.setdefault(key, k)
    return out


def load_checkpoint(path: str | os.PathLike, device: str = "cpu") -> tuple[dict, RunDocument]:
    """(state_dict, cnncli metadata) of a cnncli checkpoint."""
    tensors, metadata = load_tensors(path, device=device)
    return tensors, _parse_meta(path, metadata)


def resolve_checkpoint_path(path: str | os.PathLike) -> Path:
    """A run directory means its best weights, `model.safetensors`."""
    path = Path(path)
    if path.is_dir():
        candidate = path / "model.safetensors"
        if not candidate.exists():
            raise InputError(f"{path} is a folder without model.safetensors; is it a cnncli run?")
        return candidate
    if not path.exists():
        raise InputError(f"file not found: {path}")
    return path


def is_checkpoint_ref(name: str) -> bool:
    """Does a MODEL argument name a checkpoint or run directory rather than a registry name?"""
    p = Path(name)
    return name.endswith(".safetensors") or (p.is_dir() and (p / "model.safetensors").exists())


def model_from_meta(meta: RunDocument | Mapping[str, Any], device: str | None = None):
    """Rebuild the (untrained) network a checkpoint describes (a document or its mapping)."""
    return built_from_meta(meta, device).module


def built_from_meta(meta: RunDocument | Mapping[str, Any], device: str | None = None):
    """`model_from_meta` with the spec and ModelInfo: a `cnncli.models.BuiltModel`."""

    spec = meta.model.to_dict() if isinstance(meta, RunDocument) else ModelSpec.from_dict(meta["model"]).to_dict()
    name = spec["name"]
    built = _built_from_spec(spec, name, device)
    input_size = meta.get("input_size")
    if input_size:  # the input it declares is priced too (cnncli.cost)
        from cnncli.cost import check_input

        check_input(built.module, input_size, label="the input size the checkpoint declares,")
    return built


def _built_from_spec(spec: dict, name: str, device):
    from cnncli.models.registry import BuiltModel, build_model

    try:
        if spec.get("model_file"):
            from cnncli.models.registry import build_model_file

            model, info = build_model_file(spec["model_file"], num_classes=spec.get("num_classes"),
                                           in_chans=spec.get("in_chans"), source=name)
            return BuiltModel(model, dict(spec), info)
        return build_model(name, num_classes=spec.get("num_classes"), in_chans=spec.get("in_chans"),
                           device=device, **(spec.get("kwargs") or {}))
    except (TypeError, ValueError, RuntimeError) as e:  # arguments the constructor does not take
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise InputError(f"the checkpoint's network '{name}' cannot be rebuilt from its metadata: {reason}") from None


def load_model(path: str | os.PathLike, device: str = "cpu"):
    """Rebuild a network from a checkpoint file alone; returns (model, meta) in eval mode."""
    path = resolve_checkpoint_path(path)
    state, meta = load_checkpoint(path)
    model = model_from_meta(meta)
    load_state_strict(model, state, path)
    model.to(device).eval()
    return model, meta


def describe_mismatch(own: dict, state: dict, own_keys=None, file_keys=None) -> str | None:
    """What keeps a state dict from fitting a network, in one phrase; None when it fits.

    `own_keys` / `file_keys` restrict the comparison (finetune compares the base only).
    """
    own_keys = list(own) if own_keys is None else list(own_keys)
    file_keys = list(state) if file_keys is None else list(file_keys)
    missing = [k for k in own_keys if k not in state]
    unexpected = [k for k in file_keys if k not in own]
    reshaped = [k for k in own_keys if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    parts = []
    if reshaped:
        k = reshaped[0]
        parts.append(f"{len(reshaped)} with other shapes (e.g. {k}: {tuple(state[k].shape)} in the file, "
                     f"{tuple(own[k].shape)} in the network)")
    if missing:
        parts.append(f"{len(missing)} missing from the file (e.g. {_first(missing)})")
    if unexpected:
        parts.append(f"{len(unexpected)} not in the network (e.g. {_first(unexpected)})")
    return "; ".join(parts) or None


def _first(keys: list[str]) -> str:
    return keys[0] + (f" and {len(keys) - 1} more" if len(keys) > 1 else "")


def load_state_strict(model, state: dict, source) -> None:
    """Load weights, naming the keys that do not fit instead of ignoring them."""
    problem = describe_mismatch(model.state_dict(), state)
    if problem:
        raise InputError(f"weights in {source} do not fit the network: {problem}")
    check_finite(state, source)
    model.load_state_dict(state, strict=True)


def check_finite(state: dict, source) -> None:
    """Weights are data, checked like any number from a file: NaN or infinity anywhere would
    give null probabilities and metrics without a word, so the file is refused in one line."""
    import torch

    for name, tensor in state.items():
        if torch.is_tensor(tensor) and tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise InputError(f"{source}: the weights hold NaN or infinite values ('{name}'); the file is "
                             "damaged or comes from a run that diverged")


def versions() -> dict[str, str]:
    import platform

    import torch

    from cnncli import __version__

    out = {"cnncli": __version__, "torch": torch.__version__, "python": platform.python_version()}
    try:
        import torchvision

        out["torchvision"] = torchvision.__version__
    except ImportError:  # pragma: no cover
        pass
    return out
