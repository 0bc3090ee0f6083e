"""The command line as a user reads it: help that shows every default and every help text,
options declared once (a recipe is only overridden by the flags that were typed), the user's
words (line filters, "1 epoch"), one form for every usage error, and the --device forms."""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import tomllib
from enum import Enum

import pytest
import typer.main
import typer.rich_utils
from typer.testing import CliRunner

from cnncli import output
from cnncli.cli import app
from cnncli.cli.common import parse_device
from cnncli.engine.config import TrainConfig
from cnncli.finetune import FinetuneConfig

DATA = "synthetic:n=64,n_test=16,classes=2,size=28"
ANSI = re.compile(r"\x1b\[[0-9;]*[A-Za-z]")
PANELS = {"Data", "Model", "Optimisation", "Augmentation", "Run/output", "Device"}
runner = CliRunner()


@pytest.fixture(autouse=True)
def notes_shown():
    output.set_quiet(False)
    yield
    output.set_quiet(False)


def cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def root():
    return typer.main.get_command(app)


def every_command():
    """(path, click command) for every command, the hidden alias left out."""
    found = []

    def walk(group, path):
        for name, cmd in group.commands.items():
            if getattr(cmd, "commands", None):
                walk(cmd, path + [name])
            elif not cmd.hidden:
                found.append((path + [name], cmd))

    walk(root(), [])
    return found


@pytest.fixture
def wide_help(monkeypatch):
    """`--help` as a wide terminal without colour shows it (no wrapping inside a help text)."""
    monkeypatch.setattr(typer.rich_utils, "MAX_WIDTH", 240)
    monkeypatch.setenv("NO_COLOR", "1")

    def show(*path):
        result = cli(*path, "--help")
        assert result.exit_code == 0, result.output
        return ANSI.sub("", result.stdout)

    return show


def flat(text: str) -> str:
    """The help screen's words in order: box lines and line breaks removed."""
    return " ".join(re.sub(r"[│╭╮╰╯─]", " ", text).split())


def option_line(help_text: str, flag: str) -> str:
    """The option's entry in the help: its line and the lines its help and default wrap onto."""
    lines = help_text.splitlines()
    starts = [i for i, line in enumerate(lines) if re.search(rf"│ {re.escape(flag)}\b", line)]
    assert starts, f"{flag} not in the help"
    entry = [lines[starts[0]]]
    for line in lines[starts[0] + 1:]:
        if not re.match(r"│\s{4,}", line):  # the next option, or the panel's end
            break
        entry.append(line)
    return " ".join(" ".join(part.strip(" │") for part in entry).split())


# ------------------------------------------------------------------------------ honest help
def test_train_help_shows_the_defaults(wide_help):
    text = wide_help("train")
    assert "Epochs to train. [default: 10]" in option_line(text, "--epochs")
    assert "[default: 128]" in option_line(text, "--batch-size")
    assert "[default: adamw]" in option_line(text, "--optimizer")
    assert "1e-3 with adamw, 0.05 with sgd" in option_line(text, "--lr")
    assert "[default: 0.1]" in option_line(text, "--val-fraction")
    assert "[default: auto]" in option_line(text, "--device")
    assert "[default: auto]" in option_line(text, "--amp")
    assert "[default: random]" in option_line(text, "--sampler")
    assert "Epochs to train ." not in text  # the old help lost its "[default: 10]" to rich markup


def test_finetune_help_shows_its_own_defaults(wide_help):
    text = wide_help("finetune")
    assert "[default: 3]" in option_line(text, "--head-epochs")
    assert "Stage 2: epochs with the top blocks unfrozen (0 skips stage 2, as --unfreeze 0 does). [default: 10]" in option_line(text, "--epochs")
    assert "the backbone's input size" in option_line(text, "--img-size")


@pytest.mark.parametrize("command", ["train", "finetune"])
def test_train_and_finetune_options_are_grouped_in_panels(command, wide_help):
    cmd = root().commands[command]
    options = [p for p in cmd.params if p.param_type_name == "option" and p.name != "help"]
    assert len(options) >= 30
    assert {p.rich_help_panel for p in options} == PANELS
    text = wide_help(command)
    for panel in PANELS:
        assert f"╭─ {panel} ─" in text, panel


