"""Optimizers from timm's factory, the plateau schedule, layer-wise lr decay, class imbalance
(loss weights and balanced sampling), the precision default, their bad inputs, and resume with
them on."""

from __future__ import annotations

import json
import math
import signal

import pytest
import torch
import torch.nn.functional as F

from cnncli.checkpoint import load_checkpoint, read_meta
from cnncli.cli.common import Optimizer
from cnncli.data.balance import (
    auto_class_weights,
    epoch_order,
    read_class_weights,
    resolve_class_weights,
)
from cnncli.engine import amp
from cnncli.engine.config import OPTIMIZER_DEFAULTS, OPTIMIZERS, TrainConfig
from cnncli.engine.optim import Plateau, build_optimizer, plateau_level
from cnncli.engine.state import load_train_state
from cnncli.engine.step import EpochMeter, Schedule, TrainStep
from cnncli.errors import InputError

DATA = "synthetic:n=192,n_test=64,classes=4,size=28"


def _net(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(1, 6, 3), torch.nn.BatchNorm2d(6), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(2), torch.nn.Flatten(), torch.nn.Linear(24, 4))


def _one_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    return lines[0]


# ------------------------------------------------------------------------------ optimizers
def test_the_command_line_offers_exactly_the_configured_optimizers():
    assert [o.value for o in Optimizer] == list(OPTIMIZERS)


@pytest.mark.parametrize("name", OPTIMIZERS)
def test_every_optimizer_is_timms_and_learns_at_its_default_lr_without_decay_on_norm_and_bias(name):
    from timm.optim import get_optimizer_info

    model = _net()
    lr, wd, _ = OPTIMIZER_DEFAULTS[name]
    optimizer = build_optimizer(model.parameters(), name, lr, wd)
    assert isinstance(optimizer, get_optimizer_info(name).opt_class)
    for group in optimizer.param_groups:  # 1-d tensors (biases, batch-norm weights) never decay
        assert group["weight_decay"] == (0.0 if all(p.ndim <= 1 for p in group["params"]) else wd)
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(list(model.parameters()))
    x = torch.randn(32, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    y = F.avg_pool2d(x, 4).flatten(1).argmax(1)  # the brightest quadrant: learnable
    first = None
    for _ in range(60):
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        optimizer.step()
        first = first if first is not None else loss.item()
    # lion (1e-4) and radamw (rectified warm-up) are the slowest starters: ~2.5% in 60 steps
    assert loss.item() < 0.98 * first, (name, first, loss.item())


@pytest.mark.parametrize("name", ["sgd", "adamw"])
def test_sgd_and_adamw_are_torchs_fused_classes_as_before_so_older_runs_resume_bit_identical(name):
    """Before the factory: torch.optim.SGD/AdamW(fused) over the same groups; same numbers now."""
    old_model, new_model = _net(), _net()
    decay = [p for p in old_model.parameters() if p.ndim > 1]
    rest = [p for p in old_model.parameters() if p.ndim <= 1]
    groups = [{"params": decay, "weight_decay": 0.01, "lr": 0.1, "initial_lr": 0.1, "lr_scale": 1.0},
              {"params": rest, "weight_decay": 0.0, "lr": 0.1, "initial_lr": 0.1, "lr_scale": 1.0}]
    old = torch.optim.SGD(groups, lr=0.1, momentum=0.9, nesterov=True, fused=True) if name == "sgd" \
        else torch.optim.AdamW(groups, lr=0.1, fused=True)
    new = build_optimizer(new_model.parameters(), name, 0.1, 0.01)
    assert type(new) is type(old) and new.defaults.get("fused")
    x, y = torch.randn(8, 1, 8, 8), torch.randint(0, 4, (8,))
    for model, optimizer in ((old_model, old), (new_model, new)):
        for _ in range(3):
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(old_model.state_dict().values(), new_model.state_dict().values()))
    assert json.dumps(old.state_dict()["param_groups"], default=str) == \
        json.dumps(new.state_dict()["param_groups"], default=str)


def test_defaults_follow_the_optimizer():
    assert TrainConfig(optimizer="lion").resolved_lr() == 1e-4
    assert TrainConfig(optimizer="lion").resolved_weight_decay() == 0.5
    assert TrainConfig(optimizer="sgd").resolved_lr() == 0.05
    assert TrainConfig(optimizer="adamw").resolved_weight_decay() == 0.05
    assert TrainConfig(optimizer="lion", lr=3e-4).resolved_lr() == 3e-4


