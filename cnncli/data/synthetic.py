"""`synthetic`: generated images that a network can learn, for tests and offline demos.

Class k of K is a bar at angle k * 180 / K degrees, drawn at a random position with a random
length, thickness, brightness (and, in colour, a random tint, so colour is no clue), over a
random background with Gaussian noise. Only the orientation tells the classes apart: a small
CNN learns it well above chance in a few hundred steps, and a network that ignores spatial
structure does not. Everything comes from one seeded torch.Generator, so the same options
always give the same bytes, and images are drawn in whole batches (no per-sample loop).
"""

from __future__ import annotations

import math

import torch

from cnncli.data.splits import ImageData
from cnncli.errors import InputError

DEFAULTS = {"size": 28, "channels": 1, "classes": 10, "n": 6000, "n_test": None}
_CHUNK = 1024  # images drawn per step; fixed so the output never depends on memory


def _draw(labels: torch.Tensor, size: int, channels: int, classes: int, gen: torch.Generator) -> torch.Tensor:
    n = len(labels)
    u = lambda *shape: torch.rand(*shape, generator=gen)
    angle = labels * math.pi / classes + (u(n) - 0.5) * (math.pi / classes) * 0.3
    scale = size / 28.0
    cx = size / 2 + (u(n) - 0.5) * size * 0.35
    cy = size / 2 + (u(n) - 0.5) * size * 0.35
    length = size * (0.45 + 0.3 * u(n))
    thickness = scale * (1.5 + 1.5 * u(n))
    brightness = 0.55 + 0.45 * u(n)
    background = 0.25 * u(n)
    tint = 0.35 + 0.65 * u(n, channels) if channels > 1 else torch.ones(n, 1, dtype=torch.float32)
    noise = torch.randn(n, channels, size, size, generator=gen) * 0.06

    coords = torch.arange(size, dtype=torch.float32) + 0.5
    x = coords.view(1, 1, size) - cx.view(n, 1, 1)
    y = coords.view(1, size, 1) - cy.view(n, 1, 1)
    cos, sin = angle.cos().view(n, 1, 1), angle.sin().view(n, 1, 1)
    along = x * cos + y * sin  # distance along the bar
    across = (-x * sin + y * cos).abs()  # distance from its axis
    # soft edges (one pixel wide) so thin bars at any angle keep their shape
    bar = (thickness.view(n, 1, 1) / 2 + 0.5 - across).clamp(0, 1) * (
        length.view(n, 1, 1) / 2 + 0.5 - along.abs()
    ).clamp(0, 1)
    image = background.view(n, 1, 1, 1) + (brightness.view(n, 1) * tint).view(n, channels, 1, 1) * bar.unsqueeze(1)
    image = image + noise
    return (image.clamp(0, 1) * 255).round().to(torch.uint8)


def generate(n: int, size: int = 28, channels: int = 1, classes: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` images uint8 (n, channels, size, size) and balanced labels int64 (n,)."""
    gen = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % classes
    labels = labels[torch.randperm(n, generator=gen)]
    images = torch.empty((n, channels, size, size), dtype=torch.uint8)
    for start in range(0, n, _CHUNK):
        images[start : start + _CHUNK] = _draw(labels[start : start + _CHUNK], size, channels, classes, gen)
    return images, labels


def _check(size: int, channels: int, classes: int, n: int) -> None:
    if not 8 <= size <= 512:
        raise InputError(f"synthetic: size must be between 8 and 512, got {size}")
    if channels not in (1, 3):
        raise InputError(f"synthetic: channels must be 1 or 3, got {channels}")
    if not 2 <= classes <= 36:
        raise InputError(f"synthetic: classes must be between 2 and 36, got {classes}")
    if n < classes:
        raise InputError(f"synthetic: n must be at least the number of classes ({classes}), got {n}")


def class_names(classes: int) -> list[str]:
    return [f"bar_{round(k * 180 / classes)}deg" for k in range(classes)]


def load_synthetic(
    size: int = 28, channels: int = 1, classes: int = 10, n: int = 6000, n_test: int | None = None, seed: int = 0
) -> tuple[ImageData, ImageData]:
    """(train, test): `n` training images and `n_test` (default n // 5) test images, drawn independently."""
    size, channels, classes, n = int(size), int(channels), int(classes), int(n)
    _check(size, channels, classes, n)
    n_test = max(classes, n // 5) if n_test is None else int(n_test)
    names = class_names(classes)
    source = f"generated (size={size}, channels={channels}, classes={classes}, n={n}, seed={seed})"
    train_images, train_labels = generate(n, size, channels, classes, seed)
    test_images, test_labels = generate(n_test, size, channels, classes, seed + 1_000_003)
    return (
        ImageData(train_images, train_labels, names, "synthetic", source),
        ImageData(test_images, test_labels, names, "synthetic", source),
    )
