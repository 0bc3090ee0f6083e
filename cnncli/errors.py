"""Expected errors and the exit codes they map to.

The library raises these; the CLI turns each into one line on stderr and an exit code
(see `cnncli.cli.CnnGroup`), in the one form `error_line` gives it. Anything else is a bug
and keeps its traceback under --debug.
"""

from __future__ import annotations


def error_line(message: object) -> str:
    """The one form of an expected error on stderr: 'error: ' and the message, on one line."""
    lines = [line.strip() for line in str(message).strip().splitlines()]
    return "error: " + " ".join(line for line in lines if line)


class CnnError(Exception):
    """An expected failure with a one-line message meant for the user."""

    exit_code = 1


class InputError(CnnError):
    """Bad usage or bad input: unknown names, impossible values, unreadable files (exit 2)."""

    exit_code = 2


class RuntimeFailure(CnnError):
    """The input was fine but the work failed: diverged training, full disk (exit 1)."""

    exit_code = 1


class UnreadableImageError(InputError):
    """A file of a dataset loaded in memory that does not decode; the message names it (exit 2)."""


class UnknownNameError(InputError):
    """A name that is not in a registry; the message suggests the closest ones."""

    def __init__(self, kind: str, name: str, known: list[str], hint: str = ""):
        import difflib

        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        msg = f"unknown {kind} '{name}'"
        if close:
            msg += "; did you mean " + ", ".join(f"'{c}'" for c in close) + "?"
        if hint:
            msg += f" ({hint})"
        super().__init__(msg)
        self.name = name
        self.suggestions = close
