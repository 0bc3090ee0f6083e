"""The pieces `fit` is made of: one training step, the run's progress, the end-of-run report,
and the channel statistics of colour data for a gray network."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cnncli.data.splits import channel_stats as data_channel_stats
from cnncli.data.transforms import adapt_stats, prepare_batch
from cnncli.engine.progress import Progress
from cnncli.engine.report import RunResult, end_of_run_line, run_summary
from cnncli.engine.step import EpochMeter, LossNotFinite, Schedule, TrainStep
from cnncli.engine.trainer import channel_stats
from cnncli.errors import InputError


def small_net() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))


def batch():
    g = torch.Generator().manual_seed(1)
    return torch.randn(5, 3, 2, 2, generator=g), torch.tensor([0, 1, 2, 1, 0])


# ------------------------------------------------------------------------------ the step
def test_one_step_is_the_plain_torch_step():
    """lr from the schedule, cross-entropy with label smoothing, clipping, the optimizer's step."""
    x, y = batch()
    ours, plain = small_net(), small_net()
    opt = torch.optim.SGD(ours.parameters(), lr=0.5, momentum=0.9)
    for g in opt.param_groups:
        g["initial_lr"] = 0.5
    schedule = Schedule("cosine", total_steps=10, warmup_steps=0, steps_per_epoch=10)
    meter = EpochMeter()
    loss = TrainStep(ours, opt, schedule, device=torch.device("cpu"), label_smoothing=0.1, clip_grad=0.05)(
        ours, x, y, 3, meter)

    plain_opt = torch.optim.SGD(plain.parameters(), lr=0.5 * schedule.factor(3), momentum=0.9)
    logits = plain(x)
    want = F.cross_entropy(logits, y, label_smoothing=0.1)
    want.backward()
    torch.nn.utils.clip_grad_norm_(plain.parameters(), 0.05)
    plain_opt.step()

    assert torch.equal(loss.detach(), want.detach())
    assert opt.param_groups[0]["lr"] == pytest.approx(0.5 * schedule.factor(3))
    assert all(torch.equal(a, b) for a, b in zip(ours.parameters(), plain.parameters()))
    correct = int((logits.argmax(1) == y).sum())
    assert meter.seen == 5 and int(meter.correct) == correct
    assert float(meter.loss_sum) == pytest.approx(float(want.detach()) * 5)
    assert meter.totals() == {"loss": pytest.approx(float(want.detach())), "top1": correct / 5, "images": 5}


def test_a_loss_that_is_not_finite_stops_before_the_weights_change():
    x, y = batch()
    net = small_net()
    before = copy.deepcopy(net.state_dict())
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for g in opt.param_groups:
        g["initial_lr"] = 0.1
    step = TrainStep(net, opt, Schedule("constant", 1, 0, 1), device=torch.device("cpu"))
    meter = EpochMeter()
    with pytest.raises(LossNotFinite) as stopped:
        step(net, x * float("nan"), y, 0, meter)
    assert stopped.value.value != stopped.value.value  # NaN
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items()) and meter.seen == 0


def test_an_interrupted_epoch_s_metrics_carry_over():
    meter = EpochMeter({"loss_sum": 6.0, "correct": 3, "seen": 4})
    meter.add(torch.tensor(1.0), torch.tensor([[1.0, 0.0], [0.0, 1.0]]), torch.tensor([0, 0]))
    assert meter.partial() == {"loss_sum": 8.0, "correct": 4, "seen": 6}
    assert meter.totals()["loss"] == pytest.approx(8.0 / 6)


# ------------------------------------------------------------------------------ progress
def old_state() -> dict:
    """The train_state table as the previous version wrote it after an epoch."""
    return {"phase": 1, "epoch_in_phase": 0, "step": 0, "epoch": 2, "history": [{"epoch": 1}, {"epoch": 2}],
            "best_val_top1": 0.5, "bad_epochs": 0, "train_seconds": 3.5, "train_images": 640,
            "stopped_early": False, "seconds": 4.0, "optimizer_fresh": True,
            "optimizer": {"param_groups": [], "scalars": {}}}


def test_states_of_the_previous_version_resume():
    progress = Progress.from_state(old_state(), "run/train_state.safetensors")
    assert (progress.phase, progress.epoch, progress.best_val_top1, progress.optimizer_fresh) == (1, 2, 0.5, True)
    state = progress.to_state()
    assert state == {k: v for k, v in old_state().items() if k != "optimizer"}
    mid = {**old_state(), "step": 3, "optimizer_fresh": False, "partial": {"loss_sum": 1.5, "correct": 2, "seen": 8}}
    assert Progress.from_state(mid, "x").partial == {"loss_sum": 1.5, "correct": 2, "seen": 8}


