"""Test-time augmentation: the class probabilities averaged over views of each image.

- `flip`: the image and its horizontal flip (2 views);
- `multicrop`: five crops at the network's input size, the centre one and the four corners of
  the image padded on every side by a tenth of its size (5 views, torchvision's `five_crop`);
  the centre crop is the image itself, the corners are it shifted by the padding.

Views are made from the prepared (resized, normalized) batch, so the same code serves `eval`
on a dataset and `predict` on files; the padding is black, as the training shifts pad, in the
normalized units (the value a black pixel prepares to, per channel). The softmax of each view
is averaged; the network-facing result is the log of that average, so that cross-entropy,
top-k and softmax downstream read it as logits (softmax(log p) = p when p sums to 1).

Torch-free at import: `numpy_probabilities` is the ONNX / OpenVINO path (numpy in and out).
"""

from __future__ import annotations

from typing import Any

from cnncli.errors import InputError

MODES = ("none", "flip", "multicrop")
VIEWS = {"none": 1, "flip": 2, "multicrop": 5}


def check_tta(mode: str | None) -> str:
    """The mode as given ('none' for None); anything else is an InputError (exit 2)."""
    name = "none" if mode is None else str(mode).strip().lower()
    if name not in MODES:
        raise InputError(f"unknown --tta '{mode}'; choose one of {', '.join(MODES)}")
    return name


def crop_padding(height: int, width: int) -> int:
    """How far multicrop's corner crops reach outside the image: a tenth of its smaller side."""
    return max(1, min(height, width) // 10)


# ---------------------------------------------------------------------------- torch

def torch_views(x, mode: str, fill) -> list:
    """The views of a prepared batch (N, C, H, W); `fill` (1, C, 1, 1): what black prepares to."""
    import torch

    if mode == "none":
        return [x]
    if mode == "flip":
        return [x, torch.flip(x, dims=(-1,))]
    from torchvision.transforms.v2.functional import five_crop

    n, c, h, w = x.shape
    p = crop_padding(h, w)
    padded = fill.to(x.dtype).expand(n, c, h + 2 * p, w + 2 * p).clone()  # black around, exact inside
    padded[..., p:p + h, p:p + w] = x
    tl, tr, bl, br, centre = five_crop(padded, [h, w])
    return [centre, tl, tr, bl, br]


def black_fill(prepare, device=None):
    """(1, C, 1, 1): a black pixel after `prepare` (uint8 batch -> normalized network input)."""
    import torch

    return prepare(torch.zeros((1, 1, 1, 1), dtype=torch.uint8))[:, :, :1, :1].to(device)


def average_probabilities(forward, x, mode: str, fill):
    """Mean softmax (float32) of `forward` over the views of `x`."""
    import torch

    total = None
    views = torch_views(x, mode, fill)
    for view in views:
        probs = torch.softmax(forward(view).float(), dim=1)
        total = probs if total is None else total + probs
    return total / len(views)


def wrap(model, mode: str, prepare):
    """`model` itself for 'none', else a module whose forward is log(mean softmax over the views)."""
    mode = check_tta(mode)
    if mode == "none":
        return model
    import torch

    class TestTimeAugmented(torch.nn.Module):
        """The network, answering with the log of its softmax averaged over the views."""

        def __init__(self, net):
            super().__init__()
            self.net = net
            self.mode = mode
            self._prepare = prepare
            self._fill = None

        def forward(self, x):
            if self._fill is None or self._fill.device != x.device or self._fill.dtype != x.dtype:
                self._fill = black_fill(self._prepare, x.device).to(x.dtype)
            probs = average_probabilities(self.net, x, self.mode, self._fill)
            return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()

    return TestTimeAugmented(model)


# ---------------------------------------------------------------------------- numpy (ONNX, OpenVINO)

def numpy_views(x, mode: str, fill) -> list:
    """`torch_views` for a float32 numpy batch; `fill` (1, C, 1, 1)."""
    import numpy as np

    if mode == "none":
        return [x]
    if mode == "flip":
        return [x, np.ascontiguousarray(x[..., ::-1])]
    n, c, h, w = x.shape
    p = crop_padding(h, w)
    padded = np.empty((n, c, h + 2 * p, w + 2 * p), dtype=x.dtype)
    padded[...] = fill
    padded[..., p:p + h, p:p + w] = x
    # five_crop's corners on the padded image; its centre crop is the image itself
    return [np.ascontiguousarray(v, dtype=np.float32) for v in (
        x, padded[..., :h, :w], padded[..., :h, -w:], padded[..., -h:, :w], padded[..., -h:, -w:])]


def numpy_probabilities(run, batch, mode: str, input_size, mean, std) -> Any:
    """Mean softmax of `run` (numpy logits) over the views of a prepared numpy batch."""
    import numpy as np

    from cnncli.deploy.preprocess import prepare_arrays, softmax

    c = int(input_size[0])
    fill = prepare_arrays([np.zeros((1, 1, 1), dtype=np.uint8)], (c, 1, 1), mean, std).reshape(1, c, 1, 1)
    views = numpy_views(batch, mode, fill.astype(batch.dtype))
    return sum(softmax(run(v)) for v in views) / len(views)