def test_every_help_text_and_every_default_reaches_the_screen(wide_help):
    """No help text is eaten as rich markup, in any command: each option's help is on its screen
    word for word, and so is each default it shows."""
    for path, cmd in every_command():
        screen = flat(wide_help(*path))
        assert flat(cmd.help or "").split(". ")[0] in screen, path
        for param in cmd.params:
            if param.help:
                assert flat(param.help) in screen, (path, param.name, param.help)
            shown = param.show_default
            if isinstance(shown, str):
                assert f"[default: ({shown})]" in screen, (path, param.name)


def test_command_help_paragraphs_are_not_cut_at_the_source_lines(wide_help):
    text = wide_help("train")
    assert "everything needed to rebuild the network), last.safetensors" in text


def test_installed_help_with_no_color_shows_the_default():
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "160", "TERMINAL_WIDTH": "160"}
    done = subprocess.run([sys.executable, "-m", "cnncli", "train", "--help"], capture_output=True,
                          text=True, timeout=120, env=env, check=False)
    assert done.returncode == 0, done.stderr
    assert "\x1b[" not in done.stdout
    assert "[default: 10]" in option_line(done.stdout, "--epochs")


@pytest.mark.parametrize("command,config", [("train", TrainConfig), ("finetune", FinetuneConfig)])
def test_the_defaults_help_shows_are_the_ones_a_run_uses(command, config):
    """--help shows the command's defaults; the run takes its defaults from the config class:
    they must be the same numbers."""
    fields = {f.name: f for f in dataclasses.fields(config)}
    checked = 0
    for param in root().commands[command].params:
        if param.name not in fields or param.name == "model":
            continue
        field = fields[param.name]
        expected = field.default_factory() if field.default_factory is not dataclasses.MISSING \
            else field.default
        shown = param.default.value if isinstance(param.default, Enum) else param.default
        if param.name == "augment":
            expected = expected or None
        assert str(shown) == str(expected), (command, param.name, shown, expected)
        checked += 1
    assert checked >= 28


