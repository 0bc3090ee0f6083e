"""Click's and Typer's usage errors in cnncli's words: one line, lower case, no pydantic.

Typer (>= 0.16) checks option values with pydantic, whose messages ("Value error, 'adam' is
not one of ...", "Input should be a valid integer, unable to parse string as an integer")
would reach the user as they are; `usage_message` says the same thing plainly. The exit codes
and the "error: " prefix are applied by `cnncli.cli.CnnGroup` through `cnncli.errors.error_line`.
"""

from __future__ import annotations

import click

# typer >= 0.16 carries its own copy of click's exceptions; catch both families
try:
    from typer._click import exceptions as _typer_click
except ImportError:  # older typer: plain click only
    _typer_click = None

USAGE_ERRORS: tuple = (click.UsageError,) + ((_typer_click.UsageError,) if _typer_click else ())
CLICK_ERRORS: tuple = (click.ClickException,) + ((_typer_click.ClickException,) if _typer_click else ())
NO_ARGS_HELP: tuple = (_typer_click.NoArgsIsHelpError,) if _typer_click else ()
BAD_PARAMETER: tuple = (click.BadParameter,) + ((_typer_click.BadParameter,) if _typer_click else ())


def _number(value) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def _plain_validation(error: dict) -> str:
    """One pydantic error (from ValidationError.errors()) as a plain sentence."""
    kind, given, ctx = error.get("type", ""), error.get("input"), error.get("ctx") or {}
    if kind == "value_error" and "error" in ctx:  # our parsers' and Typer's choice ValueErrors
        return str(ctx["error"]).rstrip(".")
    if kind in ("int_parsing", "int_from_float", "int_type"):
        return f"{given!r} is not a whole number"
    if kind in ("float_parsing", "float_type", "finite_number"):
        return f"{given!r} is not a number"
    if kind in ("bool_parsing", "bool_type"):
        return f"{given!r} is not true or false"
    bounds = {"greater_than_equal": ("ge", "at least"), "greater_than": ("gt", "more than"),
              "less_than_equal": ("le", "at most"), "less_than": ("lt", "less than")}
    if kind in bounds:
        key, words = bounds[kind]
        return f"must be {words} {_number(ctx.get(key))}, got {given}"
    message = str(error.get("msg", "")).removeprefix("Value error, ")
    return _lower_first(message.rstrip("."))


def _lower_first(text: str) -> str:
    """'Invalid value' -> 'invalid value'; 'CUDA ...' and "'x' ..." stay as they are."""
    if len(text) > 1 and text[0].isupper() and text[1].islower():
        return text[0].lower() + text[1:]
    return text


def _param_hint(e) -> str | None:
    hint = getattr(e, "param_hint", None)
    if hint is None and getattr(e, "param", None) is not None:
        try:
            hint = e.param.get_error_hint()  # typer's own parameters
        except TypeError:
            hint = e.param.get_error_hint(e.ctx)  # click's
    if hint is not None and not isinstance(hint, str):
        hint = " / ".join(repr(h) for h in hint)
    return hint


def usage_message(e: Exception) -> str:
    """The text of a click/Typer usage error, without the pydantic phrasing, on one line."""
    cause = e.__cause__
    errors = cause.errors() if cause is not None and hasattr(cause, "errors") else None
    if isinstance(e, BAD_PARAMETER) and errors:
        hint = _param_hint(e)
        text = _plain_validation(errors[0])
        message = f"invalid value for {hint}: {text}" if hint else f"invalid value: {text}"
    else:
        message = _lower_first(e.format_message().rstrip("."))
    message = " ".join(message.split())  # click's multi-line messages become one line
    if getattr(e, "ctx", None) is not None:
        message += f" (see '{e.ctx.command_path} --help')"
    return message
