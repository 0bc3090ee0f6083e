"""`cnncli export --format openvino`: OpenVINO IR (model.xml + model.bin) from the exported ONNX graph.

The ONNX graph that `cnncli export` already proves equal to PyTorch is converted by OpenVINO's
own converter (`openvino.convert_model`), the cnncli document goes into the model's runtime
info (key `cnncli`), and the IR is saved with fp32 weights (OpenVINO's default would halve
them to fp16, which is another model). The caller verifies the IR against PyTorch like every
other format, then moves both files into place, the weights first, so an `.xml` on disk always
has its own `.bin` beside it.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

from cnncli.deploy.runtime import OPENVINO_META_KEY, compile_openvino, first_line, openvino_core
from cnncli.errors import InputError


def _unsupported(error: Exception) -> str:
    """OpenVINO's multi-line conversion error, down to the operator(s) it names (if it names any)."""
    found = re.search(r"(?:[Nn]o conversion rule found for operations?|"
                      r"does not support the following ONNX operations?):\s*([^\n]+)", str(error))
    if found:
        return f"unsupported operator {found.group(1).strip().rstrip('.')}"
    return first_line(error)


def openvino_ir(onnx_data: bytes, meta: dict[str, Any]) -> tuple[bytes, bytes]:
    """(xml, bin) bytes of the OpenVINO IR of an ONNX graph, the metadata in its runtime info."""
    ov, _ = openvino_core()
    with tempfile.TemporaryDirectory(prefix="cnncli-openvino-") as tmp:
        src = Path(tmp) / "model.onnx"
        src.write_bytes(onnx_data)
        try:
            model = ov.convert_model(str(src))
        except Exception as e:  # OpenVINO's OpConversionFailure and friends
            raise InputError(f"OpenVINO cannot convert this network: {_unsupported(e)}") from None
        text = meta.to_json() if hasattr(meta, "to_json") else json.dumps(meta)  # the run document
        model.set_rt_info(text, [OPENVINO_META_KEY])
        xml = Path(tmp) / "model.xml"
        ov.save_model(model, str(xml), compress_to_fp16=False)
        return xml.read_bytes(), xml.with_suffix(".bin").read_bytes()


def run_openvino_ir(xml: bytes, weights: bytes, batches: list) -> list:
    """The IR's logits for each float32 numpy batch (what the verification compares)."""
    ov, core = openvino_core()
    model = core.read_model(model=xml, weights=ov.Tensor(_uint8(weights)))
    compiled = compile_openvino(core, model)
    request = compiled.create_infer_request()
    out = compiled.output(0)
    return [request.infer({0: b})[out].copy() for b in batches]


def _uint8(data: bytes):
    import numpy as np

    return np.frombuffer(data, dtype=np.uint8)


def write_ir(path: Path, xml: bytes, weights: bytes) -> None:
    from cnncli.outputs import OPENVINO_BIN, OPENVINO_XML, write_file

    write_file(path.with_suffix(".bin"), weights, OPENVINO_BIN)
    write_file(path, xml, OPENVINO_XML)
