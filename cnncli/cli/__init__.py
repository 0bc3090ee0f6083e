"""The Typer app: one small module per subcommand, registered here.

Each subcommand module imports only typer and the standard library at import time, and the
library (torch, timm, ...) inside the command function, so that `cnncli --help` and shell
completion never pay for torch. Expected errors (`cnncli.errors.CnnError`) and click's usage
errors become one line on stderr with exit code 1 or 2; `--debug` anywhere on the command line
(or CNNCLI_DEBUG=1) shows the traceback instead.
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Annotated

import click
import typer
from typer.core import TyperGroup

from cnncli import __version__
from cnncli.cli.common import command
from cnncli.cli.failures import CLICK_ERRORS, NO_ARGS_HELP, USAGE_ERRORS, usage_message
from cnncli.errors import CnnError, error_line

_ABORTS: tuple = (click.exceptions.Abort, typer.Abort)


def _pop_debug(args: list[str]) -> bool:
    """Remove every `--debug` before a `--` separator; return whether there was one."""
    end = args.index("--") if "--" in args else len(args)
    found = "--debug" in args[:end]
    if found:
        args[:] = [a for i, a in enumerate(args) if not (i < end and a == "--debug")]
    return found or os.environ.get("CNNCLI_DEBUG", "") not in ("", "0")


def _fail(message: str, code: int) -> None:
    print(error_line(message), file=sys.stderr, flush=True)
    sys.exit(code)


def _end_distributed() -> None:
    """After a successful command under torchrun, end the process group on all ranks together."""
    distributed = sys.modules.get("cnncli.engine.distributed")  # only loaded if a command used it
    if distributed is not None:
        distributed.shutdown(synchronize=True)


class CnnGroup(TyperGroup):
    """Typer's group with cnncli's error contract applied to every subcommand."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(self.commands)  # registration order, not alphabetical

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):
        args = list(sys.argv[1:] if args is None else args)
        debug = _pop_debug(args)
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        try:
            rv = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except NO_ARGS_HELP as e:  # `cnncli viz` alone: show its help (on stderr), as a usage error
            e.show()
            sys.exit(2)
        except USAGE_ERRORS as e:
            _fail(usage_message(e), 2)
        except CLICK_ERRORS as e:
            _fail(usage_message(e), e.exit_code)
        except _ABORTS:
            _fail("aborted", 130)
        except CnnError as e:
            if debug:
                traceback.print_exc()
            _fail(str(e), e.exit_code)
        except Exception as e:  # a bug, not a user's mistake: say so, keep the traceback for --debug
            if debug:
                raise
            _fail(
                f"internal error: {type(e).__name__}: {e} (rerun with --debug for the traceback)", 1
            )
        _end_distributed()
        sys.exit(rv if isinstance(rv, int) else 0)


app = typer.Typer(
    cls=CnnGroup,
    name="cnncli",
    help="A command-line toolkit for convolutional neural networks: look inside a CNN, train "
    "one, transfer-learn from a pretrained backbone, evaluate it and ship it.",
    no_args_is_help=True,
    add_completion=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        print(f"cnncli {__version__}")
        raise typer.Exit()


VersionOpt = Annotated[bool, typer.Option(
    "--version", callback=_version, is_eager=True, help="Print the version and exit.")]
DebugOpt = Annotated[bool, typer.Option(
    "--debug", help="Show full tracebacks for errors (also accepted after the command).")]


@app.callback()
def _root(version: VersionOpt = False, debug: DebugOpt = False) -> None:
    """cnncli: inspect, train, fine-tune, evaluate and export convolutional networks."""


from cnncli.cli import benchmark as _benchmark  # noqa: E402
from cnncli.cli import compare as _compare  # noqa: E402
from cnncli.cli import datasets as _datasets  # noqa: E402
from cnncli.cli import eval as _eval  # noqa: E402
from cnncli.cli import explain as _explain  # noqa: E402
from cnncli.cli import export as _export  # noqa: E402
from cnncli.cli import finetune as _finetune  # noqa: E402
from cnncli.cli import inspect as _inspect  # noqa: E402
from cnncli.cli import lr_find as _lr_find  # noqa: E402
from cnncli.cli import models as _models  # noqa: E402
from cnncli.cli import new_model as _new_model  # noqa: E402
from cnncli.cli import predict as _predict  # noqa: E402
from cnncli.cli import train as _train  # noqa: E402
from cnncli.cli import tune as _tune  # noqa: E402
from cnncli.cli import viz as _viz  # noqa: E402

command(app, "models", _models.models)
command(app, "inspect", _inspect.inspect)
command(app, "new-model", _new_model.new_model)
app.add_typer(_datasets.datasets_app, name="datasets")
command(app, "train", _train.train)
command(app, "finetune", _finetune.finetune)
command(app, "tune", _tune.tune)
command(app, "lr-find", _lr_find.lr_find)
command(app, "eval", _eval.eval_command)
command(app, "export", _export.export)
command(app, "predict", _predict.predict)
command(app, "benchmark", _benchmark.benchmark)
command(app, "explain", _explain.explain)
command(app, "compare", _compare.compare)
app.add_typer(_viz.viz_app, name="viz")


def main() -> None:
    app()
