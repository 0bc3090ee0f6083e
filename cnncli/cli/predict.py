"""`cnncli predict MODEL_OR_FILE IMAGE_OR_DIR...`: the most probable classes of image files."""

from __future__ import annotations

import typer

from cnncli.cli.common import Device, enum_value


def predict(
    model: str = typer.Argument(
        ..., help="A cnncli checkpoint or run directory, a file from 'cnncli export' (.onnx fp32 or "
        "int8, OpenVINO .xml, TorchScript .pt; ONNX and OpenVINO run without torch), or a registry "
        "name with --pretrained / --weights (ImageNet classes)."),
    inputs: list[str] = typer.Argument(
        ..., help="Image files (PNG, JPEG, WebP) or folders of them; '-' reads paths from stdin, one a line."),
    top_k: int = typer.Option(5, "--top-k", "-k", min=1, help="How many classes to show per image."),
    json_out: bool = typer.Option(False, "--json", help="One JSON line per image: {path, top: [{class, index, prob}]}."),
    pretrained: bool = typer.Option(False, "--pretrained", help="Registry name: timm's pretrained weights (needs the hub or its cache)."),
    weights: str | None = typer.Option(None, "--weights", help="Registry name: weights from this .safetensors / .pth file."),
    batch_size: int = typer.Option(32, "--batch-size", "-b", min=1, help="Images per forward pass."),
    device: Device = typer.Option(Device.auto, "--device", help="auto picks cuda, then mps, then cpu (ONNX runs on onnxruntime)."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="CPU threads."),
) -> None:
    """Predict the classes of images; unreadable files are reported on stderr and exit code 1
    (a single file that cannot be read: its one line and exit code 2)."""
    from cnncli import output
    from cnncli.errors import InputError, RuntimeFailure
    from cnncli.predict import expand_inputs, open_predictor, predict_files

    paths = expand_inputs(inputs)
    predictor = open_predictor(model, pretrained=pretrained, weights=weights,
                               device=enum_value(device), threads=threads)
    failed, rows = 0, []
    for result in predict_files(predictor, paths, top_k=top_k, batch_size=batch_size):
        if result.error is not None:
            if len(paths) == 1:  # the one file asked for is bad input: its line is the whole answer
                raise InputError(result.error)
            failed += 1
            output.warn(result.error)
        elif json_out:
            output.emit_json_line(result.to_dict())
        else:
            best = result.top[0]
            rest = ", ".join(f"{t['class']} {t['prob']:.3f}" for t in result.top[1:])
            rows.append([result.path, best["class"], f"{best['prob']:.3f}", rest])
    if rows:
        output.render_rows(["image", "class", "prob", "next"], rows,
                           justify=["left", "left", "right", "left"])
    if failed:
        raise RuntimeFailure(f"{failed} of {len(paths)} file(s) could not be predicted (see above)")
