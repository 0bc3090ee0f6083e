"""The checkpoint's metadata inside exported files: ONNX `metadata_props` (key `cnncli` holds
the whole document; a few flat keys are there for other tools) and the TorchScript archive's
extra file `cnncli.json`; and reading it back (predict, compare, benchmark)."""

from __future__ import annotations

import io
import json
import os
import warnings
from typing import Any

from cnncli.errors import InputError
from cnncli.export.runtime import require_onnx

INPUT_NAME = "input"
OUTPUT_NAME = "logits"
TORCHSCRIPT_META_FILE = "cnncli.json"


def onnx_metadata(meta) -> dict[str, str]:
    """ONNX metadata_props: the whole cnncli document plus flat keys other tools can read."""
    from cnncli.checkpoint import as_document

    meta = as_document(meta)
    props = {"cnncli": meta.to_json()}
    flat = {
        "model": meta.get("model", {}).get("name"),
        "num_classes": meta.get("num_classes"),
        "class_names": meta.get("class_names"),
        "input_size": meta.get("input_size"),
        "mean": meta.get("mean"),
        "std": meta.get("std"),
        "dataset": meta.get("dataset"),
        "input_name": INPUT_NAME,
        "output": f"{OUTPUT_NAME} (unnormalized scores; softmax gives probabilities)",
    }
    for key, value in flat.items():
        if value is not None:
            props[key] = value if isinstance(value, str) else json.dumps(value)
    return props


def read_onnx_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The cnncli document stored in an ONNX file cnncli exported (used by predict)."""
    onnx = require_onnx()
    try:
        model = onnx.load(str(path), load_external_data=False)
    except FileNotFoundError:
        raise InputError(f"file not found: {path}") from None
    except Exception as e:
        raise InputError(f"{path}: not a readable ONNX file ({str(e).splitlines()[0][:160]})") from None
    props = {p.key: p.value for p in model.metadata_props}
    if "cnncli" not in props:
        raise InputError(f"{path} has no cnncli metadata (classes, input size, mean/std); "
                         "export it with 'cnncli export' or predict from the checkpoint")
    from cnncli.checkpoint import RunDocument

    meta = RunDocument.from_json(props["cnncli"], source=path)  # checked as a checkpoint's is
    if not meta.get("input_size"):
        raise InputError(f"{path}: cnncli metadata without an input size")
    return meta


def read_torchscript_meta(data: bytes | str | os.PathLike) -> dict[str, Any]:
    import torch

    extra = {TORCHSCRIPT_META_FILE: ""}
    source = io.BytesIO(data) if isinstance(data, bytes) else str(data)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated upstream
        torch.jit.load(source, map_location="cpu", _extra_files=extra)
    return json.loads(extra[TORCHSCRIPT_META_FILE])
