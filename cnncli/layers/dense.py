"""Dense layers and friends (seed: "Fully Connected Layers"): dense, dropout, flatten."""

from __future__ import annotations

import torch
from torch import nn

from cnncli.layers.activations import make_activation


class Dense(nn.Module):
    """A fully connected layer: Linear (+ activation) (+ dropout when dropout > 0)."""

    layer_type = "Fully connected"
    atomic = True

    def __init__(self, in_features: int, out_features: int, activation: str | None = None,
                 dropout: float = 0.0, bias: bool = True):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=bias)
        self.act = make_activation(activation)
        self.drop = nn.Dropout(dropout) if dropout > 0 else None
        self.in_features = in_features
        self.out_features = out_features
        self.out_channels = out_features
        self.activation = None if activation in (None, "none", "linear", "identity") else activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.linear(x))
        return x if self.drop is None else self.drop(x)


class Dropout(nn.Dropout):
    """nn.Dropout with the attributes `inspect` reads."""

    layer_type = "Dropout"
    atomic = True


class Flatten(nn.Flatten):
    """nn.Flatten with the attributes `inspect` reads."""

    layer_type = "Flatten"
    atomic = True
