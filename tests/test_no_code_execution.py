"""No file can run code.

A malicious pickle (one that would create a marker file when unpickled) is planted everywhere
cnncli reads weights or data that could be a pickle: `--weights` of train, finetune, eval and
predict (as a raw pickle and as a torch.save zip), a CIFAR-10 batch, a recipe's `weights` and
a model file's `[backbone] weights`. Nothing runs, the error is one clear line, exit 2.
The source is checked for unrestricted pickle / torch.load calls, and the safetensors reader
refuses crafted headers before it allocates anything.
"""

from __future__ import annotations

import ast
import json
import os
import pickle
import struct
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import torch

import cnncli
from cnncli.checkpoint import MAX_HEADER_BYTES, load_checkpoint, load_tensors, read_header
from cnncli.cli import app
from cnncli.errors import InputError

DATA = "synthetic:n=40,n_test=10,classes=2,size=28"


class Exploit:
    """Unpickling this runs `touch MARKER`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.fixture
def marker(tmp_path):
    path = tmp_path / "PWNED"
    yield path
    assert not path.exists(), "the malicious pickle ran"


@pytest.fixture(params=["raw-protocol-2", "raw-protocol-4", "torch-zip"])
def evil_pth(request, tmp_path, marker):
    path = tmp_path / "evil.pth"
    payload = {"conv.weight": torch.zeros(2), "trap": Exploit(marker)}
    if request.param == "torch-zip":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload, protocol=int(request.param[-1])))
    return path


def test_the_exploit_is_real(tmp_path, marker, evil_pth):
    """The planted files do run code under a plain unpickler: the tests below are not vacuous."""
    if evil_pth.read_bytes()[:2] == b"PK":
        return  # torch's zip: torch.load(weights_only=False) would run it; not worth running here
    pickle.loads(evil_pth.read_bytes())
    assert marker.exists()
    marker.unlink()


def refused(result, *fragments):
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr and result.stdout == ""
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("command", ["train", "finetune", "eval", "predict"])
def test_malicious_pth_as_weights_runs_nothing(runner, command, evil_pth, tmp_path):
    image = tmp_path / "x.png"
    from torchvision.io import write_png

    write_png(torch.zeros(1, 8, 8, dtype=torch.uint8), str(image))
    args = {
        "train": ["train", "lenet5", "--data", DATA, "--weights", evil_pth, "--out", tmp_path / "r"],
        "finetune": ["finetune", "lenet5", "--data", DATA, "--weights", evil_pth, "--out", tmp_path / "r"],
        "eval": ["eval", "lenet5", "--weights", evil_pth, "--data", DATA],
        "predict": ["predict", "lenet5", "--weights", evil_pth, image],
    }[command]
    line = refused(runner.invoke(app, [str(a) for a in args]), str(evil_pth), "never code")
    assert "weights_only" not in line  # torch's advice to turn the protection off is not passed on
    if evil_pth.read_bytes()[:2] == b"PK" or b"\x80\x02" == evil_pth.read_bytes()[:2]:
        assert "it would call " in line


def test_malicious_weights_named_by_a_recipe(runner, evil_pth, tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text(f'model = "lenet5"\ndata = "{DATA}"\nweights = "{evil_pth}"\nepochs = 1\n')
    refused(runner.invoke(app, ["train", "--recipe", str(recipe), "--out", str(tmp_path / "r")]), str(evil_pth))
    refused(runner.invoke(app, ["finetune", "--recipe", str(recipe), "--out", str(tmp_path / "r2")]), str(evil_pth))


def test_malicious_weights_named_by_a_model_file(runner, evil_pth, tmp_path):
    model_file = tmp_path / "net.toml"
    model_file.write_text(f'[model]\nname = "net"\ninput = [1, 32, 32]\nnum_classes = 2\n\n'
                          f'[backbone]\nmodel = "lenet5"\nweights = "{evil_pth.name}"\n\n'
                          '[[head]]\ntype = "flatten"\n\n[[head]]\ntype = "dense"\nunits = "num_classes"\n')
    # finetune loads a model file's backbone weights (train builds the network from scratch)
    result = runner.invoke(app, ["finetune", str(model_file), "--data", DATA, "--out", str(tmp_path / "r")])
    refused(result, "evil.pth", "never code")


def _cifar_batch(n: int = 4) -> dict:
    rng = np.random.default_rng(0)
    return {b"batch_label": b"x", b"labels": [int(v) for v in rng.integers(0, 10, n)],
            b"data": rng.integers(0, 256, (n, 3072), dtype=np.uint8), b"filenames": [b"f"] * n}


@pytest.mark.parametrize("where", ["data_batch_2", "test_batch", "batches.meta"])
def test_malicious_cifar_batch_runs_nothing(runner, where, tmp_path, marker):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        (folder / name).write_bytes(pickle.dumps(_cifar_batch(), protocol=2))
    evil = _cifar_batch()
    evil[b"labels"] = Exploit(marker)
    if where == "batches.meta":
        evil = {b"label_names": [Exploit(marker)] * 10}
    (folder / where).write_bytes(pickle.dumps(evil, protocol=2))
    result = runner.invoke(app, ["train", "lenet5", "--data", "cifar10", "--data-dir", str(tmp_path),
                                 "--out", str(tmp_path / "r")])
    refused(result, where, "refuses to load", "system")


# ------------------------------------------------------------------------------ the source itself
def _calls(tree: ast.AST):
    for node in ast.walk(tree):
        if isinstance(node, ast.Call):
            func = node.func
            dotted = []
            while isinstance(func, ast.Attribute):
                dotted.append(func.attr)
                func = func.value
            dotted.append(func.id if isinstance(func, ast.Name) else "<expr>")  # model(...).eval() is no eval()
            yield ".".join(reversed(dotted)), node


def test_no_unrestricted_loader_anywhere_in_the_source():
    """No pickle.load(s), torch.load without weights_only=True, numpy allow_pickle, or Unpickler
    outside the CIFAR module's RestrictedUnpickler."""
    root = Path(cnncli.__file__).parent
    problems = []
    sources = sorted(root.rglob("*.py"))
    assert len(sources) > 20
    for path in sources:
        tree = ast.parse(path.read_text(), str(path))
        where = path.relative_to(root)
        for name, call in _calls(tree):
            keywords = {k.arg: k.value for k in call.keywords}
            if name in ("pickle.load", "pickle.loads", "pickle.Unpickler", "cPickle.load", "dill.load",
                        "joblib.load", "marshal.loads", "shelve.open"):
                problems.append(f"{where}:{call.lineno}: {name}")
            if name.endswith("torch.load"):
                flag = keywords.get("weights_only")
                if not (isinstance(flag, ast.Constant) and flag.value is True):
                    problems.append(f"{where}:{call.lineno}: {name} without weights_only=True")
            if name.endswith(("np.load", "numpy.load")):
                flag = keywords.get("allow_pickle")
                if flag is not None and not (isinstance(flag, ast.Constant) and flag.value is False):
                    problems.append(f"{where}:{call.lineno}: {name} with allow_pickle")
            if name in ("eval", "exec"):
                problems.append(f"{where}:{call.lineno}: {name}()")
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef):
                bases = [ast.unparse(b) for b in node.bases]
                if any("Unpickler" in b for b in bases) and not (path.name == "cifar.py"
                                                                 and node.name == "RestrictedUnpickler"):
                    problems.append(f"{where}:{node.lineno}: unpickler {node.name}")
    assert not problems, "unrestricted loading:\n" + "\n".join(problems)