def test_advancing_past_a_phase_s_last_epoch_starts_the_next_phase():
    progress = Progress(phase=0, epoch_in_phase=1, step=4, partial={"loss_sum": 0.0, "correct": 0, "seen": 0})
    progress.advance_epoch(phase_epochs=3)
    assert (progress.phase, progress.epoch_in_phase, progress.step, progress.partial) == (0, 2, 0, None)
    progress.advance_epoch(phase_epochs=3)
    assert (progress.phase, progress.epoch_in_phase, progress.epoch, progress.optimizer_fresh) == (1, 0, 2, True)


@pytest.mark.parametrize("key,value", [("epoch", -1), ("step", "3"), ("history", {"epoch": 1}),
                                       ("best_val_top1", float("nan")), ("seconds", float("inf")),
                                       ("partial", {"seen": 2}), ("stopped_early", "no")])
def test_a_damaged_state_is_refused_in_one_line(key, value):
    with pytest.raises(InputError) as refused:
        Progress.from_state({**old_state(), key: value}, "run/train_state.safetensors")
    text = str(refused.value)
    assert text.startswith(f"run/train_state.safetensors: corrupt training state: '{key}'") and "\n" not in text


# ------------------------------------------------------------------------------ the report
class _Test:
    top1, top5, loss = 0.8125, 0.96875, 0.5


def test_the_end_of_run_line_of_train_and_of_finetune():
    train = RunResult(run_dir=Path("runs/a"), checkpoint=Path("runs/a/model.safetensors"), epochs=3,
                      best_val_top1=0.75, test=_Test(), seconds=12.34, images_per_second=1234.4)
    assert end_of_run_line(train) == ("runs/a/model.safetensors: 3 epochs, best val top-1 0.7500, "
                                      "test top-1 0.8125, top-5 0.9688, 12.3s (1234 train img/s)")
    assert run_summary(train) == train.to_dict()
    tuned = RunResult(run_dir=Path("runs/b"), checkpoint=Path("runs/b/model.safetensors"), epochs=3,
                      best_val_top1=None, test=None, seconds=2.0, images_per_second=0.0,
                      stages=[{"name": "head", "epochs": 2}, {"name": "unfreeze", "epochs": 1}],
                      weights_source={"kind": "file", "path": "w.safetensors"})
    assert end_of_run_line(tuned) == "runs/b/model.safetensors: 2 head epochs + 1 unfreeze epoch, no test split, 2.0s"
    summary = run_summary(tuned)
    assert summary["stages"][0]["name"] == "head" and summary["weights_source"]["kind"] == "file"


# ------------------------------------------------------------------------------ channel statistics
def test_colour_statistics_for_a_gray_network_follow_the_pixels_conversion():
    """The trainer and prepare_batch weigh RGB mean/std the same way the pixels are converted,
    so colour data normalized for a gray network has mean 0, as the data's own does."""
    g = torch.Generator().manual_seed(3)
    images = torch.stack([torch.randint(0, 256, (8, 8), generator=g, dtype=torch.uint8) // d
                          for d in (1, 2, 4)], dim=0).unsqueeze(0).repeat(16, 1, 1, 1)
    images = (images.float() * torch.rand(16, 1, 1, 1, generator=g)).to(torch.uint8)
    mean, std = data_channel_stats(images)
    assert channel_stats is adapt_stats
    gray_mean, gray_std = adapt_stats(mean, 1), adapt_stats(std, 1)
    assert gray_mean == pytest.approx([0.2989 * mean[0] + 0.587 * mean[1] + 0.114 * mean[2]])
    x = prepare_batch(images, (1, 8, 8), mean, std)
    assert float(x.mean()) == pytest.approx(0.0, abs=1e-5)
    # the plain mean of the channels, as the trainer used to take, is off for such data
    plain = sum(mean) / 3
    assert abs(float((x * gray_std[0] + gray_mean[0] - plain).mean()) / gray_std[0]) > 0.05


def test_one_gray_value_is_repeated_and_other_counts_are_refused():
    assert adapt_stats([0.5], 3) == [0.5, 0.5, 0.5]
    with pytest.raises(InputError, match="mean/std have 2 values but the network takes 3 channels"):
        adapt_stats([0.1, 0.2], 3)
