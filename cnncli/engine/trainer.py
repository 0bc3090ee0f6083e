"""The training loop shared by `cnncli train` and `cnncli finetune`.

Data lives in memory as uint8 tensors; each step slices a batch, augments it as a whole
tensor, resizes/normalizes it for the network, and takes one optimizer step. Training runs
as a list of phases (one for `train`; head-only then unfrozen for `finetune`), each with its
own optimizer and schedule.

Every step is a pure function of (seed, epoch, step) and the model/optimizer state: the
shuffle order is drawn from a generator seeded by (seed, epoch) and dropout/augmentation from
one seeded by (seed, epoch, step). So a run stopped anywhere and resumed from its state file
ends with the same weights as an uninterrupted one, on the CPU.
"""

from __future__ import annotations

import dataclasses
import math
import signal
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from cnncli import output
from cnncli.checkpoint import load_state_strict, save_checkpoint, versions
from cnncli.engine import distributed
from cnncli.engine.config import TrainConfig, to_toml
from cnncli.engine.device import bf16_is_slow, resolve_device, set_threads, use_channels_last
from cnncli.engine.evaluate import EvalResult, evaluate
from cnncli.engine.optim import build_optimizer, lr_factor, set_lr
from cnncli.engine.runs import check_out_dir, new_run_dir
from cnncli.engine.state import load_train_state, save_train_state
from cnncli.errors import CnnError, InputError, RuntimeFailure
from cnncli.fileio import atomic_write_text, remove_stale_temporaries


class TrainingInterrupted(CnnError):
    """SIGINT/SIGTERM: the current step finished and a resumable state was written."""

    def __init__(self, message: str, signum: int):
        super().__init__(message)
        self.exit_code = 128 + signum


@dataclass
class Phase:
    """A stretch of epochs with one optimizer: what trains, at which learning-rate scale."""

    name: str
    epochs: int
    # parameter groups [{"params": [...], "lr_scale": s}] for this phase's optimizer
    param_groups: Callable[[torch.nn.Module], list[dict]] | None = None
    # called after model.train() every epoch: freezing, batch-norm modes
    prepare_model: Callable[[torch.nn.Module], None] | None = None
    # optional: train this phase on features precomputed once (finetune's frozen-base cache)
    epoch_runner: Callable[..., dict] | None = None


@dataclass
class RunResult:
    run_dir: Path
    checkpoint: Path
    epochs: int
    best_val_top1: float | None
    test: EvalResult | None
    seconds: float
    images_per_second: float
    history: list[dict] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_dir": str(self.run_dir),
            "checkpoint": str(self.checkpoint),
            "epochs": self.epochs,
            "best_val_top1": self.best_val_top1,
            "test_top1": self.test.top1 if self.test else None,
            "test_top5": self.test.top5 if self.test else None,
            "test_loss": self.test.loss if self.test else None,
            "seconds": self.seconds,
            "images_per_second": self.images_per_second,
        }


def step_seed(seed: int, epoch: int, step: int) -> int:
    return (seed * 1_000_003 + epoch * 100_003 + step * 7 + 17) % (2**63)


def channel_stats(values: tuple[float, ...], channels: int) -> list[float]:
    """The dataset's per-channel mean/std, repeated or averaged to the network's channels."""
    values = list(values)
    if len(values) == channels:
        return values
    if len(values) == 1:
        return values * channels
    if channels == 1:
        return [sum(values) / len(values)]
    raise InputError(f"cannot map {len(values)} data channels onto a network with {channels}")


class _SignalCatcher:
    """Turn SIGINT/SIGTERM into a flag the loop checks after each step."""

    def __init__(self):
        self.signum = 0
        self._old: dict[int, Any] = {}

    def __enter__(self):
        try:
            for s in (signal.SIGINT, signal.SIGTERM):
                self._old[s] = signal.signal(s, self._handle)
        except ValueError:  # not the main thread (e.g. inside some test runners): no handlers
            self._old = {}
        return self

    def _handle(self, signum, frame):
        if self.signum:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.signum = signum
        print("\nstopping after this step and saving a resumable state (Ctrl-C again to abort)",
              file=sys.stderr, flush=True)

    def __exit__(self, *exc):
        for s, handler in self._old.items():
            signal.signal(s, handler)
        return False


