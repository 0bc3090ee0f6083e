"""The seed's "typical CNN" for Fashion-MNIST (HML 2nd ed., chapter 14, and the seed's
"Typical CNN Architecture" good practice): a 7x7 first convolution, then 3x3 convolutions
whose number of filters doubles after each pooling layer, then shrinking dense layers with
dropout. All convolutions 'same' with ReLU; 2x2 max pooling. 1,413,834 parameters, exactly
the Keras model of the book.
"""

from __future__ import annotations

import torch
from torch import nn

from cnncli.layers import ConvLayer, Dense, Dropout, Flatten, MaxPool, Network


class TypicalCNN(Network):
    classifier_name = "out"

    def __init__(self, num_classes: int = 10, in_chans: int = 1, dropout: float = 0.5,
                 input_size: int = 28):
        super().__init__()
        self.conv1 = ConvLayer(in_chans, 64, 7, padding="same")
        self.pool1 = MaxPool(2)
        self.conv2 = ConvLayer(64, 128, 3, padding="same")
        self.conv3 = ConvLayer(128, 128, 3, padding="same")
        self.pool2 = MaxPool(2)
        self.conv4 = ConvLayer(128, 256, 3, padding="same")
        self.conv5 = ConvLayer(256, 256, 3, padding="same")
        self.pool3 = MaxPool(2)
        side = input_size // 2 // 2 // 2  # 28 -> 14 -> 7 -> 3 ('valid' pooling drops the rest)
        self.flatten = Flatten()
        self.fc1 = Dense(256 * side * side, 128, activation="relu")
        self.drop1 = Dropout(dropout)
        self.fc2 = Dense(128, 64, activation="relu")
        self.drop2 = Dropout(dropout)
        self.out = nn.Linear(64, num_classes)
        self.num_features = 256
        self.num_classes = num_classes

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.conv1(x))
        x = self.pool2(self.conv3(self.conv2(x)))
        return self.pool3(self.conv5(self.conv4(x)))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.drop1(self.fc1(self.flatten(x)))
        x = self.drop2(self.fc2(x))
        return x if pre_logits else self.out(x)

    def stages(self) -> list[tuple[str, nn.Module]]:
        return [(n, getattr(self, n)) for n in ("conv1", "conv2", "conv3", "conv4", "conv5", "fc1", "fc2")]


def typical_cnn(num_classes: int = 10, in_chans: int = 1, **kwargs) -> TypicalCNN:
    """The seed's typical CNN for 28x28 images (`input_size=32` for CIFAR-sized images)."""
    return TypicalCNN(num_classes=num_classes, in_chans=in_chans, **kwargs)
