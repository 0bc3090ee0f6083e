"""`cnncli viz`: each picture is a real PNG of a sensible size with something drawn on it, and the
numbers behind it (the seed's line filters, hooked feature maps) are the right ones."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torchvision.io import ImageReadMode, decode_png, read_file, write_png

from cnncli import viz
from cnncli.checkpoint import load_model, save_checkpoint
from cnncli.errors import InputError
from cnncli.models.registry import build_model
from cnncli.plots import plot_confusion, plot_curves, plot_feature_maps, plot_filters


def open_png(path, min_size=(150, 150)):
    """Decode the PNG; check its size and that it is not one flat colour."""
    image = decode_png(read_file(str(path)), ImageReadMode.RGB)
    _, h, w = image.shape
    assert h >= min_size[0] and w >= min_size[1], (h, w)
    assert image.float().var() > 0, "blank picture"
    return image


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    built = build_model("lenet5", num_classes=3)
    model = built.module
    meta = {"kind": "model", "model": built.spec, "num_classes": 3, "class_names": ["a", "b", "c"],
            "input_size": [1, 32, 32], "mean": [0.5], "std": [0.5], "dataset": "synthetic"}
    return save_checkpoint(tmp_path_factory.mktemp("run") / "model.safetensors", model.state_dict(), meta)


@pytest.fixture(scope="module")
def lines_png(tmp_path_factory):
    """A dark image with one white vertical and one white horizontal line, as in the seed's fig. 8."""
    img = torch.zeros(1, 60, 80, dtype=torch.uint8)
    img[:, :, 20] = 255
    img[:, 40, :] = 255
    path = tmp_path_factory.mktemp("img") / "lines.png"
    write_png(img, str(path))
    return path


# ---------------------------------------------------------------------------- seed's fig. 8

def test_seed_line_filters_are_the_seeds():
    f = viz.seed_line_filters(7)
    assert f.shape == (2, 1, 7, 7)
    vertical, horizontal = f[0, 0], f[1, 0]
    assert vertical[:, 3].tolist() == [1.0] * 7 and vertical.sum() == 7  # zeros but the middle column
    assert horizontal[3, :].tolist() == [1.0] * 7 and horizontal.sum() == 7  # zeros but the middle row


def test_vertical_filter_enhances_vertical_lines_and_horizontal_horizontal():
    gray = torch.zeros(30, 30)
    gray[:, 10] = 1.0  # a vertical white line
    gray[22, :] = 1.0  # a horizontal white line
    vmap, hmap, _ = viz.seed_feature_maps(gray)
    assert vmap.shape == hmap.shape == gray.shape  # 'same' padding, stride 1
    # on the vertical line, away from the crossing and the borders: 7 ones of the line under the column
    assert vmap[5, 10] == 7 and hmap[5, 10] == 1
    assert hmap[22, 5] == 7 and vmap[22, 5] == 1
    assert vmap[5, 12] == 0  # the vertical filter does not spread a vertical line sideways


@pytest.mark.parametrize("name", ["line-filters", "seed-filters"])  # the old name still works
def test_line_filters_cli(run_cli, lines_png, tmp_path, name):
    out = tmp_path / "fig8.png"
    result = run_cli("viz", name, lines_png, "--out", out)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == str(out)
    open_png(out, (300, 400))


def test_line_filters_rejects_an_even_size(run_cli, lines_png, tmp_path):
    result = run_cli("viz", "line-filters", lines_png, "--size", 4, "--out", tmp_path / "x.png")
    assert result.exit_code == 2 and "odd" in result.stderr


# ---------------------------------------------------------------------------- feature maps and filters

def test_feature_maps_are_the_layers_output(ckpt, lines_png):
    model, meta = load_model(ckpt)
    first = viz.first_conv_layer(model)
    image = viz.load_image(lines_png)
    maps = viz.feature_maps(model, meta, image, first)
    conv = dict(model.named_modules())[first]
    from cnncli.data.transforms import prepare_images

    with torch.inference_mode():
        want = conv(prepare_images([image], meta["input_size"], meta["mean"], meta["std"]))[0]
    assert torch.allclose(maps, want)
    assert maps.shape[0] == conv.out_channels


