"""`cnncli datasets`: the datasets cnncli can load, their shape, and where they were found."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

JsonOpt = Annotated[bool, typer.Option("--json", help="Print one JSON document instead of a table.")]
DataDirOpt = Annotated[Path | None, typer.Option(
    "--data-dir", help="Also look in this folder first (as train/eval --data-dir do).")]


def datasets(json_out: JsonOpt = False, data_dir: DataDirOpt = None) -> None:
    """List the datasets: classes, image size, channels, and where each was found (or not).

    Looked up in order: --data-dir, $CNNCLI_DATA, the cache folder (~/.cache/cnncli), and
    /usr/share/datasets (Debian's dataset-fashion-mnist).
    """
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
