"""`cnncli inspect MODEL --explain`: under every row the arithmetic with the real numbers, and
the figures it arrives at are the table's own columns (text, markdown, CSV and JSON).

The expressions are evaluated here independently (a small arithmetic evaluator) and must give
the figures the table prints, for every hand-built network; the lecture's AlexNet numbers are
checked as the lecture writes them.
"""

from __future__ import annotations

import ast
import csv
import io
import json
import math
import operator
import re

import pytest
from typer.testing import CliRunner

from cnncli.cli import app
from cnncli.models.registry import HAND_BUILT

runner = CliRunner()

LABELS = {"size": "size", "params": "params", "macs": "MACs", "receptive_field": "field"}
# what an explanation says when it cannot show a formula; never for a hand-built network
FALLBACKS = ("as the forward pass gave it", "as the trace propagated it", "counted by torch",
             "from the module's parameters", "unknown: the trace")


def run(*args: str):
    return runner.invoke(app, list(args), env={"NO_COLOR": "1", "COLUMNS": "200"})


_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
        ast.Div: operator.truediv}
_FUNCS = {"floor": math.floor, "ceil": math.ceil, "max": max}


def evaluate(expression: str):
    """The value of an explanation's arithmetic: + - * /, floor, ceil, max, and 'a, b' for
    one expression per axis (a list). Anything else is an error."""
    def ev(node):
        if isinstance(node, ast.Expression):
            return ev(node.body)
        if isinstance(node, ast.Tuple):
            return [ev(e) for e in node.elts]
        if isinstance(node, ast.Constant) and isinstance(node.value, int | float):
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _OPS:
            return _OPS[type(node.op)](ev(node.left), ev(node.right))
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                and node.func.id in _FUNCS and not node.keywords):
            return _FUNCS[node.func.id](*(ev(a) for a in node.args))
        raise ValueError(f"not arithmetic: {ast.dump(node)}")

    return ev(ast.parse(expression, mode="eval"))


def test_the_evaluator_refuses_what_is_not_arithmetic():
    assert evaluate("floor((227 - 11) / 4) + 1") == 55
    assert evaluate("ceil(27 / 1), ceil(28 / 2)") == [27, 14]
    with pytest.raises(ValueError):
        evaluate("__import__('os')")


def _cells(line: str) -> list[str]:
    return re.split(r"\s{2,}", line.strip())


def _figure_shown(text: str, cell: str) -> bool:
    """The explanation arrives at the table's cell: '... = 34,944', '...: 55x55', maybe glossed."""
    return re.search(rf"(=|:) {re.escape(cell)}( \(.*\))?$", text) is not None


@pytest.fixture(scope="module")
def explained():
    cache: dict[str, tuple[dict, str]] = {}

    def get(name: str):
        if name not in cache:
            as_json = run("inspect", name, "--explain", "--format", "json")
            assert as_json.exit_code == 0, as_json.output
            as_text = run("inspect", name, "--explain")
            assert as_text.exit_code == 0, as_text.output
            cache[name] = (json.loads(as_json.stdout), as_text.stdout)
        return cache[name]

    return get


def test_the_networks_checked_here_are_the_ones_cnncli_models_lists():
    result = run("models", "--json")
    assert result.exit_code == 0, result.output
    assert [m["name"] for m in json.loads(result.stdout) if m["source"] == "hand"] == list(HAND_BUILT)


@pytest.mark.parametrize("name", list(HAND_BUILT))
def test_every_json_explanation_arrives_at_the_layers_own_figures(explained, name):
    doc, _ = explained(name)
    for layer in doc["layers"]:
        e = layer["explain"]
        where = f"{name} {layer['name']}"
        shape = layer["output_shape"]
        assert e["size"]["value"] == (shape[-2:] if len(shape) >= 3 else shape), where
        assert e["params"]["value"] == layer["params"], where
        assert e["macs"]["value"] == layer["macs"], where
        assert e["receptive_field"]["value"] == layer["receptive_field"], where
        for key in LABELS:
            assert not any(f in e[key]["text"] for f in FALLBACKS), (where, e[key]["text"])
        # the arithmetic itself gives the figure: evaluated here, not read back
        assert evaluate(e["params"]["expression"]) == layer["params"], where
        assert evaluate(e["macs"]["expression"]) == layer["macs"], where
        if "terms" in e["params"]:
            assert sum(t["value"] for t in e["params"]["terms"]) == layer["params"], where
        if layer["kernel"] is not None:  # a window: the padding rule and the field's recurrence
            assert evaluate(e["size"]["expression"]) == shape[-2:], where
            field = evaluate(e["receptive_field"]["expression"])
            assert [round(v) for v in field] == layer["receptive_field"], where


