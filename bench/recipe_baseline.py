"""The baseline a user would write for recipes/fashion_mnist_best.toml: a bare PyTorch loop.

torchvision's FashionMNIST as uint8 tensors, the same network as recipes/models/fashion_narrow.toml
in an nn.Sequential (channels-last), AdamW (no decay on biases and batch-norm weights), torch's
OneCycleLR, label smoothing 0.1, per-sample horizontal flips, timm's ModelEmaV3 (0.999, warm-up),
95% of the training images (as the recipe's val_fraction 0.05; the rest unused), then the test
top-1 of the average and with flip TTA. `time_to_accuracy.py --baseline` runs it after the
recipe, in the same process, threads and precision (`--amp bf16`: forward and loss under
`torch.autocast("cpu", torch.bfloat16)`, as cnncli's `--amp auto` trains on a CPU with native
bf16; evaluation too); alone:

    OMP_NUM_THREADS=2 python bench/recipe_baseline.py --epochs 10 [--amp bf16]

`--select F` tries selective backprop (Jiang et al. 2019): from epoch `--select-from` on, each
step scores bs/F images without gradients and trains on the bs with the highest loss (F = 0.5:
half the images of an epoch get a gradient; an epoch costs ~0.75 of a plain one here).
Output: one `epoch` JSON line per epoch (train seconds, test top-1 of the average), then `baseline`.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import emit, torchvision_root

MEAN, STD = 0.2860, 0.3530  # Fashion-MNIST's training images


def network():
    from torch import nn

    def conv(i, o):
        return [nn.Conv2d(i, o, 3, padding=1, bias=False), nn.BatchNorm2d(o), nn.ReLU(inplace=True)]

    return nn.Sequential(*conv(1, 32), nn.MaxPool2d(2), *conv(32, 48), *conv(48, 48), nn.MaxPool2d(2),
                         *conv(48, 96), *conv(96, 96), nn.Flatten(), nn.Dropout(0.1), nn.Linear(96 * 7 * 7, 10))


def run(epochs: int = 10, batch_size: int = 64, lr: float = 0.002, seed: int = 0, select: float = 1.0,
        select_from: int = 2, amp: str = "off") -> dict:
    import contextlib

    import torch
    import torch.nn.functional as F
    from timm.utils.model_ema import ModelEmaV3
    from torchvision.datasets import FashionMNIST

    torch.manual_seed(seed)
    start = time.perf_counter()
    with torchvision_root() as root:
        train, test = FashionMNIST(root, train=True), FashionMNIST(root, train=False)
        x_all, y_all = train.data.unsqueeze(1), train.targets
        x_test, y_test = test.data.unsqueeze(1), test.targets
    gen = torch.Generator().manual_seed(seed)
    keep = torch.randperm(len(y_all), generator=gen)[: int(len(y_all) * 0.95)]
    x_train, y_train = x_all[keep], y_all[keep]

    def autocast():
        return torch.autocast("cpu", dtype=torch.bfloat16) if amp == "bf16" else contextlib.nullcontext()

    def prepare(x):
        return ((x.float() / 255 - MEAN) / STD).contiguous(memory_format=torch.channels_last)

    net = network().to(memory_format=torch.channels_last)
    decay = [p for p in net.parameters() if p.ndim > 1]
    no_decay = [p for p in net.parameters() if p.ndim <= 1]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr)
    n = len(y_train)
    pool = int(round(batch_size / select))
    selecting = [select < 1 and e + 1 >= select_from for e in range(epochs)]
    steps = [n // (pool if s else batch_size) for s in selecting]
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=sum(steps))
    ema = ModelEmaV3(net, decay=0.999, use_warmup=True)

    def top1(model, tta=False):
        model.eval()
        right = 0
        with torch.no_grad(), autocast():
            for i in range(0, len(y_test), 1000):
                x = prepare(x_test[i:i + 1000])
                p = model(x).float().softmax(1)
                if tta:
                    p = p + model(x.flip(3)).float().softmax(1)
                right += int((p.argmax(1) == y_test[i:i + 1000]).sum())
        return right / len(y_test)

    step, train_seconds, measured = 0, 0.0, 0.0
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(n, generator=gen)
        batch = pool if selecting[epoch] else batch_size
        t0 = time.perf_counter()
        for s in range(steps[epoch]):
            ids = order[s * batch:(s + 1) * batch]
            x, y = x_train[ids], y_train[ids]
            flipped = torch.rand(len(ids), generator=gen) < 0.5
            x = prepare(torch.where(flipped.view(-1, 1, 1, 1), x.flip(3), x))
            if selecting[epoch]:
                net.eval()
                with torch.no_grad(), autocast():
                    losses = F.cross_entropy(net(x), y, reduction="none")
                net.train()
                hard = losses.topk(batch_size).indices
                x, y = x[hard], y[hard]
            with autocast():
                loss = F.cross_entropy(net(x), y, label_smoothing=0.1)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
            ema.update(net, step=step)
        seconds = time.perf_counter() - t0
        train_seconds += seconds
        t1 = time.perf_counter()
        test_top1 = top1(ema.module)
        measured += time.perf_counter() - t1  # the per-epoch test is measurement, not training
        emit(bench="recipe_baseline", kind="epoch", epoch=epoch + 1, train_seconds=round(seconds, 2),
             train_images_per_second=round(batch * steps[epoch] / seconds, 1), test_top1=test_top1,
             wall_seconds=round(time.perf_counter() - start - measured, 2))
    final, tta = top1(ema.module), top1(ema.module, tta=True)
    return {"epochs": epochs, "select": select, "precision": amp, "test_top1": final, "flip_tta_test_top1": tta,
            "train_seconds": round(train_seconds, 1), "wall_seconds": round(time.perf_counter() - start - measured, 1)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--select", type=float, default=1.0, help="selective backprop: the fraction trained")
    parser.add_argument("--select-from", type=int, default=2)
    parser.add_argument("--amp", choices=["off", "bf16"], default="off",
                        help="bf16: autocast forward and loss (on a CPU without native bf16 it is emulated, ~10x slower)")
    args = parser.parse_args(argv)
    if not 0 < args.select <= 1:
        sys.exit("--select must be in (0, 1]")
    from benchlib import machine

    machine("recipe_baseline")
    emit(bench="recipe_baseline", kind="baseline",
         **run(args.epochs, seed=args.seed, select=args.select, select_from=args.select_from, amp=args.amp))
    return 0


if __name__ == "__main__":
    sys.exit(main())