def test_the_source_check_would_see_a_bad_call():
    bad = "import torch, pickle\nx = torch.load(p)\ny = pickle.loads(b)\nz = torch.load(p, weights_only=False)\n"
    names = [(n, {k.arg for k in c.keywords}) for n, c in _calls(ast.parse(bad))]
    assert ("torch.load", set()) in names and ("pickle.loads", set()) in names
    assert ("torch.load", {"weights_only"}) in names


def test_restricted_unpickler_refuses_before_calling(tmp_path, marker):
    from cnncli.data.cifar import restricted_load

    (tmp_path / "b").write_bytes(pickle.dumps([1, Exploit(marker)], protocol=4))
    with pytest.raises(InputError, match="refuses to load.*system"):
        restricted_load(tmp_path / "b")


# ------------------------------------------------------------------------------ safetensors headers
def _file(tmp_path: Path, header: dict | bytes, data: bytes = b"", length: int | None = None) -> Path:
    raw = header if isinstance(header, bytes) else json.dumps(header).encode()
    path = tmp_path / "crafted.safetensors"
    path.write_bytes(struct.pack("<Q", len(raw) if length is None else length) + raw + data)
    return path


def _refused_before_allocating(path: Path, pattern: str) -> None:
    """read_header refuses, load_checkpoint too, and neither allocates more than a little."""
    tracemalloc.start()
    try:
        with pytest.raises(InputError, match=pattern):
            read_header(path)
        with pytest.raises(InputError, match=pattern):
            load_checkpoint(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, f"{peak} bytes allocated to refuse a {path.stat().st_size}-byte file"


def test_huge_header_length_is_refused_without_reading_it(tmp_path):
    _refused_before_allocating(_file(tmp_path, b"{}", length=2**62), "not a safetensors file or truncated")
    _refused_before_allocating(_file(tmp_path, b"{}", length=MAX_HEADER_BYTES + 1),
                               "not a safetensors file or truncated")
    # within the bound but longer than the file
    _refused_before_allocating(_file(tmp_path, b"{}", length=50 << 20), "truncated")


@pytest.mark.parametrize("entry,pattern", [
    ({"dtype": "F32", "shape": [1 << 20, 1 << 20], "data_offsets": [0, 16]}, "does not match its 16 bytes"),
    ({"dtype": "F32", "shape": [1 << 30], "data_offsets": [0, 4 << 30]}, "ends past the end of the file"),
    ({"dtype": "F32", "shape": [4], "data_offsets": [0, 16 + 4]}, "does not match"),
    ({"dtype": "F33", "shape": [4], "data_offsets": [0, 16]}, "unknown dtype 'F33'"),
    ({"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}, "invalid shape"),
    ({"dtype": "F32", "shape": [2.5], "data_offsets": [0, 16]}, "invalid shape"),
    ({"dtype": "F32", "shape": [4], "data_offsets": [16, 0]}, "invalid data offsets"),
    ({"dtype": "F32", "shape": [4], "data_offsets": [-16, 0]}, "invalid data offsets"),
    ({"dtype": "F32", "shape": [4], "data_offsets": [0]}, "invalid data offsets"),
    ({"dtype": "F32", "shape": [4]}, "corrupt entry"),
    ({"dtype": "F32", "shape": [4], "data_offsets": [0, 16], "code": "x"}, "corrupt entry"),
])
def test_crafted_tensor_entries_are_refused(tmp_path, entry, pattern):
    _refused_before_allocating(_file(tmp_path, {"t": entry}, bytes(16)), pattern)


def test_overlapping_tensors_are_refused(tmp_path):
    header = {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},
              "b": {"dtype": "F32", "shape": [4], "data_offsets": [8, 24]}}
    _refused_before_allocating(_file(tmp_path, header, bytes(24)), "overlap")


@pytest.mark.parametrize("raw,pattern", [
    (b"\xff\xfe not utf-8", "not JSON"),
    (b"[1, 2, 3]", "corrupt safetensors header"),
    (b"[" * 100_000 + b"]" * 100_000, "not JSON"),  # nesting deep enough to exhaust the recursion
    (json.dumps({"__metadata__": {"cnncli": 3}}).encode(), "corrupt safetensors metadata"),
    (json.dumps({"__metadata__": {"cnncli": "{not json"}}).encode(), "corrupt cnncli metadata"),
    (json.dumps({"__metadata__": {"cnncli": json.dumps({"model": 1})}}).encode(), "without a model name"),
])
def test_crafted_headers_and_metadata_are_refused(tmp_path, raw, pattern):
    path = _file(tmp_path, raw)
    with pytest.raises(InputError, match=pattern):
        load_checkpoint(path)


def test_a_valid_crafted_file_still_loads(tmp_path):
    """The checks refuse what is wrong, not what is unusual: an honest hand-made file loads."""
    values = np.arange(6, dtype="<f4").tobytes() + np.arange(2, dtype="<i8").tobytes()
    header = {"__metadata__": {"cnncli": json.dumps({"model": {"name": "lenet5"}})},
              "a": {"dtype": "F32", "shape": [2, 3], "data_offsets": [0, 24]},
              "b": {"dtype": "I64", "shape": [2], "data_offsets": [24, 40]},
              "empty": {"dtype": "F16", "shape": [0, 5], "data_offsets": [40, 40]}}
    tensors, meta = load_checkpoint(_file(tmp_path, header, values))
    assert meta["model"]["name"] == "lenet5"
    assert tensors["a"].tolist() == [[0, 1, 2], [3, 4, 5]] and tensors["b"].tolist() == [0, 1]
    assert tensors["empty"].shape == (0, 5)
    assert load_tensors(_file(tmp_path, header, values))[0].keys() == tensors.keys()
