"""`eval --predictions`, the averages and confused pairs of `eval`, `compare` and `viz mistakes`."""

from __future__ import annotations

import csv
import json

import pytest
from PIL import Image
from typer.testing import CliRunner

from cnncli.cli import app

runner = CliRunner()
DATA = "fashion-mnist-mini"  # real images; its test split does not depend on the seed
BAR_NET = """
[model]
name = "bar_net"
input = [1, 28, 28]
num_classes = 10

[[layers]]
name = "conv1"
type = "conv"
filters = 8
kernel = 3
padding = "same"

[[layers]]
type = "maxpool"
kernel = 2

[[layers]]
name = "conv2"
type = "conv"
filters = 16
kernel = 3
padding = "same"

[[layers]]
name = "pool"
type = "global_avgpool"

[[layers]]
name = "fc"
type = "dense"
units = "num_classes"
"""


def run_cli(*args):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two short runs of the same network on the same data, seeds 0 and 1, each with its
    eval --json document and predictions CSV."""
    root = tmp_path_factory.mktemp("compare")
    model_file = root / "bar_net.toml"
    model_file.write_text(BAR_NET)
    out = {}
    for seed in (0, 1):
        run = root / f"seed{seed}"
        result = run_cli("train", model_file, "--data", DATA, "--epochs", 2, "--max-samples", 500, "--lr", 0.01,
                         "--seed", seed,
                         "--deterministic", "--out", run)
        assert result.exit_code == 0, result.stderr
        csv_path = run / "predictions.csv"
        result = run_cli("eval", run, "--predictions", csv_path, "--json")
        assert result.exit_code == 0, result.stderr
        with open(csv_path, newline="") as f:
            rows = list(csv.DictReader(f))
        out[seed] = (run, json.loads(result.stdout), rows)
    return out


def test_predictions_csv_has_one_row_per_image_and_agrees_with_the_metrics(runs):
    run, doc, rows = runs[0]
    assert doc["predictions_file"] == str(run / "predictions.csv")
    assert list(rows[0]) == ["id", "dataset", "split", "true", "predicted", "prob_true", "prob_predicted",
                             "loss", "top5"]
    assert [r["id"] for r in rows] == [str(i) for i in range(1000)]  # the index in the test split
    assert {r["dataset"] for r in rows} == {DATA} and {r["split"] for r in rows} == {"test"}
    correct = sum(r["true"] == r["predicted"] for r in rows)
    assert correct / len(rows) == pytest.approx(doc["top1"])
    assert sum(float(r["loss"]) for r in rows) / len(rows) == pytest.approx(doc["loss"], rel=1e-4)
    for r in rows:
        top5 = r["top5"].split("|")
        assert len(top5) == 5 and top5[0] == r["predicted"] and set(top5) <= set(doc["class_names"])
        assert float(r["prob_predicted"]) >= float(r["prob_true"])
    in_top5 = sum(r["true"] in r["top5"].split("|")[:5] for r in rows)
    assert in_top5 / len(rows) == pytest.approx(doc["top5"])


def test_macro_weighted_averages_and_confused_pairs_match_sklearn_and_the_rows(runs):
    from sklearn.metrics import precision_recall_fscore_support

    _, doc, rows = runs[0]
    truth, predicted = [r["true"] for r in rows], [r["predicted"] for r in rows]
    for kind in ("macro", "weighted"):
        p, r, f, _ = precision_recall_fscore_support(truth, predicted, labels=doc["class_names"],
                                                     average=kind, zero_division=0)
        assert doc[kind] == pytest.approx({"precision": p, "recall": r, "f1": f})
    pairs = doc["confused_pairs"]
    assert pairs and pairs == sorted(pairs, key=lambda e: -e["count"])
    for pair in pairs:
        assert pair["true"] != pair["predicted"]
        assert pair["count"] == sum(t == pair["true"] and q == pair["predicted"] for t, q in zip(truth, predicted))
    table = run_cli("eval", runs[0][0])
    assert "most confused pairs" in table.stdout and "macro" in table.stdout and "weighted" in table.stdout


def test_compare_two_seeds_lists_the_flips_of_both_predictions_files(runs):
    (run_a, doc_a, rows_a), (run_b, doc_b, rows_b) = runs[0], runs[1]
    result = run_cli("compare", run_a, run_b, "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    to_wrong = [a["id"] for a, b in zip(rows_a, rows_b) if a["true"] == a["predicted"] and b["true"] != b["predicted"]]
    to_right = [a["id"] for a, b in zip(rows_a, rows_b) if a["true"] != a["predicted"] and b["true"] == b["predicted"]]
    assert to_wrong or to_right  # two seeds of a short run do disagree
    assert [f["id"] for f in doc["flipped"]["to_wrong"]] == to_wrong
    assert [f["id"] for f in doc["flipped"]["to_right"]] == to_right
    assert doc["changed_predictions"] == sum(a["predicted"] != b["predicted"] for a, b in zip(rows_a, rows_b))
    metrics = {m["metric"]: m for m in doc["metrics"]}
    assert metrics["top1"]["a"] == pytest.approx(doc_a["top1"]) and metrics["top1"]["b"] == pytest.approx(doc_b["top1"])
    assert metrics["top1"]["delta"] == pytest.approx(doc_b["top1"] - doc_a["top1"])
    assert metrics["macro_f1"]["delta"] == pytest.approx(doc_b["macro"]["f1"] - doc_a["macro"]["f1"])
    f1_a = {p["class"]: p["f1"] for p in doc_a["per_class"]}
    f1_b = {p["class"]: p["f1"] for p in doc_b["per_class"]}
    for p in doc["per_class_f1"]:
        assert p["delta"] == pytest.approx(f1_b[p["class"]] - f1_a[p["class"]])
    assert doc["confusion_delta"] == [[b - a for a, b in zip(ra, rb)]
                                      for ra, rb in zip(doc_a["confusion"], doc_b["confusion"])]
    diff = {d["key"]: (d["a"], d["b"]) for d in doc["config_diff"]}
    assert diff["seed"] == (0, 1) and "recipe.lr" not in diff
    table = run_cli("compare", run_a, run_b)
    assert table.exit_code == 0 and "flipped images" in table.stdout and "right -> wrong" in table.stdout


def test_a_run_and_its_own_onnx_export_flip_nothing(runs):
    pytest.importorskip("onnxruntime")
    from cnncli.export import export_checkpoint

    run, _, _ = runs[0]
    onnx_path = export_checkpoint(run / "model.safetensors", "onnx", exporter="torchscript").path
    result = run_cli("compare", run, onnx_path, "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["b"]["source"] == "onnx"
    assert doc["flipped"] == {"to_wrong": [], "to_right": []} and doc["changed_predictions"] == 0
    assert all(abs(m["delta"]) < 1e-4 for m in doc["metrics"])
    assert all(v == 0 for row in doc["confusion_delta"] for v in row)
    # the same run: only what the export recorded about itself differs
    assert all(d["key"].startswith("export") for d in doc["config_diff"]), doc["config_diff"]


def test_compare_refuses_networks_with_other_classes(runs, tmp_path):
    from cnncli.checkpoint import load_checkpoint, save_checkpoint

    run, _, _ = runs[0]
    state, meta = load_checkpoint(run / "model.safetensors")
    meta = meta.replace(class_names=[f"class {i}" for i in range(10)])
    other = save_checkpoint(tmp_path / "other.safetensors", state, meta)
    result = run_cli("compare", run, other)
    assert result.exit_code == 2 and "same classes" in result.stderr


def test_viz_mistakes_from_a_run_and_from_its_csv(runs, tmp_path):
    from cnncli.engine.predictions import read_predictions
    from cnncli.mistakes import highest_loss

    run, _, rows = runs[0]
    out = tmp_path / "from-run.png"
    result = run_cli("viz", "mistakes", run, "--top", 6, "--out", out)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == str(out)
    with Image.open(out) as img:
        assert img.format == "PNG"
    chosen = highest_loss(read_predictions(run / "predictions.csv"), 6)
    losses = sorted((float(r["loss"]) for r in rows), reverse=True)[:6]
    assert [c.loss for c in chosen] == pytest.approx(losses)
    # the CSV inside its run: the images come from the data set by index, the CAMs from the run
    pytest.importorskip("pytorch_grad_cam")
    out = tmp_path / "from-csv.png"
    result = run_cli("viz", "mistakes", run / "predictions.csv", "--top", 4, "--cam", "--out", out)
    assert result.exit_code == 0, result.stderr
    with Image.open(out) as img:
        assert img.format == "PNG"


def test_viz_mistakes_bad_input_is_one_line(runs, tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("id,label\n0,cat\n")
    result = run_cli("viz", "mistakes", bad)
    assert result.exit_code == 2 and "missing column" in result.stderr
    run, _, _ = runs[0]
    lonely = tmp_path / "lonely.csv"
    lonely.write_text((run / "predictions.csv").read_text())
    result = run_cli("viz", "mistakes", lonely, "--cam")
    assert result.exit_code == 2 and "--model" in result.stderr
    assert not (tmp_path / "mistakes.png").exists()
