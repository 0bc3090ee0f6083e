"""`cnncli predict MODEL_OR_FILE IMAGE_OR_DIR...`: the most probable classes of image files."""

from __future__ import annotations

from typing import Annotated

import typer

from cnncli.cli.options import (
    CommandDeviceOpt,
    CommandThreadsOpt,
    InferenceBatchSizeOpt,
    RegistryPretrainedOpt,
    RegistryWeightsOpt,
    TtaOpt,
)

ModelArg = Annotated[str, typer.Argument(
    help="A cnncli checkpoint or run directory, a file from 'cnncli export' (.onnx fp32 or int8, "
    "OpenVINO .xml, TorchScript .pt; ONNX and OpenVINO run without torch), or a registry name "
    "with --pretrained / --weights (ImageNet classes).")]
InputsArg = Annotated[list[str], typer.Argument(
    help="Image files (PNG, JPEG, WebP, GIF, BMP, TIFF, PPM) or folders of them; '-' reads paths from stdin, one a line.")]
TopKOpt = Annotated[int | None, typer.Option(
    "--top-k", "-k", min=1, show_default="5, or every class of a smaller model",
    help="How many classes to show per image.")]
JsonLinesOpt = Annotated[bool, typer.Option(
    "--json", help="One JSON line per image: {path, top: [{class, index, prob}]}.")]


def predict(
    model: ModelArg,
    inputs: InputsArg,
    top_k: TopKOpt = None,
    json_out: JsonLinesOpt = False,
    pretrained: RegistryPretrainedOpt = False,
    weights: RegistryWeightsOpt = None,
    batch_size: InferenceBatchSizeOpt = 32,
    device: CommandDeviceOpt = "auto",
    threads: CommandThreadsOpt = None,
    tta: TtaOpt = "none",
) -> None:
    """Predict the classes of images; unreadable files are reported on stderr and exit code 1
    (a single file that cannot be read: its one line and exit code 2)."""
    from cnncli import output
    from cnncli.errors import InputError, RuntimeFailure
    from cnncli.predict import expand_inputs, open_predictor, predict_files

    paths = expand_inputs(inputs)
    predictor = open_predictor(model, pretrained=pretrained, weights=weights,
                               device=device, threads=threads, tta=tta)
    classes = len(predictor.class_names)
    if top_k is not None and top_k > classes:  # asked for more than there are: every class, said once
        output.note(f"--top-k {top_k}: the model has {output.plural(classes, 'class', 'classes')}; "
                    f"showing all {classes}")
    top_k = min(top_k or 5, classes)
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
        raise RuntimeFailure(f"{failed} of {output.plural(len(paths), 'file')} could not be predicted (see above)")
