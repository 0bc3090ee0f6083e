"""Test-time augmentation in `eval` and `predict` (--tta flip | multicrop), on real checkpoints."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cnncli.checkpoint import load_checkpoint, load_model, save_checkpoint
from cnncli.data.transforms import prepare_batch
from cnncli.engine import tta
from cnncli.engine.evaluate import evaluate


# ------------------------------------------------------------------------------ the views
def test_flip_and_five_crops_are_what_they_say():
    x = torch.randn(2, 3, 20, 30)
    fill = torch.tensor([-1.0, -2.0, -3.0]).view(1, 3, 1, 1)
    same, flipped = tta.torch_views(x, "flip", fill)
    assert torch.equal(same, x) and torch.equal(flipped[..., 0], x[..., -1])
    views = tta.torch_views(x, "multicrop", fill)
    p = tta.crop_padding(20, 30)
    assert p == 2 and len(views) == 5 and all(v.shape == x.shape for v in views)
    assert torch.equal(views[0], x)  # the centre crop is the image itself
    top_left, bottom_right = views[1], views[4]
    assert torch.equal(top_left[..., p:, p:], x[..., :-p, :-p])  # the image moved down and right by p
    assert torch.equal(bottom_right[..., :-p, :-p], x[..., p:, p:])
    assert torch.equal(top_left[:, :, :p, :], fill.expand(2, 3, p, 30))  # black where it moved from


def test_the_numpy_views_are_the_torch_views():
    x = torch.randn(2, 3, 17, 23)
    fill = torch.tensor([0.5, -1.0, 2.0]).view(1, 3, 1, 1)
    for mode in tta.MODES:
        for a, b in zip(tta.torch_views(x, mode, fill), tta.numpy_views(x.numpy(), mode, fill.numpy()), strict=True):
            assert np.array_equal(a.numpy(), b), mode


class FlipSymmetric(torch.nn.Module):
    """f(x) = g(x) + g(flip(x)): the same answer for an image and its mirror, by construction."""

    def __init__(self, classes=4):
        super().__init__()
        self.g = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                     torch.nn.Linear(4 * 26 * 26, classes))

    def forward(self, x):
        return self.g(x) + self.g(torch.flip(x, dims=(-1,)))


def _data(n=40, classes=4):
    g = torch.Generator().manual_seed(0)
    return torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g), torch.arange(n) % classes


def _prepare(batch):
    return prepare_batch(batch, (1, 28, 28), [0.3], [0.3])


def test_flip_on_a_flip_symmetric_network_changes_nothing():
    torch.manual_seed(0)
    net = FlipSymmetric()
    images, labels = _data()
    plain = evaluate(net, images, labels, _prepare, 4)
    flipped = evaluate(tta.wrap(net, "flip", _prepare), images, labels, _prepare, 4)
    assert flipped.confusion == plain.confusion and flipped.top1 == plain.top1 and flipped.top5 == plain.top5
    assert flipped.loss == pytest.approx(plain.loss, abs=1e-6)
    x = _prepare(images)
    with torch.no_grad():  # each view's softmax is bit for bit the other's: their mean is it
        assert torch.equal(tta.average_probabilities(net, x, "flip", tta.black_fill(_prepare)),
                           torch.softmax(net(x), dim=1))


def test_flip_on_an_ordinary_network_is_the_mean_of_the_two_softmaxes():
    torch.manual_seed(0)
    net = FlipSymmetric().g[:3]
    net = torch.nn.Sequential(*net, torch.nn.Linear(4 * 26 * 26, 4))
    images, labels = _data()
    plain = evaluate(net, images, labels, _prepare, 4)
    flipped = evaluate(tta.wrap(net, "flip", _prepare), images, labels, _prepare, 4)
    x = _prepare(images)
    with torch.no_grad():
        mean = (torch.softmax(net(x), 1) + torch.softmax(net(torch.flip(x, dims=(-1,))), 1)) / 2
    assert flipped.loss == pytest.approx(F.nll_loss(mean.log(), labels).item(), rel=1e-5)
    assert abs(flipped.loss - plain.loss) > 1e-4


def test_unknown_modes_are_refused():
    from cnncli.errors import InputError

    for bad in ("flop", "fivecrop", ""):
        with pytest.raises(InputError, match="choose one of none, flip, multicrop"):
            tta.check_tta(bad)


# ------------------------------------------------------------------------------ eval through the CLI
def _eval(run_cli, ckpt, mode):
    result = run_cli("eval", ckpt, "--tta", mode, "--json", "--threads", 1)
    assert result.exit_code == 0, result.stderr
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def symmetric_ckpt(tiny_run, tmp_path_factory):
    """tiny_run's lenet5 with every kernel made its own mirror image (w + flip(w)) / 2: the network
    answers the same for an image and its mirror (up to the order of float sums)."""
    state, meta = load_checkpoint(tiny_run / "model.safetensors")
    for key, value in state.items():
        if value.dim() == 4:
            state[key] = (value + value.flip(-1)) / 2
    return save_checkpoint(tmp_path_factory.mktemp("sym") / "model.safetensors", state, meta)


def test_eval_flip_on_a_mirror_symmetric_lenet_gives_the_same_numbers(run_cli, symmetric_ckpt):
    plain, flipped = _eval(run_cli, symmetric_ckpt, "none"), _eval(run_cli, symmetric_ckpt, "flip")
    assert plain["tta"] == "none" and flipped["tta"] == "flip"
    assert flipped["confusion"] == plain["confusion"] and flipped["top1"] == plain["top1"]
    assert flipped["loss"] == pytest.approx(plain["loss"], abs=1e-5)


@pytest.mark.parametrize("mode", ["flip", "multicrop"])
def test_eval_tta_differs_from_none_and_is_the_mean_softmax_of_its_views(run_cli, tiny_run, mode):
    from cnncli.engine.eval_run import _load_split

    plain, augmented = _eval(run_cli, tiny_run, "none"), _eval(run_cli, tiny_run, mode)
    assert augmented["tta"] == mode and augmented["n"] == plain["n"]
    assert abs(augmented["loss"] - plain["loss"]) > 1e-5
    # the same figure computed here, by hand: views by slicing, torch's softmax, their mean
    model, meta = load_model(tiny_run / "model.safetensors")
    split, _, _ = _load_split(meta["dataset"], "test", None, False, meta.get("seed", 0))
    x = prepare_batch(split.images, meta["input_size"], meta["mean"], meta["std"])
    black = prepare_batch(torch.zeros(1, 1, 1, 1, dtype=torch.uint8), meta["input_size"], meta["mean"], meta["std"])
    if mode == "flip":
        views = [x, x.flip(-1)]
    else:
        h, w = x.shape[-2:]
        p = max(1, min(h, w) // 10)
        big = black[:, :, :1, :1].expand(len(x), -1, h + 2 * p, w + 2 * p).clone()
        big[..., p:p + h, p:p + w] = x
        views = [x] + [big[..., r:r + h, c:c + w] for r in (0, 2 * p) for c in (0, 2 * p)]
    with torch.no_grad():
        mean = sum(torch.softmax(model(v), 1) for v in views) / len(views)
    assert augmented["loss"] == pytest.approx(F.nll_loss(mean.log(), split.labels).item(), rel=1e-5)
    top1 = (mean.argmax(1) == split.labels).float().mean().item()
    assert augmented["top1"] == pytest.approx(top1)


def test_the_eval_table_says_which_augmentation_it_averaged(run_cli, tiny_run):
    result = run_cli("eval", tiny_run, "--tta", "multicrop")
    assert result.exit_code == 0, result.stderr
    assert "test-time augmentation: multicrop" in " ".join(result.stdout.split())
    assert "test-time augmentation" not in run_cli("eval", tiny_run).stdout


@pytest.mark.parametrize("command", ["eval", "predict"])
def test_unknown_tta_is_one_line_exit_2(run_cli, tiny_run, tmp_path, command):
    extra = [tmp_path / "none.png"] if command == "predict" else []
    result = run_cli(command, tiny_run, *extra, "--tta", "mirror")
    assert result.exit_code == 2 and result.stdout == ""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == ["error: unknown --tta 'mirror'; choose one of none, flip, multicrop"], result.stderr


# ------------------------------------------------------------------------------ predict
@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    from PIL import Image

    folder = tmp_path_factory.mktemp("pictures")
    rng = np.random.default_rng(2)
    for i, shape in enumerate([(28, 28), (40, 36, 3), (28, 28)]):
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(folder / f"{i}.png")
    return folder


def _probs(run_cli, model, folder, mode):
    result = run_cli("predict", model, folder, "--tta", mode, "--json", "-k", 2)
    assert result.exit_code == 0, result.stderr
    return [{t["class"]: t["prob"] for t in json.loads(line)["top"]} for line in result.stdout.splitlines()]


@pytest.fixture(scope="module")
def onnx(tiny_run, tmp_path_factory):
    pytest.importorskip("onnxruntime")
    from cnncli.export import export_checkpoint

    return export_checkpoint(tiny_run / "model.safetensors", "onnx", out=tmp_path_factory.mktemp("onnx") / "model.onnx",
                             exporter="torchscript").path


def test_predict_tta_on_the_checkpoint_and_on_onnx_agree(run_cli, tiny_run, pictures, onnx):
    plain = _probs(run_cli, tiny_run, pictures, "none")
    for mode in ("flip", "multicrop"):
        from_torch, from_onnx = _probs(run_cli, tiny_run, pictures, mode), _probs(run_cli, onnx, pictures, mode)
        for a, b, c in zip(from_torch, from_onnx, plain, strict=True):
            assert a.keys() == b.keys()
            assert all(abs(a[k] - b[k]) < 1e-5 for k in a), (mode, a, b)
            assert any(abs(a[k] - c[k]) > 1e-6 for k in a), (mode, a, c)  # the views change the answer


def test_predict_tta_on_onnx_still_never_imports_torch(onnx, pictures):
    import os
    import subprocess
    import sys

    code = ("import sys; from cnncli.cli import app; app(['predict', sys.argv[1], sys.argv[2], '--tta', 'multicrop', "
            "'--json'], standalone_mode=False); assert 'torch' not in sys.modules, 'torch was imported'")
    done = subprocess.run([sys.executable, "-c", code, str(onnx), str(pictures)], capture_output=True, text=True,
                          env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=300)
    assert done.returncode == 0, done.stderr
    assert len(done.stdout.splitlines()) == 3
