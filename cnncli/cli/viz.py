"""`cnncli viz ...`: pictures of a network and of a run, as PNG files (no window is opened)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cnncli.cli.common import command
from cnncli.cli.options import ForceOpt, PngOutOpt, RegistryPretrainedOpt, RegistryWeightsOpt

viz_app = typer.Typer(
    name="viz",
    help="Draw feature maps, filters, the lecture's line filters (fig. 8), training curves, "
    "confusion matrices and the highest-loss images as PNG.",
    no_args_is_help=True,
)

ModelArg = Annotated[str, typer.Argument(
    help="A cnncli checkpoint or run directory, or a registry name "
    "(random weights unless --pretrained / --weights).")]
ImageArg = Annotated[Path, typer.Argument(help="An image file (PNG, JPEG, WebP, GIF, BMP, TIFF, PPM).")]
FeatureLayerOpt = Annotated[str | None, typer.Option(
    "--layer", "-l", show_default="the first convolution",
    help="Layer name as 'cnncli inspect' shows it, e.g. features.0.")]
FilterLayerOpt = Annotated[str | None, typer.Option(
    "--layer", "-l", show_default="the first convolution, drawn in colour on RGB input",
    help="A convolution layer.")]
MaxMapsOpt = Annotated[int, typer.Option("--max-maps", min=1, help="Draw at most this many maps.")]
MaxFiltersOpt = Annotated[int, typer.Option(
    "--max-filters", min=1, help="Draw at most this many filters.")]
LineSizeOpt = Annotated[int, typer.Option("--size", min=1, help="Filter size (odd).")]
RunDirArg = Annotated[Path, typer.Argument(help="A run directory (its metrics.jsonl).")]
EvalSourceArg = Annotated[Path, typer.Argument(
    help="A run directory with eval.json, or an 'eval --json' document.")]
NormalizeOpt = Annotated[bool, typer.Option(
    "--normalize", help="Divide each row by its total (recall on the diagonal).")]


def _done(path) -> None:
    print(path)  # stdout carries the data: where the picture is


def _drawn(render, out, force: bool, *args, **kwargs):
    """render(*args, out, **kwargs) under the output-path policy; an explicit --out is checked first."""
    from cnncli.outputs import PNG, check_file, forced

    with forced(force):
        if out is not None:
            check_file(out, PNG)
        _done(render(*args, out, **kwargs))


def feature_maps(
    model: ModelArg,
    image: ImageArg,
    layer: FeatureLayerOpt = None,
    max_maps: MaxMapsOpt = 64,
    pretrained: RegistryPretrainedOpt = False,
    weights: RegistryWeightsOpt = None,
    out: PngOutOpt = None,
    force: ForceOpt = False,
) -> None:
    """The feature maps one layer produces for one image, as a grid."""
    from cnncli.viz import render_feature_maps

    _drawn(render_feature_maps, out, force, model, str(image), layer, pretrained=pretrained, weights=weights,
           max_maps=max_maps)


def filters(
    model: ModelArg,
    layer: FilterLayerOpt = None,
    max_filters: MaxFiltersOpt = 64,
    pretrained: RegistryPretrainedOpt = False,
    weights: RegistryWeightsOpt = None,
    out: PngOutOpt = None,
    force: ForceOpt = False,
) -> None:
    """The filters (kernels) of a convolution layer."""
    from cnncli.viz import render_filters

    _drawn(render_filters, out, force, model, layer, pretrained=pretrained, weights=weights, max_filters=max_filters)


def line_filters(image: ImageArg, size: LineSizeOpt = 7, out: PngOutOpt = None, force: ForceOpt = False) -> None:
    """The lecture's fig. 8 on any image: a vertical-line and a horizontal-line filter and the
    feature maps they produce."""
    from cnncli.viz import render_seed_filters

    _drawn(render_seed_filters, out, force, str(image), size=size)


def curves(run_dir: RunDirArg, out: PngOutOpt = None, force: ForceOpt = False) -> None:
    """Training and validation loss and top-1 per epoch."""
    from cnncli.viz import render_curves

    _drawn(render_curves, out, force, run_dir)


def confusion(source: EvalSourceArg, normalize: NormalizeOpt = False, out: PngOutOpt = None,
              force: ForceOpt = False) -> None:
    """The confusion matrix of an evaluation."""
    from cnncli.viz import render_confusion

    _drawn(render_confusion, out, force, source, normalize=normalize)


MistakesSourceArg = Annotated[Path, typer.Argument(
    help="A run directory (evaluated on its test split) or a CSV from 'cnncli eval --predictions'.")]
TopOpt = Annotated[int, typer.Option("--top", "-k", min=1, max=100, help="How many of the highest-loss images.")]
CamOpt = Annotated[bool, typer.Option(
    "--cam", help="Draw each image's class activation map for the class the network answered (needs the "
    "grad-cam package: the 'explain' extra).")]
CamMethodOpt = Annotated[str, typer.Option("--method", help="CAM method with --cam (see 'cnncli explain --help').")]
CamLayerOpt = Annotated[str, typer.Option(
    "--layer", "-l", help="CAM layer with --cam: a row name of 'cnncli inspect', or auto.")]
CamModelOpt = Annotated[str | None, typer.Option(
    "--model", help="With --cam and a CSV outside its run: the run or checkpoint.")]
MistakesSplitOpt = Annotated[str, typer.Option("--split", help="Split to evaluate a run on: train, val, test, or all.")]
MistakesDataOpt = Annotated[str | None, typer.Option(
    "--data", "-d", help="Dataset to evaluate a run on.", show_default="its own")]
MistakesDataDirOpt = Annotated[str | None, typer.Option("--data-dir", help="Folder holding the dataset files.")]


def mistakes(
    source: MistakesSourceArg,
    top: TopOpt = 16,
    cam: CamOpt = False,
    method: CamMethodOpt = "gradcam",
    layer: CamLayerOpt = "auto",
    model: CamModelOpt = None,
    split: MistakesSplitOpt = "test",
    data: MistakesDataOpt = None,
    data_dir: MistakesDataDirOpt = None,
    out: PngOutOpt = None,
    force: ForceOpt = False,
) -> None:
    """The K test images with the highest loss, with true and predicted class and probability."""
    from cnncli.mistakes import render_mistakes

    _drawn(render_mistakes, out, force, source, top=top, cam=cam, method=method, layer=layer, model=model,
           split=split, data=data, data_dir=data_dir)


command(viz_app, "feature-maps", feature_maps)
command(viz_app, "filters", filters)
command(viz_app, "line-filters", line_filters)
command(viz_app, "seed-filters", line_filters, hidden=True)  # its first name, kept for scripts
command(viz_app, "curves", curves)
command(viz_app, "confusion", confusion)
command(viz_app, "mistakes", mistakes)