@pytest.mark.parametrize("name", list(HAND_BUILT))
def test_every_text_explanation_ends_in_the_tables_own_cells(explained, name):
    doc, text = explained(name)
    lines = text.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("Name "))
    columns = _cells(lines[header])
    rows = {layer["name"]: layer for layer in doc["layers"]}
    seen = 0
    i = header + 3  # the rule, then the input row
    while i < len(lines) and lines[i].strip():
        cells = dict(zip(columns, _cells(lines[i]), strict=True))
        layer = rows[cells["Name"]]
        under = [line.strip() for line in lines[i + 1:i + 1 + len(LABELS)]]
        for (key, label), line, column in zip(LABELS.items(), under,
                                              ("Size", "Params", "MACs", "Receptive field")):
            assert line.startswith(label + " "), (name, cells["Name"], line)
            said = line[len(label):].strip()
            assert said == layer["explain"][key]["text"]  # one text, whatever the format
            assert _figure_shown(said, cells[column]), (name, cells["Name"], column, said)
        seen += 1
        i += 1 + len(LABELS)
    assert seen == len(doc["layers"])


def test_alexnet_reads_as_the_lecture_writes_it(explained):
    doc, text = explained("alexnet")
    c1, c3 = doc["layers"][0]["explain"], doc["layers"][3]["explain"]
    assert "valid" in c1["size"]["text"] and "floor((227 - 11) / 4) + 1 = 55" in c1["size"]["text"]
    assert c1["params"]["text"].startswith("11*11*3*96 + 96 = 34,944")
    assert c1["macs"]["text"].startswith("55*55*96 * (11*11*3) = 105.42M")
    assert "r = 1 + (11 - 1) * 1 = 11, j = 1 * 4 = 4" in c1["receptive_field"]["text"]
    assert c3["size"]["text"].startswith("same: ceil(27 / 1) = 27")
    assert "2 zeros added on each side" in c3["size"]["text"]
    assert c3["receptive_field"]["text"].startswith("r = 19 + (5 - 1) * 8 = 51, j = 8 * 1 = 8")
    f9 = doc["layers"][-3]["explain"]
    assert f9["params"]["text"].startswith("9216*4096 + 4096 = 37,752,832")
    for line in ("floor((227 - 11) / 4) + 1 = 55", "11*11*3*96 + 96 = 34,944",
                 "55*55*96 * (11*11*3) = 105.42M"):
        assert line in text


def test_the_dense_comparison_prices_a_fully_connected_c1(explained):
    doc, text = explained("alexnet")
    cmp = doc["explain"]["dense_comparison"]
    inputs, outputs = 3 * 227 * 227, 96 * 55 * 55
    assert cmp["layer"] == "C1"
    assert (cmp["input_values"], cmp["output_values"]) == (inputs, outputs)
    assert cmp["dense"]["params"] == inputs * outputs + outputs == evaluate(cmp["dense"]["params_expression"])
    assert cmp["dense"]["macs"] == inputs * outputs == evaluate(cmp["dense"]["macs_expression"])
    assert cmp["convolution"] == {"params": 34_944, "macs": 105_415_200}
    assert cmp["params_ratio"] == pytest.approx(cmp["dense"]["params"] / 34_944)
    assert cmp["macs_ratio"] == pytest.approx(inputs * outputs / 105_415_200)
    assert cmp["dense"]["weight_bytes"] == cmp["dense"]["params"] * 4
    assert "154,587*290,400 + 290,400 = 44.89G parameters" in text
    assert "(426x as many)" in text  # 44.89G / 105.42M multiply-adds
    for line in cmp["text"]:
        assert line in text


def test_dense_bn_depthwise_and_se_rows_show_their_own_arithmetic(explained):
    doc, _ = explained("xception")
    by_name = {layer["name"]: layer["explain"] for layer in doc["layers"]}
    assert by_name["bn3"]["params"]["text"].startswith("2*1536 = 3,072 (a scale and a shift per map")
    assert by_name["conv3"]["params"]["text"].startswith("3*3*1*1024 + 1*1*1024*1536 = 1,582,080")
    assert "one 3x3 filter per map" in by_name["conv3"]["params"]["text"]
    assert by_name["fc"]["params"]["text"].startswith("2048*1000 + 1000 = 2,049,000")

    result = run("inspect", "se_resnet50", "--depth", "3", "--explain", "-f", "json")
    assert result.exit_code == 0, result.output
    se = next(layer for layer in json.loads(result.stdout)["layers"] if layer["type"] == "SE block")
    assert se["explain"]["params"]["text"].startswith(
        "1*1*256*16 + 16 + 1*1*16*256 + 256 = 8,464 (squeeze 256 -> 16 and excite 16 -> 256")
    assert evaluate(se["explain"]["macs"]["expression"]) == se["macs"] == 2 * 256 * 16


