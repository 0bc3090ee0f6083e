"""Data-dependent initialisation: layers that fit themselves to the training images (a whitening
stem, `cnncli.layers.whiten`) are fit once, before a fresh run's first step.

Any module with a `fit_to_data(x)` method takes part. A seeded sample of training images
(un-augmented, prepared as the network sees them) goes through the network once, in eval
mode and without gradients; each such module is fit on the input it receives, in order (so a
later one sees the fitted output of an earlier one), and the pass stops after the last. A
resumed run, and a run that starts from loaded weights, keep the weights they have.
"""

from __future__ import annotations

import torch

SAMPLE_IMAGES = 2000  # 1.5M 3x3 patches of 28x28 images: the 9x9 moment is exact to ~0.1%
SAMPLE_VALUES = 1 << 24  # at most this many input values (64 MiB of float32): fewer images when large


class _Fitted(Exception):
    """Raised by the last layer's hook: nothing after it needs to run."""


def fittable_layers(model: torch.nn.Module) -> list[tuple[str, torch.nn.Module]]:
    return [(name, m) for name, m in model.named_modules() if callable(getattr(m, "fit_to_data", None))]


def sample_count(image_shape, available: int) -> int:
    """How many images the fit reads: SAMPLE_IMAGES, fewer where each is large, at least one."""
    per_image = max(1, int(torch.Size(image_shape).numel()))
    return max(1, min(available, SAMPLE_IMAGES, SAMPLE_VALUES // per_image))


def fit_to_data(model: torch.nn.Module, x: torch.Tensor) -> list[str]:
    """Fit every `fit_to_data` layer of `model` on the inputs it sees for the network input `x`;
    returns their names (empty: nothing to fit). The model's train/eval mode is restored."""
    layers = fittable_layers(model)
    if not layers:
        return []
    last = layers[-1][1]

    def hook(module, args):
        module.fit_to_data(args[0])
        if module is last:
            raise _Fitted

    handles = [m.register_forward_pre_hook(hook) for _, m in layers]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    except _Fitted:
        pass
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return [name for name, _ in layers]


def _sample_inputs(trainer) -> torch.Tensor:
    """The training images the fit reads, prepared for the network (no augmentation)."""
    split, seed = trainer.data.train, trainer.cfg.seed
    labels = split.labels
    n = sample_count(trainer.input_size, len(labels))
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
    if not getattr(split, "streaming", False):
        return trainer.prepare(split.images[order[:n]])
    # streamed photos: decoded in DataLoader workers, as in training
    from cnncli.engine.stream_feed import StreamFeed

    batch = max(1, min(trainer.cfg.batch_size, n))
    feed = StreamFeed(split, batch, seed, None, trainer.prepare, trainer.model).feed
    feed.start_epoch(order[:n], 0, 0)
    parts = []
    for step in range((n + batch - 1) // batch):
        x, _ = feed.inputs(order[step * batch:(step + 1) * batch], 0, step)
        if x is not None:
            parts.append(x)
    if not parts:
        from cnncli.errors import RuntimeFailure

        raise RuntimeFailure("no training image could be read to fit the whitening layer (every one was skipped)")
    return torch.cat(parts)


def fit_trainer_model(trainer) -> None:
    """For `Trainer`: fit the network's data-fitted layers on a fresh run (not a resumed run,
    nor one whose weights were loaded); records what was fit in the run's metadata."""
    if trainer.resume_dir is not None or trainer.weights_source is not None:
        return
    if not fittable_layers(trainer.model):
        return
    x = _sample_inputs(trainer)
    names = fit_to_data(trainer.model, x)
    trainer.extra_meta["data_init"] = {"layers": names, "images": len(x)}