def test_feature_maps_cli(run_cli, ckpt, lines_png, tmp_path):
    model, _ = load_model(ckpt)
    layer = viz.conv_layer_names(model)[1]  # the second convolution, deeper than the default
    out = tmp_path / "maps.png"
    result = run_cli("viz", "feature-maps", ckpt, lines_png, "--layer", layer, "--out", out)
    assert result.exit_code == 0, result.stderr
    open_png(out)


def test_unknown_layer_lists_layer_names(run_cli, ckpt, lines_png, tmp_path):
    result = run_cli("viz", "feature-maps", ckpt, lines_png, "--layer", "conv99", "--out", tmp_path / "x.png")
    assert result.exit_code == 2
    model, _ = load_model(ckpt)
    assert "no layer 'conv99'" in result.stderr
    assert viz.conv_layer_names(model)[0] in result.stderr
    assert not (tmp_path / "x.png").exists()


def test_filters_of_a_checkpoint_in_gray(run_cli, ckpt, tmp_path):
    out = tmp_path / "filters.png"
    result = run_cli("viz", "filters", ckpt, "--out", out)
    assert result.exit_code == 0, result.stderr
    open_png(out, (100, 100))


def test_first_layer_filters_of_an_rgb_network_are_in_colour(run_cli, tmp_path):
    out = tmp_path / "rgb.png"
    result = run_cli("viz", "filters", "timm/test_resnet", "--out", out)  # random weights, RGB input
    assert result.exit_code == 0, result.stderr
    image = open_png(out, (100, 100)).float()
    # coloured pixels: the channels differ somewhere (a gray picture has R == G == B everywhere)
    assert (image[0] - image[1]).abs().max() > 20 or (image[1] - image[2]).abs().max() > 20


def test_filters_of_a_block_named_like_its_convolution(tmp_path, monkeypatch):
    """Model files name a conv + batch norm + ReLU block (conv2_2); its filters are its one conv's."""
    import cnncli.plots

    model_file = Path(__file__).resolve().parent.parent / "recipes" / "models" / "fashion_fast.toml"
    drawn = []
    real_plot_filters = cnncli.plots.plot_filters

    def plot_filters_seen(weight, out, **kw):
        drawn.append(weight)
        return real_plot_filters(weight, out, **kw)

    monkeypatch.setattr(cnncli.plots, "plot_filters", plot_filters_seen)
    path = viz.render_filters(str(model_file), layer="conv2_2", out=tmp_path / "f.png")
    # conv2_2 is 64 filters of 3x3 over the 64 maps of conv2_1 (not the block's batch-norm weight)
    assert [tuple(w.shape) for w in drawn] == [(64, 64, 3, 3)]
    image = open_png(path, (100, 100))
    # 64 input channels are averaged into gray filters: R == G == B in every pixel of the picture
    assert torch.equal(image[0], image[1]) and torch.equal(image[1], image[2])
    with pytest.raises(InputError, match="'pool1' is not a convolution"):
        viz.render_filters(str(model_file), layer="pool1", out=tmp_path / "g.png")


def test_filters_of_a_layer_that_is_not_a_convolution(run_cli, ckpt, tmp_path):
    model, _ = load_model(ckpt)
    not_conv = next(n for n, m in model.named_modules() if n and not isinstance(m, torch.nn.Conv2d)
                    and getattr(m, "weight", None) is not None and m.weight.dim() != 4)
    result = run_cli("viz", "filters", ckpt, "--layer", not_conv, "--out", tmp_path / "x.png")
    assert result.exit_code == 2 and "not a convolution" in result.stderr


# ---------------------------------------------------------------------------- curves and confusion

