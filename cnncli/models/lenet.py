"""LeNet-5 (LeCun et al. 1998, "Gradient-based learning applied to document recognition").

32x32 grey input; C1 6@5x5 -> 28x28, S2 2x2 average pooling -> 14x14, C3 16@5x5 -> 10x10,
S4 -> 5x5, C5 120@5x5 -> 1x1, F6 84, output. tanh throughout, as the seed's "LeNet-5 (1998)".

Two simplifications of the paper, both the usual modern reading:
* C3 connects every S2 map to every C3 map (2,416 parameters); the paper's sparse connection
  table gives 1,516. C1 (156), C5 (48,120) and F6 (10,164) are the paper's numbers.
* S2/S4 are plain average pooling (the paper's subsampling also has a trainable scale and
  bias per map and a squashing function); the output is a Linear layer, not RBF units.
"""

from __future__ import annotations

import torch
from torch import nn

from cnncli.layers import AvgPool, ConvLayer, Dense, Flatten, Network


class LeNet5(Network):
    classifier_name = "out"

    def __init__(self, num_classes: int = 10, in_chans: int = 1):
        super().__init__()
        self.C1 = ConvLayer(in_chans, 6, 5, activation="tanh")
        self.S2 = AvgPool(2, 2)
        self.C3 = ConvLayer(6, 16, 5, activation="tanh")
        self.S4 = AvgPool(2, 2)
        self.C5 = ConvLayer(16, 120, 5, activation="tanh")
        self.flatten = Flatten()
        self.F6 = Dense(120, 84, activation="tanh")
        self.out = nn.Linear(84, num_classes)
        self.num_features = 120
        self.num_classes = num_classes

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.C5(self.S4(self.C3(self.S2(self.C1(x)))))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.F6(self.flatten(x))
        return x if pre_logits else self.out(x)

    def stages(self) -> list[tuple[str, nn.Module]]:
        return [(n, getattr(self, n)) for n in ("C1", "C3", "C5", "F6")]


def lenet5(num_classes: int = 10, in_chans: int = 1, **kwargs) -> LeNet5:
    """LeNet-5 for 32x32 images (61,706 parameters with 10 classes)."""
    return LeNet5(num_classes=num_classes, in_chans=in_chans, **kwargs)
