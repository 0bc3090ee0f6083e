"""`cnncli explain MODEL IMAGE...`: class activation maps (Grad-CAM and friends) as overlays."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from cnncli.cli.common import enum_value
from cnncli.cli.options import CommandDeviceOpt, CommandThreadsOpt, ForceOpt, RegistryWeightsOpt


class Method(StrEnum):
    gradcam = "gradcam"
    gradcampp = "gradcam++"
    xgradcam = "xgradcam"
    layercam = "layercam"
    eigencam = "eigencam"
    scorecam = "scorecam"


ModelArg = Annotated[str, typer.Argument(
    help="A cnncli checkpoint or run directory, or a registry name with --pretrained / --weights.")]
InputsArg = Annotated[list[str], typer.Argument(help="Image files (PNG, JPEG, WebP, GIF, BMP, TIFF, PPM) or folders of them.")]
MethodOpt = Annotated[Method, typer.Option(
    "--method", "-m", help="The CAM method (pytorch-grad-cam's); scorecam runs one forward pass per "
    "channel of the layer.")]
LayerOpt = Annotated[str, typer.Option(
    "--layer", "-l", help="A row name as 'cnncli inspect' prints it; auto: the last layer with a spatial "
    "output of at least 2x2 before global pooling.")]
TargetOpt = Annotated[str, typer.Option(
    "--target", "-t", help="top (the predicted class), or a class name or index.")]
PretrainedOpt = Annotated[bool, typer.Option(
    "--pretrained", help="Registry name: its pretrained weights (timm's cache, an installed weights "
    "package, or timm's hub).")]
CamOutOpt = Annotated[Path, typer.Option("--out", "-o", help="Folder for <image>.cam.png (and .cam.npy).")]
SaveMapsOpt = Annotated[bool, typer.Option(
    "--save-maps", help="Also write the raw map as <image>.cam.npy (float32, the image's height x width, "
    "values in [0, 1]).")]
JsonLinesOpt = Annotated[bool, typer.Option(
    "--json", help="One JSON line per image: path, class, index, prob, layer, method, receptive_field, box, seen, "
    "overlay, map.")]


def explain(
    model: ModelArg,
    inputs: InputsArg,
    method: MethodOpt = Method.gradcam,
    layer: LayerOpt = "auto",
    target: TargetOpt = "top",
    pretrained: PretrainedOpt = False,
    weights: RegistryWeightsOpt = None,
    out: CamOutOpt = Path("."),
    save_maps: SaveMapsOpt = False,
    json_out: JsonLinesOpt = False,
    device: CommandDeviceOpt = "auto",
    threads: CommandThreadsOpt = None,
    force: ForceOpt = False,
) -> None:
    """Show where the network looked: a heat map over each image for the class it answered (or
    --target), from the layer's activations and gradients, with the receptive field of the
    map's peak drawn as a box."""
    from cnncli import output
    from cnncli.engine.device import set_threads
    from cnncli.explain import explain_files, open_explainer
    from cnncli.outputs import forced
    from cnncli.predict import expand_inputs

    set_threads(threads)
    paths = expand_inputs(inputs)
    explainer = open_explainer(model, method=enum_value(method), layer=layer, pretrained=pretrained,
                               weights=weights, device=device)
    rows = []
    with forced(force):
        for done in explain_files(explainer, paths, out_dir=out, target=target, save_maps=save_maps):
            if json_out:
                output.emit_json_line(done.to_dict())
            else:
                r = done.result
                rows.append([done.path, r.class_name, f"{r.prob:.3f}", str(done.overlay)])
    if rows:
        layer_info = explainer.layer
        rf = "x".join(str(v) for v in layer_info.receptive_field) if layer_info.receptive_field else "?"
        output.render_rows(["image", "class", "prob", "overlay"], rows,
                           title=f"{enum_value(method)} on layer {layer_info.name} "
                           f"({'x'.join(str(v) for v in layer_info.output_shape)}, receptive field {rf})",
                           justify=["left", "left", "right", "left"])
