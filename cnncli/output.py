"""The one place that decides where output goes.

stdout carries data only (tables, JSON documents, JSON lines); everything meant for a person
watching (progress, notes, warnings) goes to stderr. Rich colour only on a terminal, and
never when NO_COLOR is set (rich honours it).
"""

from __future__ import annotations

import csv
import io
import json
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

_quiet = False


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet


def stderr_console():
    from rich.console import Console

    return Console(stderr=True, highlight=False)


def stdout_console():
    from rich.console import Console

    # piped output is data: never cut or wrap it at rich's default 80 columns
    width = None if sys.stdout.isatty() else 200
    return Console(highlight=False, width=width)


def note(message: str) -> None:
    """A line for the person at the terminal (stderr); silenced by --quiet."""
    if not _quiet:
        print(message, file=sys.stderr, flush=True)


def warn(message: str) -> None:
    """A warning on stderr; shown even with --quiet."""
    print(f"warning: {message}", file=sys.stderr, flush=True)


def _json_default(value: Any):
    # numpy scalars, tuples of tensors' shapes, paths: everything becomes plain JSON
    if hasattr(value, "item"):
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return str(value)


def _clean(value: Any) -> Any:
    """NaN and infinities are not JSON: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Mapping):  # a dict, or a read-only view such as a checkpoint's RunDocument
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


def to_json(document: Any, indent: int | None = 2) -> str:
    return json.dumps(_clean(document), indent=indent, default=_json_default)


def emit_json(document: Any) -> None:
    """One JSON document on stdout."""
    sys.stdout.write(to_json(document) + "\n")
    sys.stdout.flush()


def emit_json_line(document: Any) -> None:
    """One JSON line on stdout (for streams such as predict)."""
    sys.stdout.write(to_json(document, indent=None) + "\n")
    sys.stdout.flush()


def render_rows(
    columns: Sequence[str],
    rows: Iterable[Sequence[Any]],
    fmt: str = "table",
    title: str | None = None,
    footer: Sequence[str] = (),
    justify: Sequence[str] | None = None,
) -> None:
    """Print rows to stdout as a rich table, CSV or a Markdown table."""
    rows = [["" if v is None else str(v) for v in row] for row in rows]
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(rows)
        sys.stdout.write(buf.getvalue())
        return
    if fmt == "markdown":
        lines = []
        if title:
            lines += [f"**{title}**", ""]
        lines.append("| " + " | ".join(columns) + " |")
        aligns = justify or ["left"] * len(columns)
        lines.append("|" + "|".join("---:" if a == "right" else "---" for a in aligns) + "|")
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        if footer:
            lines.append("")
            lines += list(footer)
        sys.stdout.write("\n".join(lines) + "\n")
        return
    from rich import box
    from rich.table import Table

    table = Table(title=title, box=box.SIMPLE_HEAD, title_justify="left")
    for i, col in enumerate(columns):
        table.add_column(col, justify=(justify[i] if justify else "left"))
    for row in rows:
        table.add_row(*row)
    console = stdout_console()
    console.print(table)
    for line in footer:
        console.print(line)


def human_count(n: float | int | None) -> str:
    """1234567 -> '1.23M' (used in tables; JSON keeps exact integers)."""
    if n is None:
        return "-"
    n = float(n)
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(n) >= scale:
            return f"{n / scale:.2f}{unit}"
    return f"{int(n)}" if n == int(n) else f"{n:.2f}"


def human_bytes(n: float | int) -> str:
    n = float(n)
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{int(n)} B"


def plural(n: int, word: str, many: str | None = None) -> str:
    """1 -> '1 epoch', 2 -> '2 epochs' (`many` for irregular plurals)."""
    return f"{n} {word if n == 1 else (many or word + 's')}"
