"""`cnncli export CHECKPOINT --format onnx|torchscript|safetensors|openvino [--int8]`: ship a trained network."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from cnncli.cli.options import ForceOpt, RegistryPretrainedOpt, RegistryWeightsOpt


class ExportFormat(StrEnum):
    onnx = "onnx"
    torchscript = "torchscript"
    safetensors = "safetensors"
    openvino = "openvino"


class Calibration(StrEnum):
    minmax = "minmax"
    entropy = "entropy"
    percentile = "percentile"


CheckpointArg = Annotated[str, typer.Argument(
    help="A cnncli checkpoint (.safetensors) or run directory, or a registry name with --pretrained "
    "or --weights.")]
FormatOpt = Annotated[ExportFormat | None, typer.Option(
    "--format", "-f", help="What to write.",
    show_default="from --out's suffix (.onnx, .pt, .safetensors, .xml); onnx without --out")]
OutOpt = Annotated[Path | None, typer.Option(
    "--out", "-o", help="Output file.",
    show_default="next to the checkpoint: model.onnx, model.pt, model.fp16.safetensors, ...; for a "
    "registry name, in the working folder: timm_<name>.onnx, ...")]
OpsetOpt = Annotated[int | None, typer.Option("--opset", help="ONNX opset.", show_default="18")]
HalfOpt = Annotated[bool, typer.Option("--half", help="safetensors only (the format without -f/--out): store the weights as float16.")]
Bf16Opt = Annotated[bool, typer.Option("--bf16", help="safetensors only (the format without -f/--out): store the weights as bfloat16.")]
VerifyOpt = Annotated[bool | None, typer.Option(
    "--verify/--no-verify", show_default="on where the runtime is installed",
    help="Run the exported file and compare with PyTorch (max abs diff <= 1e-4 in fp32, or "
    "1e-2 / 6e-2 of the logits' scale in fp16 / bf16); exit 1 and write nothing if it disagrees.")]
JsonOpt = Annotated[bool, typer.Option(
    "--json", help="Print one JSON document: path, format, bytes, max_abs_diff, verified, ...")]
Int8Opt = Annotated[bool, typer.Option(
    "--int8", help="ONNX only: static int8 quantization (QDQ, per-channel weights), written only if "
    "top-1 drops by at most --max-drop points on the run's test images and it is faster than fp32 at "
    "batch 1 and 32 on this machine (figures in the JSON and the file's metadata).")]
CalibImagesOpt = Annotated[int | None, typer.Option(
    "--calib-images", min=1, help="--int8: training images to calibrate on.", show_default="256")]
CalibrationOpt = Annotated[Calibration | None, typer.Option(
    "--calibration", help="--int8: how ranges are calibrated.", show_default="minmax")]
MaxDropOpt = Annotated[float | None, typer.Option(
    "--max-drop", min=0.0, help="--int8: largest top-1 drop allowed, in points.", show_default="1.0")]
AllowSlowerOpt = Annotated[bool, typer.Option(
    "--allow-slower", help="--int8: write it even if it is not faster than fp32.")]
GateImagesOpt = Annotated[int | None, typer.Option(
    "--gate-images", min=1, help="--int8: test images the accuracy gate scores.", show_default="2000")]
GateDataOpt = Annotated[str | None, typer.Option(
    "--data", help="--int8: the dataset to calibrate and test on.", show_default="the run's own")]
GateDataDirOpt = Annotated[str | None, typer.Option("--data-dir", help="--int8: where --data lives.")]


def export(
    checkpoint: CheckpointArg,
    fmt: FormatOpt = None,
    out: OutOpt = None,
    opset: OpsetOpt = None,
    half: HalfOpt = False,
    bf16: Bf16Opt = False,
    verify: VerifyOpt = None,
    json_out: JsonOpt = False,
    int8: Int8Opt = False,
    calib_images: CalibImagesOpt = None,
    calibration: CalibrationOpt = None,
    max_drop: MaxDropOpt = None,
    allow_slower: AllowSlowerOpt = False,
    gate_images: GateImagesOpt = None,
    data: GateDataOpt = None,
    data_dir: GateDataDirOpt = None,
    pretrained: RegistryPretrainedOpt = False,
    weights: RegistryWeightsOpt = None,
    force: ForceOpt = False,
) -> None:
    """Export a checkpoint to ONNX (fp32 or gated int8), TorchScript, OpenVINO IR or (half-precision)
    safetensors, metadata included."""
    from cnncli import output
    from cnncli.errors import InputError
    from cnncli.export import export_checkpoint
    from cnncli.outputs import forced

    if half and bf16:
        raise InputError("pass --half or --bf16, not both")
    dtype = "float16" if half else "bfloat16" if bf16 else "float32"
    given = {"calib_images": calib_images, "calibration": calibration and calibration.value,
             "max_drop": max_drop, "allow_slower": allow_slower or None, "gate_images": gate_images,
             "data": data, "data_dir": data_dir}
    options = {k: v for k, v in given.items() if v is not None}
    with forced(force):
        result = export_checkpoint(checkpoint, fmt and fmt.value, out=out, opset=opset, dtype=dtype, verify=verify,
                                   int8=int8, int8_options=options or None, pretrained=pretrained, weights=weights)
    if json_out:
        output.emit_json(result.to_dict())
        return
    state = (f"verified, max abs diff {result.max_abs_diff:.3g}" if result.verified else "not verified")
    output.note(f"wrote {result.format} ({output.human_bytes(result.bytes)}, {state})")
    print(result.path)
