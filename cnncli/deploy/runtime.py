"""Run an exported file without torch: ONNX (fp32 or int8) on onnxruntime, OpenVINO IR on OpenVINO.

`open_runtime(path)` gives a `RuntimeModel`: the cnncli document the export stored in the file
(classes, input size, mean/std) and `run(batch)`, float32 numpy (N, C, H, W) -> logits (N, K).
Nothing here imports torch (or the `onnx` package, whose import alone takes longer than the
whole prediction): onnxruntime reads the metadata props itself, OpenVINO keeps the document
in the model's runtime info under the key `cnncli`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cnncli.errors import InputError, RuntimeFailure

DEPLOY_HINT = "pip install 'cnncli[deploy]'"
OPENVINO_META_KEY = "cnncli"
RUNTIME_SUFFIXES = (".onnx", ".xml")


@dataclass
class RuntimeModel:
    run: Callable[[Any], Any]  # float32 numpy (N, C, H, W) -> numpy logits (N, K)
    meta: dict[str, Any]
    kind: str  # "onnx", "onnx-int8" or "openvino"
    path: str
    handle: Any = field(default=None, repr=False)  # the session / compiled model


def is_runtime_file(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(RUNTIME_SUFFIXES)


def require_openvino():
    try:
        import openvino
    except ImportError:
        raise RuntimeFailure(f"openvino is not installed: {DEPLOY_HINT}") from None
    return openvino


def _check_meta(path, text: str | None) -> dict[str, Any]:
    if not text:
        raise InputError(f"{path} has no cnncli metadata (classes, input size, mean/std); "
                         "export it with 'cnncli export' or predict from the checkpoint")
    try:
        meta = json.loads(text)
    except json.JSONDecodeError:
        raise InputError(f"{path}: corrupt cnncli metadata") from None
    if not isinstance(meta, dict) or not meta.get("input_size"):
        raise InputError(f"{path}: cnncli metadata without an input size")
    check_document(path, meta)
    if not meta.get("class_names"):
        meta["class_names"] = [str(i) for i in range(int(meta.get("num_classes") or 0))]
    return meta


def check_document(path, meta: dict[str, Any]) -> None:
    """An export's metadata goes through the checkpoint's checks (types, ranges, finiteness,
    class names for the classes, mean/std per channel) and its input through the cost check."""
    from cnncli.checkpoint_doc import RunDocument
    from cnncli.cost import check_input_shape

    doc = RunDocument.from_dict(meta if isinstance(meta.get("model"), dict)
                                else {**meta, "model": {"name": "export"}}, path)
    for key in ("mean", "std"):
        if doc.input_size and getattr(doc, key) is None:
            raise InputError(f"{path}: cnncli metadata without '{key}'")
    check_input_shape(doc.input_size, label=f"{path}: its input")


def check_graph_input(path, declared, actual) -> None:
    """The graph's own input shape (N, C, H, W; names for dynamic axes) must be the metadata's."""
    dims = list(actual)[1:] if actual is not None else []
    if len(dims) == 3 and all(isinstance(d, int) for d in dims) and tuple(dims) != tuple(declared):
        raise InputError(f"{path}: the graph takes {'x'.join(map(str, dims))} images but its cnncli "
                         f"metadata says {'x'.join(map(str, declared))}; export it again")


def check_graph_output(path, meta: dict[str, Any], actual) -> None:
    """The graph's scores per image (N, K) must be one per class the metadata names."""
    dims = list(actual)[1:] if actual is not None else []
    names = meta.get("class_names") or []
    if len(dims) == 1 and isinstance(dims[0], int) and names and dims[0] != len(names):
        raise InputError(f"{path}: the graph gives {dims[0]} scores per image but its cnncli metadata "
                         f"names {len(names)} classes; export it again")


def open_onnx(path: str | os.PathLike, threads: int | None = None) -> RuntimeModel:
    from cnncli.export import onnx_session  # export.py imports no torch at module level

    if not Path(path).is_file():
        raise InputError(f"file not found: {path}")
    session = onnx_session(str(path), threads=threads, cpu_only=True)
    props = session.get_modelmeta().custom_metadata_map
    meta = _check_meta(path, props.get("cnncli"))
    name = session.get_inputs()[0].name
    check_graph_input(path, meta["input_size"], session.get_inputs()[0].shape)
    check_graph_output(path, meta, session.get_outputs()[0].shape)

    def run(batch):
        return session.run(None, {name: batch})[0]

    kind = "onnx-int8" if meta.get("int8") else "onnx"
    return RuntimeModel(run=run, meta=meta, kind=kind, path=str(path), handle=session)


def openvino_core():
    ov = require_openvino()
    return ov, ov.Core()


def compile_openvino(core, model, threads: int | None = None):
    # f32 inference: on CPUs with AMX or AVX512-BF16 OpenVINO would otherwise run in bf16 and
    # give other answers than the network that was verified
    config: dict[str, Any] = {"INFERENCE_PRECISION_HINT": "f32"}
    if threads:
        config["INFERENCE_NUM_THREADS"] = int(threads)
    return core.compile_model(model, "CPU", config)


def openvino_meta(model) -> str | None:
    if not model.has_rt_info([OPENVINO_META_KEY]):
        return None
    return model.get_rt_info([OPENVINO_META_KEY]).astype(str)


def open_openvino(path: str | os.PathLike, threads: int | None = None) -> RuntimeModel:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"file not found: {path}")
    if not path.with_suffix(".bin").is_file():
        raise InputError(f"{path}: its weights file {path.with_suffix('.bin').name} is missing beside it")
    ov, core = openvino_core()
    try:
        model = core.read_model(str(path))
        meta = _check_meta(path, openvino_meta(model))
        compiled = compile_openvino(core, model, threads)
    except InputError:
        raise
    except Exception as e:  # OpenVINO raises RuntimeError with a multi-line message
        raise InputError(f"{path}: OpenVINO cannot load it ({first_line(e)})") from None
    request = compiled.create_infer_request()
    output = compiled.output(0)

    def run(batch):
        return request.infer({0: batch})[output]

    return RuntimeModel(run=run, meta=meta, kind="openvino", path=str(path), handle=compiled)


def open_runtime(path: str | os.PathLike, threads: int | None = None) -> RuntimeModel:
    if str(path).lower().endswith(".xml"):
        return open_openvino(path, threads)
    return open_onnx(path, threads)


def first_line(error: Exception, limit: int = 200) -> str:
    lines = [ln.strip() for ln in str(error).splitlines() if ln.strip()]
    return (lines[0] if lines else type(error).__name__)[:limit]
