"""`cnncli export CHECKPOINT --format onnx|torchscript|safetensors`: ship a trained network."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer


class ExportFormat(StrEnum):
    onnx = "onnx"
    torchscript = "torchscript"
    safetensors = "safetensors"


CheckpointArg = Annotated[str, typer.Argument(
    help="A cnncli checkpoint (.safetensors) or run directory.")]
FormatOpt = Annotated[ExportFormat, typer.Option("--format", "-f", help="What to write.")]
OutOpt = Annotated[Path | None, typer.Option(
    "--out", "-o", help="Output file.",
    show_default="next to the checkpoint: model.onnx, model.pt, model.fp16.safetensors, ...")]
OpsetOpt = Annotated[int | None, typer.Option("--opset", help="ONNX opset.", show_default="18")]
HalfOpt = Annotated[bool, typer.Option("--half", help="safetensors only: store the weights as float16.")]
Bf16Opt = Annotated[bool, typer.Option("--bf16", help="safetensors only: store the weights as bfloat16.")]
VerifyOpt = Annotated[bool | None, typer.Option(
    "--verify/--no-verify", show_default="on where the runtime is installed",
    help="Run the exported file and compare with PyTorch (max abs diff <= 1e-4 in fp32, or "
    "1e-2 / 6e-2 of the logits' scale in fp16 / bf16); exit 1 and write nothing if it disagrees.")]
JsonOpt = Annotated[bool, typer.Option(
    "--json", help="Print one JSON document: path, format, bytes, max_abs_diff, verified, ...")]


def export(
    checkpoint: CheckpointArg,
    fmt: FormatOpt = ExportFormat.onnx,
    out: OutOpt = None,
    opset: OpsetOpt = None,
    half: HalfOpt = False,
    bf16: Bf16Opt = False,
    verify: VerifyOpt = None,
    json_out: JsonOpt = False,
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
