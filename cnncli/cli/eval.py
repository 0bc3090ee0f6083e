"""`cnncli eval CHECKPOINT --data NAME`: top-1, top-5, per-class report, confusion matrix."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cnncli.cli.options import (
    CommandDeviceOpt,
    CommandThreadsOpt,
    ForceOpt,
    InferenceBatchSizeOpt,
    JsonOpt,
    SkipBadImagesOpt,
    StreamOpt,
    TtaOpt,
    WorkersOpt,
)

CheckpointArg = Annotated[str, typer.Argument(
    help="A cnncli checkpoint or run directory (or a registry name with --weights or --pretrained).")]
DataOpt = Annotated[str | None, typer.Option(
    "--data", "-d", help="Dataset.", show_default="the one it was trained on")]
SplitOpt = Annotated[str, typer.Option(
    "--split", help="train, val, test, or all (every image of the dataset).")]
DataDirOpt = Annotated[str | None, typer.Option("--data-dir", help="Folder holding the dataset files.")]
WeightsOpt = Annotated[str | None, typer.Option(
    "--weights", help="Weights for a registry name, trained for the dataset's classes.")]
PretrainedOpt = Annotated[bool, typer.Option(
    "--pretrained", help="Registry name: its pretrained weights as is, scored on the dataset classes "
    "that are among its own (ImageNet's), matched by name, WordNet ID or index.")]
MaxSamplesOpt = Annotated[int | None, typer.Option(
    "--max-samples", min=1, help="Evaluate at most N images, stratified.", show_default="all")]
PlotOpt = Annotated[Path | None, typer.Option("--plot", help="Draw the confusion matrix to this PNG.")]

PredictionsOpt = Annotated[Path | None, typer.Option(
    "--predictions", help="Write one CSV row per image: id (file path or index), true and predicted "
    "class, their probabilities, loss, top-5 (for 'viz mistakes' and 'compare').")]


def eval_command(
    checkpoint: CheckpointArg,
    data: DataOpt = None,
    split: SplitOpt = "test",
    data_dir: DataDirOpt = None,
    weights: WeightsOpt = None,
    pretrained: PretrainedOpt = False,
    batch_size: InferenceBatchSizeOpt = 512,
    max_samples: MaxSamplesOpt = None,
    device: CommandDeviceOpt = "auto",
    threads: CommandThreadsOpt = None,
    plot: PlotOpt = None,
    json_out: JsonOpt = False,
    predictions: PredictionsOpt = None,
    force: ForceOpt = False,
    tta: TtaOpt = "none",
    workers: WorkersOpt = None,
    stream: StreamOpt = None,
    skip_bad_images: SkipBadImagesOpt = False,
) -> None:
    """Evaluate a checkpoint: rebuilt from its metadata alone, on a dataset split.

    With --pretrained, check a pretrained network before fine-tuning it: top-1/top-5 are over
    all of its classes, and folders named like its classes ('tabby cat', n02123045) are scored.
    """
    from cnncli.outputs import forced

    with forced(force):
        _evaluate(checkpoint, data=data, split=split, data_dir=data_dir, weights=weights, pretrained=pretrained,
                  batch_size=batch_size, max_samples=max_samples, device=device, threads=threads, plot=plot,
                  json_out=json_out, predictions=predictions, tta=tta, workers=workers, stream=stream,
                  skip_bad_images=skip_bad_images)


def _evaluate(checkpoint: str, *, plot: Path | None, json_out: bool, predictions: Path | None, **options) -> None:
    from cnncli import output
    from cnncli.engine import distributed
    from cnncli.engine.eval_run import evaluate_checkpoint
    from cnncli.outputs import PNG, PREDICTIONS_CSV, check_file

    rows: list | None = [] if predictions is not None else None
    if predictions is not None:  # both refused before the evaluation, not after it
        check_file(predictions, PREDICTIONS_CSV, "--predictions")
    if plot is not None:
        check_file(plot, PNG, "--plot")
    doc = evaluate_checkpoint(checkpoint, **options, predictions=rows)
    if not distributed.context().is_main:
        return
    if predictions is not None:
        from cnncli.engine.predictions import write_predictions

        doc["predictions_file"] = str(write_predictions(predictions, rows))
        output.note(f"{len(rows)} predictions written to {predictions}")
    if plot is not None:
        from cnncli.plots import plot_confusion

        plot_confusion(doc["confusion"], doc["class_names"], plot)
        output.note(f"confusion matrix drawn to {plot}")
    if json_out:
        output.emit_json(doc)
        return
    _render(doc)


def _render(doc: dict) -> None:
    from cnncli import output

    rows = [[p["class"], f"{p['precision']:.4f}", f"{p['recall']:.4f}", f"{p['f1']:.4f}", p["support"]]
            for p in doc["per_class"]]
    output.render_rows(["class", "precision", "recall", "F1", "support"], rows,
                       title=f"{doc['model']} on {doc['dataset']} ({doc['split']}, "
                       f"{output.plural(doc['n'], 'image')}"
                       + (f", test-time augmentation: {doc['tta']}" if doc.get("tta", "none") != "none" else "") + ")",
                       justify=["left", "right", "right", "right", "right"],
                       footer=[f"top-1 {doc['top1']:.4f}   top-5 {doc['top5']:.4f}   loss {doc['loss']:.4f}   "
                               f"{doc['images_per_second']:.0f} images/s"]
                       + [f"{kind:<8}  precision {doc[kind]['precision']:.4f}   recall {doc[kind]['recall']:.4f}   "
                          f"F1 {doc[kind]['f1']:.4f}" for kind in ("macro", "weighted") if kind in doc])
    names = [n[:9] for n in doc["class_names"]]
    other = doc.get("predicted_other")  # a pretrained network's predictions outside these classes
    matrix = [[names[i]] + [str(v) for v in row] + ([str(other[i])] if other else [])
              for i, row in enumerate(doc["confusion"])]
    output.render_rows(["true \\ predicted"] + names + (["other"] if other else []), matrix,
                       title="confusion matrix", justify=["left"] + ["right"] * (len(names) + bool(other)))
    pairs = doc.get("confused_pairs")
    if pairs:
        output.render_rows(["true", "predicted as", "images"],
                           [[p["true"], p["predicted"], p["count"]] for p in pairs],
                           title="most confused pairs", justify=["left", "left", "right"])
