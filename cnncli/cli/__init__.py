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

import click
import typer
from typer.core import TyperGroup

from cnncli import __version__
from cnncli.errors import CnnError

# typer >= 0.16 carries its own copy of click's exceptions; catch both families
try:
    from typer._click import exceptions as _typer_click
except ImportError:  # older typer: plain click only
    _typer_click = None
_USAGE_ERRORS: tuple = (click.UsageError,) + ((_typer_click.UsageError,) if _typer_click else ())
_CLICK_ERRORS: tuple = (click.ClickException,) + ((_typer_click.ClickException,) if _typer_click else ())
_NO_ARGS_HELP: tuple = (_typer_click.NoArgsIsHelpError,) if _typer_click else ()
_ABORTS: tuple = (click.exceptions.Abort, typer.Abort)


def _pop_debug(args: list[str]) -> bool:
    """Remove every `--debug` before a `--` separator; return whether there was one."""
    end = args.index("--") if "--" in args else len(args)
    found = "--debug" in args[:end]
    if found:
        args[:] = [a for i, a in enumerate(args) if not (i < end and a == "--debug")]
    return found or os.environ.get("CNNCLI_DEBUG", "") not in ("", "0")


def _fail(message: str, code: int) -> None:
    print(f"error: {message}", file=sys.stderr, flush=True)
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
        except _NO_ARGS_HELP as e:  # `cnncli viz` alone: show its help, as a usage error
            e.show()
            sys.exit(2)
        except _USAGE_ERRORS as e:
            hint = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
            _fail(e.format_message().replace("\n", " ") + hint, 2)
        except _CLICK_ERRORS as e:
            _fail(e.format_message().replace("\n", " "), e.exit_code)
        except _ABORTS:
            _fail("aborted", 130)
        except CnnError as e:
            if debug:
                traceback.print_exc()
            _fail(str(e).replace("\n", " "), e.exit_code)
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


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    debug: bool = typer.Option(
        False, "--debug", help="Show full tracebacks for errors (also accepted after the command)."
    ),
) -> None:
    """cnncli: inspect, train, fine-tune, evaluate and export convolutional networks."""


from cnncli.cli import compare as _compare  # noqa: E402
from cnncli.cli import datasets as _datasets  # noqa: E402
from cnncli.cli import eval as _eval  # noqa: E402
from cnncli.cli import explain as _explain  # noqa: E402
from cnncli.cli import export as _export  # noqa: E402
from cnncli.cli import finetune as _finetune  # noqa: E402
from cnncli.cli import inspect as _inspect  # noqa: E402
from cnncli.cli import models as _models  # noqa: E402
from cnncli.cli import new_model as _new_model  # noqa: E402
from cnncli.cli import predict as _predict  # noqa: E402
from cnncli.cli import train as _train  # noqa: E402
from cnncli.cli import viz as _viz  # noqa: E402

app.command("models")(_models.models)
app.command("inspect")(_inspect.inspect)
app.command("new-model")(_new_model.new_model)
app.command("datasets")(_datasets.datasets)
app.command("train")(_train.train)
app.command("finetune")(_finetune.finetune)
app.command("eval")(_eval.eval_command)
app.command("export")(_export.export)
app.command("predict")(_predict.predict)
app.command("explain")(_explain.explain)
app.command("compare")(_compare.compare)
app.add_typer(_viz.viz_app, name="viz")


def main() -> None:
    app()
