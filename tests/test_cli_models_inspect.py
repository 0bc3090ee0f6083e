"""`cnncli models` and `cnncli inspect` through the real Typer app: output contracts (JSON,
CSV, Markdown), exit codes and one-line errors, and listing without importing torch."""

from __future__ import annotations

import csv
import io
import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from cnncli.cli import app
from cnncli.models.registry import HAND_BUILT

runner = CliRunner()


def run(*args: str):
    return runner.invoke(app, list(args), env={"NO_COLOR": "1", "COLUMNS": "200"})


# --- inspect ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def alexnet_json():
    result = run("inspect", "alexnet", "--format", "json")
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)  # the whole of stdout is one JSON document


def test_inspect_json_contract(alexnet_json):
    doc = alexnet_json
    assert {"model", "input", "total_params", "trainable_params", "macs", "layers"} <= set(doc)
    assert doc["model"] == "alexnet" and doc["input"] == [3, 227, 227]
    assert doc["total_params"] == doc["trainable_params"] == HAND_BUILT["alexnet"].params
    assert isinstance(doc["macs"], int) and doc["macs"] == sum(layer["macs"] for layer in doc["layers"])
    for layer in doc["layers"]:
        assert {"name", "type", "output_shape", "kernel", "stride", "padding", "activation",
                "params", "macs", "receptive_field"} <= set(layer)
    c1 = doc["layers"][0]
    assert c1 == {**c1, "name": "C1", "type": "Convolution", "output_shape": [96, 55, 55],
                  "kernel": [11, 11], "stride": [4, 4], "padding": "valid", "activation": "relu",
                  "params": 34_944, "receptive_field": [11, 11]}
    assert doc["layers"][-1]["output_shape"] == [1000]


def test_inspect_table_has_the_seed_columns_and_totals():
    result = run("inspect", "alexnet")
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    for column in ("Name", "Type", "Maps", "Size", "Kernel", "Stride", "Padding", "Activation",
                   "Output shape", "Params", "MACs", "Receptive field"):
        assert column in out
    c1 = next(line for line in out.splitlines() if line.split()[:1] == ["C1"])
    assert c1.split()[:8] == ["C1", "Convolution", "96", "55x55", "11x11", "4", "valid", "ReLU"]
    assert "Parameters: 62,378,344 (trainable 62,378,344, frozen 0)" in out
    assert "Multiply-adds:" in out and "Weight size:" in out and "Activation memory:" in out
    assert result.stderr == ""


def test_inspect_csv_parses_with_one_row_per_layer(alexnet_json):
    result = run("inspect", "alexnet", "--format", "csv")
    assert result.exit_code == 0
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert [r["name"] for r in rows] == [layer["name"] for layer in alexnet_json["layers"]]
    s2 = rows[2]
    assert (s2["type"], s2["maps"], s2["size"], s2["kernel"], s2["stride"], s2["padding"]) == (
        "Max pooling", "96", "27x27", "3x3", "2", "valid")
    assert sum(int(r["params"]) for r in rows) == alexnet_json["total_params"]


def test_inspect_markdown_is_a_table():
    result = run("inspect", "lenet5", "--format", "markdown")
    assert result.exit_code == 0
    table = [line for line in result.stdout.splitlines() if line.startswith("|")]
    header = [c.strip() for c in table[0].strip("|").split("|")]
    assert header[:3] == ["Name", "Type", "Maps"] and len(header) == 12
    assert all(len(line.strip("|").split("|")) == 12 for line in table)
    names = [line.strip("|").split("|")[0].strip() for line in table[2:]]
    assert names == ["In", "C1", "S2", "C3", "S4", "C5", "F6", "out"]


