"""Batch augmentation: exact behaviour of each operation, determinism, and whole-batch speed."""

from __future__ import annotations

import time

import pytest
import torch

from cnncli.data.augment import BatchAugment, erase, flip, lighting, parse_augment, shift
from cnncli.errors import InputError


def distinct_batch(n=16, c=2, h=9, w=11, dtype=torch.uint8) -> torch.Tensor:
    """Every pixel nonzero and different within an image, so moves and erasures are visible."""
    x = torch.arange(1, c * h * w + 1).view(1, c, h, w).repeat(n, 1, 1, 1)
    x = (x + torch.arange(n).view(n, 1, 1, 1) * 7) % 250 + 1
    return x.to(dtype) if dtype == torch.uint8 else (x.float() / 255).to(dtype)


def translated(image: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """image moved down by dy and right by dx, zeros where nothing moved in (the definition)."""
    _, h, w = image.shape
    out = torch.zeros_like(image)
    out[:, max(dy, 0) : h + min(dy, 0), max(dx, 0) : w + min(dx, 0)] = image[
        :, max(-dy, 0) : h - max(dy, 0), max(-dx, 0) : w - max(dx, 0)
    ]
    return out


def gen(seed=0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.mark.parametrize("dtype", [torch.uint8, torch.float32])
def test_every_operation_keeps_shape_dtype_and_range(dtype):
    batch = distinct_batch(dtype=dtype)
    white = 255 if dtype == torch.uint8 else 1.0
    for spec in ["shift", "flip", "lighting=0.5", "erase=1", "shift,flip,lighting,erase"]:
        out = parse_augment(spec)(batch, gen())
        assert out.shape == batch.shape and out.dtype == dtype, spec
        assert out.min() >= 0 and out.max() <= white, spec


def test_flip_mirrors_exactly_the_chosen_samples():
    batch = distinct_batch(n=64)
    out = flip(batch, 0.5, gen(1))
    mirrored = [torch.equal(o, b.flip(-1)) for o, b in zip(out, batch)]
    unchanged = [torch.equal(o, b) for o, b in zip(out, batch)]
    assert all(m != u for m, u in zip(mirrored, unchanged))  # each sample one or the other
    assert 10 < sum(mirrored) < 54


def test_shift_is_an_exact_translation_with_zero_fill():
    batch = distinct_batch(n=200)
    out = shift(batch, 2, gen(2))
    seen = set()
    for o, b in zip(out, batch):
        matches = [(dy, dx) for dy in range(-2, 3) for dx in range(-2, 3) if torch.equal(o, translated(b, dy, dx))]
        assert len(matches) == 1
        seen.add(matches[0])
    assert len(seen) == 25  # every offset in [-2, 2]^2 occurs


def test_shift_default_is_an_eighth_of_the_side():
    batch = distinct_batch(n=300, c=1, h=32, w=32)
    out = shift(batch, None, gen(3))
    # a 4-pixel shift leaves a zero border of 4 rows or columns on some sample, never 5
    zero_rows = [(o[0].sum(dim=1) == 0).sum().item() for o in out]
    zero_cols = [(o[0].sum(dim=0) == 0).sum().item() for o in out]
    assert max(zero_rows) == 4 and max(zero_cols) == 4


def test_erase_zeroes_one_rectangle_across_all_channels():
    batch = distinct_batch(n=50, c=3, h=20, w=20)
    out = erase(batch, p=1.0, generator=gen(4))
    for o in out:
        zero = (o == 0)
        assert torch.equal(zero[0], zero[1]) and torch.equal(zero[0], zero[2])
        ys, xs = torch.nonzero(zero[0], as_tuple=True)
        assert len(ys) > 0
        box = zero[0, ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
        assert box.all()  # the zeros fill their bounding box: a rectangle
        assert 0.02 * 400 * 0.5 <= len(ys) <= 0.25 * 400 * 1.5
    kept = erase(batch, p=0.0, generator=gen(4))
    assert torch.equal(kept, batch)


def test_lighting_scales_contrast_and_brightness_per_image():
    batch = torch.full((100, 1, 8, 8), 100, dtype=torch.uint8)
    batch[:, :, :4] = 50
    out = lighting(batch, 0.3, gen(5)).float()
    # each image stays two-toned (the jitter is per image, uniform inside it)
    assert all(len(torch.unique(o)) <= 2 for o in out)
    ratios = out.mean(dim=(1, 2, 3)) / 75.0  # contrast keeps the mean; brightness scales it
    assert ratios.min() >= 0.69 and ratios.max() <= 1.31 and ratios.std() > 0.05
    assert torch.equal(lighting(batch, 0.0, gen(5)), batch)


def test_same_generator_seed_gives_the_same_augmentation():
    augment = parse_augment("shift,flip,lighting,erase")
    batch = distinct_batch(n=32)
    a, b = augment(batch, gen(7)), augment(batch, gen(7))
    assert torch.equal(a, b)
    assert not torch.equal(a, augment(batch, gen(8)))
    seeded = parse_augment("flip", generator=gen(9))
    assert not torch.equal(seeded(batch), seeded(batch))  # its own generator advances between calls


def test_parse_augment_names_values_and_errors():
    aug = parse_augment("lighting=0.3, flip ,shift=2")
    assert aug.names == ["shift", "flip", "lighting"]  # fixed order of application
    assert aug.spec == "shift=2,flip,lighting=0.3"
    assert parse_augment(aug.spec).spec == aug.spec
    assert BatchAugment(aug).spec == BatchAugment(aug.spec).spec == aug.spec  # copies and strings too
    assert len(parse_augment("none")) == 0 and not parse_augment("") and parse_augment(None).spec == "none"
    with pytest.raises(InputError) as e:
        parse_augment("shift,rotate")
    assert "unknown augmentation 'rotate'" in str(e.value)
    assert all(name in str(e.value) for name in ("shift", "flip", "lighting", "erase"))
    with pytest.raises(InputError, match="probability must be in"):
        parse_augment("erase=2")
    with pytest.raises(InputError, match="not a number"):
        parse_augment("shift=abc")


def test_identity_when_empty_and_rejects_non_batches():
    batch = distinct_batch()
    assert parse_augment("none")(batch) is batch
    with pytest.raises(InputError, match=r"\(N, C, H, W\)"):
        BatchAugment()(batch[0])


class _CountTorchCalls(torch.overrides.TorchFunctionMode):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.calls += 1
        return func(*args, **(kwargs or {}))


def test_no_python_loop_over_samples():
    # a loop over samples would make the number of torch calls grow with the batch
    augment = parse_augment("shift,flip,lighting,erase")
    counts = []
    for n in (4, 256):
        with _CountTorchCalls() as counter:
            augment(distinct_batch(n=n), gen())
        counts.append(counter.calls)
    assert counts[0] == counts[1]


def test_whole_batches_are_fast():
    augment = parse_augment("shift,flip,lighting,erase")
    batch = torch.randint(0, 256, (4096, 1, 28, 28), dtype=torch.uint8)
    augment(batch[:64], gen())  # warm-up
    start = time.perf_counter()
    out = augment(batch, gen())
    elapsed = time.perf_counter() - start
    assert out.shape == batch.shape
    # about 0.1 s on an idle 2-core machine; the bound leaves room for a busy CI runner
    assert elapsed < 2.0, f"{elapsed:.2f}s for 4096 images"
