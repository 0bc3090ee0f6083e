"""`cnncli new-model NAME`: write a TOML model file that follows the lecture's design rules.

The design, and the check that the file builds (on the meta device: shapes only), live in the
library (`cnncli.models.model_file.new_model_file`); this command parses the options, writes
the file atomically and never overwrites a file without --force.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from cnncli.cli.options import ForceOpt

NameArg = Annotated[str, typer.Argument(
    metavar="NAME",
    help="Name of the model; the file is NAME.toml (NAME may be a path ending in .toml).")]
InputOpt = Annotated[str, typer.Option(
    "--input", "-i", metavar="CxHxW",
    help="Input image shape, e.g. 1x28x28 (Fashion-MNIST) or 3x32x32 (CIFAR-10).")]
ClassesOpt = Annotated[int, typer.Option("--classes", "-c", min=1, help="Number of classes.")]
BlocksOpt = Annotated[int, typer.Option(
    "--blocks", min=1, help="Convolution blocks, each ending with 2x2 max pooling.")]
WidthOpt = Annotated[int, typer.Option(
    "--width", min=1, help="Filters of the first block (doubled after each pooling layer).")]
OutOpt = Annotated[Path | None, typer.Option(
    "--out", "-o", help="Where to write the file.", show_default="NAME.toml")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print a JSON document instead of the path.")]


def new_model(
    name: NameArg,
    input_size: InputOpt = "1x28x28",
    classes: ClassesOpt = 10,
    blocks: BlocksOpt = 3,
    width: WidthOpt = 64,
    out: OutOpt = None,
    force: ForceOpt = False,
    as_json: JsonOpt = False,
) -> None:
    """Write a model file following the lecture's design rules for a CNN, ready to edit; print its path.

    A 7x7 first filter then 3x3 filters, their number doubling after each pooling layer, ReLU,
    then dense layers that shrink, each with dropout 0.5.
    """
    from cnncli.cli.common import parse_size
    from cnncli.errors import InputError
    from cnncli.models.model_file import new_model_file
    from cnncli.output import emit_json, note, plural
    from cnncli.outputs import NEW_FILE, check_file, forced, write_file

    model_name = Path(name).name.removesuffix(".toml")
    if not model_name:
        raise InputError(f"NAME must name the model, got '{name}'")
    path = out if out is not None else Path(name if name.endswith(".toml") else f"{name}.toml")
    if path.is_file() and not force:
        raise InputError(f"{path} already exists; pass --force to overwrite it")
    check_file(path, NEW_FILE, force=force)  # no special file even with --force; no folders made

    size = parse_size(input_size)
    made = new_model_file(model_name, size, classes, blocks=blocks, width=width, source=str(path))
    with forced(force):
        write_file(path, made.text.encode("utf-8"), NEW_FILE)
    info, params = made.info, made.params
    if as_json:
        emit_json({"path": str(path), "name": model_name, "input": list(info.input_size),
                   "num_classes": info.num_classes, "blocks": blocks, "width": width,
                   "layers": made.layers, "params": params})
        return
    print(path)
    note(f"{model_name}: {plural(made.layers, 'layer')}, {params:,} parameters; "
         f"next: cnncli inspect {path}")
