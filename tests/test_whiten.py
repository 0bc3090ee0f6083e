"""The whitening stem (`type = "whiten"`), dirac initialisation (`init = "dirac"`) and their fit
to the data at the start of a fresh run (cnncli.engine.data_init)."""

from __future__ import annotations

import json
import signal

import pytest
import torch

from cnncli.checkpoint import load_checkpoint, read_meta
from cnncli.engine.data_init import fit_to_data, sample_count
from cnncli.layers import WhiteningConv, dirac_init
from cnncli.models.model_file import create_model_from_spec

DATA = "synthetic:n=96,n_test=32,classes=3,size=28"


def to_toml(spec: dict) -> str:
    """The model file of `spec` (one [model] table and [[layers]]; JSON values are TOML values)."""
    lines = ["[model]", *(f"{k} = {json.dumps(v)}" for k, v in spec["model"].items())]
    for layer in spec["layers"]:
        lines += ["", "[[layers]]", *(f"{k} = {json.dumps(v)}" for k, v in layer.items())]
    return "\n".join(lines) + "\n"


def whiten_spec(extra_conv: dict | None = None, whiten: dict | None = None) -> dict:
    return {"model": {"name": "w", "input": [1, 28, 28], "num_classes": 3},
            "layers": [{"name": "whiten", "type": "whiten", **(whiten or {})},
                       {"name": "pool1", "type": "maxpool", "kernel": 2},
                       {"name": "conv2", "type": "conv", "filters": 24, "kernel": 3, "padding": "same",
                        "batch_norm": True, "init": "dirac", **(extra_conv or {})},
                       {"name": "pool2", "type": "maxpool", "kernel": 2},
                       {"name": "flat", "type": "flatten"},
                       {"name": "fc", "type": "dense", "units": "num_classes"}]}


