"""The training loop shared by `cnncli train` and `cnncli finetune`.

Data lives in memory as uint8 tensors; each step slices a batch, augments it as a whole
tensor, resizes/normalizes it for the network, and takes one optimizer step (engine/step.py).
Training runs as a list of phases (one for `train`; head-only then unfrozen for `finetune`),
each with its own optimizer and schedule; `fit` is a loop over phases and their epochs, and
`Progress` (engine/progress.py) is where the run is.

Every step is a pure function of (seed, epoch, step) and the model/optimizer state: the
shuffle order is drawn from a generator seeded by (seed, epoch) and dropout/augmentation from
one seeded by (seed, epoch, step). So a run stopped anywhere and resumed from its state file
ends with the same weights as an uninterrupted one, on the CPU.
"""

from __future__ import annotations

import math
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from cnncli import output
from cnncli.checkpoint import (
    RunDocument,
    build_document,
    load_state_strict,
    save_checkpoint,
    versions,
)
from cnncli.data.balance import epoch_order
from cnncli.data.paths import dataset_label
from cnncli.data.stream import BadImageFailure, stream_choice
from cnncli.data.transforms import adapt_stats
from cnncli.engine import distributed, run_state
from cnncli.engine.config import TrainConfig, to_toml
from cnncli.engine.console import (
    ProgressBar,
    SignalCatcher,
    TrainingInterrupted,
    announced,
    epoch_line,
    is_generated,
)
from cnncli.engine.device import (
    resolve_device,
    set_threads,
    try_compile,
    use_channels_last,
)
from cnncli.engine.evaluate import EvalResult, evaluate
from cnncli.engine.optim import Plateau, build_optimizer, describe_optimizer, match_layouts
from cnncli.engine.progress import Progress
from cnncli.engine.report import RunResult
from cnncli.engine.resume_policy import resolved_recipe
from cnncli.engine.runs import check_run_folder, claim_run_folder
from cnncli.engine.step import (
    EpochMeter,
    Feed,
    LossNotFinite,
    Schedule,
    TrainStep,
    image_feed,
    step_seed,
)
from cnncli.errors import InputError, RuntimeFailure
from cnncli.fileio import atomic_write_text
from cnncli.track.hooks import Hooks, start_hooks

# eval_run (and older callers) import these names from here
channel_stats = adapt_stats  # the dataset's mean/std for the network's channels (luma-weighted for gray)


@dataclass
class Phase:
    """A stretch of epochs with one optimizer: what trains, at which learning-rate scale."""

    name: str
    epochs: int
    # parameter groups [{"params": [...], "lr_scale": s}] for this phase's optimizer
    param_groups: Callable[[torch.nn.Module], list[dict]] | None = None
    # called after model.train() every epoch: freezing, batch-norm modes
    prepare_model: Callable[[torch.nn.Module], None] | None = None
    # optional: how batches reach the network in this phase, given the Trainer (finetune's
    # frozen-base cache feeds features to the head); the training images by default
    feed: Callable[[Trainer], Feed] | None = None