def test_curves_from_a_run_directory(run_cli, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    rows = [{"epoch": e, "train_loss": 2.0 / e, "train_top1": 0.3 + 0.1 * e, "val_loss": 2.2 / e,
             "val_top1": 0.25 + 0.1 * e} for e in range(1, 6)]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    result = run_cli("viz", "curves", run)
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == str(run / "curves-viz.png")  # curves.png is the run's own
    open_png(run / "curves-viz.png", (250, 500))


def test_curves_without_metrics_is_an_input_error(run_cli, tmp_path):
    result = run_cli("viz", "curves", tmp_path)
    assert result.exit_code == 2 and "metrics.jsonl" in result.stderr


def eval_doc():
    return {"model": "lenet5", "dataset": "synthetic", "split": "test",
            "confusion": [[8, 1, 1], [0, 9, 1], [2, 0, 8]],
            "per_class": [{"class": "a"}, {"class": "b"}, {"class": "c"}]}


def test_confusion_from_an_eval_json_document(run_cli, tmp_path):
    (tmp_path / "eval.json").write_text(json.dumps(eval_doc()))
    out = tmp_path / "conf.png"
    result = run_cli("viz", "confusion", tmp_path / "eval.json", "--normalize", "--out", out)
    assert result.exit_code == 0, result.stderr
    open_png(out)
    matrix, names, title = viz.read_confusion(tmp_path / "eval.json")
    assert names == ["a", "b", "c"] and matrix[0] == [8, 1, 1] and "lenet5" in title


def test_confusion_from_a_run_directory(run_cli, tmp_path):
    result = run_cli("viz", "confusion", tmp_path)
    assert result.exit_code == 2 and "eval.json" in result.stderr
    (tmp_path / "eval.json").write_text(json.dumps(eval_doc()))
    result = run_cli("viz", "confusion", tmp_path)
    assert result.exit_code == 0, result.stderr
    open_png(tmp_path / "confusion-viz.png")


def test_confusion_rejects_other_json(run_cli, tmp_path):
    (tmp_path / "x.json").write_text(json.dumps({"top1": 0.9}))
    result = run_cli("viz", "confusion", tmp_path / "x.json")
    assert result.exit_code == 2 and "confusion" in result.stderr


# ---------------------------------------------------------------------------- plots (the library train/eval call)

def test_plot_curves_skips_missing_values(tmp_path):
    history = [{"epoch": 1, "train_loss": 1.0, "train_top1": 0.5, "val_loss": None, "val_top1": None},
               {"epoch": 2, "train_loss": 0.5, "train_top1": 0.7, "val_loss": float("nan"), "val_top1": 0.6}]
    open_png(plot_curves(history, tmp_path / "c.png", title="t"), (250, 500))
    with pytest.raises(Exception, match="no epochs"):
        plot_curves([], tmp_path / "none.png")


def test_plot_confusion_checks_its_input(tmp_path):
    from cnncli.errors import InputError

    with pytest.raises(InputError, match="square"):
        plot_confusion([[1, 2, 3]], None, tmp_path / "x.png")
    with pytest.raises(InputError, match="class names"):
        plot_confusion([[1, 0], [0, 1]], ["a"], tmp_path / "x.png")
    big = torch.randint(0, 50, (30, 30)).tolist()  # too many cells to label: drawn without numbers
    open_png(plot_confusion(big, [f"c{i}" for i in range(30)], tmp_path / "big.png"))


def test_plot_feature_maps_and_filters_accept_tensors_and_arrays(tmp_path):
    open_png(plot_feature_maps(torch.rand(1, 100, 9, 9), tmp_path / "m.png", max_maps=16), (100, 100))
    open_png(plot_filters(torch.randn(8, 3, 5, 5).numpy(), tmp_path / "f.png"), (100, 100))
    with pytest.raises(Exception, match="4-d"):
        plot_filters(torch.randn(8, 5, 5), tmp_path / "bad.png")
