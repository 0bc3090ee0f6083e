"""Local response normalisation (seed: equation 3)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cnncli.errors import InputError


class LocalResponseNorm(nn.Module):
    """The seed's equation (3):

        b_i = a_i * (k + alpha * sum_{j=max(0, i - r//2)}^{min(i + r//2, f_n - 1)} a_j^2) ** -beta

    with r//2 integer division, so the window spans 2*(r//2)+1 channels (r even or odd), and
    alpha multiplying the plain sum. torch's LocalResponseNorm divides alpha by its window
    size, so this wraps F.local_response_norm with alpha rescaled by that size.

    Defaults are the AlexNet paper's (Krizhevsky et al. 2012): k=2, r=n=5, alpha=1e-4,
    beta=0.75. (The seed prints k=0.75, alpha=1e-3, beta=0.75, which are garbled.)
    """

    layer_type = "LRN"
    atomic = True

    def __init__(self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0):
        super().__init__()
        if size < 1:
            raise InputError(f"LRN depth radius must be at least 1, got {size}")
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k
        self.window = 2 * (size // 2) + 1
        self.activation = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.local_response_norm(x, self.window, alpha=self.alpha * self.window, beta=self.beta, k=self.k)

    def extra_repr(self) -> str:
        return f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"
