"""The state-of-the-art recipe's pieces: precision choice, augmentation policies, mixup/cutmix,
the weights' moving average, gradient accumulation, their bad inputs, and resume with all on.
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch

from cnncli.checkpoint import load_checkpoint
from cnncli.data.augment import parse_augment
from cnncli.data.policies import policy_transform
from cnncli.engine import amp
from cnncli.engine.mixup import BatchMixer
from cnncli.engine.state import load_train_state
from cnncli.errors import InputError

DATA = "synthetic:n=192,n_test=64,classes=4,size=28"
FEATURES = ["--augment", "flip,randaugment=9:2", "--mixup", "0.4", "--cutmix", "1.0", "--ema", "0.9",
            "--accum-steps", "2"]


# ------------------------------------------------------------------------------ precision
def test_cpu_flags_decide_bf16(monkeypatch):
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        monkeypatch.setattr(torch.cpu, name, lambda: False, raising=False)
    assert amp.cpu_has_native_bf16(frozenset({"avx2", "avx512_bf16"}))
    assert amp.cpu_has_native_bf16(frozenset({"amx_bf16"}))
    assert not amp.cpu_has_native_bf16(frozenset({"avx2", "avx512f"}))


def test_auto_is_float32_on_a_cpu_without_native_bf16_and_bf16_is_refused_there(monkeypatch):
    monkeypatch.setattr(amp, "cpu_has_native_bf16", lambda flags=None: False)
    assert amp.resolve_precision("auto", "cpu").name == "fp32"
    with pytest.raises(InputError, match="no native bf16.*--amp auto"):
        amp.resolve_precision("bf16", "cpu")
    monkeypatch.setattr(amp, "cpu_has_native_bf16", lambda flags=None: True)
    chosen = amp.resolve_precision("auto", "cpu")
    assert chosen.name == "bf16" and chosen.dtype is torch.bfloat16
    assert amp.resolve_precision("off", "cpu").name == "fp32"
    with pytest.raises(InputError, match="fp16 needs a CUDA GPU"):
        amp.resolve_precision("fp16", "cpu")


def _train(run_cli, out: Path, *args) -> dict:
    result = run_cli("train", "lenet5", "--data", DATA, "--batch-size", "16", "--seed", "5", "--threads", "1",
                     "--quiet", "--json", "--out", out, *args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.skipif(not amp.cpu_has_native_bf16(), reason="needs a CPU with native bf16")
@pytest.mark.slow
def test_auto_precision_keeps_the_accuracy_of_float32(run_cli, tmp_path):
    """Same recipe and seed: bf16 (what auto picks on this CPU) within noise of float32, and recorded."""
    fp32 = _train(run_cli, tmp_path / "off", "--epochs", "6", "--amp", "off")
    auto = _train(run_cli, tmp_path / "auto", "--epochs", "6", "--amp", "auto")
    assert auto["precision"] == "bf16" and fp32["precision"] == "fp32"
    assert fp32["test_top1"] > 0.5  # it learned: the comparison means something
    assert abs(auto["test_top1"] - fp32["test_top1"]) <= 0.08  # 64 test images: 5 of them
    _, meta = load_checkpoint(tmp_path / "auto" / "model.safetensors")
    assert meta["precision"] == "bf16"


# ------------------------------------------------------------------------------ policies
def test_policies_draw_per_sample_and_repeat_with_the_seed():
    batch = torch.randint(0, 256, (1, 1, 28, 28), dtype=torch.uint8).expand(16, 1, 28, 28).contiguous()
    augment = parse_augment("randaugment=15:2")
    a = augment(batch, generator=torch.Generator().manual_seed(1))
    b = augment(batch, generator=torch.Generator().manual_seed(1))
    c = augment(batch, generator=torch.Generator().manual_seed(2))
    assert a.dtype == torch.uint8 and a.shape == batch.shape
    assert torch.equal(a, b) and not torch.equal(a, c)
    distinct = {bytes(img.numpy().tobytes()) for img in a}
    assert len(distinct) > 4  # one copy of one image, many different augmentations


@pytest.mark.parametrize("spec", ["trivialaugment", "autoaugment=cifar10", "augmix=2", "randaugment"])
def test_every_policy_runs_on_gray_and_colour_and_as_a_streaming_transform(spec):
    for channels in (1, 3):
        batch = torch.randint(0, 256, (3, channels, 32, 32), dtype=torch.uint8)
        out = parse_augment(f"flip,{spec},erase")(batch, generator=torch.Generator().manual_seed(0))
        assert out.shape == batch.shape and out.dtype == torch.uint8
    one = policy_transform(spec)(torch.randint(0, 256, (3, 32, 32), dtype=torch.uint8))
    assert one.shape == (3, 32, 32)


@pytest.mark.parametrize("spec, message", [
    ("randomaugment", "unknown augmentation 'randomaugment'"),
    ("randaugment=31", "magnitude must be a whole number in \\[0, 30\\]"),
    ("randaugment=9:0", "number of operations"),
    ("autoaugment=mnist", "choose one of imagenet, cifar10, svhn"),
    ("augmix=11", "severity"),
    ("trivialaugment=3", "takes no value"),
])
def test_bad_policies_are_refused(spec, message):
    with pytest.raises(InputError, match=message):
        parse_augment(spec)


# ------------------------------------------------------------------------------ mixup
def test_mixup_gives_soft_targets_and_switches_off():
    mixer = BatchMixer(4, mixup=0.4, cutmix=1.0, off_epoch=3)
    x, y = torch.randn(8, 1, 28, 28), torch.arange(8) % 4
    torch.manual_seed(0)
    mixed, soft = mixer(x, y)
    assert soft.shape == (8, 4) and torch.allclose(soft.sum(1), torch.ones(8))
    assert not torch.equal(mixed, x)
    assert (soft > 0).sum() > 8  # some rows carry two classes
    assert mixer.active(2) and not mixer.active(3)


# ------------------------------------------------------------------------------ bad input at the CLI
@pytest.mark.parametrize("args, message", [
    (["--amp", "fp16"], "--amp fp16 needs a CUDA GPU"),
    (["--amp", "fast"], "--amp fast: choose one of auto, bf16, fp16, off"),
    (["--ema", "1.0"], "--ema must be a decay in (0, 1)"),
    (["--ema", "0"], "--ema must be a decay in (0, 1)"),
    (["--mixup", "0"], "--mixup alpha must be positive"),
    (["--cutmix", "-1"], "--cutmix alpha must be positive"),
    (["--augment", "randaugment=40"], "magnitude must be a whole number"),
    (["--accum-steps", "0"], "--accum-steps must be positive"),
])
def test_bad_recipe_options_exit_2_with_one_line(run_cli, tmp_path, args, message):
    result = run_cli("train", "lenet5", "--data", DATA, "--epochs", "1", "--out", tmp_path / "run", *args)
    assert result.exit_code == 2, result.output
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and message in lines[0], result.stderr
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------ EMA
@pytest.mark.slow
def test_ema_run_reports_both_figures_and_its_model_is_the_average(run_cli, tmp_path):
    doc = _train(run_cli, tmp_path / "run", "--epochs", "2", "--ema", "0.9")
    assert doc["ema_decay"] == 0.9 and doc["raw_test_top1"] is not None and doc["test_top1"] is not None
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert all(r["ema_val_top1"] is not None and r["val_top1"] is not None for r in rows)
    best, meta = load_checkpoint(tmp_path / "run" / "model.safetensors")
    last, _ = load_checkpoint(tmp_path / "run" / "last.safetensors")  # the trained weights
    assert meta["metrics"]["raw_test_top1"] == doc["raw_test_top1"]
    assert any(not torch.equal(best[k], last[k]) for k in best if best[k].is_floating_point())
    _, _, state_doc = load_train_state(tmp_path / "run" / "train_state.safetensors", extras := {})
    assert extras and all(k.startswith("ema.") for k in extras)
    assert set(k[4:] for k in extras) == set(best)


# ------------------------------------------------------------------------------ resume with everything on
# --keep last as the shipped recipe has it (test_crash_safety resumes the default, --keep best)
RESUMED_ARGS = ["lenet5", "--data", DATA, "--epochs", "3", "--batch-size", "16", "--seed", "3", "--threads", "1",
                "--quiet", "--keep", "last", *FEATURES]


@pytest.mark.slow
def test_sigterm_then_resume_with_mixup_ema_randaugment_ends_bit_identical(stop_and_resume):
    # inside epoch 2: a mid-epoch state, at an accumulation boundary
    run = stop_and_resume(RESUMED_ARGS, signal.SIGTERM)
    straight, out = run.straight, run.out
    assert run.returncode in (0, 143), run.stderr
    if run.returncode == 143:
        assert "interrupted by SIGTERM" in run.stderr
    for name in ("model.safetensors", "last.safetensors"):
        a, _ = load_checkpoint(straight / name)
        b, _ = load_checkpoint(out / name)
        assert a.keys() == b.keys()
        assert all(torch.equal(a[k], b[k]) for k in a), name
    ea, eb = {}, {}
    load_train_state(straight / "train_state.safetensors", ea)
    load_train_state(out / "train_state.safetensors", eb)
    assert ea.keys() == eb.keys() and all(torch.equal(ea[k], eb[k]) for k in ea)