class Trainer:
    """One training run: data, network, phases, run directory."""

    def __init__(self, cfg: TrainConfig, *, resume: str | None = None, model: torch.nn.Module | None = None,
                 phases: list[Phase] | None = None, extra_meta: dict | None = None,
                 input_size: tuple[int, int, int] | None = None, mean=None, std=None,
                 quiet: bool = False, run_name: str | None = None, model_spec: dict | None = None,
                 callbacks: list | None = None, command: str = "train"):
        self.cfg = cfg
        self.command = command  # whose run the folder is (its marker says so)
        # the one hook point: --log's loggers plus these callbacks (cnncli.track.base.Logger)
        self.callbacks, self.hooks = list(callbacks or []), Hooks()
        self._optimizer_state: dict | None = None  # a resumed phase's optimizer, loaded once
        self.raw_test: EvalResult | None = None  # with --ema: the trained weights' own test figures
        self.resume_dir = Path(resume) if resume else None
        self.quiet = quiet
        self.dist = distributed.init_distributed(cfg.device)
        distributed.local_batch_size(cfg.batch_size, self.dist.world_size)  # refused before any work
        self.device = resolve_device(cfg.device, self.dist.local_rank)
        from cnncli.engine.amp import resolve_precision

        # what --amp resolves to on this device; printed (unless off) and recorded in the run
        self.precision = resolve_precision(cfg.amp, self.device)
        set_threads(cfg.threads)
        # --deterministic is torch-global: the caller's setting comes back when fit() ends
        self._deterministic_before = torch.are_deterministic_algorithms_enabled()
        if cfg.deterministic:
            torch.use_deterministic_algorithms(True)
        torch.manual_seed(cfg.seed)
        # a bad --out or --resume folder is said before the data is loaded (and before any note);
        # the run's folder is locked to the end of the run (cnncli.outputs: a second writer refuses)
        self.run_lock = check_run_folder(command, out=cfg.out, resume=resume) if self.dist.is_main else None
        if self.resume_dir is None:
            from cnncli.data.balance import check_class_weights

            check_class_weights(cfg.class_weights)  # a bad file before any folder is made

        from cnncli.data import load_dataset

        with announced(f"loading {cfg.data}", enabled=self.dist.is_main and not is_generated(cfg.data)):
            self.data = load_dataset(cfg.data, data_dir=cfg.data_dir, download=cfg.download,
                                     val_fraction=cfg.val_fraction, max_samples=cfg.max_samples,
                                     seed=cfg.seed, fallback_to_embedded=False,
                                     stream=stream_choice(cfg.stream, cfg.cache, cfg.skip_bad_images))
        self.streaming = bool(getattr(self.data, "streaming", False))
        if cfg.cache:  # the store is built when the network's size is known (StreamingSplits.configure)
            from cnncli.data.cache import request_cache

            request_cache(self.data, str(cfg.cache).lower())
        self.class_names = list(self.data.class_names)
        self.num_classes = len(self.class_names)
        from cnncli.engine.sample_cap import check_capped_split

        check_capped_split(self.data.train.labels, self.class_names, cfg.max_samples, "training",
                           note=self.dist.is_main)  # no class lost to --max-samples (exit 2), or a note
        from cnncli.data.balance import note_imbalance, resolve_class_weights

        self.class_weights = resolve_class_weights(cfg.class_weights, self.data.train.labels, self.class_names,
                                                   self.resume_dir)  # a resumed run keeps those it recorded
        note_imbalance(self.data.train.labels, self.class_names, cfg.class_weights, cfg.sampler, self.dist.is_main)

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
        if self.streaming:  # decoded and transformed to the network's size in DataLoader workers
            from cnncli.engine.stream_feed import configure_stream

            mean, std = configure_stream(self, info, mean, std, extra_meta or {})
        from cnncli.engine.skips import SkipTally

        self.skips = SkipTally(self.data) if self.streaming else None  # --skip-bad-images, all ranks
        self.mean = list(mean) if mean is not None else adapt_stats(self.data.mean, self.input_size[0])
        self.std = list(std) if std is not None else adapt_stats(self.data.std, self.input_size[0])
        self.phases = phases or [Phase("train", cfg.epochs)]
        self.extra_meta = dict(extra_meta or {})
        self.extra_meta["precision"] = self.precision.name
        # a streaming split's eval batches are decoded in workers at the network's size: never more
        # images in one than a training step takes (the default 512 is for small in-memory images)
        self.eval_batch_size = min(cfg.eval_batch_size, cfg.batch_size) if self.streaming else cfg.eval_batch_size
        if self.streaming:
            self.stream_record["eval_batch_size"] = self.eval_batch_size
            self.extra_meta["data_pipeline"] = self.stream_record
        self.extra_meta["device"] = str(self.device)  # the device actually used (--device auto resolved)
        if self.class_weights is not None:
            self.extra_meta["class_weights"] = dict(zip(self.class_names, self.class_weights))
        if not hasattr(self, "weights_source"):
            self.weights_source = self.extra_meta.get("weights_source")
        self.run_name = run_name or cfg.name or f"{Path(cfg.model).stem if cfg.model.endswith('.toml') else cfg.model.replace('/', '_')}-{dataset_label(cfg.data)}"

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
        from cnncli.engine.data_init import fit_trainer_model
        from cnncli.engine.mixup import build_mixer

        fit_trainer_model(self)  # a whitening stem fits itself to the training images (fresh runs)

        self.mixer = build_mixer(cfg, self.num_classes)
        self.ema = None
        if cfg.ema is not None:
            from cnncli.engine.ema import WeightAverage

            self.ema = WeightAverage(self.model, cfg.ema)
            self.extra_meta["ema"] = {"decay": cfg.ema}
        self._global_step = 0  # the step being taken, counted over the whole run (the EMA's warm-up)

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

    def checkpoint_meta(self, epoch: int, metrics: dict) -> RunDocument:
        """The run's document for a checkpoint written after `epoch` epochs."""
        return build_document(
            model=self.model_spec or {"name": self.cfg.model}, num_classes=self.num_classes,
            class_names=self.class_names, input_size=self.input_size, mean=self.mean, std=self.std,
            dataset=self.cfg.data, data_source=getattr(self.data, "info", None), epoch=epoch, metrics=metrics,
            seed=self.cfg.seed, versions=versions(), recipe=resolved_recipe(self.cfg),
            weights_source=self.weights_source, extra=self.extra_meta)

    def _write(self, fn, *args):
        if self.dist.is_main:
            fn(*args)

    # ---------------------------------------------------------------- the loop
    def fit(self) -> RunResult:
        try:
            if self.dist.is_main:  # said once the data fits the network (an error before stays one line)
                from cnncli.data.registry import say_split_sizes

                say_split_sizes(self.data)
            return self._fit()
        except BaseException:
            if self.run_lock is not None and self.resume_dir is None:  # no result yet: its new folder goes
                self.run_lock.discard_if_unused()
            raise
        finally:
            if self.run_lock is not None:
                self.run_lock.release()
            torch.use_deterministic_algorithms(self._deterministic_before)

    def _fit(self) -> RunResult:
        progress = self._open_run()
        if str(self.cfg.amp) != "off" and self.dist.is_main:
            output.note(self.precision.describe())
        self._wall_start = time.perf_counter() - progress.seconds
        hooks = self.hooks = start_hooks(self, progress, self.callbacks)
        with SignalCatcher() as signals, ProgressBar(enabled=self.dist.is_main and not self.quiet) as bar, \
                hooks.closed_on_error():
            while progress.phase < len(self.phases) and not progress.stopped_early:
                self._run_phase(progress, signals, bar)
        with hooks.closed_on_error():
            test = self._test_best()
        result = RunResult(run_dir=self.run_dir, checkpoint=self.best_path, epochs=progress.epoch,
                         best_val_top1=progress.best_val_top1, test=test,
                         seconds=time.perf_counter() - self._wall_start,
                         images_per_second=(progress.train_images * self.dist.world_size / progress.train_seconds
                                            if progress.train_seconds else 0.0),
                         history=progress.history, stages=(self.extra_meta.get("finetune") or {}).get("stages"),
                         weights_source=self.weights_source, extra=self._result_extra())
        if self.skips is not None:
            self.skips.report()
        hooks.run_end(result.to_dict(), self.run_dir)
        return result

    def _result_extra(self) -> dict:
        extra = {"precision": self.precision.name}
        if self.streaming:
            extra["skipped_images"] = self.skips.count  # summed over ranks and resumes
        if "lr_find" in self.extra_meta:  # --lr auto: the rate it chose, and which suggestion
            extra["lr"], extra["lr_suggestion"] = self.cfg.lr, self.extra_meta["lr_find"]["suggestion"]
        if self.ema is not None:
            extra["ema_decay"] = self.cfg.ema
            extra["raw_test_top1"] = self.raw_test.top1 if self.raw_test is not None else None
        return extra

    def _open_run(self) -> Progress:
        """The run directory (new, or the one resumed), the batch geometry, where the run is."""
        cfg, dist = self.cfg, self.dist
        self.local_batch = distributed.local_batch_size(cfg.batch_size, dist.world_size)
        per_rank = len(self.data.train.labels) // dist.world_size
        self.steps_per_epoch = max(1, math.ceil(per_rank / self.local_batch))
        progress = None
        from cnncli.engine.lr_find import resolve_auto_lr, write_lr_find

        resolve_auto_lr(self)  # --lr auto: the range test (a resumed run reuses its lr)
        found = getattr(self, "lr_search", None)
        if self.resume_dir is not None:
            self.run_dir = self.resume_dir
            progress = self._load_resume(self.run_dir)
        else:
            run_dir = None
            if dist.is_main:
                run_dir, self.run_lock = claim_run_folder(self.run_name, self.command, cfg.out)
                atomic_write_text(run_dir / "config.toml", to_toml(resolved_recipe(cfg)))
                self.run_lock.scratch.add("config.toml")  # the recipe alone is no result
                if found is not None:
                    write_lr_find(found, run_dir, title=f"{cfg.model} on {cfg.data}: learning-rate range test")
            # rank 0 may have picked runs/<name>-N: every rank needs that same path
            self.run_dir = Path(distributed.broadcast_object(str(run_dir) if run_dir is not None else None))
        distributed.barrier()
        self.best_path = self.run_dir / "model.safetensors"
        return progress or Progress()

    def _run_phase(self, progress: Progress, signals, bar) -> None:
        """The epochs of the phase `progress` points at, from the epoch it points at."""
        cfg, model, index = self.cfg, self.model, progress.phase
        phase = self.phases[index]
        if progress.epoch_in_phase >= phase.epochs:  # a phase without epochs
            progress.phase, progress.epoch_in_phase = index + 1, 0
            return
        groups = phase.param_groups(model) if phase.param_groups else [
            {"params": [p for p in model.parameters() if p.requires_grad], "lr_scale": 1.0}]
        optimizer = build_optimizer(groups, cfg.optimizer, cfg.resolved_lr(), cfg.resolved_weight_decay(),
                                    cfg.momentum, cfg.nesterov)
        self.extra_meta["optimizer"] = describe_optimizer(optimizer, cfg.optimizer)
        # wrapped per phase: DDP registers the parameters that train at construction, and a
        # phase that freezes some (finetune) would leave its reducer waiting
        forward = self._wrap(model)
        if self._optimizer_state is not None:  # the resumed phase continues its optimizer
            optimizer.load_state_dict(self._optimizer_state)
            match_layouts(optimizer)
            self._optimizer_state = None
        progress.optimizer_fresh = False  # this phase's optimizer exists now: a state saved mid-phase keeps it
        spe = self.steps_per_epoch
        plateau = Plateau(progress.history, phase.name, cfg.plateau_patience, cfg.plateau_factor) \
            if cfg.schedule == "plateau" else None
        schedule = Schedule(cfg.schedule, spe * phase.epochs, int(cfg.warmup_epochs * spe), spe,
                            cfg.step_epochs, cfg.step_gamma, plateau)
        after_update = (lambda _s: self.ema.update(model, self._global_step)) if self.ema is not None else None
        step = TrainStep(model, optimizer, schedule, device=self.device, precision=self.precision,
                         label_smoothing=cfg.label_smoothing, clip_grad=cfg.clip_grad, dist=self.dist,
                         accum_steps=cfg.accum_steps, after_update=after_update,
                         class_weights=self.class_weights)
        if phase.feed:
            feed = phase.feed(self)
        elif self.streaming:
            from cnncli.engine.stream_feed import StreamFeed

            feed = StreamFeed(self.data.train, self.local_batch, cfg.seed, self.augment, self.prepare, forward,
                              self.dist.rank, self.dist.world_size).feed  # seeds as in one process
        else:
            feed = image_feed(self.data.train.images, self.augment, self.prepare, cfg.seed, forward)
        while progress.phase == index and not progress.stopped_early:
            self._run_epoch(phase, step, feed, progress, signals, bar)

    def _run_epoch(self, phase: Phase, step: TrainStep, feed: Feed, progress: Progress, signals, bar) -> None:
        """Train one epoch, validate, record it, write the checkpoints and the resumable state."""
        cfg, model = self.cfg, self.model
        model.train()
        if phase.prepare_model:
            phase.prepare_model(model)
        t0 = time.perf_counter()
        stats = self._train_epoch(step, feed, progress, signals, bar)
        self._check_finite(progress)
        seconds = time.perf_counter() - t0
        progress.train_seconds += seconds
        progress.train_images += stats["images"]
        raw_val = self._validate()
        val = self._validate(self.ema.module) if self.ema is not None and raw_val is not None else raw_val
        if self.skips is not None:  # every rank: the run's drops for the checkpoints written next
            self.extra_meta.update(self.skips.sync())
        progress.advance_epoch(phase.epochs)
        row = {"epoch": progress.epoch, "phase": phase.name, "train_loss": stats["loss"], "train_top1": stats["top1"],
               "val_loss": raw_val.loss if raw_val else None, "val_top1": raw_val.top1 if raw_val else None,
               "lr": step.optimizer.param_groups[0]["lr"], "seconds": round(seconds, 3),
               "images_per_second": stats["images"] * self.dist.world_size / seconds if seconds else None}
        if self.ema is not None:  # both figures: the trained weights' (above) and their average's
            row["ema_val_loss"], row["ema_val_top1"] = (val.loss, val.top1) if val else (None, None)
        progress.history.append(row)
        # with --ema the run's model is the average: chosen by its validation, saved as it;
        # with --keep last every epoch's replaces it, whatever its validation (early stopping still counts)
        best_weights = self.ema.module if self.ema is not None else model
        improved = val is None or progress.best_val_top1 is None or val.top1 > progress.best_val_top1
        if improved:
            progress.best_val_top1 = val.top1 if val else None
            progress.bad_epochs = 0
        else:
            progress.bad_epochs += 1
        if improved or cfg.keep == "last":
            self._write(save_checkpoint, self.best_path, best_weights.state_dict(), self.checkpoint_meta(
                progress.epoch, {"val_top1": val.top1 if val else None, "val_loss": val.loss if val else None,
                                 "train_loss": stats["loss"], "train_top1": stats["top1"]}))
        if cfg.patience and progress.bad_epochs >= cfg.patience:
            progress.stopped_early = True
        self._write(save_checkpoint, self.run_dir / "last.safetensors", model.state_dict(),
                    self.checkpoint_meta(progress.epoch, {"val_top1": row["val_top1"], "train_loss": row["train_loss"]}))
        self._save_progress(step.optimizer, progress)
        self._write(self._write_history, self.run_dir, progress.history)
        self.hooks.epoch_end(progress.epoch, row, val, step.optimizer)  # a tuning trial may be pruned here
        if self.dist.is_main:
            output.note(epoch_line(row, progress.epoch, sum(p.epochs for p in self.phases)))
        distributed.barrier()
        if progress.stopped_early:
            if self.dist.is_main:
                output.note(f"early stop: validation top-1 has not improved for {cfg.patience} epochs")
        elif signals.signum:
            self._interrupt(signals.signum, self.run_dir)

    def _train_epoch(self, step: TrainStep, feed: Feed, progress: Progress, signals, bar) -> dict:
        """The steps of the epoch `progress` points at; {"loss", "top1"} over all ranks, "images"."""
        cfg, dist, epoch = self.cfg, self.dist, progress.epoch
        labels, spe, bs = self.data.train.labels, self.steps_per_epoch, self.local_batch
        n_train = len(labels)
        order_of = getattr(self.data.train, "epoch_order", None)  # wds shards: each rank reads its own
        if order_of is not None:
            order = order_of(epoch, cfg.seed, dist.rank, dist.world_size)
        else:
            order = epoch_order(labels, step_seed(cfg.seed, epoch, -1), cfg.sampler)
            order = order[: (n_train // dist.world_size) * dist.world_size][dist.rank::dist.world_size]
        meter = EpochMeter(progress.partial)
        mixing = self.mixer is not None and self.mixer.active(epoch)
        bar.start_epoch(epoch + 1, spe, progress.step)
        if feed.start_epoch is not None:
            feed.start_epoch(order, epoch, progress.step)
        tick = time.perf_counter()
        for s in range(progress.step, spe):
            idx = order[s * bs:(s + 1) * bs]
            if len(idx) == 0:
                continue
            torch.manual_seed(step_seed(cfg.seed, epoch, s))
            try:
                x = feed.inputs(idx, epoch, s)
            except BadImageFailure as e:  # a file that does not decode: stop with the state up to it saved
                if not step.pending:
                    progress.step, progress.partial = s, meter.partial()
                    self._save_progress(step.optimizer, progress)
                raise RuntimeFailure(f"{e}; the state before it is in {self.run_dir} (--resume it once the file "
                                     "is fixed or removed)") from None
            if isinstance(x, tuple):  # a streaming feed: the samples that decoded
                x, idx = x
                if x is None:
                    continue
            y = labels[idx].to(self.device, non_blocking=True)
            if mixing:
                x, y = self.mixer(x, y)
            self._global_step = epoch * spe + s
            try:
                loss = step(feed.forward, x, y, progress.epoch_in_phase * spe + s, meter, signals,
                            last=s + 1 == spe)
            except LossNotFinite as e:
                raise RuntimeFailure(
                    f"the loss became {e.value} at epoch {epoch + 1}, step {s + 1}; training stopped, the last "
                    f"good checkpoint in {self.run_dir} is kept (try a lower --lr or --clip-grad)") from None
            now = time.perf_counter()
            rate = len(idx) * dist.world_size / max(1e-9, now - tick)
            bar.advance(loss.item() if bar.enabled else 0.0, meter.accuracy, rate)
            self.hooks.step(epoch * spe + s + 1, loss, step.optimizer, rate)
            tick = now
            if signals.signum and s + 1 < spe and not step.pending:  # never inside an accumulation
                self._check_finite(progress)
                progress.step, progress.partial = s + 1, meter.partial()
                if self.skips is not None:  # every rank stops at this step (TrainStep reduced the signal)
                    self.extra_meta.update(self.skips.sync())
                self._save_progress(step.optimizer, progress)
                self._interrupt(signals.signum, self.run_dir)
        return meter.totals()

    def _check_finite(self, progress: Progress) -> None:
        """Weights that are no longer finite are never written: the last good checkpoint is finite.

        The loss of each step is checked (LossNotFinite), but a step's update can still overflow
        the weights after a finite loss; saving them would make NaN the run's "best" or "last"."""
        modules = [self.model] + ([self.ema.module] if self.ema is not None else [])
        for module in modules:
            for name, tensor in module.state_dict().items():
                if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
                    kept = (f"the last good checkpoint in {self.run_dir} is kept" if self.best_path.exists()
                            else "no checkpoint was written")
                    raise RuntimeFailure(
                        f"the weights became non-finite ({name}) in epoch {progress.epoch + 1}; training stopped, "
                        f"{kept} (try a lower --lr or --clip-grad)")

    def _validate(self, model: torch.nn.Module | None = None) -> EvalResult | None:
        val = self.data.val
        if val is None or not len(val.labels):
            return None
        model = model if model is not None else self.model
        distributed.broadcast_module(model, buffers_only=True)
        return evaluate(model, val.images, val.labels, self.prepare, self.num_classes, self.class_names,
                        self.eval_batch_size, self.device, amp=self.amp_dtype)

    @property
    def amp_dtype(self):
        """evaluate's `amp`: the resolved autocast dtype, or False (float32)."""
        return self.precision.dtype or False

    def _test_best(self) -> EvalResult | None:
        """The kept weights (model.safetensors: best or last, --keep) on the test split; the figures
        join that checkpoint's document.

        In float32 whatever --amp is: the run's test figures are those `cnncli eval` gives."""
        split, model, best = self.data.test, self.model, self.best_path
        if split is None or not len(split.labels):
            return None
        distributed.barrier()
        from cnncli.checkpoint import load_checkpoint

        doc = None
        if self.ema is not None:  # the trained weights as they ended, beside their average's figure
            distributed.broadcast_module(model)
            self.raw_test = evaluate(model, split.images, split.labels, self.prepare, self.num_classes,
                                     self.class_names, self.eval_batch_size, self.device, amp=False)
        if self.dist.is_main and best.exists():
            state_dict, doc = load_checkpoint(best)
            load_state_strict(model, state_dict, best)
        distributed.broadcast_module(model)
        kept = "the last epoch's" if self.cfg.keep == "last" else "the best"
        with announced(f"scoring {kept} weights on the test split ({len(split.labels):,} images)",
                       enabled=self.dist.is_main):
            test = evaluate(model, split.images, split.labels, self.prepare, self.num_classes, self.class_names,
                            self.eval_batch_size, self.device, amp=False)
        skipped = self.skips.sync() if self.skips is not None else {}  # every rank: with the test split's
        if doc is not None:
            doc = doc.replace(**skipped) if skipped else doc
            metrics = {**(doc.get("metrics") or {}), "test_top1": test.top1, "test_top5": test.top5,
                       "test_loss": test.loss}
            if self.raw_test is not None:
                metrics["raw_test_top1"] = self.raw_test.top1
            save_checkpoint(best, model.state_dict(), doc.replace(metrics=metrics))
            atomic_write_text(self.run_dir / "eval.json", output.to_json({"split": "test", **test.to_dict(),
                                                                          "class_names": self.class_names}))
        # every rank returns once the run's files are final: the caller may read them next
        distributed.barrier()
        return test

    def _wrap(self, model: torch.nn.Module):
        forward = model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            forward = DistributedDataParallel(
                model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        if self.cfg.compile:
            forward = try_compile(forward)
        return forward

    def _interrupt(self, signum: int, run_dir: Path):
        distributed.barrier()
        name = "SIGINT" if signum == signal.SIGINT else "SIGTERM" if signum == signal.SIGTERM else str(signum)
        raise TrainingInterrupted(f"interrupted by {name}; a resumable state is in {run_dir} "
                                  f"(continue with --resume {run_dir})", signum)

    def _save_progress(self, optimizer, progress: Progress) -> None:
        progress.seconds = time.perf_counter() - self._wall_start
        self._write(self._save_state, self.run_dir / "train_state.safetensors", optimizer, progress)
        if getattr(self, "_config_stale", False):  # a resume changed --epochs/--device...: the record follows
            self._write(atomic_write_text, self.run_dir / "config.toml", to_toml(resolved_recipe(self.cfg)))
            self._config_stale = False

    def _save_state(self, path: Path, optimizer, progress: Progress) -> None:
        run_state.save_state(self, path, optimizer, progress)

    def _write_history(self, run_dir: Path, history: list[dict]) -> None:
        run_state.write_history(run_dir, history, title=f"{self.cfg.model} on {self.cfg.data}")

    def _load_resume(self, run_dir: Path) -> Progress | None:
        return run_state.load_resume(self, run_dir)


def train(cfg: TrainConfig, resume: str | None = None, quiet: bool = False) -> RunResult:
    """`cnncli train` as a Python function."""
    output.set_quiet(quiet)
    return Trainer(cfg, resume=resume, quiet=quiet).fit()