class Trainer:
    """One training run: data, network, phases, run directory."""

    def __init__(self, cfg: TrainConfig, *, resume: str | None = None, model: torch.nn.Module | None = None,
                 phases: list[Phase] | None = None, extra_meta: dict | None = None,
                 input_size: tuple[int, int, int] | None = None, mean=None, std=None,
                 quiet: bool = False, run_name: str | None = None, model_spec: dict | None = None):
        self.cfg = cfg
        self.resume_dir = Path(resume) if resume else None
        self.quiet = quiet
        self.dist = distributed.init_distributed(cfg.device)
        self.device = resolve_device(cfg.device, self.dist.local_rank)
        if cfg.amp and bf16_is_slow(self.device):
            if self.dist.is_main:
                output.warn("--amp: this CPU has no bf16 instructions (AVX512-BF16 or AMX) and emulated bf16 "
                            "runs ~10x slower than float32 here; training in float32")
            cfg = self.cfg = dataclasses.replace(cfg, amp=False)
        set_threads(cfg.threads)
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True)
        torch.manual_seed(cfg.seed)
        # a bad --out or --resume folder is said before the data is loaded (and before any note)
        if self.resume_dir is not None:
            if not (self.resume_dir / "train_state.safetensors").exists() \
                    and not (self.resume_dir / "config.toml").exists():
                raise InputError(f"{self.resume_dir} is not a cnncli run (no train_state.safetensors "
                                 "or config.toml in it)")
        elif cfg.out and self.dist.is_main:
            check_out_dir(cfg.out)

        from cnncli.data import load_dataset

        self.data = load_dataset(cfg.data, data_dir=cfg.data_dir, download=cfg.download,
                                 val_fraction=cfg.val_fraction, max_samples=cfg.max_samples,
                                 seed=cfg.seed, fallback_to_embedded=False)
        self.class_names = list(self.data.class_names)
        self.num_classes = len(self.class_names)

        self.model_spec, info = model_spec, None  # what a checkpoint stores to rebuild the network
        if model is None:
            from cnncli.models.registry import build_model, is_model_file

            built = build_model(cfg.model, num_classes=self.num_classes)
            model, self.model_spec, info = built.module, built.spec, built.info
            if cfg.weights:
                from cnncli.engine.weights import load_initial_weights

                self.weights_source = load_initial_weights(model, cfg.weights)
            elif is_model_file(cfg.model):
                from cnncli.engine.weights import load_requested_backbone

                requested = load_requested_backbone(built, cfg.model)
                if requested is not None:
                    self.weights_source = requested
        self.model = model
        net_size = tuple(input_size or (info.input_size if info else self.data.train.images.shape[1:]))
        if cfg.img_size:
            net_size = (net_size[0], cfg.img_size, cfg.img_size)
        self.input_size = tuple(int(v) for v in net_size)
        if cfg.img_size:
            self._check_input_fits()
        self.mean = list(mean) if mean is not None else channel_stats(self.data.mean, self.input_size[0])
        self.std = list(std) if std is not None else channel_stats(self.data.std, self.input_size[0])
        self.phases = phases or [Phase("train", cfg.epochs)]
        self.extra_meta = dict(extra_meta or {})
        if not hasattr(self, "weights_source"):
            self.weights_source = self.extra_meta.get("weights_source")
        self.run_name = run_name or f"{Path(cfg.model).stem if cfg.model.endswith('.toml') else cfg.model.replace('/', '_')}-{cfg.data.split(':')[0]}"

        from cnncli.data.augment import parse_augment
        from cnncli.data.transforms import needs_adaptation, prepare_batch

        self._prepare_batch = prepare_batch
        self.augment = parse_augment(cfg.augment) if cfg.augment else None
        data_shape = tuple(self.data.train.images.shape[1:])
        adaptation = needs_adaptation(data_shape, self.input_size)
        if adaptation and self.dist.is_main:
            output.note(f"note: {self.cfg.model} expects {'x'.join(map(str, self.input_size))} input: {adaptation}")
        self.model.to(self.device)
        use_channels_last(self.model, self.device)

    # ---------------------------------------------------------------- helpers
    def _check_input_fits(self) -> None:
        """--img-size may be too small for the network: one forward of a zero image says so now."""
        was_training = self.model.training
        try:
            self.model.eval()
            with torch.no_grad():
                self.model(torch.zeros((1, *self.input_size), device=next(self.model.parameters()).device))
        except RuntimeError as e:
            from cnncli.summary import summarize

            summarize(self.model, self.input_size)  # raises an InputError naming the layer
            raise InputError(f"--img-size {self.cfg.img_size} does not fit {self.cfg.model}: "
                             f"{str(e).strip().splitlines()[0]}") from None
        finally:
            self.model.train(was_training)

    def prepare(self, batch: torch.Tensor) -> torch.Tensor:
        return self._prepare_batch(batch, self.input_size, self.mean, self.std, self.device)

    def checkpoint_meta(self, epoch: int, metrics: dict) -> dict[str, Any]:
        spec = dict(self.model_spec or {"name": self.cfg.model})
        spec["num_classes"] = self.num_classes
        spec["in_chans"] = self.input_size[0]
        meta = {
            "kind": "model",
            "model": spec,
            "num_classes": self.num_classes,
            "class_names": self.class_names,
            "input_size": list(self.input_size),
            "mean": self.mean,
            "std": self.std,
            "dataset": self.cfg.data,
            "data_source": getattr(self.data, "info", None),
            "epoch": epoch,
            "metrics": metrics,
            "seed": self.cfg.seed,
            "versions": versions(),
            "recipe": self.cfg.to_dict(),
            "weights_source": self.weights_source,
        }
        meta.update(self.extra_meta)
        return meta

    def _write(self, fn, *args):
        if self.dist.is_main:
            fn(*args)

    # ---------------------------------------------------------------- the loop
    def fit(self) -> RunResult:
        cfg, model, dist = self.cfg, self.model, self.dist
        if self.resume_dir is not None:
            run_dir = self.resume_dir
            progress = self._load_resume(run_dir)
        else:
            run_dir = new_run_dir(self.run_name, cfg.out) if dist.is_main else None
            progress = None
            if dist.is_main:
                atomic_write_text(run_dir / "config.toml", to_toml(cfg.to_dict()))
            # rank 0 may have picked runs/<name>-N: every rank needs that same path
            run_dir = Path(distributed.broadcast_object(str(run_dir) if run_dir is not None else None))
        self.run_dir = run_dir
        distributed.barrier()

        train = self.data.train
        n_train = len(train.labels)
        world = dist.world_size
        local_bs = max(1, cfg.batch_size // world)
        per_rank = n_train // world
        steps_per_epoch = max(1, math.ceil(per_rank / local_bs))

        history: list[dict] = progress["history"] if progress else []
        best = progress["best_val_top1"] if progress else None
        bad_epochs = progress["bad_epochs"] if progress else 0
        start_phase = progress["phase"] if progress else 0
        start_epoch_in_phase = progress["epoch_in_phase"] if progress else 0
        start_step = progress["step"] if progress else 0
        partial = progress.get("partial") if progress else None
        global_epoch = progress["epoch"] if progress else 0
        train_seconds = progress.get("train_seconds", 0.0) if progress else 0.0
        train_images = progress.get("train_images", 0) if progress else 0
        stopped_early = progress.get("stopped_early", False) if progress else False
        wall_start = time.perf_counter() - (progress.get("seconds", 0.0) if progress else 0.0)

        best_path = run_dir / "model.safetensors"
        bar = _Progress(enabled=dist.is_main and not self.quiet)
        with _SignalCatcher() as signals, bar:
            for phase_index in range(start_phase, len(self.phases)):
                if stopped_early:
                    break
                phase = self.phases[phase_index]
                groups = phase.param_groups(model) if phase.param_groups else [
                    {"params": [p for p in model.parameters() if p.requires_grad], "lr_scale": 1.0}]
                optimizer = build_optimizer(groups, cfg.optimizer, cfg.resolved_lr(),
                                            cfg.resolved_weight_decay(), cfg.momentum, cfg.nesterov)
                # wrapped per phase: DDP registers the parameters that train at construction,
                # and a phase that freezes some (finetune) would leave its reducer waiting
                forward = self._wrap(model)
                if progress and phase_index == start_phase and progress.get("optimizer_state"):
                    optimizer.load_state_dict(progress["optimizer_state"])
                    _match_layouts(optimizer)
                total_steps = steps_per_epoch * phase.epochs
                warmup = int(cfg.warmup_epochs * steps_per_epoch)
                first = start_epoch_in_phase if phase_index == start_phase else 0
                for epoch_in_phase in range(first, phase.epochs):
                    epoch = global_epoch  # 0-based global epoch index
                    resume_step = start_step if (phase_index == start_phase and epoch_in_phase == first) else 0
                    model.train()
                    if phase.prepare_model:
                        phase.prepare_model(model)
                    t0 = time.perf_counter()
                    if phase.epoch_runner is not None:
                        stats = phase.epoch_runner(self, optimizer, epoch, epoch_in_phase, steps_per_epoch,
                                                   total_steps, warmup)
                        seen = stats["images"]
                    else:
                        stats = self._train_epoch(forward, optimizer, epoch, epoch_in_phase, steps_per_epoch,
                                                  total_steps, warmup, local_bs, resume_step, partial,
                                                  signals, bar, phase, phase_index, history, best,
                                                  bad_epochs, global_epoch, train_seconds, train_images,
                                                  wall_start)
                        seen = stats["images"]
                    partial = None
                    epoch_seconds = time.perf_counter() - t0
                    train_seconds += epoch_seconds
                    train_images += seen
                    val = None
                    if self.data.val is not None and len(self.data.val.labels):
                        distributed.broadcast_module(model, buffers_only=True)
                        val = evaluate(model, self.data.val.images, self.data.val.labels, self.prepare,
                                       self.num_classes, self.class_names, cfg.eval_batch_size, self.device,
                                       amp=cfg.amp)
                    global_epoch += 1
                    row = {"epoch": global_epoch, "phase": phase.name,
                           "train_loss": stats["loss"], "train_top1": stats["top1"],
                           "val_loss": val.loss if val else None, "val_top1": val.top1 if val else None,
                           "lr": optimizer.param_groups[0]["lr"], "seconds": round(epoch_seconds, 3),
                           "images_per_second": seen * world / epoch_seconds if epoch_seconds else None}
                    history.append(row)
                    improved = val is None or best is None or val.top1 > best
                    if improved:
                        best = val.top1 if val else None
                        bad_epochs = 0
                        self._write(save_checkpoint, best_path, model.state_dict(),
                                    self.checkpoint_meta(global_epoch, {"val_top1": best, "val_loss": val.loss if val else None,
                                                                        "train_loss": stats["loss"], "train_top1": stats["top1"]}))
                    else:
                        bad_epochs += 1
                    if cfg.patience and bad_epochs >= cfg.patience:
                        stopped_early = True
                    self._write(save_checkpoint, run_dir / "last.safetensors", model.state_dict(),
                                self.checkpoint_meta(global_epoch, {"val_top1": row["val_top1"], "train_loss": row["train_loss"]}))
                    last_of_phase = epoch_in_phase + 1 == phase.epochs
                    state = {"phase": phase_index + 1 if last_of_phase else phase_index,
                             "epoch_in_phase": 0 if last_of_phase else epoch_in_phase + 1,
                             "step": 0, "epoch": global_epoch, "history": history, "best_val_top1": best,
                             "bad_epochs": bad_epochs, "train_seconds": train_seconds,
                             "train_images": train_images, "stopped_early": stopped_early,
                             "seconds": time.perf_counter() - wall_start,
                             "optimizer_fresh": last_of_phase}
                    self._write(self._save_state, run_dir / "train_state.safetensors", optimizer, state)
                    self._write(self._write_history, run_dir, history)
                    if dist.is_main:
                        output.note(_epoch_line(row, global_epoch, sum(p.epochs for p in self.phases)))
                    distributed.barrier()
                    if stopped_early:
                        if dist.is_main:
                            output.note(f"early stop: validation top-1 has not improved for {cfg.patience} epochs")
                        break
                    if signals.signum:
                        self._interrupt(signals.signum, run_dir)
                start_step = 0

        # the best weights, on the test split
        test = None
        if self.data.test is not None and len(self.data.test.labels):
            distributed.barrier()
            from cnncli.checkpoint import load_checkpoint

            if dist.is_main and best_path.exists():
                state_dict, _ = load_checkpoint(best_path)
                load_state_strict(model, state_dict, best_path)
            distributed.broadcast_module(model)
            test = evaluate(model, self.data.test.images, self.data.test.labels, self.prepare,
                            self.num_classes, self.class_names, cfg.eval_batch_size, self.device, amp=cfg.amp)
            if dist.is_main and best_path.exists():
                from cnncli.checkpoint import read_meta

                meta = read_meta(best_path)
                meta["metrics"].update({"test_top1": test.top1, "test_top5": test.top5, "test_loss": test.loss})
                save_checkpoint(best_path, model.state_dict(), meta)
                from cnncli.output import to_json

                atomic_write_text(run_dir / "eval.json", to_json({"split": "test", **test.to_dict(),
                                                                  "class_names": self.class_names}))
            # every rank returns once the run's files are final: the caller may read them next
            distributed.barrier()
        seconds = time.perf_counter() - wall_start
        return RunResult(run_dir=run_dir, checkpoint=best_path, epochs=global_epoch, best_val_top1=best,
                         test=test, seconds=seconds,
                         images_per_second=train_images * world / train_seconds if train_seconds else 0.0,
                         history=history)

    def _train_epoch(self, forward, optimizer, epoch, epoch_in_phase, steps_per_epoch, total_steps, warmup,
                     local_bs, resume_step, partial, signals, bar, phase, phase_index, history, best,
                     bad_epochs, global_epoch, train_seconds, train_images, wall_start) -> dict:
        cfg, dist = self.cfg, self.dist
        train = self.data.train
        n_train = len(train.labels)
        order = torch.randperm(n_train, generator=torch.Generator().manual_seed(step_seed(cfg.seed, epoch, -1)))
        order = order[: (n_train // dist.world_size) * dist.world_size][dist.rank::dist.world_size]
        loss_sum = torch.zeros((), dtype=torch.float64)
        correct = torch.zeros((), dtype=torch.int64)
        seen = 0
        if partial:
            loss_sum += partial["loss_sum"]
            correct += partial["correct"]
            seen = partial["seen"]
        bar.start_epoch(global_epoch + 1, steps_per_epoch, resume_step)
        step_time = time.perf_counter()
        for step in range(resume_step, steps_per_epoch):
            idx = order[step * local_bs:(step + 1) * local_bs]
            if len(idx) == 0:
                continue
            torch.manual_seed(step_seed(cfg.seed, epoch, step))
            x = train.images[idx]
            if self.augment is not None:
                x = self.augment(x, generator=torch.Generator().manual_seed(step_seed(cfg.seed, epoch, step) + 1))
            x = self.prepare(x)
            y = train.labels[idx].to(self.device, non_blocking=True)
            set_lr(optimizer, lr_factor(cfg.schedule, epoch_in_phase * steps_per_epoch + step, total_steps,
                                        warmup, steps_per_epoch, cfg.step_epochs, cfg.step_gamma))
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.amp):
                logits = forward(x)
                loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
            finite = torch.isfinite(loss.detach())
            if dist.enabled:
                flag = torch.tensor([0.0 if finite else 1.0, float(signals.signum)], device=self.device)
                distributed.all_reduce_sum(flag)
                finite = flag[0].item() == 0
                if flag[1].item() and not signals.signum:
                    signals.signum = signal.SIGTERM
            if not finite:
                raise RuntimeFailure(
                    f"the loss became {loss.item()} at epoch {global_epoch + 1}, step {step + 1}; training "
                    f"stopped, the last good checkpoint in {self.run_dir} is kept (try a lower --lr or --clip-grad)")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.clip_grad:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.clip_grad)
            optimizer.step()
            loss_sum += loss.detach().double().cpu() * len(idx)
            correct += (logits.detach().argmax(1) == y).sum().cpu()
            seen += len(idx)
            now = time.perf_counter()
            bar.advance(loss.item() if bar.enabled else 0.0, float(correct) / max(1, seen),
                        len(idx) * dist.world_size / max(1e-9, now - step_time))
            step_time = now
            if signals.signum and step + 1 < steps_per_epoch:
                state = {"phase": phase_index, "epoch_in_phase": epoch_in_phase, "step": step + 1,
                         "epoch": global_epoch, "history": history, "best_val_top1": best,
                         "bad_epochs": bad_epochs, "train_seconds": train_seconds,
                         "train_images": train_images, "stopped_early": False,
                         "seconds": time.perf_counter() - wall_start,
                         "partial": {"loss_sum": float(loss_sum), "correct": int(correct), "seen": seen}}
                self._write(self._save_state, self.run_dir / "train_state.safetensors", optimizer, state)
                self._interrupt(signals.signum, self.run_dir)
        totals = torch.tensor([float(loss_sum), float(correct), float(seen)], dtype=torch.float64)
        distributed.all_reduce_sum(totals)
        n = max(1.0, float(totals[2]))
        return {"loss": float(totals[0]) / n, "top1": float(totals[1]) / n, "images": seen}

    def _wrap(self, model: torch.nn.Module):
        forward = model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            forward = DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if self.cfg.compile:
            forward = _try_compile(forward)
        return forward

    def _interrupt(self, signum: int, run_dir: Path):
        distributed.barrier()
        name = "SIGINT" if signum == signal.SIGINT else "SIGTERM" if signum == signal.SIGTERM else str(signum)
        raise TrainingInterrupted(f"interrupted by {name}; a resumable state is in {run_dir} "
                                  f"(continue with --resume {run_dir})", signum)

    def _save_state(self, path: Path, optimizer, progress: dict) -> None:
        if progress.get("optimizer_fresh"):
            # the next phase starts a new optimizer; nothing to carry over
            empty = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)
            optimizer = empty
        save_train_state(path, self.model, optimizer, progress,
                         self.checkpoint_meta(progress["epoch"], {"val_top1": progress["best_val_top1"]}))

    def _write_history(self, run_dir: Path, history: list[dict]) -> None:
        from cnncli.output import to_json

        atomic_write_text(run_dir / "metrics.jsonl", "".join(to_json(r, indent=None) + "\n" for r in history))
        try:
            from cnncli.plots import plot_curves

            plot_curves(history, run_dir / "curves.png", title=f"{self.cfg.model} on {self.cfg.data}")
        except ImportError:  # matplotlib missing: the numbers are in metrics.jsonl
            pass

    def _load_resume(self, run_dir: Path) -> dict | None:
        if self.dist.is_main:
            remove_stale_temporaries(run_dir)  # what writes killed midway left behind
        path = run_dir / "train_state.safetensors"
        if not path.exists():
            # stopped (even killed) before its first epoch ended: continue from the start
            if self.dist.is_main:
                output.note(f"{run_dir} stopped before its first epoch ended; starting it again")
            return None
        model_sd, optim_sd, doc = load_train_state(path)
        load_state_strict(self.model, model_sd, path)
        self.model.to(self.device)
        progress = dict(doc["train_state"])
        if not progress.get("optimizer_fresh"):
            progress["optimizer_state"] = optim_sd
        if progress.get("phase", 0) >= len(self.phases) or progress.get("stopped_early"):
            if self.dist.is_main:
                output.note(f"{run_dir}: training had already finished; evaluating its best checkpoint")
        elif self.dist.is_main:
            output.note(f"resuming {run_dir} after epoch {progress['epoch']}"
                        + (f", step {progress['step']}" if progress.get("step") else ""))
        return progress


