"""Which modules are rows, and what each one is called.

Blocks from `cnncli.layers` declare `layer_type` and `atomic`; torch/timm/torchvision classes
are recognised by the name of any class in their MRO, through the tables below. By default
every container is opened, atomic layers are one row each, and composite blocks (inception
modules, residual units, timm's blocks) are one row each. With `depth=N`, modules are opened
down to depth N (the model's children are depth 1) and whatever is still composite at depth N
becomes one row. An activation module is planned as such: the trace folds it into the row it
directly follows (conv -> ReLU reads as one layer, as in the seed's tables).
"""

from __future__ import annotations

from dataclasses import dataclass

from cnncli.summary.rows import pair_or_none

# Rows that carry no information in a layer table.
SKIP_TYPES = {"Dropout", "Flatten", "Identity"}

# torch / timm / torchvision classes, recognised by the name of any class in their MRO.
_ATOMIC_TYPES = {
    "Conv1d": "Convolution",
    "Conv2d": "Convolution",
    "Conv3d": "Convolution",
    "ConvTranspose2d": "Transposed convolution",
    "Linear": "Fully connected",
    "MaxPool2d": "Max pooling",
    "AvgPool2d": "Average pooling",
    "AdaptiveAvgPool2d": "Adaptive average pooling",
    "AdaptiveMaxPool2d": "Adaptive max pooling",
    "SelectAdaptivePool2d": "Global pooling",
    "BatchNormAct2d": "Batch norm",
    "BatchNorm1d": "Batch norm",
    "BatchNorm2d": "Batch norm",
    "LayerNorm": "Layer norm",
    "LayerNorm2d": "Layer norm",
    "GroupNorm": "Group norm",
    "LocalResponseNorm": "LRN",
    "ConvNormAct": "Convolution",
    "ConvBnAct": "Convolution",
    "ConvNormActAa": "Convolution",
    "BasicConv2d": "Convolution",
    "Conv2dNormActivation": "Convolution",
}
_BLOCK_TYPES = {
    "BasicBlock": "Residual unit",
    "Bottleneck": "Bottleneck unit",
    "SEModule": "SE block",
    "SqueezeExcite": "SE block",
    "SqueezeExcitation": "SE block",
    "InvertedResidual": "Inverted residual",
    "DepthwiseSeparableConv": "Separable convolution",
    "SeparableConv2d": "Separable convolution",
    "EdgeResidual": "Edge residual",
    "Inception": "Inception module",
    "InceptionA": "Inception module",
    "InceptionB": "Inception module",
    "InceptionC": "Inception module",
    "InceptionD": "Inception module",
    "InceptionE": "Inception module",
    "InceptionAux": "Auxiliary classifier",
    "ConvNeXtBlock": "ConvNeXt block",
    "PatchEmbed": "Patch embedding",
}
_ACTIVATIONS = {
    "ReLU": "relu", "ReLU6": "relu6", "LeakyReLU": "leaky_relu", "PReLU": "prelu",
    "ELU": "elu", "SELU": "selu", "CELU": "celu", "GELU": "gelu", "GELUTanh": "gelu",
    "QuickGELU": "gelu", "SiLU": "silu", "Swish": "silu", "Mish": "mish",
    "Sigmoid": "sigmoid", "Tanh": "tanh", "Hardswish": "hard_swish", "HardSwish": "hard_swish",
    "Hardsigmoid": "hard_sigmoid", "HardSigmoid": "hard_sigmoid", "Softmax": "softmax",
    "LogSoftmax": "log_softmax", "Softplus": "softplus",
}
_SKIP_CLASSES = {"Dropout", "Dropout2d", "AlphaDropout", "Identity", "Flatten", "Unflatten",
                 "DropPath", "DropBlock2d"}
_CONTAINERS = {"Sequential", "ModuleList", "ModuleDict"}


def _class_lookup(module, table: dict[str, str]) -> str | None:
    for cls in type(module).__mro__:
        if cls.__name__ in table:
            return table[cls.__name__]
    return None


