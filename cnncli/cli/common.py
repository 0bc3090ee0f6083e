"""Option helpers shared by the subcommands (light: no torch at import time)."""

from __future__ import annotations

import inspect
from enum import Enum, StrEnum

from cnncli.errors import InputError


class Device(StrEnum):
    """The device names without an index (`--device` itself takes cuda:N and N too: parse_device)."""

    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"
    mps = "mps"


class Optimizer(StrEnum):
    """timm's optimizer names (engine/config.OPTIMIZER_DEFAULTS has their defaults; a test keeps both equal)."""

    sgd = "sgd"
    adamw = "adamw"
    adam = "adam"
    nadamw = "nadamw"
    radamw = "radamw"
    lamb = "lamb"
    lion = "lion"
    rmsprop = "rmsprop"
    rmsproptf = "rmsproptf"
    adan = "adan"
    adoptw = "adoptw"
    muon = "muon"


class Schedule(StrEnum):
    cosine = "cosine"
    onecycle = "onecycle"
    step = "step"
    constant = "constant"
    plateau = "plateau"


class Sampler(StrEnum):
    random = "random"
    balanced = "balanced"


class Keep(StrEnum):
    best = "best"
    last = "last"


def reflow(doc: str | None) -> str | None:
    """A docstring as help text: paragraphs kept, the line breaks inside each one removed.

    Typer joins the lines of a help text's first paragraph only; the later ones would keep
    the source's line breaks and come out ragged at any terminal width.
    """
    if not doc:
        return doc
    paragraphs = inspect.cleandoc(doc).split("\n\n")
    return "\n\n".join(" ".join(line.strip() for line in p.splitlines()) for p in paragraphs)


def command(group, name: str, function, **settings) -> None:
    """Register `function` as the command `name` of a Typer app, its docstring reflowed."""
    group.command(name, help=reflow(function.__doc__), **settings)(function)


def enum_value(value):
    return value.value if isinstance(value, Enum) else value


def parse_device(text: str) -> str:
    """A --device value as every peer spells it: auto, cpu, cuda, cuda:N, N (GPU N), mps.

    Returns the name the engine resolves ('1' -> 'cuda:1'); raises ValueError (which Typer
    turns into a usage error, exit 2) for anything else. Whether the device exists is the
    engine's question (cnncli.engine.device.resolve_device), asked when the work starts.
    """
    name = str(text).strip().lower()
    if name in ("auto", "cpu", "cuda", "mps"):
        return name
    index = name.removeprefix("cuda:")
    if index.isdigit() and index.isascii():
        return f"cuda:{int(index)}"
    raise ValueError(f"'{text}' is not a device; use auto, cpu, cuda, cuda:N, N (a GPU index) or mps")


def parse_size(text: str, what: str = "--input") -> tuple[int, int, int]:
    """'3x224x224' (or '3,224,224') -> (3, 224, 224)."""
    parts = text.lower().replace(",", "x").split("x")
    try:
        dims = tuple(int(p) for p in parts)
    except ValueError:
        dims = ()
    if len(dims) != 3 or min(dims) <= 0:
        raise InputError(f"{what} must be CxHxW with positive integers, like 3x224x224; got '{text}'")
    return dims  # type: ignore[return-value]


def report_run(result, json_out: bool) -> None:
    """The end of `train` and `finetune`: one line, or with --json the run's document (rank 0 only)."""
    from cnncli import output
    from cnncli.engine import distributed
    from cnncli.engine.report import end_of_run_line, run_summary

    if not distributed.context().is_main:
        return
    if json_out:
        output.emit_json(run_summary(result))
    else:
        print(end_of_run_line(result))