def _match_layouts(optimizer: torch.optim.Optimizer) -> None:
    """Give each loaded optimizer buffer its parameter's memory format (channels-last).

    The state file holds contiguous tensors; the fused kernels then take another path than
    an uninterrupted run, whose buffers were made like their channels-last parameters, and
    the last bits differ. Same layout, same arithmetic: a resumed run ends bit for bit equal.
    """
    for group in optimizer.param_groups:
        for p in group["params"]:
            state = optimizer.state.get(p, {})
            for key, value in state.items():
                if torch.is_tensor(value) and value.shape == p.shape and value.stride() != p.stride():
                    state[key] = torch.empty_like(p, dtype=value.dtype).copy_(value)


def _try_compile(model):
    try:
        return torch.compile(model)
    except Exception as e:  # backend missing (no compiler, unsupported platform)
        output.warn(f"--compile is not available here ({type(e).__name__}: {e}); running eagerly")
        return model


def _epoch_line(row: dict, epoch: int, total: int) -> str:
    val = f"  val loss {row['val_loss']:.4f}  val top-1 {row['val_top1']:.4f}" if row["val_top1"] is not None else ""
    ips = f"  {row['images_per_second']:.0f} img/s" if row.get("images_per_second") else ""
    return (f"epoch {epoch}/{total} [{row['phase']}]  loss {row['train_loss']:.4f}  "
            f"top-1 {row['train_top1']:.4f}{val}{ips}  {row['seconds']:.1f}s")


