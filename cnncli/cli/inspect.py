"""`cnncli inspect MODEL`: the layer table of a network, as in the lecture's AlexNet table.

Thin on purpose: parse the options, ask `cnncli.summary.summarize` for the rows, render them.
torch is imported only inside the command (through cnncli.summary).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer


class Format(StrEnum):
    table = "table"
    json = "json"
    csv = "csv"
    markdown = "markdown"


COLUMNS = ["Name", "Type", "Maps", "Size", "Kernel", "Stride", "Padding", "Activation",
           "Output shape", "Params", "MACs", "Receptive field"]
CSV_COLUMNS = ["name", "type", "maps", "size", "kernel", "stride", "padding", "activation",
               "output_shape", "params", "macs", "receptive_field"]
_RIGHT = {"Maps", "Params", "MACs"}


ModelArg = Annotated[str, typer.Argument(
    metavar="MODEL",
    help="A registry name (alexnet, resnet50, timm/efficientnet_b0; see 'cnncli models'), "
    "a cnncli checkpoint (.safetensors or run folder) or a TOML model file.")]
InputOpt = Annotated[str | None, typer.Option(
    "--input", "-i", metavar="CxHxW", show_default="the model's own",
    help="Input image size, e.g. 3x224x224. The channel count rebuilds the first layer.")]
NumClassesOpt = Annotated[int | None, typer.Option(
    "--num-classes", min=1, help="Rebuild the classifier with this many classes.")]
DepthOpt = Annotated[int | None, typer.Option(
    "--depth", min=1,
    show_default="every layer; composite blocks (inception, residual units, ...) as one row each",
    help="Open modules down to this depth (the model's children are depth 1); what is still "
    "composite at that depth is one row.")]
FormatOpt = Annotated[Format, typer.Option("--format", "-f", help="Output format.")]


def inspect(
    model: ModelArg,
    input_size: InputOpt = None,
    num_classes: NumClassesOpt = None,
    depth: DepthOpt = None,
    fmt: FormatOpt = Format.table,
    explain: ExplainOpt = False,
) -> None:
    """Show a network layer by layer: maps, size, kernel, stride, padding, activation, output
    shape, parameters, multiply-adds and receptive field, then the totals."""
    from cnncli.cli.common import parse_size
    from cnncli.output import emit_json, render_rows
    from cnncli.summary import summarize

    size = parse_size(input_size) if input_size is not None else None
    summary = summarize(model, input_size=size, num_classes=num_classes, depth=depth)
    fmt = Format(fmt)
    if explain:
        _explained(summary, fmt)
        return
    if fmt is Format.json:
        emit_json(summary.to_dict())
        return
    if fmt is Format.csv:
        render_rows(CSV_COLUMNS, [_csv_row(r) for r in summary.rows], fmt="csv")
        return
    rows = [_input_row(summary)] + [_table_row(r) for r in summary.rows]
    render_rows(COLUMNS, rows, fmt=fmt.value, title=_title(summary), footer=_footer(summary),
                justify=["right" if c in _RIGHT else "left" for c in COLUMNS])


def _title(summary) -> str:
    from cnncli.summary import format_size

    classes = f", {summary.num_classes} classes" if summary.num_classes else ""
    return f"{summary.model}: input {format_size(summary.input_size)}{classes}"


def _footer(summary) -> list[str]:
    from cnncli.output import human_bytes, human_count

    return [
        f"Parameters: {summary.total_params:,} (trainable {summary.trainable_params:,}, "
        f"frozen {summary.frozen_params:,})",
        f"Multiply-adds: {human_count(summary.macs)} ({summary.macs:,}) per image",
        f"Weight size: {human_bytes(summary.weight_bytes)}",
        f"Activation memory: {human_bytes(summary.activation_bytes)} per image "
        "(float32 outputs of every layer)",
    ]


def _dims(values) -> str:
    """[3, 3] -> '3x3'; [4, 4] as a stride -> '4' via _stride."""
    if values is None:
        return "-"
    return "x".join(str(v) for v in values)


def _stride(values) -> str:
    if values is None:
        return "-"
    return str(values[0]) if len(set(values)) == 1 else _dims(values)


def _padding(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return _stride(value)


def _input_row(summary) -> list[str]:
    from cnncli.summary import format_size

    c, h, w = summary.input_size
    maps = {1: "1 (gray)", 3: "3 (RGB)"}.get(c, str(c))
    return ["In", "Input", maps, f"{h}x{w}", "-", "-", "-", "-", format_size(summary.input_size),
            "-", "-", "-"]


def _table_row(row) -> list[str]:
    from cnncli.output import human_count
    from cnncli.summary import display_activation

    return [
        row.name, row.type, "-" if row.maps is None else str(row.maps), row.size,
        _dims(row.kernel), _stride(row.stride), _padding(row.padding),
        display_activation(row.activation), _dims(row.output_shape), f"{row.params:,}",
        human_count(row.macs) if row.macs else "0", _dims(row.receptive_field),
    ]


def _csv_row(row) -> list:
    """The table's cells, with exact numbers and empty cells instead of '-'."""
    cells = _table_row(row)
    cells[COLUMNS.index("Params")] = row.params
    cells[COLUMNS.index("MACs")] = row.macs
    cells[COLUMNS.index("Activation")] = row.activation or ""
    return ["" if c == "-" else c for c in cells]


