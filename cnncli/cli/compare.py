"""`cnncli compare A B`: two runs (or a run and a file exported from it) side by side."""

from __future__ import annotations

from typing import Annotated

import typer

from cnncli.cli.options import CommandDeviceOpt, CommandThreadsOpt, InferenceBatchSizeOpt, JsonOpt

SHOWN = 20  # flipped images listed in the table (the JSON has them all)


AArg = Annotated[str, typer.Argument(
    help="A run directory, checkpoint or ONNX file exported by 'cnncli export'.")]
BArg = Annotated[str, typer.Argument(help="The other one (a second run, or A's export).")]
DataOpt = Annotated[str | None, typer.Option(
    "--data", "-d", help="Dataset.", show_default="the one A was trained on")]
SplitOpt = Annotated[str, typer.Option("--split", help="train, val, test, or all.")]
DataDirOpt = Annotated[str | None, typer.Option("--data-dir", help="Folder holding the dataset files.")]
MaxSamplesOpt = Annotated[int | None, typer.Option(
    "--max-samples", min=1, help="Compare on at most N images, stratified.")]


def compare(
    a: AArg,
    b: BArg,
    data: DataOpt = None,
    split: SplitOpt = "test",
    data_dir: DataDirOpt = None,
    max_samples: MaxSamplesOpt = None,
    batch_size: InferenceBatchSizeOpt = 512,
    device: CommandDeviceOpt = "auto",
    threads: CommandThreadsOpt = None,
    json_out: JsonOpt = False,
) -> None:
    """Compare two networks on the same images: configuration diff, metric deltas (B - A),
    per-class F1 deltas, the confusion-matrix difference and the images whose prediction
    flipped either way."""
    from cnncli import output
    from cnncli.compare import compare_runs

    doc = compare_runs(a, b, data=data, split=split, data_dir=data_dir, batch_size=batch_size,
                       device=device, threads=threads, max_samples=max_samples)
    if json_out:
        output.emit_json(doc)
        return
    _render(doc)


def _value(v) -> str:
    text = "-" if v is None else (f"{v:.6g}" if isinstance(v, float) else str(v))
    return text if len(text) <= 60 else text[:57] + "..."


def _render(doc: dict) -> None:
    from cnncli import output

    print(f"A = {doc['a']['ref']}\nB = {doc['b']['ref']}\non {doc['dataset']} ({doc['split']}, {doc['n']} images)")
    output.render_rows(["setting", "A", "B"], [[d["key"], _value(d["a"]), _value(d["b"])] for d in doc["config_diff"]],
                       title="configuration that differs" if doc["config_diff"] else "the same configuration")
    output.render_rows(["metric", "A", "B", "B - A"],
                       [[m["metric"], f"{m['a']:.4f}", f"{m['b']:.4f}", f"{m['delta']:+.4f}"] for m in doc["metrics"]],
                       title="metrics", justify=["left", "right", "right", "right"])
    output.render_rows(["class", "F1 A", "F1 B", "B - A", "support"],
                       [[p["class"], f"{p['f1_a']:.4f}", f"{p['f1_b']:.4f}", f"{p['delta']:+.4f}", p["support"]]
                        for p in doc["per_class_f1"]],
                       title="per-class F1", justify=["left", "right", "right", "right", "right"])
    names = [n[:9] for n in doc["class_names"]]
    output.render_rows(["true \\ predicted"] + names,
                       [[names[i]] + [f"{v:+d}" if v else "0" for v in row] for i, row in enumerate(doc["confusion_delta"])],
                       title="confusion matrix, B - A", justify=["left"] + ["right"] * len(names))
    flips = doc["flipped"]
    rows = [[f["id"], f["true"], f["a"], f["b"], kind] for kind, key in (("right -> wrong", "to_wrong"),
                                                                           ("wrong -> right", "to_right"))
            for f in flips[key]]
    footer = [f"{len(flips['to_wrong'])} image(s) right in A and wrong in B, {len(flips['to_right'])} wrong in A and "
              f"right in B; {doc['changed_predictions']} prediction(s) changed in all"]
    if len(rows) > SHOWN:
        footer.append(f"(the first {SHOWN} of {len(rows)} flips shown; --json lists them all)")
    output.render_rows(["image", "true", "A", "B", "flip"], rows[:SHOWN], title="flipped images", footer=footer)