class _Progress:
    """A rich progress bar on stderr, only on a terminal; quiet otherwise."""

    def __init__(self, enabled: bool):
        self.enabled = enabled and sys.stderr.isatty()
        self._progress = None
        self._task = None

    def __enter__(self):
        if self.enabled:
            from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

            from cnncli.output import stderr_console

            self._progress = Progress(TextColumn("epoch {task.fields[epoch]}"), BarColumn(),
                                      TextColumn("{task.completed}/{task.total}"),
                                      TextColumn("loss {task.fields[loss]:.4f} acc {task.fields[acc]:.3f} "
                                                 "{task.fields[ips]:.0f} img/s"),
                                      TimeRemainingColumn(), console=stderr_console(), transient=True)
            self._progress.__enter__()
        return self

    def start_epoch(self, epoch: int, steps: int, done: int = 0):
        if self._progress is None:
            return
        if self._task is not None:
            self._progress.remove_task(self._task)
        self._task = self._progress.add_task("train", total=steps, completed=done, epoch=epoch,
                                             loss=0.0, acc=0.0, ips=0.0)

    def advance(self, loss: float, acc: float, ips: float):
        if self._progress is not None and self._task is not None:
            self._progress.update(self._task, advance=1, loss=loss, acc=acc, ips=ips)

    def __exit__(self, *exc):
        if self._progress is not None:
            self._progress.__exit__(*exc)
        return False


def train(cfg: TrainConfig, resume: str | None = None, quiet: bool = False) -> RunResult:
    """`cnncli train` as a Python function."""
    output.set_quiet(quiet)
    return Trainer(cfg, resume=resume, quiet=quiet).fit()
