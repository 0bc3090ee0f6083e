"""Time to accuracy: a recipe on the real Fashion-MNIST, test top-1 after every epoch against wall time.

Runs the recipe (default `recipes/fashion_mnist_best.toml`) through cnncli's library exactly
as `cnncli train --recipe` does, and after each epoch also evaluates the run's model (with
`ema`, the average of the weights, which is what the run saves; the trained weights too) on
the 10,000 test images. That extra evaluation is measurement, not training: its time is
taken out of the wall clock reported. The clock starts before the data is loaded and stops
after the run's own final test (its best-validation checkpoint): that is `wall_seconds`.
Targets (issue 15): test top-1 >= 94.5% (stretch 95.0%) within 10 minutes on 2 cores of the
slower (AVX2) machine, which the issue puts at about 4 minutes on the AVX-512 one, and >= 93%
within half of that. The budget is therefore the CPU's: 600 s without AVX-512, 240 s with it
(`--budget S` overrides); the summary says which, and which precision the run trained in
(`amp = "auto"` is bf16 on a CPU with native bf16, float32 elsewhere; `--set amp=off` times float32).

    python bench/time_to_accuracy.py                               # the best recipe
    python bench/time_to_accuracy.py recipes/fashion_mnist_typical_cnn.toml --set epochs=2
    OMP_NUM_THREADS=2 python bench/time_to_accuracy.py --set threads=2
    OMP_NUM_THREADS=2 python bench/time_to_accuracy.py --set threads=2 --tta flip --baseline

Output: a `machine` line (CPU, its SIMD flags, threads, load), one `epoch` line per epoch
(wall seconds, train seconds, val and test top-1), then a `summary`: the final test top-1
(the run's own figure), the whole run's wall seconds, and for each target the first epoch
end at which it was reached, by the per-epoch **test** figure (`seconds_to_93`, ...) and by
the per-epoch **validation** figure (`val_seconds_to_93`, ...; validation is what a run may
select on). With `--baseline`, a last `baseline` line: the same recipe as the bare PyTorch loop a
user would write (bench/recipe_baseline.py), for as many epochs and in the precision cnncli chose
(bf16 autocast where the run trained in bf16), beside cnncli's figures.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import cpu_flags, emit, machine

REPO = Path(__file__).resolve().parent.parent
DEFAULT_RECIPE = REPO / "recipes" / "fashion_mnist_best.toml"
TARGETS = (0.93, 0.945, 0.95)
BUDGET_SECONDS = {"avx2": 600, "avx512": 240}  # 94.5% (stretch 95%) within this, by the CPU's class
HALF_TARGET = 0.93  # ... and 93% within half of it
SIMD_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8")


def torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def parse_override(text: str) -> tuple[str, object]:
    key, eq, value = text.partition("=")
    if not eq:
        raise argparse.ArgumentTypeError(f"--set expects KEY=VALUE, got '{text}'")
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value  # a bare string
    return key.strip().replace("-", "_"), parsed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipe", nargs="?", default=str(DEFAULT_RECIPE))
    parser.add_argument("--set", dest="overrides", action="append", type=parse_override, default=[],
                        metavar="KEY=VALUE", help="override a recipe option (repeatable), e.g. epochs=2")
    parser.add_argument("--out", default=None, help="keep the run here (default: a temporary folder)")
    parser.add_argument("--tta", default="none", choices=["none", "flip", "multicrop"],
                        help="also score the run's saved model with test-time augmentation, as "
                             "`cnncli eval RUN --tta MODE` does (its seconds count in the wall clock)")
    parser.add_argument("--baseline", action="store_true",
                        help="then train the bare PyTorch loop of the best recipe (bench/recipe_baseline.py) "
                             "for as many epochs, in the same process and threads, and print both")
    parser.add_argument("--budget", type=float, default=None,
                        help="seconds for the 94.5%% target (default: 600 on an AVX2 CPU, 240 with AVX-512)")
    args = parser.parse_args(argv)
    if not Path(args.recipe).is_file():
        sys.exit(f"recipe not found: {args.recipe} (pass the recipe to time as the first argument)")
    if args.baseline and (Path(args.recipe).resolve() != DEFAULT_RECIPE
                          or set(dict(args.overrides)) - {"epochs", "threads", "seed", "keep", "amp"}):
        sys.exit("--baseline is the bare loop of recipes/fashion_mnist_best.toml: only epochs, threads, seed, "
                 "keep and amp may be overridden beside it")

    start = time.perf_counter()  # before torch is imported by anything below
    info = machine("time_to_accuracy")
    from cnncli import output
    from cnncli.engine.config import build_config
    from cnncli.engine.evaluate import evaluate
    from cnncli.engine.trainer import Trainer

    output.set_quiet(True)
    overhead = 0.0  # seconds spent on the per-epoch test evaluation, not counted
    epochs: list[dict] = []

    class TimedTrainer(Trainer):
        # _write_history runs once per epoch after the checkpoints are written
        def _write_history(self, run_dir, history):
            nonlocal overhead
            super()._write_history(run_dir, history)
            t0 = time.perf_counter()
            wall = t0 - start - overhead  # the end of this epoch, on the training's own clock

            def test_of(model):
                return evaluate(model, self.data.test.images, self.data.test.labels, self.prepare,
                                self.num_classes, self.class_names, self.cfg.eval_batch_size, self.device,
                                amp=self.precision.dtype or False)

            # the run's model: the average with `ema` (what it validates, saves and tests)
            test = test_of(self.ema.module if self.ema is not None else self.model)
            raw = test_of(self.model) if self.ema is not None else None
            overhead += time.perf_counter() - t0
            row = history[-1]
            line = {"epoch": row["epoch"], "wall_seconds": round(wall, 2),
                    "train_seconds": row["seconds"], "train_images_per_second": round(row["images_per_second"] or 0, 1),
                    "val_top1": row.get("ema_val_top1", row["val_top1"]), "test_top1": test.top1,
                    "test_loss": round(test.loss, 4)}
            if raw is not None:
                line.update(raw_val_top1=row["val_top1"], raw_test_top1=raw.top1)
            epochs.append(line)
            emit(bench="time_to_accuracy", kind="epoch", **line)

    with tempfile.TemporaryDirectory(prefix="cnncli-bench-tta-") as tmp:
        overrides = dict(args.overrides)
        overrides.setdefault("out", args.out or str(Path(tmp) / "run"))
        cfg = build_config(args.recipe, overrides)
        trainer = TimedTrainer(cfg, quiet=True)
        result = trainer.fit()
        precision = trainer.precision.name
        tta_top1 = None
        if args.tta != "none":
            from cnncli.engine.eval_run import evaluate_checkpoint

            tta_top1 = evaluate_checkpoint(str(Path(overrides["out"])), data=cfg.data, tta=args.tta,
                                           threads=torch_threads())["top1"]
        total = time.perf_counter() - start - overhead

    def first_reaching(key: str, target: float):
        return next((e["wall_seconds"] for e in epochs if e[key] is not None and e[key] >= target), None)

    def label(t: float) -> str:
        return f"{t * 100:g}".replace(".", "")  # 0.93 -> 93, 0.945 -> 945

    reached = {f"seconds_to_{label(t)}": first_reaching("test_top1", t) for t in TARGETS}
    val_reached = {f"val_seconds_to_{label(t)}": first_reaching("val_top1", t) for t in TARGETS}
    plain = result.test.top1 if result.test else None
    final = tta_top1 if tta_top1 is not None else plain  # the figure the targets are judged on
    flags = cpu_flags()
    import torch

    half = reached[f"seconds_to_{label(HALF_TARGET)}"]
    cpu_class = "avx512" if "avx512f" in flags else "avx2"
    budget = args.budget if args.budget is not None else BUDGET_SECONDS[cpu_class]
    basis = "--budget" if args.budget is not None else f"issue 15's budget for an {cpu_class.upper()} CPU"
    emit(bench="time_to_accuracy", kind="summary", recipe=str(args.recipe), model=cfg.model, epochs=result.epochs,
         overrides={k: v for k, v in args.overrides}, wall_seconds=round(total, 1), final_test_top1=final,
         tta=args.tta, plain_final_test_top1=plain,
         best_epoch_test_top1=max((e["test_top1"] for e in epochs), default=None),
         raw_final_test_top1=result.extra.get("raw_test_top1") if result.extra else None, **reached, **val_reached,
         precision=precision,
         target=f"final test top-1 >= 0.945 within {budget:g} s (stretch 0.95), "
                f">= {HALF_TARGET} within {budget / 2:g} s (per-epoch test figure); budget: {basis}",
         target_met=final is not None and final >= 0.945 and total <= budget,
         stretch_met=final is not None and final >= 0.95 and total <= budget,
         half_target_met=half is not None and half <= budget / 2,
         cpu=info["cpu"], cpu_flags=[f for f in SIMD_FLAGS if f in flags], cores=info["cores"],
         threads=torch.get_num_threads(), load_average_end=[round(v, 2) for v in os.getloadavg()])
    if args.baseline:  # the same epochs, threads, seed and precision as the recipe just timed
        from recipe_baseline import run

        emit(bench="time_to_accuracy", kind="baseline", cnncli_final_test_top1=final, cnncli_tta=args.tta, cnncli_wall_seconds=round(total, 1),
             **run(epochs=result.epochs, seed=cfg.seed, amp="bf16" if precision == "bf16" else "off"),
             load_average_end=[round(v, 2) for v in os.getloadavg()])
    return 0


if __name__ == "__main__":
    sys.exit(main())
