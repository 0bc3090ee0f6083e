"""The output-path policy (cnncli/outputs.py), through the real command line.

A command writes only files it owns: a new run folder or a run of the same command (locked while
it trains), or an output file of the kind it writes that is not one of a run's own files.
Anything else is one line, exit 2, and every file that was there is as it was (bytes and type);
`--force` replaces a file of another kind, never a folder or a special file.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from cnncli.outputs import MARKER

DATA = "synthetic:n=32,n_test=8,classes=2,size=28"


def state(*roots: Path) -> dict[str, tuple[str, str]]:
    """Every entry under the roots: its type and, for a regular file, the sha256 of its bytes."""
    seen = {}
    for root in roots:
        for path in [root, *sorted(root.rglob("*"))] if root.is_dir() else [root]:
            mode = path.lstat().st_mode
            kind = stat.S_IFMT(mode)
            digest = hashlib.sha256(path.read_bytes()).hexdigest() if stat.S_ISREG(mode) else ""
            seen[str(path)] = (oct(kind), digest)
    return seen


def refused(run_cli, args, *fragments, untouched=(), code=2) -> str:
    """The command fails with one 'error:' line holding the fragments; `untouched` is unchanged."""
    before = state(*untouched)
    result = run_cli(*args)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == code, (result.exit_code, result.stderr)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr and "internal error" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert state(*untouched) == before
    return lines[0]


def ok(run_cli, *args):
    result = run_cli(*args)
    assert result.exit_code == 0, result.stderr
    return result


def marker(folder: Path) -> dict:
    return json.loads((folder / MARKER).read_text())


# ---------------------------------------------------------------------------- run folders

def fail_after_the_claim(monkeypatch, write=None):
    """The first epoch fails (the folder is claimed and its config.toml written by then);
    `write(run_dir)` first puts something of its own there."""
    from cnncli.engine.trainer import Trainer
    from cnncli.errors import RuntimeFailure

    def failing(self, progress, signals, bar):
        assert (self.run_dir / MARKER).exists() and (self.run_dir / "config.toml").exists()
        if write is not None:
            write(self.run_dir)
        raise RuntimeFailure("injected failure in the first epoch")

    monkeypatch.setattr(Trainer, "_run_phase", failing)


def fails(run_cli, *args):
    result = run_cli(*args)
    assert result.exit_code == 1, result.stderr
    assert result.stderr.strip().splitlines()[-1] == "error: injected failure in the first epoch"
    assert "Traceback" not in result.stderr


def test_a_run_that_fails_before_any_result_takes_its_new_folder_away(run_cli, tiny_run, tmp_path, monkeypatch):
    fail_after_the_claim(monkeypatch)
    out = tmp_path / "new" / "deeper" / "run"
    fails(run_cli, "train", "lenet5", "--data", DATA, "--out", out, "--epochs", 1)
    assert not (tmp_path / "new").exists()  # the run folder and the parents it created
    monkeypatch.chdir(tmp_path)  # a folder named after the run, under runs/
    fails(run_cli, "train", "lenet5", "--data", DATA, "--epochs", 1)
    assert list((tmp_path / "runs").iterdir()) == []
    # finetune claims through the same trainer
    fails(run_cli, "finetune", tiny_run, "--data", DATA, "--out", tmp_path / "ft", "--head-epochs", 1)
    assert not (tmp_path / "ft").exists()


def test_a_failed_run_leaves_a_folder_it_did_not_create_or_that_holds_more(run_cli, tmp_path, monkeypatch):
    mine = tmp_path / "mine"
    mine.mkdir()  # made by the user, empty: the run did not create it, so it stays
    fail_after_the_claim(monkeypatch)
    fails(run_cli, "train", "lenet5", "--data", DATA, "--out", mine, "--epochs", 1)
    assert mine.is_dir() and (mine / MARKER).exists()
    parent = tmp_path / "parent"
    parent.mkdir()
    fail_after_the_claim(monkeypatch, write=lambda run_dir: (parent / "other.txt").write_text("someone else's"))
    out = parent / "sub" / "run"
    fails(run_cli, "train", "lenet5", "--data", DATA, "--out", out, "--epochs", 1)
    assert not (parent / "sub").exists() and (parent / "other.txt").read_text() == "someone else's"
    fail_after_the_claim(monkeypatch, write=lambda run_dir: (run_dir / "notes.txt").write_text("kept"))
    out = tmp_path / "made" / "run"
    fails(run_cli, "train", "lenet5", "--data", DATA, "--out", out, "--epochs", 1)
    assert sorted(p.name for p in out.iterdir()) == sorted([MARKER, "config.toml", "notes.txt"])



@pytest.mark.parametrize("name", ["config.toml", "metrics.jsonl", "eval.json", "model.safetensors"])
def test_train_refuses_a_folder_of_the_users_own_files(run_cli, tiny_run, tmp_path, name):
    folder = tmp_path / "mine"
    folder.mkdir()
    if name == "model.safetensors":  # a real model file, the user's own, without a run around it
        shutil.copy(tiny_run / name, folder / name)
    else:
        (folder / name).write_text("the user's own\n")
    line = refused(run_cli, ["train", "lenet5", "--data", DATA, "--epochs", 1, "--out", folder],
                   "is not a cnncli run", name, "--force", untouched=[folder])
    assert str(folder) in line
    assert not (folder / MARKER).exists()


def test_force_writes_a_run_into_a_folder_of_other_files_and_name_names_the_run(run_cli, tmp_path, monkeypatch):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "notes.txt").write_text("kept")
    ok(run_cli, "train", "lenet5", "--data", DATA, "--epochs", 1, "--threads", 1, "--quiet", "--out", folder,
       "--force")
    assert (folder / "notes.txt").read_text() == "kept"  # only the run's own names are written
    assert marker(folder)["command"] == "train" and (folder / "model.safetensors").is_file()
    # train --name (ignored before): the run goes to runs/NAME
    monkeypatch.chdir(tmp_path)
    result = ok(run_cli, "train", "lenet5", "--data", DATA, "--epochs", 1, "--threads", 1, "--quiet",
                "--name", "my-experiment", "--json")
    assert json.loads(result.stdout)["run_dir"] == str(Path("runs") / "my-experiment")
    assert marker(tmp_path / "runs" / "my-experiment")["command"] == "train"


def test_a_run_of_another_command_is_not_a_place_for_this_one(run_cli, tiny_run_copy):
    (tiny_run_copy / MARKER).write_text(json.dumps({"cnncli": "run", "command": "finetune"}))
    refused(run_cli, ["train", "--resume", tiny_run_copy], "is a finetune run",
            f"cnncli finetune --resume {tiny_run_copy}", untouched=[tiny_run_copy])
    fresh = tiny_run_copy.parent / "started"
    fresh.mkdir()
    (fresh / MARKER).write_text(json.dumps({"cnncli": "run", "command": "finetune"}))
    refused(run_cli, ["train", "lenet5", "--data", DATA, "--out", fresh], "is a cnncli finetune run",
            untouched=[fresh])


def test_resume_needs_a_run_not_a_folder_with_a_config_toml(run_cli, tmp_path):
    (tmp_path / "config.toml").write_text('model = "lenet5"\n')
    refused(run_cli, ["train", "--resume", tmp_path], "is not a cnncli run", MARKER, untouched=[tmp_path])


def test_runs_made_before_the_marker_still_resume_and_are_still_protected(run_cli, tiny_run_copy):
    (tiny_run_copy / MARKER).unlink()  # a run from an earlier cnncli: train_state.safetensors marks it
    refused(run_cli, ["train", "lenet5", "--data", DATA, "--out", tiny_run_copy], "already holds a run",
            f"--resume {tiny_run_copy}", untouched=[tiny_run_copy])
    result = ok(run_cli, "train", "--resume", tiny_run_copy)
    assert "already finished" in result.stderr
    assert marker(tiny_run_copy)["command"] == "train"  # marked now


HOLDER = r"""
import sys
from cnncli.engine.config import build_config
from cnncli.engine.trainer import Trainer
from cnncli.track.base import Logger


