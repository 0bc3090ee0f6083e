"""The hand-built networks: a table of plain data (no torch import, so that `cnncli models
--source hand` answers instantly) and the one function that builds an entry.

Parameter counts are at the default channels and classes; `tests/test_models.py` rebuilds each
network and compares them with torchvision / timm or with the paper's table.
"""

from __future__ import annotations

import importlib
from typing import Any

from cnncli.models.info import (
    GRAY_MEAN,
    GRAY_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    INCEPTION_MEAN,
    INCEPTION_STD,
    ModelInfo,
)


def _hand(name, entry, description, input_size, num_classes, params, mean=None, std=None):
    if mean is None:
        mean, std = (GRAY_MEAN, GRAY_STD) if input_size[0] == 1 else (IMAGENET_MEAN, IMAGENET_STD)
    return ModelInfo(
        name=name,
        source="hand",
        description=description,
        input_size=input_size,
        num_classes=num_classes,
        mean=mean,
        std=std,
        params=params,
        entrypoint=f"cnncli.models.{entry}",
    )


_IMAGENET = (3, 224, 224)

HAND_BUILT: dict[str, ModelInfo] = {
    m.name: m
    for m in [
        _hand("lenet5", "lenet:lenet5", "LeNet-5 (LeCun et al. 1998): tanh, average pooling, C5 120, F6 84",
              (1, 32, 32), 10, 61_706),
        _hand("typical_cnn", "typical_cnn:typical_cnn",
              "The seed's typical CNN for Fashion-MNIST: 64-128-256 filters, 3x3 after a 7x7, dense 128-64",
              (1, 28, 28), 10, 1_413_834),
        _hand("alexnet", "alexnet:alexnet",
              "AlexNet as in the seed's table: 227x227 input, 96-256-384-384-256, LRN, dropout 0.5",
              (3, 227, 227), 1000, 62_378_344),
        _hand("googlenet", "googlenet:googlenet",
              "GoogLeNet (Szegedy et al. 2014, table 1): nine inception modules with real 5x5 branches",
              _IMAGENET, 1000, 6_998_552),
        _hand("vgg16", "vgg:vgg16", "VGG-16 (Simonyan & Zisserman 2014): 13 3x3 convolutions, 3 dense layers",
              _IMAGENET, 1000, 138_357_544),
        _hand("resnet18", "resnet:resnet18", "ResNet-18 (He et al. 2015): residual units of two 3x3 convolutions",
              _IMAGENET, 1000, 11_689_512),
        _hand("resnet34", "resnet:resnet34", "ResNet-34 (He et al. 2015), the seed's fig. 19",
              _IMAGENET, 1000, 21_797_672),
        _hand("resnet50", "resnet:resnet50", "ResNet-50 (He et al. 2015): bottleneck units 1x1-3x3-1x1",
              _IMAGENET, 1000, 25_557_032),
        _hand("resnet101", "resnet:resnet101", "ResNet-101 (He et al. 2015): bottleneck units",
              _IMAGENET, 1000, 44_549_160),
        _hand("resnet152", "resnet:resnet152", "ResNet-152 (He et al. 2015): bottleneck units",
              _IMAGENET, 1000, 60_192_808),
        _hand("se_resnet50", "resnet:se_resnet50",
              "SE-ResNet-50 (Hu et al. 2017): ResNet-50 with an SE block in every unit",
              _IMAGENET, 1000, 28_088_024),
        _hand("xception", "xception:xception",
              "Xception (Chollet 2016): depthwise-separable convolutions with residual links",
              (3, 299, 299), 1000, 22_855_952, INCEPTION_MEAN, INCEPTION_STD),
    ]
}


def create(info: ModelInfo, num_classes: int, in_chans: int, **kwargs: Any):
    """Build a hand-built network from its table entry (fresh weights)."""
    module_name, fn_name = info.entrypoint.split(":")
    fn = getattr(importlib.import_module(module_name), fn_name)
    return fn(num_classes=num_classes, in_chans=in_chans, **kwargs)
