"""A whitening stem (Jordan 2024, "94% on CIFAR-10 in 3.29 seconds"; Coates & Ng 2011): a
k x k convolution whose filters decorrelate the input's k x k patches, fit to the training
images before the first step and then kept fixed (only its bias learns).

The patches' second-moment matrix (C*k*k values per patch) has eigenvectors v_i and
eigenvalues l_i; the filters are v_i / sqrt(l_i + eps) and their negatives (2*C*k*k
filters), so that after a ReLU each direction passes both signs. The first layer starts
as the best linear encoding of its patches instead of noise (in 10-epoch Fashion-MNIST runs,
with dirac init after it: ~0.2 points of test top-1 over fashion_narrow at 10% fewer
multiply-adds; bench/README.md, "Issue 15's recipe"). `fit_to_data` does the fit;
`cnncli.engine.data_init` calls it for a fresh `train` run (resumed runs and loaded weights
keep theirs: the filters are part of the state dict like any weight).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cnncli.geometry import MAX_WHITEN_PATCH, pair
from cnncli.layers.activations import make_activation
from cnncli.layers.conv import Conv2dSame

_CHUNK_VALUES = 1 << 24  # patch values unfolded at once while fitting (64 MiB of float32)


def whitening_filters(in_channels: int, kernel_size) -> int:
    """How many filters a whitening layer has: both signs of each of its C*k*k directions."""
    kh, kw = pair(kernel_size, "kernel")
    return 2 * in_channels * kh * kw


class WhiteningConv(nn.Module):
    """The whitening stem: a frozen convolution of 2*C*k*k filters (+ its bias) (+ activation)."""

    layer_type = "Whitening convolution"
    atomic = True

    def __init__(self, in_channels: int, kernel_size=3, padding="same", activation: str | None = "relu",
                 eps: float = 5e-4):
        super().__init__()
        kh, kw = pair(kernel_size, "kernel")
        if in_channels * kh * kw > MAX_WHITEN_PATCH:
            raise ValueError(f"a whitening layer's patches have {in_channels}x{kh}x{kw} = "
                             f"{in_channels * kh * kw} values; at most {MAX_WHITEN_PATCH}")
        self.conv = Conv2dSame(in_channels, whitening_filters(in_channels, (kh, kw)), (kh, kw), 1, padding,
                               bias=True)
        self.conv.weight.requires_grad_(False)  # fixed by fit_to_data; the bias learns
        nn.init.zeros_(self.conv.bias)
        self.act = make_activation(activation)
        self.eps = float(eps)
        self.in_channels = in_channels
        self.out_channels = self.conv.out_channels
        self.kernel_size = self.conv.kernel_size
        self.stride = self.conv.stride
        self.padding = self.conv.padding_spec
        self.activation = None if activation in (None, "none", "linear", "identity") else activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(x))

    @torch.no_grad()
    def fit_to_data(self, x: torch.Tensor) -> None:
        """Set the filters from a batch of this layer's inputs (N, C, H, W): every k x k patch
        inside the images counts once; the bias is reset to zero."""
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"whitening expects (N, {self.in_channels}, H, W) inputs, got {tuple(x.shape)}")
        kh, kw = self.kernel_size
        d = self.in_channels * kh * kw
        moment = torch.zeros(d, d, dtype=torch.float64)
        count = 0
        per_image = max(1, d * (x.shape[2] - kh + 1) * (x.shape[3] - kw + 1))
        for chunk in x.split(max(1, _CHUNK_VALUES // per_image)):
            patches = F.unfold(chunk.float(), (kh, kw)).transpose(1, 2).reshape(-1, d)  # (patches, C*kh*kw)
            if len(patches):
                moment += (patches.T @ patches).double().cpu()
                count += len(patches)
        if count == 0:
            raise ValueError(f"no {kh}x{kw} patch fits in inputs of {tuple(x.shape[2:])}")
        values, vectors = torch.linalg.eigh(moment / count)  # ascending
        values, vectors = values.flip(0).clamp_min(0), vectors.flip(1)
        filters = (vectors.T / torch.sqrt(values + self.eps).unsqueeze(1)).reshape(d, self.in_channels, kh, kw)
        weight = self.conv.weight
        weight.copy_(torch.cat([filters, -filters]).to(weight.dtype))
        self.conv.bias.zero_()
