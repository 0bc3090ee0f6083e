"""`cnncli viz ...`: pictures of a network and of a run, as PNG files (no window is opened)."""

from __future__ import annotations

from pathlib import Path

import typer

viz_app = typer.Typer(
    name="viz",
    help="Draw feature maps, filters, the seed's fig. 8, training curves, confusion matrices and the highest-loss images as PNG.",
    no_args_is_help=True,
)

OUT = typer.Option(None, "--out", "-o", help="The PNG to write (default: a name made from the inputs).")
MODEL = typer.Argument(..., help="A cnncli checkpoint or run directory, or a registry name "
                       "(random weights unless --pretrained / --weights).")
PRETRAINED = typer.Option(False, "--pretrained", help="Registry name: timm's pretrained weights.")
WEIGHTS = typer.Option(None, "--weights", help="Registry name: weights from this .safetensors / .pth file.")


def _done(path) -> None:
    print(path)  # stdout carries the data: where the picture is


@viz_app.command("feature-maps")
def feature_maps(
    model: str = MODEL,
    image: Path = typer.Argument(..., help="An image file (PNG, JPEG, WebP)."),
    layer: str | None = typer.Option(None, "--layer", "-l", help="Layer name as 'cnncli inspect' "
                                        "shows it, e.g. features.0 (default: the first convolution)."),
    max_maps: int = typer.Option(64, "--max-maps", min=1, help="Draw at most this many maps."),
    pretrained: bool = PRETRAINED,
    weights: str | None = WEIGHTS,
    out: Path | None = OUT,
) -> None:
    """The feature maps one layer produces for one image, as a grid."""
    from cnncli.viz import render_feature_maps

    _done(render_feature_maps(model, str(image), layer, out, pretrained=pretrained, weights=weights,
                              max_maps=max_maps))


@viz_app.command("filters")
def filters(
    model: str = MODEL,
    layer: str | None = typer.Option(None, "--layer", "-l", help="A convolution layer (default: the first one, drawn in colour on RGB input)."),
    max_filters: int = typer.Option(64, "--max-filters", min=1, help="Draw at most this many filters."),
    pretrained: bool = PRETRAINED,
    weights: str | None = WEIGHTS,
    out: Path | None = OUT,
) -> None:
    """The filters (kernels) of a convolution layer."""
    from cnncli.viz import render_filters

    _done(render_filters(model, layer, out, pretrained=pretrained, weights=weights, max_filters=max_filters))


@viz_app.command("seed-filters")
def seed_filters(
    image: Path = typer.Argument(..., help="An image file (PNG, JPEG, WebP)."),
    size: int = typer.Option(7, "--size", min=1, help="Filter size (odd)."),
    out: Path | None = OUT,
) -> None:
    """The seed's fig. 8 on any image: a vertical-line and a horizontal-line filter and their feature maps."""
    from cnncli.viz import render_seed_filters

    _done(render_seed_filters(str(image), out, size=size))


@viz_app.command("curves")
def curves(
    run_dir: Path = typer.Argument(..., help="A run directory (its metrics.jsonl)."),
    out: Path | None = OUT,
) -> None:
    """Training and validation loss and top-1 per epoch."""
    from cnncli.viz import render_curves

    _done(render_curves(run_dir, out))


@viz_app.command("confusion")
def confusion(
    source: Path = typer.Argument(..., help="A run directory with eval.json, or an 'eval --json' document."),
    normalize: bool = typer.Option(False, "--normalize", help="Divide each row by its total (recall on the diagonal)."),
    out: Path | None = OUT,
) -> None:
    """The confusion matrix of an evaluation."""
    from cnncli.viz import render_confusion

    _done(render_confusion(source, out, normalize=normalize))


@viz_app.command("mistakes")
def mistakes(
    source: Path = typer.Argument(..., help="A run directory (evaluated on its test split) or a CSV from "
                                  "'cnncli eval --predictions'."),
    top: int = typer.Option(16, "--top", "-k", min=1, max=100, help="How many of the highest-loss images."),
    cam: bool = typer.Option(False, "--cam", help="Draw each image's class activation map for the class the "
                             "network answered (needs the grad-cam package: the 'explain' extra)."),
    method: str = typer.Option("gradcam", "--method", help="CAM method with --cam (see 'cnncli explain --help')."),
    layer: str = typer.Option("auto", "--layer", "-l", help="CAM layer with --cam: a row name of 'cnncli inspect', or auto."),
    model: str | None = typer.Option(None, "--model", help="With --cam and a CSV outside its run: the run or checkpoint."),
    split: str = typer.Option("test", "--split", help="Split to evaluate a run on: train, val, test, or all."),
    data: str | None = typer.Option(None, "--data", "-d", help="Dataset to evaluate a run on [default: its own]."),
    data_dir: str | None = typer.Option(None, "--data-dir", help="Folder holding the dataset files."),
    out: Path | None = OUT,
) -> None:
    """The K test images with the highest loss, with true and predicted class and probability."""
    from cnncli.mistakes import render_mistakes

    _done(render_mistakes(source, out, top=top, cam=cam, method=method, layer=layer, model=model,
                          split=split, data=data, data_dir=data_dir))
