"""The training engine's pieces: options and recipes, schedules, metrics, evaluation, state."""

from __future__ import annotations

import math

import pytest
import torch

from cnncli.engine.config import TrainConfig, build_config, read_recipe, to_toml
from cnncli.engine.evaluate import evaluate
from cnncli.engine.metrics import per_class_report
from cnncli.engine.optim import build_optimizer, lr_factor
from cnncli.engine.state import load_train_state, save_train_state
from cnncli.errors import InputError


# ---------------------------------------------------------------- options and recipes
def test_recipe_values_are_overridden_by_flags(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('model = "lenet5"\nepochs = 3\nlr = 0.01\naugment = ["flip"]\nbatch-size = 64\n')
    cfg = build_config(str(recipe), {"epochs": 5, "lr": None})
    assert (cfg.model, cfg.epochs, cfg.lr, cfg.augment, cfg.batch_size) == ("lenet5", 5, 0.01, ["flip"], 64)


def test_recipe_accepts_a_train_table_and_ints_for_floats(tmp_path):
    recipe = tmp_path / "r.toml"
    recipe.write_text('[train]\nmodel = "lenet5"\nlr = 1\n')
    assert read_recipe(recipe) == {"model": "lenet5", "lr": 1.0}


def test_recipe_unknown_key_names_key_and_file(tmp_path):
    recipe = tmp_path / "bad.toml"
    recipe.write_text('model = "lenet5"\nepocs = 3\n')
    with pytest.raises(InputError, match=r"bad\.toml.*unknown key 'epocs'.*did you mean 'epochs'"):
        read_recipe(recipe)


def test_recipe_wrong_type_names_key_and_file(tmp_path):
    recipe = tmp_path / "bad.toml"
    recipe.write_text('model = "lenet5"\nepochs = "three"\n')
    with pytest.raises(InputError, match=r"bad\.toml.*'epochs' must be an integer"):
        read_recipe(recipe)


def test_recipe_that_is_not_toml(tmp_path):
    recipe = tmp_path / "bad.toml"
    recipe.write_text("model = \n")
    with pytest.raises(InputError, match="not valid TOML"):
        read_recipe(recipe)


@pytest.mark.parametrize("key,value,message", [
    ("epochs", 0, "--epochs must be positive"),
    ("batch_size", -1, "--batch-size must be positive"),
    ("lr", 0.0, "--lr must be positive"),
    ("val_fraction", 1.0, "--val-fraction"),
    ("optimizer", "adamx", "unknown optimizer"),
    ("augment", ["rotate"], "rotate"),
])
def test_impossible_values_are_refused(key, value, message):
    with pytest.raises(InputError, match=message):
        build_config(None, {"model": "lenet5", key: value})


def test_resolved_config_is_a_recipe_again(tmp_path):
    cfg = build_config(None, {"model": "lenet5", "epochs": 2, "augment": ["shift", "flip"]})
    path = tmp_path / "config.toml"
    path.write_text(to_toml(cfg.to_dict()))
    assert build_config(str(path), {}) == cfg


# ---------------------------------------------------------------- schedules
def test_cosine_with_warmup_rises_then_falls_to_zero():
    total, warm = 100, 10
    f = [lr_factor("cosine", s, total, warm, 10) for s in range(total)]
    assert f[0] == pytest.approx(0.1) and f[9] == pytest.approx(1.0)
    assert all(a >= b for a, b in zip(f[10:], f[11:]))
    assert f[-1] < 0.01


def test_step_schedule_and_constant():
    assert lr_factor("step", 0, 100, 0, 10, step_epochs=2, step_gamma=0.5) == 1.0
    assert lr_factor("step", 20, 100, 0, 10, step_epochs=2, step_gamma=0.5) == 0.5
    assert lr_factor("step", 45, 100, 0, 10, step_epochs=2, step_gamma=0.5) == 0.25
    assert lr_factor("constant", 77, 100, 0, 10) == 1.0


def test_onecycle_starts_low_peaks_and_ends_near_zero():
    f = [lr_factor("onecycle", s, 100, 0, 10) for s in range(100)]
    assert f[0] == pytest.approx(1 / 25)
    assert max(f) == pytest.approx(1.0, abs=1e-3)
    assert f[-1] < 1e-3


def test_optimizer_does_not_decay_biases():
    model = torch.nn.Linear(3, 2)
    opt = build_optimizer(model.parameters(), "sgd", 0.1, 0.01)
    decays = {tuple(p.shape): g["weight_decay"] for g in opt.param_groups for p in g["params"]}
    assert decays == {(2, 3): 0.01, (2,): 0.0}


# ---------------------------------------------------------------- metrics, checked by hand
def test_per_class_report_by_hand():
    # true 0: 3 images, 2 right, 1 called 1; true 1: 1 image called 0; class 2 never seen
    confusion = [[2, 1, 0], [1, 0, 0], [0, 0, 0]]
    report = per_class_report(confusion, ["a", "b", "c"])
    assert report[0] == {"class": "a", "precision": 2 / 3, "recall": 2 / 3, "f1": pytest.approx(2 / 3), "support": 3}
    assert report[1]["precision"] == 0.0 and report[1]["recall"] == 0.0 and report[1]["f1"] == 0.0
    assert report[2]["support"] == 0


class _FixedLogits(torch.nn.Module):
    """Returns the logits stored in the 'image' itself: pixel values are the answer."""

    def forward(self, x):
        return x.flatten(1)


def test_evaluate_on_a_hand_checked_case():
    # 4 images, 3 classes; logits chosen so that top-1 is right for 2 and top-2 for all
    logits = torch.tensor([[3.0, 2.0, 1.0],   # true 0 -> 0 right
                           [3.0, 2.0, 1.0],   # true 1 -> 0 wrong (1 is second)
                           [1.0, 2.0, 3.0],   # true 2 -> 2 right
                           [1.0, 3.0, 2.0]])  # true 2 -> 1 wrong (2 is second)
    labels = torch.tensor([0, 1, 2, 2])
    images = logits.view(4, 1, 1, 3)
    result = evaluate(_FixedLogits(), images, labels, lambda b: b.float(), num_classes=3,
                      class_names=["a", "b", "c"], batch_size=3)
    assert result.n == 4
    assert result.top1 == 0.5
    assert result.top5 == 1.0  # k is capped at the number of classes
    assert result.confusion == [[1, 0, 0], [1, 0, 0], [0, 1, 1]]
    expected_loss = sum(-torch.log_softmax(logits[i], 0)[labels[i]].item() for i in range(4)) / 4
    assert result.loss == pytest.approx(expected_loss, rel=1e-6)
    assert result.per_class[2] == {"class": "c", "precision": 1.0, "recall": 0.5, "f1": pytest.approx(2 / 3),
                                   "support": 2}


# ---------------------------------------------------------------- resumable state
def test_train_state_round_trip_restores_optimizer_exactly(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    opt = build_optimizer(model.parameters(), "adamw", 1e-2, 0.01)
    for _ in range(3):
        opt.zero_grad()
        model(torch.randn(5, 4)).sum().backward()
        opt.step()
    path = tmp_path / "train_state.safetensors"
    save_train_state(path, model, opt, {"epoch": 3, "history": [{"epoch": 1}]}, {"model": {"name": "x"}})
    model_sd, optim_sd, doc = load_train_state(path)
    assert doc["train_state"]["epoch"] == 3
    clone = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    clone.load_state_dict(model_sd)
    opt2 = build_optimizer(clone.parameters(), "adamw", 1e-2, 0.01)
    opt2.load_state_dict(optim_sd)
    x = torch.randn(5, 4)
    for m, o in ((model, opt), (clone, opt2)):
        o.zero_grad()
        m(x).sum().backward()
        o.step()
    for a, b in zip(model.parameters(), clone.parameters()):
        assert torch.equal(a, b)
    assert not math.isnan(float(next(clone.parameters()).detach().sum()))


def test_train_config_defaults_are_sensible():
    cfg = TrainConfig(model="lenet5")
    assert cfg.resolved_lr() == 1e-3 and cfg.resolved_weight_decay() == 0.05
    assert TrainConfig(model="x", optimizer="sgd").resolved_lr() == 0.05


def test_recipe_model_file_is_found_next_to_the_recipe(tmp_path, monkeypatch):
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "net.toml").write_text("[model]\n")
    recipe = tmp_path / "r.toml"
    recipe.write_text('model = "models/net.toml"\n')
    monkeypatch.chdir("/")
    assert read_recipe(recipe)["model"] == str(tmp_path / "models" / "net.toml")
