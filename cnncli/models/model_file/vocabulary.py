"""The vocabulary of a model file: layer types, their options and defaults, the keys of each
table. Plain data, torch-free (`LAYER_TYPES` is the source of truth the docs describe)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

NUM_CLASSES = "num_classes"
MAX_REPEAT = 1000

# Activation names accepted by cnncli.layers.make_activation ("none": no activation); a test
# holds this list to cnncli.layers.ACTIVATIONS, which needs torch.
ACTIVATION_NAMES = ("relu", "tanh", "sigmoid", "leaky_relu", "elu", "selu", "gelu", "silu", "swish", "softmax",
                    "none")

# ---------------------------------------------------------------------------------------------
# The vocabulary: layer types, their options and how each changes the shape
# ---------------------------------------------------------------------------------------------

_REQUIRED = object()


@dataclass(frozen=True)
class Option:
    """One key of a layer table: its kind of value and its default (or required)."""

    kind: str  # int, pos_int, size, float, rate, bool, padding, pool_padding, activation, units, init
    default: Any = _REQUIRED

    @property
    def required(self) -> bool:
        return self.default is _REQUIRED


_EXPECTED = {
    "pos_int": "a positive integer",
    "size": "a positive integer or a pair [height, width]",
    "float": "a number",
    "positive_float": "a positive number",
    "rate": "a number in [0, 1)",
    "bool": "true or false",
    "padding": '"valid", "same" or a number of pixels (or a pair)',
    "pool_padding": '"valid", "same" or a number of pixels (or a pair)',
    "activation": "one of " + ", ".join(f'"{a}"' for a in ACTIVATION_NAMES),
    "units": 'a positive integer or "num_classes"',
    "str": "a string",
    "init": 'one of "default", "dirac"',
}


@dataclass(frozen=True)
class LayerType:
    name: str
    options: dict[str, Option]
    takes: str  # "maps", "vector" or "any"
    summary: str

    def signature(self) -> str:
        parts = []
        for key, opt in self.options.items():
            if opt.required:
                parts.append(key)
            elif opt.default is None:
                parts.append(f"{key}=auto")
            else:
                parts.append(f"{key}={json.dumps(opt.default)}")
        return ", ".join(parts) if parts else "no options"


def _t(name, takes, summary, **options) -> LayerType:
    return LayerType(name, options, takes, summary)


LAYER_TYPES: dict[str, LayerType] = {t.name: t for t in [
    _t("conv", "maps", "convolution (+ batch norm) (+ activation)",
       filters=Option("pos_int"), kernel=Option("size"), stride=Option("size", 1),
       padding=Option("padding", "valid"), activation=Option("activation", "relu"),
       batch_norm=Option("bool", False), bias=Option("bool", None), groups=Option("pos_int", 1),
       dilation=Option("pos_int", 1), init=Option("init", "default")),
    _t("maxpool", "maps", "max pooling",
       kernel=Option("size"), stride=Option("size", None), padding=Option("pool_padding", "valid")),
    _t("avgpool", "maps", "average pooling",
       kernel=Option("size"), stride=Option("size", None), padding=Option("pool_padding", "valid")),
    _t("global_avgpool", "maps", "mean of each feature map: (C, H, W) -> (C,)"),
    _t("lrn", "maps", "local response normalization (seed eq. 3)",
       size=Option("pos_int", 5), alpha=Option("float", 1e-4), beta=Option("float", 0.75),
       k=Option("float", 2.0)),
    _t("dropout", "any", "dropout", rate=Option("rate", 0.5)),
    _t("flatten", "any", "feature maps -> one vector"),
    _t("dense", "vector", "fully connected (+ activation) (+ dropout)",
       units=Option("units"), activation=Option("activation", "none"), dropout=Option("rate", 0.0),
       bias=Option("bool", True)),
    _t("inception", "maps", "GoogLeNet inception module (seed fig. 15)",
       c1x1=Option("pos_int"), c3x3_reduce=Option("pos_int"), c3x3=Option("pos_int"),
       c5x5_reduce=Option("pos_int"), c5x5=Option("pos_int"), pool_proj=Option("pos_int")),
    _t("residual", "maps", "ResNet residual unit, two 3x3 convolutions (seed figs. 19-20)",
       filters=Option("pos_int"), stride=Option("pos_int", 1), se=Option("bool", False)),
    _t("bottleneck", "maps", "ResNet bottleneck unit 1x1-3x3-1x1; output filters x expansion",
       filters=Option("pos_int"), stride=Option("pos_int", 1), expansion=Option("pos_int", 4),
       se=Option("bool", False)),
    _t("se", "maps", "squeeze-and-excitation block (seed fig. 23)", reduction=Option("pos_int", 16)),
    _t("separable_conv", "maps", "depthwise-separable convolution (Xception) (+ batch norm) (+ activation)",
       filters=Option("pos_int"), kernel=Option("size", 3), stride=Option("size", 1),
       padding=Option("padding", "same"), activation=Option("activation", "relu"),
       batch_norm=Option("bool", False), bias=Option("bool", False), dilation=Option("pos_int", 1)),
    _t("whiten", "maps", "whitening stem: frozen k x k filters fit to the training patches, 2*C*k*k maps",
       kernel=Option("size", 3), padding=Option("padding", "same"), activation=Option("activation", "relu"),
       eps=Option("positive_float", 5e-4)),
]}

POOLING_TYPES = ("maxpool", "avgpool", "global_avgpool")
COMMON_KEYS = ("type", "name", "repeat")
MODEL_KEYS = ("name", "description", "input", "num_classes", "mean", "std")
BACKBONE_KEYS = ("model", "pretrained", "weights")
TOP_KEYS = ("model", "layers", "backbone", "head")
RESERVED_NAMES = ("backbone",)