# --- --explain -------------------------------------------------------------------------------

# declared next to what it switches on; typer reads the annotations when the command runs
ExplainOpt = Annotated[bool, typer.Option(
    "--explain",
    help="Under every layer, the arithmetic behind its size, parameters, multiply-adds and "
    "receptive field with the real numbers; and what a fully connected layer would cost "
    "instead of the first convolution (JSON: an 'explain' object per layer). "
    "docs/concepts.md explains each rule.")]
EXPLAINED = (("size", "size"), ("params", "params"), ("macs", "MACs"), ("receptive_field", "field"))


def _explained(summary, fmt: Format) -> None:
    """The table with the arithmetic of every row under it (cnncli.summary.explain)."""
    from cnncli.output import emit_json, render_rows
    from cnncli.summary.explain import explain_network, explain_rows

    explanations = explain_rows(summary)
    network = explain_network(summary)
    if fmt is Format.json:
        doc = summary.to_dict()
        for layer, explanation in zip(doc["layers"], explanations):
            layer["explain"] = explanation
        doc["explain"] = network
        emit_json(doc)
        return
    if fmt is Format.csv:
        columns = CSV_COLUMNS + [f"explain_{key}" for key, _ in EXPLAINED]
        rows = [_csv_row(r) + [e[key]["text"] for key, _ in EXPLAINED]
                for r, e in zip(summary.rows, explanations)]
        render_rows(columns, rows, fmt="csv")
        return
    comparison = network["dense_comparison"]
    closing = ["", *network["legend"]] + (["", *comparison["text"]] if comparison else [])
    footer = _footer(summary) + closing
    justify = ["right" if c in _RIGHT else "left" for c in COLUMNS]
    if fmt is Format.markdown:
        rows = [_input_row(summary)]
        for row, explanation in zip(summary.rows, explanations):
            lines = [f"{label}: {explanation[key]['text']}".replace("*", "\\*")
                     for key, label in EXPLAINED]
            rows += [_table_row(row), ["<br>".join(lines)] + [""] * (len(COLUMNS) - 1)]
        render_rows(COLUMNS, rows, fmt="markdown", title=_title(summary),
                    footer=[t.replace("*", "\\*") for t in footer], justify=justify)
        return
    _render_explained_table(summary, explanations, footer, justify)


def _render_explained_table(summary, explanations, footer, justify) -> None:
    """Plain columns with each row's arithmetic on the lines under it (never wrapped: a line
    of arithmetic is read whole; on a terminal the explanation is dimmed)."""
    from cnncli.output import stdout_console

    rows = [_input_row(summary)] + [_table_row(r) for r in summary.rows]
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(COLUMNS)]

    def line(cells) -> str:
        return "  ".join(c.rjust(w) if j == "right" else c.ljust(w)
                         for c, w, j in zip(cells, widths, justify)).rstrip()

    indent = " " * (widths[0] + 2)
    console = stdout_console()

    def say(text: str = "", style: str | None = None) -> None:
        console.print(text, markup=False, highlight=False, soft_wrap=True, style=style)

    say(_title(summary))
    say()
    say(line(COLUMNS), style="bold")
    say("  ".join("-" * w for w in widths))
    say(line(rows[0]))
    for cells, explanation in zip(rows[1:], explanations):
        say(line(cells))
        for key, label in EXPLAINED:
            say(f"{indent}{label:<7}{explanation[key]['text']}", style="dim")
    say()
    for text in footer:
        say(text)
