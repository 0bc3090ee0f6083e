"""AlexNet exactly as the seed's table (figs. 13-14, from HML; Krizhevsky et al. 2012).

    In   Input            3 (RGB)  227x227
    C1   Convolution      96       55x55   11x11  stride 4  valid  ReLU   (then LRN N1)
    S2   Max pooling      96       27x27   3x3    stride 2  valid
    C3   Convolution      256      27x27   5x5    stride 1  same   ReLU   (then LRN N3)
    S4   Max pooling      256      13x13   3x3    stride 2  valid
    C5   Convolution      384      13x13   3x3    stride 1  same   ReLU
    C6   Convolution      384      13x13   3x3    stride 1  same   ReLU
    C7   Convolution      256      13x13   3x3    stride 1  same   ReLU
    S8   Max pooling      256      6x6     3x3    stride 2  valid
    F9   Fully connected  4096                                     ReLU   (dropout 0.5)
    F10  Fully connected  4096                                     ReLU   (dropout 0.5)
    Out  Fully connected  1000                                     softmax (logits here)

One tower (no two-GPU split), so 62,378,344 parameters. LRN after C1 and C3 with the paper's
k=2, n=5, alpha=1e-4, beta=0.75.
"""

from __future__ import annotations

import torch
from torch import nn

from cnncli.layers import ConvLayer, Dense, Dropout, Flatten, LocalResponseNorm, MaxPool, Network


class AlexNet(Network):
    classifier_name = "out"

    def __init__(self, num_classes: int = 1000, in_chans: int = 3, dropout: float = 0.5):
        super().__init__()
        self.C1 = ConvLayer(in_chans, 96, 11, 4, "valid")
        self.N1 = LocalResponseNorm()
        self.S2 = MaxPool(3, 2, "valid")
        self.C3 = ConvLayer(96, 256, 5, 1, "same")
        self.N3 = LocalResponseNorm()
        self.S4 = MaxPool(3, 2, "valid")
        self.C5 = ConvLayer(256, 384, 3, 1, "same")
        self.C6 = ConvLayer(384, 384, 3, 1, "same")
        self.C7 = ConvLayer(384, 256, 3, 1, "same")
        self.S8 = MaxPool(3, 2, "valid")
        self.flatten = Flatten()
        self.F9 = Dense(256 * 6 * 6, 4096, activation="relu")
        self.D9 = Dropout(dropout)
        self.F10 = Dense(4096, 4096, activation="relu")
        self.D10 = Dropout(dropout)
        self.out = nn.Linear(4096, num_classes)
        self.num_features = 256
        self.num_classes = num_classes

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.S2(self.N1(self.C1(x)))
        x = self.S4(self.N3(self.C3(x)))
        return self.S8(self.C7(self.C6(self.C5(x))))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.D9(self.F9(self.flatten(x)))
        x = self.D10(self.F10(x))
        return x if pre_logits else self.out(x)

    def stages(self) -> list[tuple[str, nn.Module]]:
        # a convolution with the LRN/pooling after it has no other parameters: C1 stands for
        # C1-N1-S2, C3 for C3-N3-S4, C7 for C7-S8
        return [(n, getattr(self, n)) for n in ("C1", "C3", "C5", "C6", "C7", "F9", "F10")]


def alexnet(num_classes: int = 1000, in_chans: int = 3, **kwargs) -> AlexNet:
    """AlexNet for 227x227 images, as the seed's table."""
    return AlexNet(num_classes=num_classes, in_chans=in_chans, **kwargs)