def test_unknown_optimizer_in_a_recipe_is_one_line_with_a_suggestion(run_cli, tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('model = "lenet5"\noptimizer = "lamb2"\n')
    result = run_cli("train", "--recipe", recipe, "--data", DATA, "--out", tmp_path / "run")
    assert result.exit_code == 2
    line = _one_line(result)
    assert "unknown optimizer 'lamb2' (did you mean 'lamb'?)" in line and "lion" in line
    result = run_cli("train", "lenet5", "--data", DATA, "--optimizer", "adamx", "--out", tmp_path / "run")
    assert result.exit_code == 2 and "'adamx' is not one of" in _one_line(result)
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------ plateau
def test_plateau_drops_the_lr_after_patience_epochs_without_a_better_top1():
    assert plateau_level([0.5, 0.6, 0.7], 2, 0.1) == 1.0
    assert plateau_level([0.5, 0.5, 0.4], 2, 0.1) == pytest.approx(0.1)
    # the count starts again after a drop; a better epoch resets it
    assert plateau_level([0.5, 0.4, 0.4, 0.4, 0.4], 2, 0.5) == pytest.approx(0.25)
    assert plateau_level([0.5, 0.4, 0.6, 0.5, 0.7], 2, 0.5) == 1.0
    assert plateau_level([0.5, 0.4, 0.3], 1, 0.5) == pytest.approx(0.25)
    # the EMA's figure wins where there is one; another phase's epochs do not count
    history = [{"phase": "head", "val_top1": 0.9}, {"phase": "train", "val_top1": 0.5, "ema_val_top1": 0.6},
               {"phase": "train", "val_top1": 0.7, "ema_val_top1": 0.6}]
    rule = Plateau(history, "train", patience=1, factor=0.5)
    assert rule.level() == 0.5
    schedule = Schedule("plateau", 100, 10, 10, plateau=rule)
    assert schedule.factor(4) == pytest.approx(0.25)  # warm-up, then the plateau level
    assert schedule.factor(50) == 0.5
    history.append({"phase": "train", "val_top1": 0.1, "ema_val_top1": 0.9})
    assert schedule.factor(50) == 0.5  # better: no further drop


# ------------------------------------------------------------------------------ class imbalance
def test_auto_weights_are_inverse_frequency_with_a_weighted_mean_of_one():
    labels = torch.tensor([0] * 60 + [1] * 30 + [2] * 10)
    weights = auto_class_weights(labels, 3)
    assert weights == pytest.approx([100 / 180, 100 / 90, 100 / 30])
    assert sum(w * n for w, n in zip(weights, (60, 30, 10))) == pytest.approx(100)
    assert auto_class_weights(torch.tensor([0, 1, 0, 1]), 2) == [1.0, 1.0]


def test_weights_files_json_and_csv(tmp_path):
    names = ["cat", "dog", "t-shirt/top"]
    (tmp_path / "w.json").write_text(json.dumps({"dog": 2, "cat": 0.5, "t-shirt/top": 1e-3}))
    assert read_class_weights(tmp_path / "w.json", names) == [0.5, 2.0, 1e-3]
    (tmp_path / "w.csv").write_text("class,weight\ncat,1\n\ndog, 3.5\nt-shirt/top,2\n")
    assert read_class_weights(tmp_path / "w.csv", names) == [1.0, 3.5, 2.0]
    (tmp_path / "plain.csv").write_text("cat,1\ndog,1\nt-shirt/top,4\n")
    assert read_class_weights(tmp_path / "plain.csv", names) == [1.0, 1.0, 4.0]


@pytest.mark.parametrize("text,message", [
    ('{"cat": 1}', "no weight for 1 class: dog"),
    ('{"cat": 1, "dog": 1, "cow": 1}', "'cow' is not a class of the dataset"),
    ('{"cat": 1, "dog": NaN}', "weight of 'dog' must be a finite number > 0"),
    ('{"cat": 1, "dog": 0}', "weight of 'dog' must be a finite number > 0"),
    ('{"cat": -1, "dog": 1}', "weight of 'cat' must be a finite number > 0"),
    ('{"cat": "heavy", "dog": 1}', "weight of 'cat' must be a finite number > 0"),
    ('{"cat": true, "dog": 1}', "weight of 'cat' must be a finite number > 0"),
    ("[1, 2]", "must be an object of class name -> weight"),
    ('{"cat": 1,', "not valid JSON"),
    ("cat,1\ndog,inf\n", "weight of 'dog' must be a finite number > 0"),
    ("cat,1,2\ndog,1\n", "CSV row 1 has 3 fields"),
    ("cat,1\ncat,2\ndog,1\n", "'cat' is given twice"),
])
def test_bad_weights_files_are_refused(tmp_path, text, message):
    path = tmp_path / "w"
    path.write_text(text)
    with pytest.raises(InputError, match=message.replace("(", r"\(")):
        read_class_weights(path, ["cat", "dog"])


def test_class_weights_weigh_the_loss_of_a_step():
    model, weights = _net(), [0.5, 1.0, 2.0, 4.0]
    optimizer = build_optimizer(model.parameters(), "sgd", 0.0, 0.0)
    step = TrainStep(model, optimizer, Schedule("constant", 1, 0, 1), device=torch.device("cpu"),
                     class_weights=weights)
    x, y = torch.randn(8, 1, 8, 8), torch.tensor([0, 1, 2, 3, 3, 3, 0, 1])
    model.eval()  # batch norm with its running statistics: the same logits twice
    loss = step(model, x, y, 0, EpochMeter())
    with torch.no_grad():
        expected = F.cross_entropy(model(x), y, weight=torch.tensor(weights))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert abs(expected.item() - F.cross_entropy(model(x), y).item()) > 1e-3  # the weights matter


def test_balanced_sampler_draws_classes_equally_and_repeats_with_the_seed():
    labels = torch.tensor([0] * 900 + [1] * 90 + [2] * 10)
    order = epoch_order(labels, 7, "balanced")
    assert len(order) == 1000 and torch.equal(order, epoch_order(labels, 7, "balanced"))
    assert not torch.equal(order, epoch_order(labels, 8, "balanced"))
    counts = torch.bincount(labels[order], minlength=3)
    assert all(abs(c - 333) < 60 for c in counts.tolist()), counts
    assert set(order[labels[order] == 2].tolist()) == set(range(990, 1000))  # the rare class: all its images
    # random: the same permutation the trainer always drew, so older runs resume unchanged
    assert torch.equal(epoch_order(labels, 7), torch.randperm(1000, generator=torch.Generator().manual_seed(7)))


def test_a_run_with_class_weights_and_balanced_sampling_records_them(run_cli, tmp_path):
    from cnncli.data.synthetic import class_names

    names = class_names(4)
    (tmp_path / "w.json").write_text(json.dumps({n: k + 1 for k, n in enumerate(names)}))
    result = run_cli("train", "lenet5", "--data", DATA, "--epochs", "1", "--batch-size", "32", "--threads", "1",
                     "--quiet", "--out", tmp_path / "run", "--class-weights", tmp_path / "w.json",
                     "--sampler", "balanced", "--optimizer", "lamb")
    assert result.exit_code == 0, result.output
    meta = read_meta(tmp_path / "run" / "model.safetensors")
    assert meta["class_weights"] == {n: float(k + 1) for k, n in enumerate(names)}
    assert meta["recipe"]["sampler"] == "balanced"
    assert meta["optimizer"]["name"] == "lamb" and meta["optimizer"]["class"].endswith("Lamb")
    # resumed with the file gone (or changed): the weights the run recorded carry on
    (tmp_path / "w.json").write_text(json.dumps(dict.fromkeys(names, 9)))
    labels = torch.tensor([0, 1, 2, 3])
    assert resolve_class_weights(str(tmp_path / "w.json"), labels, names, tmp_path / "run") == [1, 2, 3, 4]
    assert resolve_class_weights(str(tmp_path / "w.json"), labels, names) == [9, 9, 9, 9]
    (tmp_path / "w.json").unlink()
    result = run_cli("train", "--resume", tmp_path / "run", "--threads", "1", "--quiet")
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize("args,message", [
    (["--class-weights", "missing.json"], "--class-weights missing.json: no such file"),
    (["--class-weights", "bad.json"], "--class-weights bad.json: the weight of 'bar_0deg' must be a finite number > 0"),
    (["--sampler", "uniform"], "'uniform' is not one of 'random', 'balanced'"),
    (["--schedule", "plateau", "--val-fraction", "0"], "it needs a validation split"),
    (["--plateau-factor", "1"], "--plateau-factor"),
])
def test_bad_imbalance_and_schedule_options_exit_2_with_one_line(run_cli, tmp_path, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "bad.json").write_text('{"bar_0deg": 0, "bar_45deg": 1}')
    result = run_cli("train", "lenet5", "--data", DATA, "--epochs", "1", "--out", tmp_path / "run", *args)
    assert result.exit_code == 2, result.output
    assert message in _one_line(result)
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------ layer decay
def test_layer_decay_scales_each_block_below_the_head():
    from cnncli.finetune import plan_stages, stage_phases

    torch.manual_seed(0)
    from cnncli.models.registry import create_model

    model = create_model("timm/test_efficientnet", num_classes=3)
    plan = plan_stages(model, "all")
    depth = len(plan.blocks)
    _, unfreeze = stage_phases(plan, head_epochs=1, epochs=1, lr_factor=0.1, layer_decay=0.5)
    groups = unfreeze.param_groups(model)
    scale_of = {id(p): g["lr_scale"] for g in groups for p in g["params"]}
    names = dict(model.named_parameters())
    for k, block in enumerate(plan.blocks):
        assert [scale_of[id(names[n])] for n in block.params] == pytest.approx([0.1 * 0.5 ** (depth - k)]
                                                                              * len(block.params))
    assert [scale_of[id(names[n])] for n in plan.head] == pytest.approx([0.1] * len(plan.head))
    assert sum(len(g["params"]) for g in groups) == len(names)
    optimizer = build_optimizer(groups, "adamw", 1e-3, 0.05)
    assert min(g["lr"] for g in optimizer.param_groups) == pytest.approx(1e-4 * 0.5 ** depth)
    # without it: one group at the stage's rate, as before
    _, plain = stage_phases(plan, head_epochs=1, epochs=1, lr_factor=0.1)
    assert [g["lr_scale"] for g in plain.param_groups(model)] == [0.1]


@pytest.mark.parametrize("value", ["0", "1.5", "-0.2"])
def test_layer_decay_outside_0_1_is_refused(run_cli, tmp_path, value):
    result = run_cli("finetune", "typical_cnn", "--data", DATA, "--layer-decay", value, "--out", tmp_path / "run")
    assert result.exit_code == 2, result.output
    assert "--layer-decay" in _one_line(result) and "(0, 1]" in result.stderr
    assert not (tmp_path / "run").exists()


def test_finetune_with_layer_decay_records_the_block_scales(run_cli, tiny_run, tmp_path):
    result = run_cli("finetune", tiny_run, "--data", "synthetic:n=48,n_test=16,classes=3,size=28",
                     "--head-epochs", "1", "--epochs", "1", "--unfreeze", "all", "--layer-decay", "0.5",
                     "--threads", "1", "--quiet", "--out", tmp_path / "ft")
    assert result.exit_code == 0, result.output
    meta = read_meta(tmp_path / "ft" / "model.safetensors")["finetune"]
    assert meta["layer_decay"] == 0.5
    scales = list(meta["block_lr_scales"].values())
    assert scales == [pytest.approx(0.5 ** (len(scales) - k)) for k in range(len(scales))]


# ------------------------------------------------------------------------------ precision default
def _fit(precision: amp.Precision, steps: int = 120) -> tuple[float, float]:
    """A small CNN on the synthetic bars, same seed and batches: (final train loss, test top-1)."""
    from cnncli.data.synthetic import generate

    x, y = generate(640, size=16, classes=4, seed=1)
    x = x.float() / 255
    model = _net(3)
    model[0] = torch.nn.Conv2d(1, 6, 5)
    optimizer = build_optimizer(model.parameters(), "adamw", 3e-3, 0.05)
    step = TrainStep(model, optimizer, Schedule("cosine", steps, 0, steps), device=torch.device("cpu"),
                     precision=precision)
    meter = EpochMeter()
    g = torch.Generator().manual_seed(0)
    for s in range(steps):
        idx = torch.randint(0, 512, (32,), generator=g)
        loss = step(model, x[idx], y[idx], s, meter)
    model.eval()
    with torch.no_grad(), precision.autocast():
        top1 = (model(x[512:]).argmax(1) == y[512:]).float().mean().item()
    return loss.item(), top1


def test_bf16_autocast_keeps_the_accuracy_of_float32():
    """What --amp auto picks on a CPU with native bf16 (or a GPU) trains as well as float32; bf16
    here may be emulated (slower, the same numbers), so this holds on every machine."""
    fp32_loss, fp32_top1 = _fit(amp.Precision("fp32", "cpu"))
    bf16_loss, bf16_top1 = _fit(amp.Precision("bf16", "cpu"))
    assert fp32_top1 > 0.6  # it learned: the comparison means something
    assert abs(bf16_top1 - fp32_top1) <= 0.05  # 128 test images: 6 of them
    assert math.isfinite(bf16_loss) and abs(bf16_loss - fp32_loss) < 0.15


def test_amp_defaults_to_auto_and_auto_is_float32_without_native_bf16(monkeypatch):
    assert TrainConfig().amp == "auto"
    monkeypatch.setattr(amp, "cpu_has_native_bf16", lambda flags=None: False)
    assert amp.resolve_precision(TrainConfig().amp, "cpu").name == "fp32"  # nothing slows


def test_a_bf16_run_records_the_float32_test_figures_that_eval_gives(run_cli, tmp_path, monkeypatch):
    """Trained and validated in bf16 (emulated here), but the run's test figures are float32:
    `cnncli eval` gives the same numbers on every machine, whatever --amp picked."""
    monkeypatch.setattr(amp, "cpu_has_native_bf16", lambda flags=None: True)
    result = run_cli("train", "lenet5", "--data", "synthetic:n=32,n_test=48,classes=4,size=28", "--epochs", "1",
                     "--batch-size", "32", "--val-fraction", "0", "--threads", "1", "--quiet", "--json",
                     "--out", tmp_path / "run")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert doc["precision"] == "bf16"
    ev = json.loads(run_cli("eval", tmp_path / "run", "--json").stdout)
    assert (ev["top1"], ev["loss"]) == (pytest.approx(doc["test_top1"], abs=1e-9), pytest.approx(doc["test_loss"]))


# ------------------------------------------------------------------------------ resume
RESUMED_ARGS = ["lenet5", "--data", DATA, "--epochs", "3", "--batch-size", "16", "--seed", "3", "--threads", "1",
                "--quiet",
                # lion at a rate this high stalls: the plateau drops the lr after the resumed epoch 2
                "--optimizer", "lion", "--lr", "0.1", "--schedule", "plateau", "--plateau-patience", "1",
                "--plateau-factor", "0.5", "--class-weights", "auto", "--sampler", "balanced"]


@pytest.mark.slow
def test_sigterm_then_resume_with_muon_ends_bit_identical(stop_and_resume):
    """Muon keeps per-parameter state (momentum, and for the AdamW-handled tensors their moments)
    that a mid-epoch stop must carry over."""
    args = ["lenet5", "--data", DATA, "--epochs", "2", "--batch-size", "16", "--seed", "3", "--threads", "1",
            "--quiet", "--optimizer", "muon"]
    run = stop_and_resume(args, signal.SIGTERM)
    assert run.returncode in (0, 143), run.stderr
    for name in ("model.safetensors", "last.safetensors"):
        a, _ = load_checkpoint(run.straight / name)
        b, _ = load_checkpoint(run.out / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


@pytest.mark.slow
def test_sigterm_then_resume_with_lion_plateau_weights_and_balanced_sampling_ends_bit_identical(stop_and_resume):
    run = stop_and_resume(RESUMED_ARGS, signal.SIGTERM)  # inside epoch 2: a mid-epoch state
    straight, out = run.straight, run.out
    assert run.returncode in (0, 143), run.stderr
    for name in ("model.safetensors", "last.safetensors"):
        a, _ = load_checkpoint(straight / name)
        b, _ = load_checkpoint(out / name)
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    _, sa, _ = load_train_state(straight / "train_state.safetensors")
    _, sb, _ = load_train_state(out / "train_state.safetensors")
    assert all(torch.equal(sa["state"][i][k], sb["state"][i][k]) for i in sa["state"] for k in sa["state"][i]
               if torch.is_tensor(sa["state"][i][k]))
    rows = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert [r["lr"] for r in rows] == [json.loads(line)["lr"] for line in (out / "metrics.jsonl").read_text().splitlines()]