class Pause(Logger):  # holds the run after its first epoch, until the test says go
    def on_epoch_end(self, epoch, record):
        print("epoch", epoch, flush=True)
        sys.stdin.readline()


cfg = build_config(None, {"model": "lenet5", "data": sys.argv[2], "epochs": 1, "threads": 1, "out": sys.argv[1]})
Trainer(cfg, quiet=True, callbacks=[Pause()]).fit()
print("done", flush=True)
"""


def _start(code: str, *args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", code, *map(str, args)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def test_two_trainers_on_one_folder_the_second_refuses(run_cli, tmp_path):
    run = tmp_path / "run"
    first = _start(HOLDER, run, DATA)
    try:
        assert first.stdout.readline().strip() == "epoch 1", first.stderr.read()  # it trains, lock held
        before = state(run)
        refused(run_cli, ["train", "lenet5", "--data", DATA, "--epochs", 1, "--out", run], "is in use",
                str(run))
        refused(run_cli, ["train", "--resume", run], "is in use")
        assert state(run) == before
        # reading a run while it trains stays allowed
        result = ok(run_cli, "eval", run, "--json")
        assert json.loads(result.stdout)["n"] == 8
        first.stdin.write("\n")
        first.stdin.flush()
        out, err = first.communicate(timeout=120)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 0 and out.strip() == "done", err
    assert (run / "eval.json").is_file() and marker(run)["command"] == "train"


LOCK_HOLDER = ("import sys; from cnncli.outputs import claim_resumed_run; lock = claim_resumed_run(sys.argv[1], "
               "'train'); print('locked', flush=True); sys.stdin.readline()")


def test_the_lock_goes_with_a_killed_process(run_cli, tiny_run_copy):
    holder = _start(LOCK_HOLDER, tiny_run_copy)
    try:
        assert holder.stdout.readline().strip() == "locked", holder.stderr.read()
        refused(run_cli, ["train", "--resume", tiny_run_copy], "is in use", untouched=[tiny_run_copy])
    finally:
        holder.kill()
        holder.wait()
    ok(run_cli, "train", "--resume", tiny_run_copy, "--quiet")  # SIGKILL released it


# ---------------------------------------------------------------------------- output files

def test_export_writes_only_its_own_kind_of_file(run_cli, tiny_run_copy, tmp_path):
    run = tiny_run_copy
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n")
    for fmt in ("safetensors", "onnx", "torchscript"):
        refused(run_cli, ["export", run, "--format", fmt, "--out", notes, "--no-verify"], f"--out {notes}",
                "exists and is not", "--force", untouched=[notes, run])
    # a run's own files, whatever the format: resume would be impossible without train_state
    for name in ("train_state.safetensors", "last.safetensors", "config.toml", "curves.png"):
        refused(run_cli, ["export", run, "--format", "safetensors", "--out", run / name],
                "is a file of the train run", untouched=[run])
    # its own previous output is replaced; --force replaces the user's file
    target = tmp_path / "model.export.safetensors"
    ok(run_cli, "export", run, "--format", "safetensors", "--out", target)
    ok(run_cli, "export", run, "--format", "safetensors", "--out", target, "--half")
    ok(run_cli, "export", run, "--format", "safetensors", "--out", notes, "--force")
    assert notes.read_bytes()[8:9] == b"{"  # a safetensors header now


def test_eval_and_viz_do_not_write_over_a_runs_files(run_cli, tiny_run_copy, tmp_path):
    run = tiny_run_copy
    refused(run_cli, ["eval", run, "--plot", run / "model.safetensors"], "--plot", "is a file of the train run",
            untouched=[run])
    refused(run_cli, ["eval", run, "--plot", run / "curves.png"], "is a file of the train run", untouched=[run])
    (tmp_path / "mine.csv").write_text("a,b\n1,2\n")
    refused(run_cli, ["eval", run, "--predictions", tmp_path / "mine.csv"], "--predictions",
            "is not a predictions CSV", untouched=[run, tmp_path / "mine.csv"])
    refused(run_cli, ["viz", "confusion", run, "--out", run / "eval.json"], "is a file of the train run",
            untouched=[run])
    refused(run_cli, ["viz", "curves", run, "--out", run / "metrics.jsonl"], untouched=[run])
    refused(run_cli, ["viz", "filters", run, "--out", run / "config.toml"], untouched=[run])
    link = tmp_path / "link.png"  # a link into the run is the run's file too
    link.symlink_to(run / "curves.png")
    refused(run_cli, ["viz", "curves", run, "--out", link], "is a file of the train run", untouched=[run])
    assert link.is_symlink()
    refused(run_cli, ["viz", "curves", run, "--out", run / MARKER, "--force"], "never replaced", untouched=[run])
    # a predictions CSV of its own is replaced
    ok(run_cli, "eval", run, "--predictions", tmp_path / "p.csv")
    ok(run_cli, "eval", run, "--predictions", tmp_path / "p.csv")


def test_viz_curves_leaves_the_runs_own_picture_alone(run_cli, tiny_run_copy):
    before = (tiny_run_copy / "curves.png").read_bytes()
    result = ok(run_cli, "viz", "curves", tiny_run_copy)
    assert result.stdout.strip() == str(tiny_run_copy / "curves-viz.png")
    assert (tiny_run_copy / "curves.png").read_bytes() == before
    assert (tiny_run_copy / "curves-viz.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ok(run_cli, "viz", "curves", tiny_run_copy)  # its own picture again: replaced
    result = ok(run_cli, "viz", "confusion", tiny_run_copy)
    assert result.stdout.strip() == str(tiny_run_copy / "confusion-viz.png")


def test_special_files_and_folders_are_never_replaced_even_with_force(run_cli, tiny_run, tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    folder = tmp_path / "folder.png"
    folder.mkdir()
    specials = [(fifo, "is a FIFO"), (folder, "is not a file but a folder")]
    if os.geteuid() == 0:  # a character device like /dev/null, made here (writing it would be harmless)
        device = tmp_path / "null"
        os.mknod(device, stat.S_IFCHR | 0o600, os.makedev(1, 3))
        specials.append((device, "is a character device"))
    for path, what in specials:
        for args in (["export", tiny_run, "--format", "safetensors", "--out", path],
                     ["eval", tiny_run, "--predictions", path],
                     ["eval", tiny_run, "--plot", path],
                     ["viz", "curves", tiny_run, "--out", path],
                     ["new-model", "x", "--out", path]):
            refused(run_cli, [*args, "--force"], what, untouched=[path])
        assert stat.S_IFMT(path.lstat().st_mode) == stat.S_IFMT(os.lstat(path).st_mode)
    assert stat.S_ISFIFO(fifo.lstat().st_mode) and folder.is_dir()


def test_a_file_output_creates_no_folders(run_cli, tiny_run, tmp_path):
    refused(run_cli, ["new-model", "x", "--out", tmp_path / "no" / "such" / "x.toml"], "does not exist",
            untouched=[tmp_path])
    refused(run_cli, ["export", tiny_run, "--format", "safetensors", "--out", tmp_path / "nope" / "m.safetensors"],
            "does not exist", untouched=[tmp_path])
    assert not (tmp_path / "no").exists() and not (tmp_path / "nope").exists()


def test_datasets_show_export_leaves_other_files_alone(run_cli, tmp_path):
    folder = tmp_path / "samples"
    folder.mkdir()
    (folder / "bar-0deg-1.png").write_text("not a picture")
    refused(run_cli, ["datasets", "show", "synthetic:n=16,classes=2,size=28", "-k", 1, "--export", folder],
            "--export", "bar-0deg-1.png", "exists and is not a PNG", untouched=[folder])
    ok(run_cli, "datasets", "show", "synthetic:n=16,classes=2,size=28", "-k", 1, "--export", folder, "--force")
    assert (folder / "bar-0deg-1.png").read_bytes()[:4] == b"\x89PNG"


def test_explain_checks_every_file_it_would_write_before_the_first(run_cli, tiny_run, tmp_path):
    pytest.importorskip("pytorch_grad_cam")
    image = tmp_path / "x.png"
    shutil.copy(tiny_run / "curves.png", image)  # any real picture
    out = tmp_path / "cams"
    out.mkdir()
    (out / "x.cam.npy").write_text("my own notes")
    refused(run_cli, ["explain", tiny_run, image, "--out", out, "--save-maps"], "x.cam.npy",
            "is not a .npy array", untouched=[out])
    assert not (out / "x.cam.png").exists()


def test_tune_keeps_out_of_a_folder_of_other_files(run_cli, tmp_path):
    pytest.importorskip("optuna")
    folder = tmp_path / "study"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    refused(run_cli, ["tune", "lenet5", "--data", DATA, "--trials", 1, "--epochs", 1, "--out", folder],
            "is not a cnncli study", "notes.txt", untouched=[folder])
