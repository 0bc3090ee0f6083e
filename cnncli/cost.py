"""What a network, an input or a file will cost in memory, priced before it is allocated.

Every door that builds a network or reads an array whose size comes from a file or a flag
asks here first: parameter bytes from the network built on PyTorch's `meta` device (shapes
only, nothing allocated), activation bytes from the input's shape and the first layer's
arithmetic, pixel bytes of a batch of images from their headers, array bytes of an IDX file
from its header. Anything over the budget is refused with one line that says the cost.

The budget is `CNNCLI_MEMORY_BUDGET` (bytes, or with a K/M/G/T suffix) when set, otherwise
8 GiB or half the machine's memory, whichever is smaller. Light: no torch import at module
level.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Iterable

from cnncli.errors import InputError

GiB = 1 << 30
DEFAULT_BUDGET = 8 * GiB
ENV = "CNNCLI_MEMORY_BUDGET"
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": GiB, "t": 1 << 40}


def budget_bytes() -> int:
    """The most bytes one network, input or file may cost (see the module doc)."""
    text = os.environ.get(ENV, "").strip()
    if text:
        m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?", text.lower())
        if not m:
            raise InputError(f"{ENV}={text!r} is not a size (e.g. 8G, 512M or a number of bytes)")
        return max(1, int(float(m.group(1)) * _UNITS[m.group(2)]))
    return min(DEFAULT_BUDGET, max(GiB, _total_memory() // 2))


def _total_memory() -> int:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return DEFAULT_BUDGET * 2


def human(nbytes: float) -> str:
    """1.5 GiB, 12.0 MiB, 300 B."""
    for unit, size in (("TiB", 1 << 40), ("GiB", GiB), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if nbytes >= size:
            return f"{nbytes / size:.1f} {unit}"
    return f"{int(nbytes)} B"


def check(what: str, nbytes: float) -> None:
    """Refuse `what` (a phrase ending in 'needs') when it costs more than the budget."""
    budget = budget_bytes()
    if nbytes > budget:
        raise InputError(f"{what} {human(nbytes)}, more than the memory budget of {human(budget)} "
                         f"(set {ENV} to allow more)")


# ------------------------------------------------------------------------------ networks
def tensor_bytes(tensors: Iterable) -> int:
    """Bytes of tensors (each shared one once); meta tensors count as what they would be."""
    unique = {id(t): t for t in tensors}.values()
    return sum(t.numel() * t.element_size() for t in unique)


def check_network(module, label: str) -> None:
    """Refuse a network (built on meta) whose weights cost more than the budget, naming the
    part that costs most ("alexnet with num_classes=1000000: the classifier alone needs ...")."""
    total = tensor_bytes([*module.parameters(), *module.buffers()])
    if total <= budget_bytes():
        return
    parts = [(tensor_bytes([*child.parameters(), *child.buffers()]), name)
             for name, child in module.named_children()]
    biggest, name = max(parts, default=(0, ""))
    if name and biggest > budget_bytes():
        check(f"{label}: its part '{name}' alone needs", biggest)
    check(f"{label}: its weights need", total)


def build_priced(build, label: str):
    """Call `build()` under the meta device, refuse it if too big; a meta build that fails
    (a constructor that needs real data) is not a price and passes."""
    import torch

    try:
        with torch.device("meta"):
            module = build()
    except InputError:
        raise
    except (RuntimeError, NotImplementedError, OverflowError, MemoryError) as e:
        # "numel" / "Storage size calculation overflowed": a size past what torch can index
        if "numel" in str(e) or "overflow" in str(e).lower() or isinstance(e, (OverflowError, MemoryError)):
            raise InputError(f"{label}: its layers are too large to build ({_first_line(e)})") from None
        return None
    check_network(module, label)
    return module


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0][:160]


def first_layer_output(module, input_size) -> int:
    """Elements of the first convolution's (or linear layer's) output for one image of `input_size`."""
    from torch import nn

    c, h, w = (int(v) for v in input_size)
    for layer in module.modules():
        if isinstance(layer, nn.Conv2d):
            sh, sw = layer.stride
            return layer.out_channels * math.ceil(h / sh) * math.ceil(w / sw)
        if isinstance(layer, nn.Linear):
            return layer.out_features
    return c * h * w


def check_input(module, input_size, batch: int = 1, label: str = "the input") -> None:
    """Refuse an input shape whose activations cost more than the budget: the input itself
    plus the first layer's output (a lower bound of what one forward pass holds), in float32."""
    c, h, w = (int(v) for v in input_size)
    size = "x".join(str(int(v)) for v in input_size)
    per_image = c * h * w + first_layer_output(module, input_size)
    check(f"{label} {size}" + (f" in batches of {batch}" if batch > 1 else "")
          + " needs at least", per_image * 4 * max(1, batch))


def check_input_shape(input_size, batch: int = 1, label: str = "the input") -> None:
    """The input tensor alone (no network at hand)."""
    c, h, w = (int(v) for v in input_size)
    check(f"{label} {c}x{h}x{w}" + (f" in batches of {batch}" if batch > 1 else "") + " needs",
          c * h * w * 4 * max(1, batch))


# ------------------------------------------------------------------------------ files
def check_pixels(sizes: Iterable[tuple[int, int]], channels: int = 3, label: str = "the images") -> None:
    """A batch of images by their header sizes (width, height), decoded as uint8 then float32."""
    pixels = sum(int(w) * int(h) for w, h in sizes)
    check(f"decoding {label} ({pixels / 1e6:.0f} megapixels at once) needs", pixels * channels * 5)


def check_array(shape, itemsize: int, label: str) -> None:
    """An array a file declares in its header (IDX: images x height x width)."""
    count = math.prod(int(v) for v in shape)
    check(f"{label} declares {'x'.join(str(int(v)) for v in shape)} values, which needs", count * itemsize)