def test_inspect_depth_and_num_classes_options():
    result = run("inspect", "googlenet", "--depth", "3", "--num-classes", "5", "--input", "3x64x64",
                 "-f", "json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    names = [layer["name"] for layer in doc["layers"]]
    assert "inception3a.branch3.1" in names and "inception3a" not in names
    assert doc["layers"][-1]["output_shape"] == [5]


def test_inspect_checkpoint_file(tmp_path):
    from cnncli.checkpoint import save_checkpoint
    from cnncli.models.registry import build_model

    built = build_model("lenet5", num_classes=4)
    model = built.module
    path = save_checkpoint(tmp_path / "model.safetensors", model.state_dict(),
                           {"kind": "model", "model": built.spec, "num_classes": 4,
                            "input_size": [1, 32, 32]})
    for ref in (str(path), str(tmp_path)):  # the file, or the run directory holding it
        result = run("inspect", ref, "-f", "json")
        assert result.exit_code == 0, result.stderr
        doc = json.loads(result.stdout)
        assert doc["input"] == [1, 32, 32] and doc["layers"][-1]["output_shape"] == [4]
        assert doc["total_params"] == sum(p.numel() for p in model.parameters())


def _one_line_error(result, code: int = 2) -> str:
    assert result.exit_code == code
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in result.stderr
    return lines[0]


def test_inspect_too_small_input_is_one_line_exit_2():
    line = _one_line_error(run("inspect", "lenet5", "--input", "1x8x8"))
    assert line == ("error: input 1x8x8 is too small for lenet5: at layer C3 (Convolution), the "
                    "feature map is 2x2 but the kernel is 5x5; the smallest square input that "
                    "works is 1x32x32")


@pytest.mark.parametrize("bad", ["3x32", "axbxc", "3x0x32", "3x32x32x1"])
def test_inspect_bad_input_syntax(bad):
    line = _one_line_error(run("inspect", "alexnet", "--input", bad))
    assert "CxHxW" in line


def test_inspect_unknown_model_suggests():
    line = _one_line_error(run("inspect", "alexnt"))
    assert "unknown model 'alexnt'" in line and "'alexnet'" in line


def test_inspect_bad_depth_is_a_usage_error():
    _one_line_error(run("inspect", "lenet5", "--depth", "0"))


# --- models ----------------------------------------------------------------------------------


def test_models_lists_hand_built_networks_as_json():
    result = run("models", "--json")
    assert result.exit_code == 0
    doc = json.loads(result.stdout)
    assert [m["name"] for m in doc] == list(HAND_BUILT)
    for m in doc:
        assert {"name", "source", "params", "input_size", "description", "mean", "std"} <= set(m)
        assert m["source"] == "hand" and m["params"] == HAND_BUILT[m["name"]].params
    resnets = json.loads(run("models", "resnet*", "--json").stdout)
    assert [m["name"] for m in resnets] == ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]


def test_models_table():
    result = run("models", "net")
    assert result.exit_code == 0
    assert "alexnet" in result.stdout and "62.38M" in result.stdout and "3x227x227" in result.stdout
    assert "vgg16" not in result.stdout
    assert "--source timm" in result.stderr  # the hint goes to stderr, never into the data


def test_models_no_match_is_empty_and_exit_0():
    result = run("models", "nosuchnet", "--json")
    assert result.exit_code == 0 and json.loads(result.stdout) == []
    table = run("models", "nosuchnet")
    assert table.exit_code == 0 and table.stdout == "" and "no hand-built model matches" in table.stderr


def test_listing_hand_built_models_never_imports_torch():
    code = (
        "import sys, json\n"
        "from typer.testing import CliRunner\n"
        "from cnncli.cli import app\n"
        "r = CliRunner().invoke(app, ['models', '--source', 'hand', '--json'])\n"
        "assert r.exit_code == 0, r.output\n"
        "h = CliRunner().invoke(app, ['--help'])\n"
        "assert h.exit_code == 0 and 'inspect' in h.stdout\n"
        "print(json.dumps({'n': len(json.loads(r.stdout)),\n"
        "                  'heavy': sorted(m for m in ('torch', 'torchvision', 'timm') if m in sys.modules)}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report == {"n": len(HAND_BUILT), "heavy": []}


@pytest.mark.slow  # imports timm
def test_models_timm_counts_params_when_few_match_and_inspect_works():
    pytest.importorskip("timm")
    result = run("models", "--source", "timm", "resnet18", "--json")
    assert result.exit_code == 0, result.stderr
    doc = {m["name"]: m for m in json.loads(result.stdout)}
    assert doc["timm/resnet18"]["params"] == 11_689_512
    assert doc["timm/resnet18"]["source"] == "timm" and doc["timm/resnet18"]["input_size"] == [3, 224, 224]
    inspected = run("inspect", "timm/resnet18", "-f", "json")
    assert inspected.exit_code == 0, inspected.stderr
    assert json.loads(inspected.stdout)["total_params"] == 11_689_512
