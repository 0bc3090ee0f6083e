"""`cnncli finetune`: which parameters train in which stage, at which learning rate, the
batch-norm modes, the blocks, the feature cache, and the command end to end (then `eval`)."""

from __future__ import annotations

import json

import pytest
import torch

from cnncli.engine.optim import build_optimizer
from cnncli.errors import InputError
from cnncli.finetune import (
    FinetuneConfig,
    backbone_blocks,
    finetune,
    parse_unfreeze,
    plan_stages,
    stage_phases,
)
from cnncli.models.registry import create_model


def _tiny(name, **kw):
    torch.manual_seed(0)
    return create_model(name, **kw)


def _enter(phase, model):
    """What the Trainer does at the start of each epoch of a phase."""
    groups = phase.param_groups(model)
    model.train()
    phase.prepare_model(model)
    return groups


def _bns(model):
    return {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}


# ---------------------------------------------------------------- stages: what trains, how
def test_stage_one_trains_only_the_head_with_the_base_bn_in_eval_mode():
    model = _tiny("timm/test_efficientnet", num_classes=3)
    plan = plan_stages(model, 2)
    head, unfreeze = stage_phases(plan, head_epochs=2, epochs=3, lr_factor=0.1)
    assert (head.name, head.epochs, unfreeze.name, unfreeze.epochs) == ("head", 2, "unfreeze", 3)

    groups = _enter(head, model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"classifier.weight", "classifier.bias"}
    assert all(not bn.training for bn in _bns(model).values())  # even right after model.train()
    optimizer = build_optimizer(groups, "sgd", 0.5, 0.0)
    assert {g["lr"] for g in optimizer.param_groups} == {0.5}
    assert sum(len(g["params"]) for g in optimizer.param_groups) == 2

    # a training step leaves the frozen base exactly as it was, statistics included
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss = model(torch.randn(4, 3, 32, 32)).logsumexp(1).mean()
    loss.backward()
    optimizer.step()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed == {"classifier.weight", "classifier.bias"}


def test_stage_two_unfreezes_the_top_blocks_at_the_lower_rate():
    model = _tiny("timm/test_efficientnet", num_classes=3)
    plan = plan_stages(model, 2)
    assert [b.name for b in plan.unfrozen] == ["blocks.3.0", "blocks.4.0+conv_head+bn2"]
    _, unfreeze = stage_phases(plan, head_epochs=1, epochs=1, lr_factor=0.1)
    groups = _enter(unfreeze, model)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    expected = {n for n, _ in model.named_parameters()
                if n.startswith(("blocks.3.", "blocks.4.", "conv_head.", "bn2.", "classifier."))}
    assert trainable == expected
    # unfrozen batch norm learns its scale and shift but keeps the pretrained statistics
    assert not any(bn.training for bn in _bns(model).values())
    assert model.blocks[4][0].bn1.weight.requires_grad and not model.blocks[2][0].bn1.weight.requires_grad
    before = model.blocks[4][0].bn1.running_mean.clone()
    model(torch.randn(4, 3, 32, 32))
    assert torch.equal(model.blocks[4][0].bn1.running_mean, before)
    optimizer = build_optimizer(groups, "adamw", 1e-3, 0.05)
    assert {round(g["lr"], 12) for g in optimizer.param_groups} == {1e-4}
    assert sum(len(g["params"]) for g in optimizer.param_groups) == len(expected)


def test_unfreeze_all_trains_everything_and_zero_skips_stage_two():
    model = _tiny("timm/test_resnet", num_classes=3)
    (only,) = stage_phases(plan_stages(model, 0), head_epochs=1, epochs=5, lr_factor=0.1)
    assert only.name == "head"
    _, unfreeze = stage_phases(plan_stages(model, "all"), head_epochs=1, epochs=5, lr_factor=0.1)
    _enter(unfreeze, model)
    assert all(p.requires_grad for p in model.parameters())
    assert model.training and model.layer1.training and not any(bn.training for bn in _bns(model).values())


@pytest.mark.parametrize("name,k,top", [
    ("typical_cnn", 2, ["fc1", "fc2"]),
    ("resnet18", 1, ["layer4"]),
    ("timm/test_resnet", 1, ["layer4.0"]),
    ("timm/resnet18", 2, ["layer3", "layer4"]),
])
def test_unfreeze_k_picks_the_top_k_declared_blocks(name, k, top):
    model = create_model(name, device="meta")
    assert [b.name for b in plan_stages(model, k).unfrozen] == top


def test_blocks_are_the_networks_own_declaration():
    from timm.models import group_parameters

    model = create_model("timm/resnet18", device="meta")
    blocks = backbone_blocks(model)
    timm_groups = group_parameters(model, model.group_matcher(coarse=True))
    assert [b.params for b in blocks] == [timm_groups[k] for k in sorted(timm_groups)][:-1]  # last: fc
    # timm puts a ViT's final norm with its head; it is pretrained, so it tops the last block
    vit = backbone_blocks(create_model("timm/test_vit", device="meta"))
    assert vit[-1].name == "blocks.5+norm"
    hand = create_model("alexnet", device="meta")
    assert [b.name for b in backbone_blocks(hand)] == [n for n, _ in hand.stages()]
    plan = plan_stages(hand, "all")
    assert plan.head == ["out.weight", "out.bias"]


