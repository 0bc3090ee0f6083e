"""`cnncli lr-find` and `train --lr auto`: the range test as fastai runs it, on real (small) runs."""

from __future__ import annotations

import json
import math
import random

import pytest
import torch
from safetensors.torch import load_file

from cnncli.checkpoint import read_meta
from cnncli.engine import lr_find

DATA = "synthetic:n=128,n_test=16,classes=4,size=28"
FAST = ["--data", DATA, "--batch-size", 32, "--threads", 1, "--seed", 1]


# ------------------------------------------------------------------------------ the sweep, in numbers
def bowl(lr: float) -> float:
    """A loss curve with its lowest point at lr = 1e-3 that blows up past 1e-1."""
    x = math.log10(lr)
    return 1.0 + 0.05 * (x + 3) ** 2 + (0 if x < -1 else 50.0 * (x + 1) ** 2)


def test_the_sweep_is_exponential_smoothed_with_debiasing_and_stops_at_4x_the_best():
    r = lr_find.range_test(bowl, 1e-7, 10.0, 100)
    assert r.lrs[0] == pytest.approx(1e-7)
    ratios = [b / a for a, b in zip(r.lrs, r.lrs[1:])]
    assert max(ratios) == pytest.approx(min(ratios)) == pytest.approx((10 / 1e-7) ** (1 / 99))
    assert r.losses[0] == pytest.approx(r.raw_losses[0])  # debiased: no pull towards 0 at the start
    avg = 0.0
    for i, raw in enumerate(r.raw_losses):
        avg = 0.98 * avg + 0.02 * raw
        assert r.losses[i] == pytest.approx(avg / (1 - 0.98 ** (i + 1)))
    assert r.stopped == "diverged" and r.lrs[-1] < 10.0
    assert r.losses[-1] > 4 * min(r.losses) >= r.losses[-2]


def test_the_full_sweep_ends_at_end_lr_when_nothing_diverges():
    r = lr_find.range_test(lambda lr: 2.0 - 0.01 * math.log10(lr), 1e-4, 1e-1, 40)
    assert r.stopped == "end" and len(r.lrs) == 40 and r.lrs[-1] == pytest.approx(1e-1)


def test_a_non_finite_loss_ends_the_sweep_and_is_not_recorded():
    r = lr_find.range_test(lambda lr: math.nan if lr > 1e-2 else 1.0 / (1 + lr), 1e-6, 1.0, 60)
    assert r.stopped == "diverged" and all(math.isfinite(v) for v in r.losses) and r.lrs[-1] <= 1e-2


def cliff(lr: float) -> float:
    """Flat at 2.3, falling to 1.0 around lr = 1e-3 (a sigmoid in log lr), blowing up past 1e-1."""
    x = math.log10(lr)
    return 1.0 + 1.3 / (1 + math.exp(3 * (x + 3))) + (0 if x < -1 else 50.0 * (x + 1) ** 2)


def test_suggestions_on_a_known_curve():
    s = lr_find.range_test(cliff, 1e-7, 10.0, 100).suggestions
    # the smoothed curve (beta 0.98 remembers ~50 of the 100 steps) lags the raw one to the right:
    # its fall is read off around 1e-3..1e-2, its lowest point as the blow-up past 1e-1 begins
    assert 1e-4 < s["valley"]["lr"] < 1e-2
    assert 1e-3 < s["steep"]["lr"] < 3e-2
    assert 1e-2 < s["minimum"]["at_lr"] < 0.3 and s["minimum"]["lr"] == pytest.approx(s["minimum"]["at_lr"] / 10)
    assert s["valley"]["lr"] < s["steep"]["lr"] < s["minimum"]["at_lr"]


def fastai_valley(lrs, losses):
    """fastai's `valley`, transcribed as fastai/callback/schedule.py writes it (plain loops)."""
    n = len(losses)
    max_start, max_end = 0, 0
    lds = [1] * n
    for i in range(1, n):
        for j in range(0, i):
            if losses[i] < losses[j] and lds[i] < lds[j] + 1:
                lds[i] = lds[j] + 1
            if lds[max_end] < lds[i]:
                max_end = i
                max_start = max_end - lds[max_end]
    sections = (max_end - max_start) / 3
    return lrs[max_start + int(sections) + int(sections / 2)]