def smooth_images(n: int = 64, size: int = 28, seed: int = 0) -> torch.Tensor:
    """Images with strongly correlated neighbouring pixels (blurred noise plus a brightness)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, size + 4, size + 4, generator=g)
    x = torch.nn.functional.avg_pool2d(x, 5, stride=1)  # neighbours share most of their window
    return x + torch.randn(n, 1, 1, 1, generator=g)


def test_fit_whitens_the_patches_and_keeps_both_signs():
    layer = WhiteningConv(1, 3, padding="valid", activation="none", eps=1e-8)
    x = smooth_images()
    patches = torch.nn.functional.unfold(x, 3).transpose(1, 2).reshape(-1, 9)
    before = torch.cov(patches.T)
    assert before[0, 1] / before[0, 0] > 0.5  # the raw patches are far from white
    layer.fit_to_data(x)
    out = layer.conv(x) - layer.conv.bias.view(1, -1, 1, 1)
    first = out[:, :9].permute(0, 2, 3, 1).reshape(-1, 9)
    moment = first.T @ first / len(first)
    assert torch.allclose(moment, torch.eye(9), atol=1e-2)  # unit variance, no correlation
    assert torch.equal(layer.conv.weight[9:], -layer.conv.weight[:9])
    assert torch.count_nonzero(layer.conv.bias) == 0


def test_fit_reads_large_inputs_in_chunks(monkeypatch):
    from cnncli.layers import whiten

    x = smooth_images(12, size=20)
    whole = WhiteningConv(1, 3)
    whole.fit_to_data(x)
    monkeypatch.setattr(whiten, "_CHUNK_VALUES", 9 * 18 * 18 * 2)  # two images at a time
    chunked = WhiteningConv(1, 3)
    chunked.fit_to_data(x)
    # the same whitening (eigenvectors' signs may differ): F^T F = (moment + eps)^-1 for both
    a, b = (m.conv.weight[:9].reshape(9, 9) for m in (whole, chunked))
    assert ((a.T @ a) - (b.T @ b)).abs().max() < 1e-2 * (a.T @ a).abs().max()  # float32 sums in another order


def test_the_filters_are_frozen_and_the_bias_learns():
    layer = WhiteningConv(3, 3)
    assert layer.out_channels == 54 and not layer.conv.weight.requires_grad and layer.conv.bias.requires_grad
    with pytest.raises(ValueError, match="at most 1024"):
        WhiteningConv(128, 3)
    with pytest.raises(ValueError, match=r"\(N, 3, H, W\)"):
        layer.fit_to_data(torch.zeros(2, 1, 8, 8))


def test_dirac_init_passes_the_input_through_its_first_channels():
    conv = torch.nn.Conv2d(8, 12, 3, padding=1, bias=False)
    dirac_init(conv)
    x = torch.randn(2, 8, 6, 6)
    y = conv(x)
    assert torch.allclose(y[:, :8], x, atol=1e-6)
    assert y[:, 8:].abs().sum() > 0  # the other filters keep their random start
    narrow = torch.nn.Conv2d(8, 4, 3, padding=1, bias=False)
    dirac_init(narrow)
    assert torch.allclose(narrow(x), x[:, :4], atol=1e-6)


def test_model_file_whiten_layer_shapes_costs_and_dirac():
    model, info = create_model_from_spec(whiten_spec())
    assert isinstance(model.whiten, WhiteningConv) and model.whiten.out_channels == 18
    assert model(torch.zeros(2, 1, 28, 28)).shape == (2, 3)
    x = torch.randn(2, 18, 14, 14)
    assert torch.allclose(model.conv2.conv(x)[:, :18], x, atol=1e-6)  # init = "dirac"
    wide, _ = create_model_from_spec(whiten_spec(whiten={"kernel": 5, "padding": "valid"}))
    assert wide.whiten.out_channels == 50 and wide.whiten(torch.zeros(1, 1, 28, 28)).shape == (1, 50, 24, 24)


@pytest.mark.parametrize("layer,change,message", [
    (0, {"eps": 0}, "'eps' must be a positive number"),
    (0, {"kernel": 40}, "1,600 values per patch"),
    (2, {"init": "orthogonal"}, "'init' must be one of \"default\", \"dirac\""),
])
def test_bad_whiten_and_init_options_are_one_line_usage_errors(tmp_path, run_cli, layer, change, message):
    spec = whiten_spec()
    spec["layers"][layer].update(change)
    path = tmp_path / "bad.toml"
    path.write_text(to_toml(spec))
    result = run_cli("inspect", path)
    assert result.exit_code == 2
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
    assert "Traceback" not in result.stderr


def test_inspect_shows_the_whitening_row_and_its_frozen_parameters(tmp_path, run_cli):
    path = _write(tmp_path)
    result = run_cli("inspect", path)
    assert result.exit_code == 0, result.stderr
    assert "Whitening convolution" in result.stdout
    assert "frozen 162" in result.stdout  # 18 filters of 3x3: fixed; their 18 biases train


def test_fit_to_data_stops_after_the_last_fitted_layer():
    model, _ = create_model_from_spec(whiten_spec())
    seen = []
    model.fc.register_forward_pre_hook(lambda m, a: seen.append(1))
    model.train()
    assert fit_to_data(model, smooth_images(8)) == ["whiten"]
    assert not seen and model.training  # nothing after the stem ran; the mode is restored
    plain, _ = create_model_from_spec({**whiten_spec(), "layers": whiten_spec()["layers"][1:]})
    assert fit_to_data(plain, smooth_images(2)) == []


def test_sample_count_shrinks_for_large_images():
    assert sample_count((1, 28, 28), 60000) == 2000
    assert sample_count((1, 28, 28), 50) == 50
    assert sample_count((3, 224, 224), 60000) == (1 << 24) // (3 * 224 * 224)
    assert sample_count((3, 8192, 8192), 10) == 1


def _write(tmp_path, spec=None):
    path = tmp_path / "w.toml"
    path.write_text(to_toml(spec or whiten_spec()))
    return path


def test_a_fresh_run_fits_the_stem_and_records_it_and_training_keeps_it(tmp_path, run_cli):
    path = _write(tmp_path)
    out = tmp_path / "run"
    result = run_cli("train", path, "--data", DATA, "--epochs", "1", "--batch-size", "16", "--threads", "1",
                     "--quiet", "--keep", "last", "--out", out)
    assert result.exit_code == 0, result.stderr
    state, _ = load_checkpoint(out / "model.safetensors")
    # the weights are the fit of that sample (the same on any rerun), unchanged by training
    from cnncli.engine.config import TrainConfig
    from cnncli.engine.data_init import _sample_inputs
    from cnncli.engine.trainer import Trainer

    trainer = Trainer(TrainConfig(model=str(path), data=DATA, epochs=1, batch_size=16, threads=1,
                                  out=str(tmp_path / "unused")), quiet=True)
    assert torch.equal(trainer.model.whiten.conv.weight, state["whiten.conv.weight"])
    every = len(trainer.data.train.labels)  # fewer than SAMPLE_IMAGES: the whole training split, un-augmented
    assert len(_sample_inputs(trainer)) == every
    assert read_meta(out / "model.safetensors")["data_init"] == {"layers": ["whiten"], "images": every}
    assert torch.count_nonzero(state["whiten.conv.bias"]) > 0  # the bias trained


def test_loaded_weights_are_not_refit(tmp_path, run_cli):
    path = _write(tmp_path)
    first = tmp_path / "first"
    assert run_cli("train", path, "--data", DATA, "--epochs", "1", "--threads", "1", "--quiet",
                   "--out", first).exit_code == 0
    fitted, _ = load_checkpoint(first / "model.safetensors")
    marked = {k: v.clone() for k, v in fitted.items()}
    marked["whiten.conv.weight"] = marked["whiten.conv.weight"] * 2  # not what a fit gives
    from safetensors.torch import save_file

    save_file(marked, str(tmp_path / "start.safetensors"))
    second = tmp_path / "second"
    result = run_cli("train", path, "--data", DATA, "--epochs", "1", "--threads", "1", "--quiet",
                     "--weights", tmp_path / "start.safetensors", "--out", second)
    assert result.exit_code == 0, result.stderr
    state, _ = load_checkpoint(second / "model.safetensors")
    assert torch.equal(state["whiten.conv.weight"], marked["whiten.conv.weight"])
    assert "data_init" not in read_meta(second / "model.safetensors")


@pytest.mark.slow
def test_sigterm_then_resume_with_a_whitening_stem_ends_bit_identical(tmp_path, stop_and_resume):
    path = _write(tmp_path)
    run = stop_and_resume([path, "--data", DATA, "--epochs", "3", "--batch-size", "16", "--threads", "1",
                           "--quiet", "--ema", "0.9"], signal.SIGTERM)
    assert run.returncode in (0, 143), run.stderr
    for name in ("model.safetensors", "last.safetensors"):
        a, _ = load_checkpoint(run.straight / name)
        b, _ = load_checkpoint(run.out / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_a_streamed_photo_folder_fits_the_stem_through_worker_batches(tmp_path, run_cli, monkeypatch):
    from test_stream import make_photos

    from cnncli.data.stream import LazyImages

    make_photos(tmp_path / "f", {"": 6})  # 18 colour photos of varied sizes, JPEG and PNG
    monkeypatch.setattr(LazyImages, "__getitem__", lambda self, sel: pytest.fail("decoded in this process"))
    spec = whiten_spec(whiten={"kernel": 2})
    spec["model"]["input"] = [3, 32, 32]
    out = tmp_path / "run"
    result = run_cli("train", _write(tmp_path, spec), "--data", f"imagefolder:{tmp_path / 'f'}", "--stream",
                     "--workers", "0", "--epochs", "1", "--batch-size", "4", "--threads", "1", "--quiet",
                     "--out", out)
    assert result.exit_code == 0, result.stderr
    state, _ = load_checkpoint(out / "model.safetensors")
    meta = read_meta(out / "model.safetensors")
    assert meta["data_init"]["layers"] == ["whiten"] and 0 < meta["data_init"]["images"] <= 18
    w = state["whiten.conv.weight"]
    assert w.shape == (24, 3, 2, 2) and torch.equal(w[12:], -w[:12])  # fitted: both signs of 12 directions
