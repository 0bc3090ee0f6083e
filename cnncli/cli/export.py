"""`cnncli export CHECKPOINT --format onnx|torchscript|safetensors`: ship a trained network."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import typer


class ExportFormat(StrEnum):
    onnx = "onnx"
    torchscript = "torchscript"
    safetensors = "safetensors"


def export(
    checkpoint: str = typer.Argument(..., help="A cnncli checkpoint (.safetensors) or run directory."),
    fmt: ExportFormat = typer.Option(ExportFormat.onnx, "--format", "-f", help="What to write."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Output file (default: next to the checkpoint: model.onnx, model.pt, "
        "model.fp16.safetensors, ...)."),
    opset: int | None = typer.Option(None, "--opset", help="ONNX opset (default: 18)."),
    half: bool = typer.Option(False, "--half", help="safetensors only: store the weights as float16."),
    bf16: bool = typer.Option(False, "--bf16", help="safetensors only: store the weights as bfloat16."),
    verify: bool | None = typer.Option(
        None, "--verify/--no-verify",
        help="Run the exported file and compare with PyTorch (max abs diff <= 1e-4 in fp32, or "
        "1e-2 / 6e-2 of the logits' scale in fp16 / bf16); exit 1 and write nothing if it disagrees "
        "(default: on where the runtime is installed)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON document: path, format, bytes, "
                                  "max_abs_diff, verified, ..."),
) -> None:
    """Export a checkpoint to ONNX, TorchScript or (half-precision) safetensors, metadata included."""
    from cnncli import output
    from cnncli.errors import InputError
    from cnncli.export import export_checkpoint

    if half and bf16:
        raise InputError("pass --half or --bf16, not both")
    dtype = "float16" if half else "bfloat16" if bf16 else "float32"
    result = export_checkpoint(checkpoint, fmt.value, out=out, opset=opset, dtype=dtype, verify=verify)
    if json_out:
        output.emit_json(result.to_dict())
        return
    state = (f"verified, max abs diff {result.max_abs_diff:.3g}" if result.verified else "not verified")
    output.note(f"wrote {result.format} ({output.human_bytes(result.bytes)}, {state})")
    print(result.path)