@pytest.mark.parametrize("seed", range(5))
def test_valley_steep_minimum_are_fastais_definitions(seed):
    rng = random.Random(seed)
    lrs = [1e-6 * 1.2 ** i for i in range(60)]
    losses = [2.0 - 0.02 * i + rng.uniform(-0.15, 0.15) + (0.01 * (i - 40) ** 2 if i > 40 else 0) for i in range(60)]
    assert lr_find.valley(lrs, losses)[0] == fastai_valley(lrs, losses)
    grads = [(losses[i + 1] - losses[i]) / (math.log(lrs[i + 1]) - math.log(lrs[i])) for i in range(59)]
    assert lr_find.steep(lrs, losses)[0] == lrs[grads.index(min(grads))]
    assert lr_find.minimum(lrs, losses)[0] == lrs[losses.index(min(losses))] / 10


def test_fastais_window_skips_the_first_tenth_and_the_last_five_points():
    lrs = [10 ** (-7 + i * 0.08) for i in range(100)]
    losses = [5.0] * 10 + [4.0 - 0.03 * i for i in range(85)] + [0.1] * 5  # the skipped tails hold the minimum
    s = lr_find.suggest(lrs, losses, 100)
    assert s["minimum"]["at_lr"] == lrs[94]


def test_a_sweep_that_diverges_at_once_says_what_to_do():
    from cnncli.errors import RuntimeFailure

    with pytest.raises(RuntimeFailure, match="lower --start-lr"):
        lr_find.range_test(lambda lr: 1.0 if lr < 2e-7 else 100.0, 1e-7, 10.0, 100)


# ------------------------------------------------------------------------------ the command
def test_lr_find_suggests_a_sensible_rate_and_writes_only_the_plot(run_cli, tmp_path, monkeypatch):
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    plot = work / "lr.png"
    result = run_cli("lr-find", "lenet5", *FAST, "--steps", 60, "--start-lr", 1e-6, "--plot", plot, "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert set(doc["suggestions"]) == {"valley", "steep", "minimum"}
    for s in doc["suggestions"].values():  # adamw on a small CNN: between 1e-5 and 1
        assert 1e-5 < s["lr"] < 1.0, doc["suggestions"]
    assert doc["start_lr"] == 1e-6 and doc["steps"] == 60 and 10 < doc["steps_run"] <= 60
    assert doc["points"][0]["lr"] == pytest.approx(1e-6)
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in work.iterdir()) == ["lr.png"]  # no run, no weights left behind


def test_lr_find_table_names_the_three_suggestions(run_cli):
    result = run_cli("lr-find", "lenet5", *FAST, "--steps", 30, "--start-lr", 1e-5, "--end-lr", 1)
    assert result.exit_code == 0, result.stderr
    for word in ("valley", "steep", "minimum", "--plot"):
        assert word in result.stdout


@pytest.mark.parametrize("args,says", [
    (["--start-lr", 1, "--end-lr", 0.1], "--start-lr (1) must be below --end-lr (0.1)"),
    (["--start-lr", 0.1, "--end-lr", 0.1], "must be below --end-lr"),
    (["--start-lr", "nan"], "must be a finite number"),
    (["--end-lr", "inf"], "must be a finite number"),
    (["--start-lr", 0], "must be in (0, 10]"),
    (["--steps", 5], "must be in [10, 10000], got 5"),
    (["--steps", 20000], "must be in [10, 10000]"),
])
def test_bad_sweeps_are_one_line_exit_2(run_cli, args, says):
    result = run_cli("lr-find", "lenet5", *FAST, *args)
    assert result.exit_code == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and says in lines[0], result.stderr
    assert result.stdout == ""


