"""`cnncli datasets`: the datasets cnncli can load (bare form), `show` samples and `check` the data."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from cnncli.cli.options import ForceOpt, _range

datasets_app = typer.Typer(
    name="datasets",
    help="List the datasets (bare form), draw samples of one (show), check one for broken files, "
    "duplicates and train/test leaks (check), or write one as WebDataset shards (pack).",
    invoke_without_command=True,
    no_args_is_help=False,
)

class Split(StrEnum):
    train = "train"
    val = "val"
    test = "test"


DataDirOpt = Annotated[Path | None, typer.Option(
    "--data-dir", help="Also look in this folder first (as train/eval --data-dir do).")]
NameArg = Annotated[str, typer.Argument(
    help="A dataset name (see 'cnncli datasets'), imagefolder:PATH or csv:FILE (columns path,label[,split]).")]
ListJsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document instead of a table.")]
SplitOpt = Annotated[Split, typer.Option("--split", help="Which split to draw from.")]
PerClassOpt = Annotated[int, typer.Option("--per-class", "-k", help="Images per class (1 to 100).")]
GridOutOpt = Annotated[Path | None, typer.Option(
    "--out", "-o", help="The grid PNG to write.", show_default="<dataset>-<split>.png unless --export")]
ExportOpt = Annotated[Path | None, typer.Option(
    "--export", help="Also write the samples as PNG files named by class (<class>-1.png, ...) into this folder.")]
SeedOpt = Annotated[int, typer.Option("--seed", callback=_range(0, 2**32 - 1),
                                     help="Which samples: the same seed, the same images.")]
ReportJsonOpt = Annotated[bool, typer.Option("--json", help="Print the whole report as one JSON document.")]
StrictOpt = Annotated[bool, typer.Option(
    "--strict", help="Exit 1 when a val or test image also appears (exactly or nearly) in train: for CI.")]
ThresholdOpt = Annotated[int, typer.Option(
    "--threshold", min=0, max=64, help="Near duplicates: pHashes at most this many bits apart (of 64) are compared.")]
MinSimilarityOpt = Annotated[float, typer.Option(
    "--min-similarity", help="Near duplicates: the least correlation of their 16x16 thumbnails.")]
MaxPairsOpt = Annotated[int, typer.Option(
    "--max-pairs", min=0, help="List at most this many pairs (all are counted).")]
ListOpt = Annotated[int, typer.Option(
    "--list", min=0, help="Table: list this many pairs (--json: all up to --max-pairs).")]
PackSourceArg = Annotated[str, typer.Argument(
    help="Any dataset cnncli reads: a name (see 'cnncli datasets'), imagefolder:PATH or csv:FILE.")]
PackOutArg = Annotated[Path, typer.Argument(help="The folder for the shards and index.json (new or empty).")]
ShardSizeOpt = Annotated[int, typer.Option(
    "--shard-size", min=1, max=1_000_000, help="Samples per shard (tar file).")]
PackImgSizeOpt = Annotated[int | None, typer.Option(
    "--img-size", min=1, max=4096, help="Scale each image so that its shorter side is this many pixels "
    "(re-encoded); files are copied as they are without it.", show_default="keep")]
PackForceOpt = Annotated[bool, typer.Option("--force", help="Replace a pack already in the folder.")]
PackJsonOpt = Annotated[bool, typer.Option("--json", help="Print the index written (index.json) as JSON.")]
WorkersOpt = Annotated[int | None, typer.Option(
    "--workers", min=1, max=64, help="Threads reading files.", show_default="up to 4")]


@datasets_app.callback()
def datasets(
    ctx: typer.Context,
    json_out: ListJsonOpt = False,
    data_dir: DataDirOpt = None,
) -> None:
    """List the datasets: classes, image size, channels, and where each was found (or not).

    Looked up in order: --data-dir, $CNNCLI_DATA, the cache folder (~/.cache/cnncli), and
    /usr/share/datasets (Debian's dataset-fashion-mnist).
    """
    if ctx.invoked_subcommand is not None:
        return
    from cnncli.data.registry import list_datasets
    from cnncli.output import emit_json, render_rows

    rows = list_datasets(data_dir)
    if json_out:
        emit_json({"datasets": rows})
        return

    def where(row) -> str:
        if row["found"] is None:
            return "any folder"
        if row["name"] == "fashion-mnist-mini":
            return "embedded"  # the package's own folder: a long path that says nothing
        return row["location"] if row["found"] else "not found"

    def size(row) -> str:
        return "x".join(str(v) for v in row["image_size"]) if row["image_size"] else "any"

    missing = [r["name"] for r in rows if r["found"] is False]
    footer = []
    if missing:
        footer.append(
            f"not found: {', '.join(missing)}; get it with --data-dir DIR, $CNNCLI_DATA=DIR or --download "
            "(fashion-mnist also: apt-get install dataset-fashion-mnist)"
        )
    render_rows(
        ["name", "classes", "size", "channels", "location"],
        [
            [
                r["name"],
                r["classes"] if r["classes"] is not None else "any",
                size(r),
                r["channels"] if r["channels"] is not None else "1|3",
                where(r),
            ]
            for r in rows
        ],
        footer=footer,
        justify=["left", "right", "right", "right", "left"],
    )


@datasets_app.command("show")
def show(
    name: NameArg,
    split: SplitOpt = Split.train,
    per_class: PerClassOpt = 8,
    out: GridOutOpt = None,
    export: ExportOpt = None,
    seed: SeedOpt = 0,
    data_dir: DataDirOpt = None,
    force: ForceOpt = False,
) -> None:
    """A labelled grid of samples per class as PNG, and sample files to try 'cnncli predict' on.

    Prints the paths written, one a line.
    """
    from cnncli.data.show import show_dataset
    from cnncli.outputs import forced

    with forced(force):
        written = show_dataset(name, split.value, per_class, out, export, data_dir, seed)
    for path in ([written["grid"]] if written["grid"] else []) + written["exported"]:
        print(path)


@datasets_app.command("check")
def check(
    name: NameArg,
    json_out: ReportJsonOpt = False,
    strict: StrictOpt = False,
    threshold: ThresholdOpt = 6,
    min_similarity: MinSimilarityOpt = 0.99,
    max_pairs: MaxPairsOpt = 1000,
    show_pairs: ListOpt = 20,
    workers: WorkersOpt = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Class counts, sizes, unreadable files, duplicates, train/test leaks and label conflicts.

    Per split: class counts, image sizes and channels; unreadable files; exact and near
    duplicates within and across splits, and the pairs whose labels disagree. Findings are
    listed and the exit code is 0, unless --strict and a held-out image leaks.
    """
    from cnncli import output
    from cnncli.data.check import check_dataset

    report = check_dataset(name, data_dir, threshold, min_similarity, max_pairs, workers)
    output.note(f"checked {report['images']:,} images in {report['seconds']:.1f} s")
    if json_out:
        output.emit_json(report)
    else:
        _render_check(report, show_pairs)
    if strict and report["leak"]:
        output.warn(f"{report['leaks']['held_out_images']} held-out image(s) also appear in train (--strict)")
        raise typer.Exit(1)


def _names(names: list[str], shown: int = 6) -> str:
    return ", ".join(names[:shown]) + (" ..." if len(names) > shown else "")


def _balance_line(balance: dict) -> str:
    from cnncli.data.check import FEW_IMAGES

    if not balance["largest"]:
        return "class balance: no images"
    big, small = balance["largest"], balance["smallest"]
    line = (f"class balance: largest {big['class']} {big['images']:,}, smallest {small['class']} "
            f"{small['images']:,} ({balance['ratio']:g}x)")
    if balance["few"]:
        line += f"; fewer than {FEW_IMAGES} images: {_names(balance['few'])}"
    return line + "".join(f"; none in {split}: {_names(names)}" for split, names in balance["absent"].items())


def _render_check(report: dict, show_pairs: int) -> None:
    from cnncli.output import render_rows

    splits = list(report["splits"])
    render_rows(
        ["class"] + splits,
        [[c] + [report["splits"][s]["class_counts"][c] for s in splits] for c in report["classes"]]
        + [["total"] + [report["splits"][s]["images"] for s in splits]],
        title=f"{report['dataset']}: {report['images']:,} images",
        justify=["left"] + ["right"] * len(splits),
    )
    sizes = list(report["image_sizes"].items())
    shown = ", ".join(f"{k}: {v:,}" for k, v in sizes[:8]) + (f", {len(sizes) - 8} more" if len(sizes) > 8 else "")
    channels = ", ".join(f"{k}: {v:,}" for k, v in report["channels"].items())
    exact, leaks = report["exact_duplicates"], report["leaks"]
    lines = [
        _balance_line(report["balance"]),
        f"image sizes (WxH): {shown or 'none'}",
        f"channels: {channels or 'none'}",
        f"unreadable files: {len(report['unreadable'])}" + (f", not images: {len(report['not_images'])}"
                                                           if report["not_images"] else ""),
        f"exact duplicates: {exact['groups']:,} groups, {exact['images']:,} images, {exact['pairs']:,} pairs",
        f"near duplicates: {report['near_duplicates']['pairs']:,} pairs (pHash within "
        f"{report['settings']['threshold']} bits, similarity >= {report['settings']['min_similarity']})",
        f"across splits: {report['cross_split_pairs']:,} pairs; held-out images also in train: "
        f"{leaks['held_out_images']:,}",
        f"label conflicts: {report['label_conflicts']:,} pairs",
    ]
    render_rows(["finding"], [[line] for line in lines])
    if report["unreadable"]:
        render_rows(["unreadable", "split", "reason"],
                    [[u["path"], u["split"], u["reason"]] for u in report["unreadable"][:show_pairs]])
    pairs = report["pairs"][:show_pairs]
    if pairs:
        total = report["exact_duplicates"]["pairs"] + report["near_duplicates"]["pairs"]

        def flags(p) -> str:
            return ", ".join(f for f, on in (("leak", p["leak"]), ("label conflict", p["label_conflict"]),
                                             ("cross-split", p["cross_split"] and not p["leak"])) if on)

        render_rows(
            ["kind", "bits", "a", "b", "labels", "finding"],
            [[p["kind"], p["distance"], f"{p['a']['item']} ({p['a']['split']})",
              f"{p['b']['item']} ({p['b']['split']})", f"{p['a']['label']} / {p['b']['label']}", flags(p)]
             for p in pairs],
            title=f"pairs (first {len(pairs)} of {total:,}: leaks, then label conflicts, then the rest)",
            justify=["left", "right", "left", "left", "left", "left"],
        )


@datasets_app.command("pack")
def pack(
    source: PackSourceArg,
    out: PackOutArg,
    shard_size: ShardSizeOpt = 1000,
    img_size: PackImgSizeOpt = None,
    force: PackForceOpt = False,
    json_out: PackJsonOpt = False,
    data_dir: DataDirOpt = None,
) -> None:
    """Write a dataset as WebDataset tar shards plus index.json; train on them with --data wds:OUT.

    The splits are those cnncli trains on (train/val/test given, or held out with seed 0).
    Prints one line per split (shards, samples), or the index with --json.
    """
    from cnncli import output
    from cnncli.data.pack import pack_dataset

    doc = pack_dataset(source, out, shard_size, img_size, data_dir, force)
    if json_out:
        output.emit_json(doc)
        return
    output.render_rows(
        ["split", "shards", "samples"],
        [[name, len(s["shards"]), s["count"]] for name, s in doc["splits"].items()],
        title=f"{source} -> {out} ({len(doc['class_names'])} classes)",
        justify=["left", "right", "right"],
    )
