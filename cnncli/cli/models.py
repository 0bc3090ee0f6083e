"""`cnncli models [PATTERN]`: the networks cnncli can build, hand-built and timm in one list.

Choices, and why:
* The default source is `hand`: the dozen networks written from the papers answer at once
  (no torch, no timm import), while timm's 1,300+ architectures would bury them and cost
  timm's import (seconds). A note on stderr says how to list timm's; `--source all` lists both.
* A pattern that matches nothing prints an empty table (or `[]`) and exits 0, with a note on
  stderr: an empty answer to a query is still an answer, and pipelines (`--json | jq`) get
  valid JSON. A misspelt *model name* is an error where a model is required (inspect, train).
* Parameter counts of timm models need a build (on the meta device: shapes only, but still
  a fraction of a second each), so they are counted when at most 20 timm models match, or
  for all of them with `--params`. Hand-built counts are in the registry.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated

import typer

TIMM_PARAMS_LIMIT = 20


class Source(StrEnum):
    hand = "hand"
    timm = "timm"
    all = "all"


PatternArg = Annotated[str | None, typer.Argument(
    metavar="[PATTERN]", show_default=False,
    help="Glob (resnet*, timm/efficientnet_b?) or a plain word matched anywhere in the name.")]
SourceOpt = Annotated[Source, typer.Option(
    "--source", "-s",
    help="hand: the networks written from the papers (instant); timm: every timm "
    "architecture (imports timm); all: both.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="One JSON list on stdout.")]
ParamsOpt = Annotated[bool, typer.Option(
    "--params",
    help=f"Count the parameters of every matching timm model (without it: only when at most "
    f"{TIMM_PARAMS_LIMIT} match).")]


def models(
    pattern: PatternArg = None,
    source: SourceOpt = Source.hand,
    as_json: JsonOpt = False,
    params: ParamsOpt = False,
) -> None:
    """List the networks cnncli can build: name, source, parameters, default input, description."""
    from cnncli.models.registry import list_models
    from cnncli.output import emit_json, note, render_rows

    source = Source(source)
    found = list_models(pattern, source=source.value)
    timm_found = [m for m in found if m.source == "timm"]
    if timm_found and (params or len(timm_found) <= TIMM_PARAMS_LIMIT):
        found = _with_timm_params(found)
    elif timm_found:
        note(f"{len(timm_found)} timm models match: parameters are counted for at most "
             f"{TIMM_PARAMS_LIMIT}; narrow the pattern or pass --params")

    if as_json:
        emit_json([m.to_dict() for m in found])
    elif found:
        rows = [[m.name, m.source, _params(m.params), "x".join(map(str, m.input_size)), m.description]
                for m in found]
        render_rows(["Name", "Source", "Params", "Input", "Description"], rows,
                    justify=["left", "left", "right", "left", "left"])
    if not found:
        where = {"hand": "hand-built ", "timm": "timm ", "all": ""}[source.value]
        note(f"no {where}model matches '{pattern}'" if pattern else f"no {where}models")
    if source is Source.hand and not as_json:
        note("timm's architectures are listed with --source timm (or all), e.g. "
             f"'cnncli models --source timm {pattern or 'resnet'}'")


def _params(n: int | None) -> str:
    from cnncli.output import human_count

    return human_count(n)  # None -> "-"


def _with_timm_params(found):
    from dataclasses import replace

    from cnncli.models.registry import count_params, create_model

    out = []
    for m in found:
        if m.source == "timm" and m.params is None:
            m = replace(m, params=count_params(create_model(m.name, device="meta")))
        out.append(m)
    return out