@pytest.mark.parametrize("args,says", [
    (["--lr", "automatic"], "is not a number (or 'auto')"),
    (["--lr", "auto", "--lr-suggestion", "best"], "unknown learning-rate suggestion 'best'"),
])
def test_bad_lr_auto_is_one_line_exit_2(run_cli, tmp_path, args, says):
    result = run_cli("train", "lenet5", *FAST, "--epochs", 1, "--out", tmp_path / "run", *args)
    assert result.exit_code == 2 and says in result.stderr, result.stderr
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------------------ train --lr auto
@pytest.fixture(scope="module")
def auto_run(run_cli, tmp_path_factory):
    out = tmp_path_factory.mktemp("auto") / "run"
    result = run_cli("train", "lenet5", *FAST, "--epochs", 1, "--lr", "auto", "--out", out, "--json")
    assert result.exit_code == 0, result.stderr
    return out, json.loads(result.stdout), result.stderr


def test_lr_auto_records_the_chosen_rate_everywhere(auto_run):
    out, doc, stderr = auto_run
    lr = doc["lr"]
    assert doc["lr_suggestion"] == "valley" and 1e-5 < lr < 1.0
    assert f"lr {lr:.3g} (valley" in stderr  # printed
    config = (out / "config.toml").read_text()
    assert f"lr = {lr!r}\n" in config and 'lr_suggestion = "valley"' in config
    meta = read_meta(out / "model.safetensors")
    assert meta["recipe"]["lr"] == lr
    assert meta["lr_find"]["suggestion"] == "valley" and meta["lr_find"]["lr"] == lr
    assert set(meta["lr_find"]["suggestions"]) == {"valley", "steep", "minimum"}
    search = json.loads((out / "lr_find.json").read_text())
    assert search["suggestions"]["valley"]["lr"] == lr
    assert (out / "lr_find.png").read_bytes()[:4] == b"\x89PNG"
    first_epoch = json.loads((out / "metrics.jsonl").read_text().splitlines()[0])
    assert first_epoch["lr"] <= lr  # the run's schedule starts from the chosen peak


def test_the_search_leaves_the_network_as_it_was(auto_run, run_cli, tmp_path):
    """Training with the rate --lr auto chose, given by hand, ends with the same weights."""
    out, doc, _ = auto_run
    again = tmp_path / "by-hand"
    result = run_cli("train", "lenet5", *FAST, "--epochs", 1, "--lr", repr(doc["lr"]), "--out", again, "--quiet")
    assert result.exit_code == 0, result.stderr
    a, b = load_file(out / "last.safetensors"), load_file(again / "last.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resuming_an_lr_auto_run_reuses_its_rate(auto_run, run_cli, tmp_path):
    import shutil

    out, doc, _ = auto_run
    run = shutil.copytree(out, tmp_path / "run")
    search = (run / "lr_find.json").read_bytes()
    result = run_cli("train", "--resume", run, "--epochs", 2, "--lr", "auto", "--json")
    assert result.exit_code == 0, result.stderr
    assert "range test" not in result.stderr and f"reusing the learning rate {doc['lr']:.3g}" in result.stderr
    assert json.loads(result.stdout)["lr"] == doc["lr"]
    assert (run / "lr_find.json").read_bytes() == search
    meta = read_meta(run / "model.safetensors")
    assert meta["recipe"]["lr"] == doc["lr"] and meta["lr_find"]["lr"] == doc["lr"]
    assert f"lr = {doc['lr']!r}\n" in (run / "config.toml").read_text()


def test_finetune_lr_auto_searches_on_the_head_stage_and_records_it(run_cli, tiny_run, tmp_path):
    out = tmp_path / "ft"
    result = run_cli("finetune", tiny_run, "--data", "synthetic:n=64,n_test=16,classes=2,size=28", "--head-epochs", 1, "--epochs", 1,
                     "--lr", "auto", "--lr-suggestion", "steep", "--threads", 1, "--out", out, "--json", "--quiet")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    lr = doc["lr"]
    assert doc["lr_suggestion"] == "steep" and doc["stages"][0]["lr"] == lr
    assert doc["stages"][1]["lr"] == pytest.approx(lr * 0.1)  # --unfreeze-lr-factor's default
    search = json.loads((out / "lr_find.json").read_text())
    assert search["suggestions"]["steep"]["lr"] == lr
    assert read_meta(out / "model.safetensors")["lr_find"]["suggestion"] == "steep"