def _class_in(module, names: set[str]) -> bool:
    return any(cls.__name__ in names for cls in type(module).__mro__)


def activation_of_module(module) -> str | None:
    """'relu' for an nn.ReLU, None for anything that is not an activation module."""
    if getattr(type(module), "layer_type", None) is not None:
        return None
    return _class_lookup(module, _ACTIVATIONS)


def role(module) -> str:
    """skip | activation | atomic | block | container | leaf."""
    layer_type = getattr(type(module), "layer_type", None)
    if isinstance(layer_type, str):
        if layer_type in SKIP_TYPES:
            return "skip"
        return "atomic" if getattr(type(module), "atomic", True) else "block"
    if activation_of_module(module):
        return "activation"
    if _class_in(module, _SKIP_CLASSES):
        return "skip"
    if _class_lookup(module, _ATOMIC_TYPES):
        return "atomic"
    if not any(True for _ in module.children()):
        return "leaf"
    if _class_lookup(module, _BLOCK_TYPES):
        return "block"
    if type(module).__name__ in _CONTAINERS or type(module).__module__.startswith("cnncli."):
        return "container"  # plain containers, and cnncli's helpers that declare no layer_type
    return "block"  # a foreign module with children and its own forward: a block of its own


def layer_type_of(module) -> str:
    """The display name of a module's row."""
    layer_type = getattr(type(module), "layer_type", None)
    if isinstance(layer_type, str):
        return layer_type
    if activation_of_module(module):
        return "Activation"
    name = type(module).__name__
    if name == "SelectAdaptivePool2d":
        kind = {"avg": "average", "max": "max", "avgmax": "average+max"}.get(
            str(getattr(module, "pool_type", "")), str(getattr(module, "pool_type", "")))
        return f"Global {kind} pooling".replace("  ", " ")
    found = _class_lookup(module, _ATOMIC_TYPES) or _class_lookup(module, _BLOCK_TYPES)
    if found is None and name in ("Sequential", "ModuleList"):
        count = len(module)  # a collapsed stage of a backbone
        return f"Stage ({count} block{'s' if count != 1 else ''})"
    if found == "Convolution":
        groups, in_ch = getattr(module, "groups", 1), getattr(module, "in_channels", 0)
        if groups > 1 and groups == in_ch:
            return "Depthwise convolution"
    if found in ("Adaptive average pooling", "Adaptive max pooling"):
        if pair_or_none(getattr(module, "output_size", None)) == [1, 1]:
            return found.replace("Adaptive", "Global")
    return found or name


@dataclass
class Planned:
    path: str
    depth: int
    role: str  # "layer" or "activation"


def plan(model, depth: int | None, open_all: bool = False) -> dict:
    """module -> Planned for every module that may become a row (open_all: every block
    opened down to its atomic layers)."""
    planned: dict = {}
    root_role = role(model)
    if root_role in ("atomic", "leaf", "activation"):
        planned[model] = Planned(type(model).__name__, 0, "layer")
        return planned

    def visit(module, prefix: str, level: int, cap: int | None = None) -> None:
        for name, child in module.named_children():
            if child in planned:  # a module registered twice is one row
                continue
            path = prefix + name
            kind = role(child)
            if kind == "skip":
                continue
            if kind == "activation":
                planned[child] = Planned(path, level, "activation")
            elif kind in ("atomic", "leaf"):
                planned[child] = Planned(path, level, "layer")
            elif not open_all and depth is None and level == 1 and name == "backbone":
                # a model file's backbone runs through forward_features, never its own
                # forward: show it by its stages (stem, blocks.N, ...), the head layer by layer
                visit(child, path + ".", level + 1, cap=level + 2)
            elif not open_all and ((depth is None and kind == "block")
                                   or (depth is not None and level >= depth)
                                   or (cap is not None and level >= cap)):
                planned[child] = Planned(path, level, "layer")
            else:
                visit(child, path + ".", level + 1, cap)

    visit(model, "", 1)
    return planned
