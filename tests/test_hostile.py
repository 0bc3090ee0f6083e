"""Hostile inputs across the subcommands: exit 1 or 2, one line on stderr, no traceback, no
file under the test folder changed, memory bounded (each case in a subprocess under an
address-space limit, with a small memory budget so the cost checks are what refuses).

Each subprocess case is its own process, forked from one server process that imported torch and
the CLI once (a fresh interpreter per case cost a Python start each: most of the module's time)."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 6 << 30  # torch's import alone maps a few GiB of address space


TIMEOUT = 120  # seconds per case

FORK_SERVER = """
import atexit, json, os, resource, signal, sys, traceback
import torch  # noqa: F401  what most commands load: imported once, before any fork
import cnncli.cli

limit, timeout = int(sys.argv[1]), int(sys.argv[2])
for line in sys.stdin:  # one case a line: {"args", "cwd", "stderr"}; the reply: {"rc"}
    case = json.loads(line)
    pid = os.fork()
    if pid == 0:  # the case: `python -m cnncli ARGS` under the address-space limit
        code = 1
        try:
            signal.alarm(timeout)  # a case that hangs dies of SIGALRM: rc -14
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
            os.chdir(case["cwd"])
            os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
            os.dup2(os.open(case["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC), 2)
            sys.argv = ["cnncli", *case["args"]]
            try:
                cnncli.cli.main()
                code = 0
            except SystemExit as e:  # what the interpreter does with it
                if isinstance(e.code, str):
                    print(e.code, file=sys.stderr)
                code = e.code if isinstance(e.code, int) else int(e.code is not None)
        except BaseException:
            traceback.print_exc()
            code = 1
        finally:
            atexit._run_exitfuncs()
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"rc": os.waitstatus_to_exitcode(status)}), flush=True)
"""


@pytest.fixture(scope="module")
def forked_cli(tmp_path_factory):
    """`forked_cli(args, cwd)` -> (exit code, stderr) of `python -m cnncli ARGS` in its own process
    (forked from FORK_SERVER) under the address-space limit, with a small memory budget."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CNNCLI_MEMORY_BUDGET": "1G", "OMP_NUM_THREADS": "1"}
    server = subprocess.Popen([sys.executable, "-c", FORK_SERVER, str(LIMIT), str(TIMEOUT)], env=env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    folder = tmp_path_factory.mktemp("hostile-stderr")  # outside the folder the cases must not change
    count = itertools.count()

    def run(args: list[str], cwd: Path) -> tuple[int, str]:
        stderr = folder / f"{next(count)}.txt"
        server.stdin.write(json.dumps({"args": args, "cwd": str(cwd), "stderr": str(stderr)}) + "\n")
        server.stdin.flush()
        reply = server.stdout.readline()
        assert reply, f"the fork server ended ({server.poll()})"
        return json.loads(reply)["rc"], stderr.read_text()

    yield run
    server.stdin.close()
    server.wait(timeout=TIMEOUT)


def _snapshot(root: Path) -> dict[str, tuple]:
    out = {}
    for p in sorted(root.rglob("*")):
        mode = p.lstat().st_mode
        digest = hashlib.sha256(p.read_bytes()).hexdigest() if stat.S_ISREG(mode) else None
        out[str(p.relative_to(root))] = (stat.S_IFMT(mode), digest)
    return out


def _checkpoint(path: Path, meta: dict) -> Path:
    from safetensors.numpy import save_file


    save_file({}, str(path),
              metadata={"cnncli": json.dumps(meta)})
    return path


def _doc(name="lenet5", num_classes=10, input_size=(1, 32, 32), **extra):
    return {"format": 1, "kind": "model", "model": {"name": name, "num_classes": num_classes,
            "in_chans": input_size[0], "kwargs": extra.pop("kwargs", {})},
            "num_classes": num_classes, "input_size": list(input_size),
            "mean": [0.5] * input_size[0], "std": [0.5] * input_size[0], **extra}


def _setup(tmp: Path) -> dict[str, str]:
    big = _checkpoint(tmp / "big.safetensors", _doc("alexnet", 1_000_000, (3, 224, 224)))
    wide = _checkpoint(tmp / "wide.safetensors", _doc(input_size=(1, 65536, 65536)))
    kw = _checkpoint(tmp / "kw.safetensors", _doc(kwargs={"checkpoint_path": str(tmp / "x.pth")}))
    std0 = _checkpoint(tmp / "std0.safetensors", {**_doc(), "std": [0.0]})
    mean3 = _checkpoint(tmp / "mean3.safetensors", {**_doc(), "mean": [0.1, 0.2, 0.3]})
    names = _checkpoint(tmp / "names.safetensors", {**_doc(), "class_names": ["a", "b"]})
    toml = tmp / "net.toml"
    toml.write_text('name = "huge"\ninput = [1, 36000, 36000]\nnum_classes = 10\n'
                    '[[layers]]\ntype = "conv"\nfilters = 8\nkernel = 3\n')
    idx = tmp / "train-images-idx3-ubyte.gz"
    import gzip
    import struct

    with gzip.open(idx, "wb") as f:
        f.write(struct.pack(">HBB3I", 0, 8, 3, 5_000_000, 28, 28) + b"\0" * 1000)
    img = tmp / "x.png"
    from PIL import Image

    Image.new("RGB", (8, 8)).save(img)
    run = tmp / "run"
    run.mkdir()
    (run / "config.toml").write_text("mine = 1\n")
    return {"big": str(big), "wide": str(wide), "kw": str(kw), "std0": str(std0), "mean3": str(mean3),
            "names": str(names), "toml": str(toml), "idx": str(idx), "img": str(img), "run": str(run)}


CASES = [
    "predict {big} {img}", "eval {big} --data synthetic",
    "predict {wide} {img}", "inspect {wide}", "viz feature-maps {wide} {img}",
    "export {wide} --out {tmp}/w.onnx", "inspect {kw}", "predict {kw} {img}",
    "predict {std0} {img}", "predict {mean3} {img}", "predict {names} {img}",
    "inspect lenet5 --input 1x8000x8000", "inspect lenet5 --input 1x36000x36000", "inspect {toml}",
    "train lenet5 --data synthetic --lr inf --out {tmp}/n", "train lenet5 --data synthetic --clip-grad nan",
    "train lenet5 --data synthetic --weight-decay nan", "train lenet5 --data synthetic --threads 100000",
    "train lenet5 --data synthetic --lr nan", "train lenet5 --data synthetic --seed 1e23",
    "train lenet5 --data synthetic --img-size 100000", "finetune {big} --data synthetic",
    "predict lenet5 {img} --batch-size 0", "train lenet5 --data synthetic --epochs -1",
    "train lenet5 --data synthetic --momentum 2", "train lenet5 --data synthetic --label-smoothing 1",
    "train lenet5 --data synthetic --val-fraction nan", "eval {tmp}/no-such-run --data synthetic",
    "viz curves {big}", "inspect {idx}", "train lenet5 --data synthetic --batch-size 10000000",
]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    return tmp, _setup(tmp)


@pytest.mark.parametrize("case", CASES)
def test_hostile_input_is_refused_in_one_line(world, forked_cli, case):
    tmp, files = world
    before = _snapshot(tmp)
    args = case.format(tmp=tmp, **files).split()
    returncode, stderr = forked_cli(args, tmp)
    lines = stderr.strip().splitlines()
    assert returncode in (1, 2), (case, returncode, stderr[-500:])
    assert len(lines) == 1, (case, stderr[-800:])
    assert "Traceback" not in stderr and "internal error" not in stderr, (case, stderr)
    assert _snapshot(tmp) == before, case


# ------------------------------------------------------------------------------ in-process cases
# Inputs that allocate nothing big: run through the real CLI in this process (fast), with the
# same promises: exit 1 or 2, one line, no traceback or "internal error", nothing changed.

def _onnx_variant(src: Path, dst: Path, **changes) -> Path:
    import onnx

    model = onnx.load(str(src))
    for prop in model.metadata_props:
        if prop.key == "cnncli":
            prop.value = json.dumps({**json.loads(prop.value), **changes})
    onnx.save(model, str(dst))
    return dst


def _state_variant(run: Path, **progress) -> None:
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    path = run / "train_state.safetensors"
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    doc = json.loads(meta["cnncli"])
    doc["train_state"].update(progress)
    save_file(load_file(str(path)), str(path), metadata={**meta, "cnncli": json.dumps(doc)})


@pytest.fixture(scope="module")
def small_world(tmp_path_factory, tiny_run, run_cli):
    tmp = tmp_path_factory.mktemp("hostile_small")
    onnx_file = tmp / "m.onnx"
    assert run_cli("export", tiny_run, "--out", onnx_file).exit_code == 0
    files = {"run": str(tiny_run), "onnx": str(onnx_file),
             "onnx5": str(_onnx_variant(onnx_file, tmp / "five.onnx", num_classes=5, class_names=list("abcde"))),
             "onnx64": str(_onnx_variant(onnx_file, tmp / "big.onnx", input_size=[1, 64, 64]))}
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    with safe_open(str(tiny_run / "model.safetensors"), "pt") as f:
        meta = f.metadata()
    weights = load_file(str(tiny_run / "model.safetensors"))
    first = sorted(weights)[0]
    weights[first] = torch.full_like(weights[first], float("nan"))  # a diverged run's weights
    save_file(weights, str(tmp / "nan.safetensors"), metadata=meta)
    files["nan"] = str(tmp / "nan.safetensors")
    from PIL import Image

    Image.new("L", (8, 8)).save(tmp / "x.png")
    files["img"] = str(tmp / "x.png")
    for name, matrix in (("neg", [[1, -2], [0, 3]]), ("frac", [[1, 2.5], [0, 3]]), ("ragged", [[1, 2], [0]])):
        (tmp / f"{name}.json").write_text(json.dumps({"confusion": matrix}))
        files[name] = str(tmp / f"{name}.json")
    net = ('[model]\nname = "k"\ninput = [1, 28, 28]\nnum_classes = 2\n'
           '[[layers]]\ntype = "conv"\nfilters = 4\nkernel = 1000000000\npadding = "same"\n')
    (tmp / "kernel.toml").write_text(net)
    files["kernel"] = str(tmp / "kernel.toml")
    for name, text in (("nan", "lr = nan\n"), ("seed", "seed = 1000000000000000000000000\n"),
                       ("threads", "threads = 100000\n"), ("inf", "clip_grad = inf\n")):
        (tmp / f"{name}.toml").write_text(f'model = "lenet5"\ndata = "synthetic"\n{text}')
        files[f"recipe_{name}"] = str(tmp / f"{name}.toml")
    return tmp, files


SMALL_CASES = [
    ("viz curves {run}/model.safetensors --out {tmp}/c.png", "is a checkpoint"),
    ("viz curves {img} --out {tmp}/c.png", "not text"),
    ("viz confusion {neg} --out {tmp}/c.png", "counts"), ("viz confusion {frac} --out {tmp}/c.png", "counts"),
    ("viz confusion {ragged} --out {tmp}/c.png", "square"),
    ("inspect {kernel}", "'kernel'"), ("train {kernel} --data synthetic", "'kernel'"),
    ("predict {onnx5} {img}", "5 classes"), ("predict {onnx64} {img}", "1x64x64"),
    ("eval {onnx} --data synthetic", "exported file"), ("eval {tmp}/no-such-run --data synthetic", "no-such-run"),
    ("eval lenet5 --data synthetic", "not a checkpoint"), ("eval {img} --data synthetic", "x.png"),
    ("inspect {run} --input 1x2x2", "too small"),
    ("inspect vgg19x", "'timm/vgg19'"), ("inspect mobilenetv2", "'timm/mobilenetv2_100'"),
    ("train --recipe {recipe_nan}", "finite"), ("train --recipe {recipe_seed}", "--seed"),
    ("train --recipe {recipe_threads}", "--threads"), ("train --recipe {recipe_inf}", "finite"),
    ("inspect {onnx}", "exported file"), ("inspect {img}", "not a network"),
    ("new-model n --classes 100000000 --out {tmp}/n.toml", "needs"),
    ("new-model n --input 1x100000x100000 --out {tmp}/n.toml", "needs"),
    ("datasets show synthetic --seed -1 --out {tmp}/s.png", "--seed"),
    ("predict {nan} {img}", "NaN or infinite"), ("eval {nan} --data synthetic", "NaN or infinite"),
    ("finetune {nan} --data synthetic --out {tmp}/ft", "NaN or infinite"),
]


@pytest.mark.parametrize("case, says", SMALL_CASES)
def test_hostile_input_in_process_is_one_line(small_world, run_cli, case, says):
    tmp, files = small_world
    before = _snapshot(tmp)
    result = run_cli(*case.format(tmp=tmp, **files).split())
    lines = result.stderr.strip().splitlines()
    assert result.exit_code in (1, 2), (case, result.exit_code, result.stderr)
    assert len(lines) == 1 and "internal error" not in result.stderr, (case, result.stderr)
    assert says in lines[0], (case, lines[0])
    assert _snapshot(tmp) == before, case


@pytest.mark.parametrize("progress, says", [
    ({"phase": 0, "epoch_in_phase": 5, "epoch": 5}, "epoch_in_phase 5 of a 1-epoch phase"),
    ({"phase": 0, "epoch_in_phase": 0, "step": 999}, "step 999"),
    ({"phase": 7}, "phase 7 of a run with 1"),
    ({"epoch_in_phase": -100000}, "epoch_in_phase"),
])
def test_a_train_state_out_of_range_is_refused(run_cli, tiny_run_copy, progress, says):
    _state_variant(tiny_run_copy, **progress)
    before = _snapshot(tiny_run_copy)
    result = run_cli("train", "--resume", tiny_run_copy, "--quiet")
    assert result.exit_code == 2, result.stderr
    assert says in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert _snapshot(tiny_run_copy) == before


def test_weights_that_turn_non_finite_are_never_saved(run_cli, tmp_path, monkeypatch):
    """A finite loss can still be followed by an update that overflows the weights: the run stops
    and the last good checkpoint (epoch 1, finite) is what stays."""
    import torch

    from cnncli.checkpoint import load_checkpoint
    from cnncli.engine import step as step_module

    real = step_module.TrainStep.__call__

    def overflowing(self, forward, x, y, index, meter, signals, last=False):
        loss = real(self, forward, x, y, index, meter, signals, last=last)
        if index >= 1 and last:  # the last step of epoch 2 (one step per epoch)
            with torch.no_grad():
                next(self.model.parameters()).fill_(float("inf"))
        return loss

    monkeypatch.setattr(step_module.TrainStep, "__call__", overflowing)
    out = tmp_path / "run"
    result = run_cli("train", "lenet5", "--data", "synthetic:n=64,n_test=16,classes=2,size=28", "--epochs", 2,
                     "--threads", 1, "--out", out, "--quiet")
    assert result.exit_code == 1 and "weights became non-finite" in result.stderr, result.stderr
    assert "last good checkpoint" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    for name in ("model", "last", "train_state"):
        tensors, doc = load_checkpoint(out / f"{name}.safetensors")
        assert doc["epoch"] == 1
        assert all(bool(torch.isfinite(t).all()) for t in tensors.values() if t.is_floating_point()), name
