"""`cnncli new-model NAME`: write a TOML model file that follows the seed's good practice.

The design, and the check that the file builds (on the meta device: shapes only), live in the
library (`cnncli.models.model_file.new_model_file`); this command parses the options, writes
the file atomically and never overwrites a file without --force.
"""

from __future__ import annotations

from pathlib import Path

import typer


def new_model(
    name: str = typer.Argument(
        ..., metavar="NAME",
        help="Name of the model; the file is NAME.toml (NAME may be a path ending in .toml)."),
    input_size: str = typer.Option(
        "1x28x28", "--input", "-i", metavar="CxHxW",
        help="Input image shape, e.g. 1x28x28 (Fashion-MNIST) or 3x32x32 (CIFAR-10)."),
    classes: int = typer.Option(10, "--classes", "-c", min=1, help="Number of classes."),
    blocks: int = typer.Option(
        3, "--blocks", min=1, help="Convolution blocks, each ending with 2x2 max pooling."),
    width: int = typer.Option(
        64, "--width", min=1, help="Filters of the first block (doubled after each pooling layer)."),
    out: Path | None = typer.Option(
        None, "--out", "-o", help="Where to write the file (default: NAME.toml)."),
    force: bool = typer.Option(False, "--force", help="Overwrite an existing file."),
    as_json: bool = typer.Option(False, "--json", help="Print a JSON document instead of the path."),
) -> None:
    """Write a model file following the seed's good practice (7x7 then 3x3 filters doubling after
    each pooling, ReLU, shrinking dense layers with dropout 0.5), ready to edit; print its path."""
    from cnncli.cli.common import parse_size
    from cnncli.errors import InputError
    from cnncli.fileio import atomic_write_text
    from cnncli.models.model_file import new_model_file
    from cnncli.output import emit_json, note

    model_name = Path(name).name.removesuffix(".toml")
    if not model_name:
        raise InputError(f"NAME must name the model, got '{name}'")
    path = out if out is not None else Path(name if name.endswith(".toml") else f"{name}.toml")
    if path.is_dir():
        raise InputError(f"{path} is a folder; pass --out FILE.toml")
    if path.exists() and not force:
        raise InputError(f"{path} already exists; pass --force to overwrite it")

    size = parse_size(input_size)
    made = new_model_file(model_name, size, classes, blocks=blocks, width=width, source=str(path))
    atomic_write_text(path, made.text)
    info, params = made.info, made.params
    if as_json:
        emit_json({"path": str(path), "name": model_name, "input": list(info.input_size),
                   "num_classes": info.num_classes, "blocks": blocks, "width": width,
                   "layers": made.layers, "params": params})
        return
    print(path)
    note(f"{model_name}: {made.layers} layers, {params:,} parameters; "
         f"next: cnncli inspect {path}")