def test_an_unusual_layer_is_explained_from_its_real_numbers():
    """Dilation, ceil-mode pooling, asymmetric 'same' zeros: the formula still gives the figure."""
    from torch import nn

    from cnncli.layers import ConvLayer
    from cnncli.summary import summarize
    from cnncli.summary.explain import explain_row

    model = nn.Sequential(nn.Conv2d(3, 8, 3, dilation=2), nn.MaxPool2d(3, 2, ceil_mode=True),
                          ConvLayer(8, 4, 3, stride=2, padding="same"))
    rows = summarize(model, input_size=(3, 20, 21)).rows
    conv, pool, same = (explain_row(r) for r in rows)
    assert conv["size"]["text"].startswith("valid, no padding: floor((20 - 5) / 1) + 1 = 16 (height), "
                                           "floor((21 - 5) / 1) + 1 = 17 (width)")
    assert "dilation 2x2: the kernel spans (k - 1) * d + 1 = 5x5" in conv["size"]["text"]
    assert conv["receptive_field"]["text"].startswith("r = 1 + (5 - 1) * 1 = 5, j = 1 * 1 = 1")
    assert pool["size"]["text"].startswith(
        "no padding, ceil mode keeps a last window that runs past the edge: "
        "ceil((16 - 3) / 2) + 1 = 8 (height), ceil((17 - 3) / 2) + 1 = 8 (width): 8x8")
    assert rows[1].output_shape == [8, 8, 8]  # floor would have given 7x8
    assert same["size"]["text"] == ("same: ceil(8 / 2) = 4 on each axis, zeros added on each axis: "
                                    "0 before, 1 after: 4x4")
    for row, e in zip(rows, (conv, pool, same)):
        assert evaluate(e["size"]["expression"]) == row.output_shape[-2:]
        assert evaluate(e["params"]["expression"]) == row.params
        assert evaluate(e["macs"]["expression"]) == row.macs


def test_a_formula_that_does_not_give_the_rows_figure_is_not_shown():
    """The row is the truth: parts that do not add up to its column give no formula."""
    from cnncli.summary.explain import explain_row
    from cnncli.summary.rows import LayerRow, Part

    row = LayerRow(name="x", type="Convolution", maps=4, size="6x6", kernel=[3, 3], stride=[1, 1],
                   padding="valid", activation=None, output_shape=[4, 6, 6], params=120, macs=999,
                   receptive_field=[3, 3], depth=1, input_shape=[3, 9, 9], jump=[1, 1],
                   input_receptive_field=[1, 1], input_jump=[1, 1],
                   parts=[Part("", "Conv2d", [("weight", [4, 3, 3, 3])], 999, [3, 9, 9], [4, 6, 6])])
    e = explain_row(row)
    assert e["params"]["expression"] is None and e["params"]["text"].endswith(": 120")
    assert e["macs"]["text"] == "counted by torch (no formula for this layer here): 999"
    assert e["size"]["expression"] is None  # floor((9 - 3) / 1) + 1 = 7, not the traced 6
    assert e["size"]["text"].endswith(": 6x6")


def test_markdown_puts_the_arithmetic_under_each_row():
    result = run("inspect", "lenet5", "--explain", "--format", "markdown")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    c1 = next(i for i, line in enumerate(lines) if line.startswith("| C1 |"))
    under = lines[c1 + 1]
    assert under.startswith("| size: valid, no padding: floor((32 - 5) / 1) + 1 = 28")
    assert r"params: 5\*5\*1\*6 + 6 = 156" in under  # '*' escaped: not emphasis
    assert under.count("|") == lines[c1].count("|")  # still one cell per column
    assert r"1,024\*4,704 + 4,704 = 4.82M parameters" in result.stdout


def test_csv_carries_the_explanations_as_columns():
    result = run("inspect", "lenet5", "--explain", "--format", "csv")
    assert result.exit_code == 0, result.output
    rows = list(csv.DictReader(io.StringIO(result.stdout)))
    assert rows[0]["name"] == "C1" and rows[0]["params"] == "156"
    assert rows[0]["explain_params"].startswith("5*5*1*6 + 6 = 156")
    assert rows[0]["explain_receptive_field"].endswith(": 5x5")


def test_without_explain_the_json_document_is_unchanged():
    result = run("inspect", "lenet5", "--format", "json")
    doc = json.loads(result.stdout)
    assert "explain" not in doc and all("explain" not in layer for layer in doc["layers"])


def test_the_readme_shows_real_explain_output(explained):
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    block = readme.split("$ cnncli inspect alexnet --explain\n", 1)[1].split("```", 1)[0]
    _, text = explained("alexnet")
    shown = [line for line in block.splitlines() if line.strip() and line != "..."]
    assert len(shown) >= 5
    for line in shown:
        assert line in text.splitlines(), line