def test_unfreeze_values():
    assert parse_unfreeze("all") == "all" and parse_unfreeze("3") == 3 and parse_unfreeze(0) == 0
    with pytest.raises(InputError, match="number of blocks or 'all'"):
        parse_unfreeze("top")
    with pytest.raises(InputError, match=r"--unfreeze 9, but the base has only 4 blocks \(C1, C3, C5, F6\)"):
        plan_stages(create_model("lenet5", device="meta"), 9)


# ---------------------------------------------------------------- the feature cache
def _weights_file(tmp_path, name, **kw):
    from safetensors.torch import save_file

    path = tmp_path / f"{name.replace('/', '_')}.safetensors"
    save_file(_tiny(name, **kw).state_dict(), str(path))
    return str(path)


@pytest.mark.parametrize("name,data,img", [
    # dropout in the head (drop1/drop2 are not frozen): the cached path must draw the same numbers
    ("typical_cnn", "synthetic:size=28,n=72,n_test=12,classes=3", None),
    # batch norm in the base, resized gray -> colour input
    ("timm/test_efficientnet", "synthetic:size=16,n=72,n_test=12,classes=3", 32),
])
def test_cached_features_give_the_same_head(tmp_path, name, data, img):
    weights = _weights_file(tmp_path, name)
    heads, histories = {}, {}
    for cache in (True, False):
        cfg = FinetuneConfig(model=name, data=data, weights=weights, head_epochs=2, unfreeze=0,
                             cache_features=cache, batch_size=16, val_fraction=0.0, img_size=img, seed=5,
                             threads=1, out=str(tmp_path / f"run-{cache}"))
        result = finetune(cfg, quiet=True)
        from cnncli.checkpoint import load_checkpoint

        state, meta = load_checkpoint(result.checkpoint)
        assert meta["finetune"]["stages"][0]["cached_features"] is cache
        heads[cache] = {k: v for k, v in state.items() if k.startswith(("out.", "classifier."))}
        histories[cache] = [row["train_loss"] for row in result.history]
    assert heads[True].keys() == heads[False].keys() and heads[True]
    for k in heads[True]:
        torch.testing.assert_close(heads[True][k], heads[False][k], rtol=1e-4, atol=1e-5)
    assert histories[True] == pytest.approx(histories[False], rel=1e-4)


def test_the_cached_head_stage_stops_mid_epoch_and_resumes_to_the_same_head(tmp_path, monkeypatch):
    """The cached stage runs the trainer's own epoch: SIGTERM at a step writes a resumable state
    there, and the resumed run ends with the weights of one that was never stopped."""
    import os
    import signal

    from cnncli.checkpoint import load_checkpoint
    from cnncli.engine.console import TrainingInterrupted
    from cnncli.engine.feature_cache import FeatureCache
    from cnncli.engine.state import load_train_state
    from cnncli.engine.step import Feed

    weights = _weights_file(tmp_path, "typical_cnn")

    def config(out):
        return FinetuneConfig(model="typical_cnn", data="synthetic:size=28,n=72,n_test=12,classes=3",
                              weights=weights, head_epochs=2, unfreeze=0, cache_features=True, batch_size=16,
                              val_fraction=0.0, seed=5, threads=1, out=str(out))

    straight = finetune(config(tmp_path / "straight"), quiet=True)
    real_feed = FeatureCache.__call__

    def stopping_feed(self, trainer):
        feed = real_feed(self, trainer)

        def inputs(idx, epoch, step):
            if (epoch, step) == (1, 2):
                os.kill(os.getpid(), signal.SIGTERM)  # as `kill` from another terminal
            return feed.inputs(idx, epoch, step)

        return Feed(inputs, feed.forward)

    monkeypatch.setattr(FeatureCache, "__call__", stopping_feed)
    out = tmp_path / "stopped"
    with pytest.raises(TrainingInterrupted) as stopped:
        finetune(config(out), quiet=True)
    assert stopped.value.exit_code == 128 + signal.SIGTERM
    _, _, doc = load_train_state(out / "train_state.safetensors")
    assert (doc["train_state"]["epoch"], doc["train_state"]["step"]) == (1, 3)
    monkeypatch.setattr(FeatureCache, "__call__", real_feed)
    resumed = finetune(config(out), resume=str(out), quiet=True)
    assert [r["train_loss"] for r in resumed.history] == [r["train_loss"] for r in straight.history]
    want, got = load_checkpoint(straight.checkpoint)[0], load_checkpoint(resumed.checkpoint)[0]
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)


def test_cache_is_refused_with_augmentation():
    with pytest.raises(InputError, match="--cache-features needs the base's output to stay the same"):
        from cnncli.finetune import validate_finetune

        validate_finetune(FinetuneConfig(model="lenet5", cache_features=True, augment=["flip"]))


