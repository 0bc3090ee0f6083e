"""Hostile inputs across the subcommands: exit 1 or 2, one line on stderr, no traceback, no
file under the test folder changed, memory bounded (each case in a subprocess under an
address-space limit, with a small memory budget so the cost checks are what refuses)."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 6 << 30  # torch's import alone maps a few GiB of address space


def _limit():
    resource.setrlimit(resource.RLIMIT_AS, (LIMIT, LIMIT))


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
def test_hostile_input_is_refused_in_one_line(world, case):
    tmp, files = world
    before = _snapshot(tmp)
    args = case.format(tmp=tmp, **files).split()
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CNNCLI_MEMORY_BUDGET": "1G", "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-m", "cnncli", *args], capture_output=True, text=True,
                          env=env, cwd=tmp, preexec_fn=_limit, timeout=120)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode in (1, 2), (case, proc.returncode, proc.stderr[-500:])
    assert len(lines) == 1, (case, proc.stderr[-800:])
    assert "Traceback" not in proc.stderr and "internal error" not in proc.stderr, (case, proc.stderr)
    assert _snapshot(tmp) == before, case