# ------------------------------------------------------------------------------ given options only
def test_a_recipe_value_is_overridden_only_by_a_flag_that_was_given(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('model = "lenet5"\nepochs = 1\nbatch_size = 16\nnesterov = false\n'
                      'optimizer = "sgd"\nseed = 3\n')
    out = tmp_path / "run"
    result = cli("train", "--recipe", recipe, "--data", DATA, "--batch-size", 32, "--out", out,
                 "--threads", 1, "--quiet")
    assert result.exit_code == 0, result.stderr
    run = tomllib.loads((out / "config.toml").read_text())
    # given on the command line: the flag wins; not given: the recipe's value, not the default
    assert (run["batch_size"], run["data"]) == (32, DATA)
    assert (run["epochs"], run["nesterov"], run["optimizer"], run["seed"]) == (1, False, "sgd", 3)
    assert ": 1 epoch, " in result.stdout  # one epoch, not "1 epochs"


def test_end_of_run_line_counts_epochs_in_the_plural(tmp_path):
    result = cli("train", "lenet5", "--data", DATA, "--epochs", 2, "--out", tmp_path / "run",
                 "--threads", 1, "--quiet")
    assert result.exit_code == 0, result.stderr
    assert ": 2 epochs, " in result.stdout


def test_plural():
    assert [output.plural(n, "epoch") for n in (0, 1, 2)] == ["0 epochs", "1 epoch", "2 epochs"]
    assert output.plural(1, "class", "classes") == "1 class"
    assert output.plural(3, "class", "classes") == "3 classes"


# ------------------------------------------------------------------------------ the user's words
def test_viz_lists_line_filters_and_hides_its_old_name(wide_help):
    text = wide_help("viz")
    assert "line-filters" in text and "seed-filters" not in text
    assert "vertical-line and a horizontal-line filter" in flat(text)


def test_no_help_speaks_of_the_seed(wide_help):
    """The lecture is "the seed" only to the people who wrote cnncli; help says what it means."""
    for path, _ in [([], None)] + every_command():
        screen = flat(wide_help(*path))
        assert not re.search(r"\bthe seed\b|seed's", screen, re.IGNORECASE), (path, screen)


# ------------------------------------------------------------------------------ one form of error
def one_error_line(result, code=2) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == code, (result.exit_code, result.stderr)
    assert len(lines) == 1, result.stderr
    assert result.stdout == ""
    line = lines[0]
    assert line.startswith("error: ") and (line[7].islower() or line[7] in "'-"), line
    for pydantic in ("Value error", "Input should", "valid integer", "unable to parse", "Error:"):
        assert pydantic not in line, line
    return line


@pytest.mark.parametrize("args,says", [
    (["train", "lenet5", "--optimizer", "adamx"],
     "error: invalid value for '--optimizer': 'adamx' is not one of 'sgd', 'adamw'"),
    (["train", "lenet5", "--schedule", "linear"], "'linear' is not one of 'cosine', 'onecycle'"),
    (["export", "x.safetensors", "--format", "zip"], "invalid value for '--format' / '-f': 'zip'"),
    (["models", "--source", "any"], "'any' is not one of 'hand', 'timm', 'all'"),
    (["train", "lenet5", "--epochs", "many"], "'--epochs' / '-e': 'many' is not a whole number"),
    (["eval", "x", "--batch-size", "1.5"], "'1.5' is not a whole number"),
    (["train", "lenet5", "--lr", "fast"], "invalid value for '--lr': 'fast' is not a number"),
    (["inspect", "alexnet", "--depth", "0"], "invalid value for '--depth': must be at least 1, got 0"),
    (["train", "lenet5", "--no-such-flag"], "error: no such option: --no-such-flag"),
    (["eval"], "error: missing argument"),
    (["trian"], "error: no such command 'trian'"),
    (["inspect", "alexnet", "-f"], "error: option '-f' requires an argument"),
])
def test_usage_errors_are_one_plain_line(args, says):
    line = one_error_line(cli(*args))
    assert says in line, line


def test_a_usage_error_points_to_the_help_of_its_command():
    line = one_error_line(cli("train", "lenet5", "--optimizer", "adamx"))
    assert line.endswith("(see 'cnncli train --help')"), line


def test_a_library_error_keeps_its_words():
    line = one_error_line(cli("inspect", "lenett5"))
    assert line.startswith("error: unknown model 'lenett5'"), line


# ------------------------------------------------------------------------------ --device
@pytest.mark.parametrize("text,name", [
    ("auto", "auto"), ("cpu", "cpu"), ("CPU", "cpu"), ("cuda", "cuda"), ("mps", "mps"),
    ("cuda:0", "cuda:0"), ("cuda:1", "cuda:1"), ("0", "cuda:0"), ("1", "cuda:1"), (" 2 ", "cuda:2"),
])
def test_device_forms_every_peer_accepts(text, name):
    assert parse_device(text) == name


@pytest.mark.parametrize("text", ["gpu", "cuda:", "cuda:x", "-1", "cuda:-1", "1.5", "cpu:0", "", "²"])
def test_other_device_names_are_a_usage_error(text):
    with pytest.raises(ValueError, match="is not a device"):
        parse_device(text)
    line = one_error_line(cli("eval", "x.safetensors", "--device", text))
    assert "invalid value for '--device'" in line and "is not a device" in line, line


def test_the_engine_resolves_every_form(monkeypatch):
    import torch

    from cnncli.engine.device import resolve_device
    from cnncli.errors import InputError

    assert resolve_device("cpu") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert resolve_device("1") == torch.device("cuda:1")
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    assert resolve_device("cuda", local_rank=1) == torch.device("cuda:1")
    with pytest.raises(InputError, match="there is no CUDA device 2; this machine has 2"):
        resolve_device("2")


@pytest.mark.parametrize("device", ["cuda:0", "1", "cuda"])
def test_a_gpu_on_a_machine_without_one_is_one_line_and_nothing_written(device, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    out = tmp_path / "run"
    line = one_error_line(cli("train", "lenet5", "--data", DATA, "--epochs", 1, "--out", out,
                              "--device", device))
    assert "no CUDA device is available" in line, line
    assert not out.exists() or not any(out.iterdir())