# ---------------------------------------------------------------- the command, end to end
def test_finetune_a_cnncli_run_on_other_data_then_eval(run_cli, tiny_run, tmp_path):
    out = tmp_path / "ft"
    data = "synthetic:size=16,n=90,n_test=30,classes=3,channels=3"
    result = run_cli("finetune", tiny_run, "--data", data, "--head-epochs", 1, "--epochs", 1, "--unfreeze", 1,
                     "--out", out, "--threads", 1, "--quiet", "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["weights_source"]["kind"] == "checkpoint" and doc["weights_source"]["path"].endswith("model.safetensors")
    assert [(s["name"], s["trains"]) for s in doc["stages"]] == [("head", ["head"]), ("unfreeze", ["F6", "head"])]
    assert doc["stages"][1]["lr"] == pytest.approx(doc["stages"][0]["lr"] * 0.1)
    from cnncli.checkpoint import read_meta

    meta = read_meta(out / "model.safetensors")
    assert meta["num_classes"] == 3 and meta["model"]["name"] == "lenet5" and meta["input_size"] == [1, 32, 32]
    assert meta["mean"] == read_meta(tiny_run / "model.safetensors")["mean"]  # the backbone's normalization
    evaluated = run_cli("eval", out, "--json")
    assert evaluated.exit_code == 0, evaluated.stderr
    assert json.loads(evaluated.stdout)["top1"] == pytest.approx(doc["test_top1"])

    resumed = run_cli("finetune", "--resume", out, "--quiet", "--json")  # already finished: re-evaluates
    assert resumed.exit_code == 0, resumed.stderr
    assert json.loads(resumed.stdout)["test_top1"] == pytest.approx(doc["test_top1"])


def test_epochs_0_is_the_head_stage_only_and_agrees_with_its_help(run_cli, tiny_run, tmp_path):
    from cnncli.finetune import FinetuneConfig, validate_finetune

    out = tmp_path / "ft"
    result = run_cli("finetune", tiny_run, "--data", "synthetic:size=16,n=40,n_test=10,classes=2",
                     "--head-epochs", 1, "--epochs", 0, "--out", out, "--threads", 1, "--quiet", "--json")
    assert result.exit_code == 0, result.stderr
    assert [(s["name"], s["epochs"]) for s in json.loads(result.stdout)["stages"]] == [("head", 1)]
    assert "0 skips stage 2" in run_cli("finetune", "--help").stdout
    with pytest.raises(InputError, match="nothing to train: --head-epochs 0 and --epochs 0"):
        validate_finetune(FinetuneConfig(model="lenet5", head_epochs=0, epochs=0))
    with pytest.raises(InputError, match="--epochs must be at least 0, got -1"):
        validate_finetune(FinetuneConfig(model="lenet5", epochs=-1))
    # train has one stage: there, 0 epochs is still refused
    result = run_cli("train", "lenet5", "--data", "synthetic:n=8,classes=2", "--epochs", 0, "--out", tmp_path / "t")
    assert result.exit_code == 2 and "must be in [1, 1000000], got 0" in result.stderr


def test_finetune_a_timm_backbone_from_a_weights_file_then_eval(run_cli, tmp_path):
    weights = tmp_path / "imagenet_like.pth"
    torch.save(_tiny("timm/test_efficientnet").state_dict(), weights)  # a 1000-class classifier
    out = tmp_path / "ft"
    result = run_cli("finetune", "timm/test_efficientnet", "--weights", weights,
                     "--data", "synthetic:size=16,n=60,n_test=12,classes=3", "--img-size", 32,
                     "--head-epochs", 1, "--epochs", 1, "--unfreeze", "all", "--out", out, "--threads", 1, "--json")
    assert result.exit_code == 0, result.stderr
    assert "the source's classifier: loaded; a new head for 3 classes replaces it" in result.stderr
    doc = json.loads(result.stdout)
    assert doc["weights_source"]["kind"] == "file" and doc["stages"][0]["cached_features"] is True
    assert len(doc["stages"][1]["trains"]) == 7  # 6 blocks + head
    evaluated = run_cli("eval", out, "--json")
    assert evaluated.exit_code == 0, evaluated.stderr
    ev = json.loads(evaluated.stdout)
    assert ev["model"] == "timm/test_efficientnet" and ev["top1"] == pytest.approx(doc["test_top1"])


def test_no_weights_anywhere_is_one_line_and_exit_2(run_cli, monkeypatch, tmp_path):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torchhub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the download source then says the hub is not reachable
    result = run_cli("finetune", "timm/test_resnet", "--data", "synthetic:size=16,n=40,classes=2", "--pretrained",
                     "--out", tmp_path / "never")
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: no pretrained weights found for timm/test_resnet; tried:")
    assert "is not reachable" in lines[0] and "--weights FILE" in lines[0]
    assert not (tmp_path / "never").exists()
