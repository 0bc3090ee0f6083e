"""Training throughput of candidate networks, as ratios to a reference (compute-honest under load).

Each network trains `--steps` steps of batch `--batch` (AdamW, cross-entropy, channels-last
weights as `cnncli train` stores them) on random 1x28x28 inputs with `--threads` threads;
networks alternate round by round, so a change of load hurts them alike, and the best
round of each is kept. The figure to read is `ratio` (images/s over the reference's, the
first network named): on a quiet machine an epoch costs the reference's quiet seconds / ratio.

    python bench/net_throughput.py recipes/models/fashion_fast.toml recipes/models/small_resnet.toml
    python bench/net_throughput.py recipes/models/fashion_narrow.toml recipes/models/fashion_fast.toml --amp bf16 --batch 64
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import emit, machine


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("models", nargs="+", help="model names or TOML model files, the first is the reference; "
                        "NAME:nchw keeps the weights contiguous, NAME:compile runs torch.compile")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--amp", choices=("off", "bf16"), default="off",
                        help="bf16: forward and loss under CPU bf16 autocast, as `cnncli train --amp bf16` trains")
    args = parser.parse_args(argv)

    import torch
    import torch.nn.functional as F

    torch.set_num_threads(args.threads)
    machine("net_throughput")
    from cnncli.models.registry import build_model

    torch.manual_seed(0)
    nets = {}
    for name in args.models:
        source, _, how = name.partition(":")
        model = build_model(source, num_classes=10).module
        if "nchw" not in how:
            model = model.to(memory_format=torch.channels_last)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
        params = sum(p.numel() for p in model.parameters())
        nets[name] = (torch.compile(model) if "compile" in how else model, opt, params)
    x = torch.randn(args.batch, 1, 28, 28)
    y = torch.randint(0, 10, (args.batch,))
    best: dict[str, float] = {}

    if args.amp == "bf16":
        from cnncli.engine.amp import cpu_has_native_bf16

        if not cpu_has_native_bf16():
            print("net_throughput: --amp bf16 on a CPU without native bf16 (no avx512_bf16 or amx_bf16): "
                  "oneDNN emulates it, ~10x slower; these figures do not price a bf16 run", file=sys.stderr)

    def autocast():
        if args.amp == "bf16":
            return torch.autocast("cpu", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def steps(model, opt, n):
        model.train()
        for _ in range(n):
            opt.zero_grad(set_to_none=True)
            with autocast():
                loss = F.cross_entropy(model(x), y)
            loss.backward()
            opt.step()

    for name, (model, opt, _) in nets.items():
        t0 = time.perf_counter()
        steps(model, opt, 3)  # warm-up (and compilation)
        emit(bench="net_throughput", kind="warmup", model=name, seconds=round(time.perf_counter() - t0, 1))
    for r in range(args.rounds):
        for name, (model, opt, _) in nets.items():
            t0 = time.perf_counter()
            steps(model, opt, args.steps)
            ips = args.steps * args.batch / (time.perf_counter() - t0)
            best[name] = max(best.get(name, 0.0), ips)
            emit(bench="net_throughput", kind="round", round=r, model=name, images_per_second=round(ips, 1))
    ref = best[args.models[0]]
    for name, (_, _, params) in nets.items():
        emit(bench="net_throughput", kind="summary", model=name, params=params, threads=args.threads,
             amp=args.amp, batch=args.batch, steps=args.steps, best_images_per_second=round(best[name], 1),
             ratio=round(best[name] / ref, 3))
    return 0


if __name__ == "__main__":
    sys.exit(main())
