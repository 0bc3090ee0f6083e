"""The bytes of each format: ONNX (torch's two exporters), TorchScript, safetensors."""

from __future__ import annotations

import io
import warnings
from typing import Any

from cnncli.errors import InputError, RuntimeFailure
from cnncli.export.metadata import INPUT_NAME, OUTPUT_NAME, TORCHSCRIPT_META_FILE, onnx_metadata
from cnncli.export.runtime import require_onnx

# Opset 18 is what torch's exporter targets natively and every onnxruntime since 1.14 runs.
DEFAULT_OPSET = 18
DYNAMO_MIN_OPSET = 18  # torch.export-based exporter: its native opset
MIN_OPSET = 13  # below this, the ops that modern CNNs need (e.g. Resize, ReduceMean) change form


def onnx_bytes(model, example, meta: dict[str, Any], opset: int = DEFAULT_OPSET,
               exporter: str = "dynamo") -> tuple[bytes, str]:
    """Serialized ONNX with a dynamic batch axis and the metadata; returns (bytes, exporter).

    torch's `torch.export`-based exporter is the supported one; the older TorchScript-based
    exporter serves as a fallback for a network `torch.export` cannot capture.
    """
    onnx = require_onnx()
    errors = []
    order = [exporter] + [e for e in ("dynamo", "torchscript") if e != exporter]
    if opset < DYNAMO_MIN_OPSET and exporter == "dynamo":
        # the torch.export-based exporter writes opset 18 and can only try to convert down
        # (and sometimes fails silently); the TorchScript-based one emits older opsets natively
        order = ["torchscript", "dynamo"]
    for which in order:
        try:
            proto = _export_onnx_proto(model, example, opset, dynamo=(which == "dynamo"))
            got = _default_opset(proto)
            if got != opset:
                raise RuntimeError(f"wrote opset {got} instead of {opset}")
            break
        except Exception as e:  # record and try the other exporter
            errors.append(f"{which}: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
    else:
        op = _unsupported_operator(" ".join(errors))
        if op:
            raise InputError(f"this network cannot be exported to ONNX: operator {op} is not supported "
                             "by torch's ONNX exporters")
        raise RuntimeFailure("ONNX export failed with both torch exporters (" + "; ".join(errors) + ")")
    if errors:
        from cnncli.output import note

        note(f"the {order[0]} ONNX exporter failed ({errors[0]}); used the {which} exporter")
    onnx.helper.set_model_props(proto, onnx_metadata(meta))
    proto.doc_string = f"cnncli export of {meta.get('model', {}).get('name', 'a network')}"
    try:
        onnx.checker.check_model(proto, full_check=True)
    except Exception as e:
        raise RuntimeFailure(f"the exported ONNX graph fails the ONNX checker: {str(e).splitlines()[0][:200]}") from None
    return proto.SerializeToString(), which


def _unsupported_operator(text: str) -> str | None:
    """The operator torch's exporters name when they have no ONNX translation for it."""
    import re

    for pattern in (r"[Uu]nsupported: ONNX export of operator ([\w:.]+)",
                    r"[Nn]o ONNX function (?:found|registered) for (?:<OpOverload\(op=)?'?([\w:.]+)",
                    r"[Uu]nsupported FX nodes?:? \{?'?([\w:.]+)"):
        found = re.search(pattern, text)
        if found:
            return found.group(1).rstrip(".'")
    return None


def _default_opset(proto) -> int | None:
    return next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)


def _export_onnx_proto(model, example, opset: int, dynamo: bool):
    import onnx
    import torch

    with warnings.catch_warnings(), torch.no_grad(), _quiet_loggers("torch.onnx", "onnxscript", "torch.export"):
        warnings.simplefilter("ignore")  # deprecation chatter from the exporters, not the user's concern
        if dynamo:
            program = torch.onnx.export(
                model, (example,), None, dynamo=True, verbose=False, opset_version=opset,
                input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: torch.export.Dim("batch")},), optimize=True,
            )
            return program.model_proto
        buf = io.BytesIO()
        torch.onnx.export(
            model, (example,), buf, dynamo=False, verbose=False, opset_version=opset,
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
        )
        return onnx.load_from_string(buf.getvalue())


class _quiet_loggers:
    """Silence libraries' logging below ERROR for a while (the exporters log progress and
    version-conversion attempts that mean nothing to the user; failures still raise)."""

    def __init__(self, *names: str):
        import logging

        self.loggers = [logging.getLogger(n) for n in names]
        self.levels: list[int] = []

    def __enter__(self):
        import logging

        self.levels = [lg.level for lg in self.loggers]
        for lg in self.loggers:
            lg.setLevel(logging.ERROR)
        return self

    def __exit__(self, *exc):
        for lg, level in zip(self.loggers, self.levels):
            lg.setLevel(level)
        return False


def torchscript_bytes(model, example, meta) -> bytes:
    """A traced TorchScript archive with the metadata as the extra file `cnncli.json`."""
    import torch

    from cnncli.checkpoint import as_document

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # torch.jit is deprecated upstream but still runs everywhere
        try:
            traced = torch.jit.trace(model, example, check_trace=False)
        except Exception as e:
            raise RuntimeFailure(f"TorchScript tracing failed: {type(e).__name__}: {str(e).splitlines()[0][:200]}") from None
        buf = io.BytesIO()
        torch.jit.save(traced, buf, _extra_files={TORCHSCRIPT_META_FILE: as_document(meta).to_json()})
    return buf.getvalue()


def safetensors_bytes(model, meta, dtype: str = "float32") -> bytes:
    """A cnncli checkpoint again, its floating tensors stored in `dtype`, the dtype recorded."""
    from cnncli.checkpoint import as_document, checkpoint_bytes

    return checkpoint_bytes(model.state_dict(), as_document(meta).replace(dtype=dtype), dtype=dtype)


def max_opset() -> int:
    try:
        import onnx

        return min(onnx.defs.onnx_opset_version(), 23)
    except ImportError:  # pragma: no cover
        return DEFAULT_OPSET
