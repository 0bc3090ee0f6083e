"""`cnncli export CHECKPOINT --format onnx|torchscript|safetensors|openvino [--int8]`: ship a trained network."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path

import typer


class ExportFormat(StrEnum):
    onnx = "onnx"
    torchscript = "torchscript"
    safetensors = "safetensors"
    openvino = "openvino"


class Calibration(StrEnum):
    minmax = "minmax"
    entropy = "entropy"
    percentile = "percentile"


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
    int8: bool = typer.Option(
        False, "--int8", help="ONNX only: static int8 quantization (QDQ, per-channel weights), written only "
        "if top-1 drops by at most --max-drop points on the run's test images and it is faster than "
        "fp32 at batch 1 and 32 on this machine (figures in the JSON and the file's metadata)."),
    calib_images: int | None = typer.Option(None, "--calib-images", min=1,
                                            help="--int8: training images to calibrate on (default 256)."),
    calibration: Calibration | None = typer.Option(None, "--calibration",
                                                   help="--int8: how ranges are calibrated (default minmax)."),
    max_drop: float | None = typer.Option(None, "--max-drop", min=0.0,
                                          help="--int8: largest top-1 drop allowed, in points (default 1.0)."),
    allow_slower: bool = typer.Option(False, "--allow-slower", help="--int8: write it even if not faster than fp32."),
    gate_images: int | None = typer.Option(None, "--gate-images", min=1,
                                           help="--int8: test images the accuracy gate scores (default 2000)."),
    data: str | None = typer.Option(None, "--data", help="--int8: the dataset to calibrate and test on "
                                    "(default: the run's own)."),
    data_dir: str | None = typer.Option(None, "--data-dir", help="--int8: where --data lives."),
) -> None:
    """Export a checkpoint to ONNX (fp32 or gated int8), TorchScript, OpenVINO IR or (half-precision)
    safetensors, metadata included."""
    from cnncli import output
    from cnncli.errors import InputError
    from cnncli.export import export_checkpoint

    if half and bf16:
        raise InputError("pass --half or --bf16, not both")
    dtype = "float16" if half else "bfloat16" if bf16 else "float32"
    given = {"calib_images": calib_images, "calibration": calibration and calibration.value,
             "max_drop": max_drop, "allow_slower": allow_slower or None, "gate_images": gate_images,
             "data": data, "data_dir": data_dir}
    options = {k: v for k, v in given.items() if v is not None}
    result = export_checkpoint(checkpoint, fmt.value, out=out, opset=opset, dtype=dtype, verify=verify,
                               int8=int8, int8_options=options or None)
    if json_out:
        output.emit_json(result.to_dict())
        return
    state = (f"verified, max abs diff {result.max_abs_diff:.3g}" if result.verified else "not verified")
    output.note(f"wrote {result.format} ({output.human_bytes(result.bytes)}, {state})")
    print(result.path)
