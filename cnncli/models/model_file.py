"""Networks written as TOML files, from the seed's building blocks (`cnncli.layers`).

A model file is either a plain list of layers:

    [model]
    name = "my_cnn"
    description = "what it is for"
    input = [1, 28, 28]            # C, H, W (or "1x28x28")
    num_classes = 10

    [[layers]]
    type = "conv"
    filters = 64
    kernel = 7
    padding = "same"

    [[layers]]
    type = "maxpool"
    kernel = 2

    [[layers]]
    type = "conv"
    filters = 128
    kernel = 3
    padding = "same"
    repeat = 2                     # any layer: N copies in a row

    [[layers]]
    type = "flatten"

    [[layers]]
    type = "dense"
    units = "num_classes"          # the classifier: always the last layer, always written so
    name = "classifier"

(the layers are named by `name`, else by type and a running number: conv1, conv2, maxpool1,
...; a repeated named layer becomes name_1, name_2, ...) or a backbone with a head on top of its
feature maps:

    [model]
    name = "lite0_head"
    num_classes = 10               # input defaults to the backbone's
    [backbone]
    model = "timm/tf_efficientnet_lite0"   # or a hand-built name such as "resnet18"
    pretrained = true              # a request honoured by `finetune` (never loaded here)
    [[head]]
    type = "global_avgpool"
    [[head]]
    type = "dense"
    units = "num_classes"

The classifier is explicit: the last layer of `layers` (or `head`) must be a dense layer with
`units = "num_classes"` and no activation (it outputs logits); nothing is appended silently,
and "num_classes" is allowed nowhere else. That is what `--num-classes` / fine-tuning replaces.

Layer types and their options (defaults after "="; every layer also takes `name` and `repeat`;
a kernel or stride may be a pair [height, width]; `LAYER_TYPES` below is the source of truth):

    conv            filters, kernel, stride=1, padding="valid" ("same" or pixels), activation="relu",
                    batch_norm=false, bias=(not batch_norm), groups=1, dilation=1
    maxpool         kernel, stride=kernel, padding="valid"
    avgpool         kernel, stride=kernel, padding="valid"
    global_avgpool  (C, H, W) -> (C,)
    lrn             size=5, alpha=1e-4, beta=0.75, k=2.0 (the seed's equation 3)
    dropout         rate=0.5
    flatten         (C, H, W) -> (C*H*W,)
    dense           units (or "num_classes": the classifier), activation="none", dropout=0.0, bias=true
    inception       c1x1, c3x3_reduce, c3x3, c5x5_reduce, c5x5, pool_proj
    residual        filters, stride=1, se=false
    bottleneck      filters (the middle width; outputs filters x expansion), stride=1, expansion=4, se=false
    se              reduction=16
    separable_conv  filters, kernel=3, stride=1, padding="same", activation="relu", batch_norm=false,
                    bias=false, dilation=1

Activations: relu, tanh, sigmoid, leaky_relu, elu, selu, gelu, silu, swish, softmax, none.

Everything is checked before anything is built, by arithmetic rather than torch: unknown layer types and
options (with the closest name suggested), missing and mistyped options, and the shapes, by
walking the layer list with (C, H, W) for feature maps and (F,) for vectors, so that a dense
layer after a convolution without flatten, or a size that collapses to zero, is reported with
the layer's index and name. Errors are `InputError` (exit code 2).

A backbone loses its classifier, and whatever else its `forward_features` does not use (a
hand-built network's hidden dense layers, the final conv some timm families keep in their
head), so no dead parameter is counted, trained or saved. Its `stages()` are the backbone's
(its own declaration, or timm's `group_matcher`); the head layers are in no stage: they are
what fine-tuning trains first. `pretrained` and `weights` (relative to the model file) are
requests recorded in `ModelInfo.extra["backbone_weights"]`; building never loads weights
(`finetune`, and `train` through `weights.load_requested_backbone`, do).

The built network (`FileNetwork`, `BackboneWithHead`) has the layers as named children (the
layer's `name`, or type + running number) and the timm-like API of the hand-built networks
(`cnncli.layers.Network`): `forward_features`, `forward_head`, `num_features`,
`get_classifier`, `reset_classifier`, `stages()`. It carries the parsed document as
`cnncli_model_file`, which a checkpoint stores whole, so a trained file network is rebuilt
from the checkpoint alone.
"""

from __future__ import annotations

import copy
import difflib
import functools
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

import torch
from torch import nn

from cnncli.errors import CnnError, InputError
from cnncli.layers import (
    ACTIVATIONS,
    AvgPool,
    BottleneckUnit,
    ConvLayer,
    Dense,
    Dropout,
    Flatten,
    GlobalAvgPool,
    InceptionModule,
    LocalResponseNorm,
    MaxPool,
    Network,
    ResidualUnit,
    SEBlock,
    SeparableConv2d,
    make_activation,
)
from cnncli.models.registry import (
    GRAY_MEAN,
    GRAY_STD,
    IMAGENET_MEAN,
    IMAGENET_STD,
    ModelInfo,
    is_model_file,
)

NUM_CLASSES = "num_classes"
MAX_REPEAT = 1000

# Activation names accepted by cnncli.layers.make_activation ("none": no activation).
ACTIVATION_NAMES = (*ACTIVATIONS, "none")

# ---------------------------------------------------------------------------------------------
# The vocabulary: layer types, their options and how each changes the shape
# ---------------------------------------------------------------------------------------------

_REQUIRED = object()


@dataclass(frozen=True)
class Option:
    """One key of a layer table: its kind of value and its default (or required)."""

    kind: str  # int, pos_int, size, float, rate, bool, padding, pool_padding, activation, units
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
       dilation=Option("pos_int", 1)),
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
]}

POOLING_TYPES = ("maxpool", "avgpool", "global_avgpool")
COMMON_KEYS = ("type", "name", "repeat")
MODEL_KEYS = ("name", "description", "input", "num_classes", "mean", "std")
BACKBONE_KEYS = ("model", "pretrained", "weights")
TOP_KEYS = ("model", "layers", "backbone", "head")
RESERVED_NAMES = ("backbone",)


# ---------------------------------------------------------------------------------------------
# Checked layers and the checked document
# ---------------------------------------------------------------------------------------------


@dataclass
class Layer:
    """One layer after checking: defaults filled in, shapes known."""

    section: str  # "layers" or "head"
    index: int  # 1-based position in the file's list
    copy: int  # 1..repeat
    repeat: int
    name: str
    type: str
    options: dict[str, Any]
    in_shape: tuple[int, ...]
    out_shape: tuple[int, ...] = ()
    is_classifier: bool = False


@dataclass
class ModelPlan:
    """A checked model file: everything needed to build it, nothing built yet."""

    name: str
    description: str
    input_size: tuple[int, int, int]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    layers: list[Layer]
    backbone: dict[str, Any] | None = None
    backbone_shape: tuple[int, ...] | None = None
    source: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.layers[-1].out_shape


# ---------------------------------------------------------------------------------------------
# Reading
# ---------------------------------------------------------------------------------------------


def load_spec(path: str | Path) -> dict[str, Any]:
    """The parsed TOML document of a model file, or one line saying why it cannot be read."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"model file not found: {path}") from None
    except IsADirectoryError:
        raise InputError(f"{path} is a folder, not a model file") from None
    except OSError as e:
        raise InputError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InputError(f"{path}: not a text file (model files are UTF-8 TOML)") from None
    return loads_spec(text, str(path))


def loads_spec(text: str, source: str = "") -> dict[str, Any]:
    """Parse model-file text; a syntax error names the file, line and column."""
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"{_prefix(source)}not valid TOML: {e}") from None
    except RecursionError:  # tomllib recurses once per nested array or inline table
        raise InputError(f"{_prefix(source)}not a model file: its arrays or tables nest too deeply") from None


# ---------------------------------------------------------------------------------------------
# Checking values
# ---------------------------------------------------------------------------------------------


def _show(value: Any) -> str:
    """A value as it is written in TOML, with its kind: '"64" (a string)'."""
    kinds = {bool: "a boolean", int: "an integer", float: "a number", str: "a string",
             list: "an array", dict: "a table"}
    kind = next((k for t, k in kinds.items() if isinstance(value, t)), type(value).__name__)
    try:
        shown = json.dumps(value, default=str)
    except ValueError:
        shown = repr(value)
    if len(shown) > 40:
        shown = shown[:37] + "..."
    return f"{shown} ({kind})"


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return (isinstance(v, (int, float)) and not isinstance(v, bool)) and math.isfinite(v)


def _closest(word: str, known) -> str:
    close = difflib.get_close_matches(str(word), list(known), n=1, cutoff=0.5)
    return f"; did you mean '{close[0]}'?" if close else ""


def _check_value(kind: str, value: Any, where: str, key: str) -> Any:
    ok = True
    if kind == "pos_int":
        ok = _is_int(value) and value >= 1
    elif kind == "size":
        ok = (_is_int(value) and value >= 1) or (
            isinstance(value, list) and len(value) == 2 and all(_is_int(v) and v >= 1 for v in value))
    elif kind == "float":
        ok = _is_number(value)
    elif kind == "rate":
        ok = _is_number(value) and 0 <= value < 1
    elif kind == "bool":
        ok = isinstance(value, bool)
    elif kind in ("padding", "pool_padding"):
        ok = value in ("valid", "same") or (_is_int(value) and value >= 0) or (
            isinstance(value, list) and len(value) == 2 and all(_is_int(v) and v >= 0 for v in value))
    elif kind == "activation":
        ok = value in ACTIVATION_NAMES
        if not ok and isinstance(value, str):
            raise InputError(f"{where}: unknown activation {json.dumps(value)} for '{key}'"
                             f"{_closest(value, ACTIVATION_NAMES)} (use {_EXPECTED[kind]})")
    elif kind == "units":
        ok = (_is_int(value) and value >= 1) or value == NUM_CLASSES
    elif kind == "str":
        ok = isinstance(value, str)
    if not ok:
        raise InputError(f"{where}: '{key}' must be {_EXPECTED[kind]}, got {_show(value)}")
    return value


def _pair(v) -> tuple[int, int]:
    return (v, v) if isinstance(v, int) else (v[0], v[1])


def _check_keys(table: dict, allowed, where: str, what: str) -> None:
    for key in table:
        if key not in allowed:
            raise InputError(f"{where}: unknown key '{key}'{_closest(key, allowed)} "
                             f"({what} takes: {', '.join(allowed)})")


# ---------------------------------------------------------------------------------------------
# Shapes (pure arithmetic, the same as cnncli.layers; tests compare with real forwards)
# ---------------------------------------------------------------------------------------------


def _conv_size(size: int, kernel: int, stride: int, padding, dilation: int = 1) -> int:
    if padding == "same":
        return -(-size // stride)
    return (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


def _spatial(h: int, w: int, kernel, stride, padding, dilation: int = 1,
             where: str = "") -> tuple[int, int]:
    kh, kw = _pair(kernel)
    sh, sw = _pair(stride)
    if padding == "valid":
        ph = pw = 0
    elif padding == "same":
        ph = pw = "same"
    else:
        ph, pw = _pair(padding)
    out_h = _conv_size(h, kh, sh, ph, dilation)
    out_w = _conv_size(w, kw, sw, pw, dilation)
    if out_h < 1 or out_w < 1:
        raise InputError(
            f"{where}: the {h}x{w} maps collapse to {max(out_h, 0)}x{max(out_w, 0)} "
            f"(kernel {kh}x{kw}, stride {sh}x{sw}, padding {json.dumps(padding)}); use a larger "
            f"input, padding = \"same\", or fewer pooling/strided layers before it")
    return out_h, out_w


def _shape_str(shape: tuple[int, ...]) -> str:
    return "x".join(str(s) for s in shape)


def _out_shape(layer: Layer, where: str) -> tuple[int, ...]:
    """The output shape of one layer, or an InputError saying why the input does not fit."""
    kind = LAYER_TYPES[layer.type]
    shape, o = layer.in_shape, layer.options
    if kind.takes == "maps" and len(shape) != 3:
        raise InputError(f"{where}: {layer.type} needs feature maps (C, H, W) but gets a vector of "
                         f"{shape[0]} features; put it before the flatten/global_avgpool/dense layers")
    if kind.takes == "vector" and len(shape) != 1:
        raise InputError(f"{where}: a dense layer needs a vector but gets feature maps "
                         f"{_shape_str(shape)} (CxHxW); add a flatten or global_avgpool layer before it")
    t = layer.type
    if t in ("dropout",):
        return shape
    if t == "flatten":
        return (math.prod(shape),)
    if t == "dense":
        return (o["units"],)
    c, h, w = shape
    if t == "conv":
        if c % o["groups"] or o["filters"] % o["groups"]:
            raise InputError(f"{where}: groups = {o['groups']} must divide both the input channels "
                             f"({c}) and filters ({o['filters']})")
        return (o["filters"], *_spatial(h, w, o["kernel"], o["stride"], o["padding"],
                                        o["dilation"], where))
    if t == "separable_conv":
        return (o["filters"], *_spatial(h, w, o["kernel"], o["stride"], o["padding"],
                                        o["dilation"], where))
    if t in ("maxpool", "avgpool"):
        stride = o["stride"] if o["stride"] is not None else o["kernel"]
        if not isinstance(o["padding"], str):
            kh, kw = _pair(o["kernel"])
            ph, pw = _pair(o["padding"])
            if ph > kh // 2 or pw > kw // 2:
                raise InputError(f"{where}: padding {json.dumps(o['padding'])} must be at most half "
                                 f"the kernel {json.dumps(o['kernel'])}")
        return (c, *_spatial(h, w, o["kernel"], stride, o["padding"], 1, where))
    if t == "global_avgpool":
        return (c,)
    if t in ("lrn", "se"):
        return shape
    if t == "inception":
        return (o["c1x1"] + o["c3x3"] + o["c5x5"] + o["pool_proj"], h, w)
    if t == "residual":
        # 3x3, padding 1: ceil(size / stride); never collapses
        return (o["filters"], *_spatial(h, w, 3, o["stride"], 1, 1, where))
    if t == "bottleneck":
        return (o["filters"] * o["expansion"], *_spatial(h, w, 3, o["stride"], 1, 1, where))
    raise AssertionError(t)  # pragma: no cover - every type is handled above


# ---------------------------------------------------------------------------------------------
# Checking a whole document
# ---------------------------------------------------------------------------------------------


def _prefix(source: str) -> str:
    return f"{source}: " if source else ""


def _layer_where(source: str, section: str, index: int, table: dict, copy: int = 1, repeat: int = 1) -> str:
    what = "layer" if section == "layers" else "head layer"
    where = f"{_prefix(source)}{what} {index}"
    details = []
    name = table.get("name") if isinstance(table, dict) else None
    if isinstance(name, str):
        details.append(f"'{name}'")
    kind = table.get("type") if isinstance(table, dict) else None
    if isinstance(kind, str):
        details.append(kind)
    if repeat > 1:
        details.append(f"copy {copy} of {repeat}")
    return where + (f" ({', '.join(details)})" if details else "")


def parse_input_size(value: Any, where: str) -> tuple[int, int, int]:
    """[C, H, W] or "CxHxW" -> (C, H, W), every number positive."""
    parts = value
    if isinstance(value, str):
        parts = value.lower().replace("×", "x").split("x")
        try:
            parts = [int(p) for p in parts]
        except ValueError:
            parts = None
    if not (isinstance(parts, list) and len(parts) == 3 and all(_is_int(p) and p >= 1 for p in parts)):
        raise InputError(f"{where}: 'input' must be [C, H, W] or \"CxHxW\" with positive numbers "
                         f"(e.g. [1, 28, 28] or \"1x28x28\"), got {_show(value)}")
    return tuple(parts)  # type: ignore[return-value]


def _check_layer_table(table: Any, source: str, section: str, index: int) -> tuple[LayerType, dict, int]:
    where = _layer_where(source, section, index, table)
    if not isinstance(table, dict):
        raise InputError(f"{where}: must be a table ([[{section}]]), got {_show(table)}")
    if "type" not in table:
        raise InputError(f"{where}: missing 'type' (one of: {', '.join(LAYER_TYPES)})")
    kind_name = table["type"]
    if not isinstance(kind_name, str) or kind_name not in LAYER_TYPES:
        hint = _closest(kind_name, LAYER_TYPES) if isinstance(kind_name, str) else ""
        raise InputError(f"{where}: unknown layer type {json.dumps(kind_name, default=str)}{hint} "
                         f"(valid types: {', '.join(LAYER_TYPES)})")
    kind = LAYER_TYPES[kind_name]
    allowed = list(COMMON_KEYS) + list(kind.options)
    for key in table:
        if key not in allowed:
            raise InputError(f"{where}: unknown option '{key}'{_closest(key, allowed)} "
                             f"({kind_name} takes: {kind.signature()}; and name, repeat)")
    options = {}
    for key, opt in kind.options.items():
        if key in table:
            options[key] = _check_value(opt.kind, table[key], where, key)
        elif opt.required:
            raise InputError(f"{where}: missing option '{key}' ({kind_name} takes: {kind.signature()})")
        else:
            options[key] = opt.default
    if "name" in table:
        name = table["name"]
        if not isinstance(name, str) or not name or "." in name or name.strip() != name:
            raise InputError(f"{where}: 'name' must be a non-empty string without dots or spaces "
                             f"at the ends, got {_show(name)}")
        if name in RESERVED_NAMES:
            raise InputError(f"{where}: the name '{name}' is reserved; choose another")
    repeat = table.get("repeat", 1)
    if not (_is_int(repeat) and 1 <= repeat <= MAX_REPEAT):
        raise InputError(f"{where}: 'repeat' must be an integer from 1 to {MAX_REPEAT}, got {_show(repeat)}")
    return kind, options, repeat


def _check_layers(tables: Any, source: str, section: str, in_shape: tuple[int, ...]) -> list[Layer]:
    where = f"{_prefix(source)}[[{section}]]"
    if not isinstance(tables, list) or not tables:
        raise InputError(f"{where}: must be a non-empty list of layer tables, ending with the classifier "
                         f"(type = \"dense\", units = \"num_classes\")")
    layers: list[Layer] = []
    counters: dict[str, int] = {}
    # automatic names (type + running number) step over the names the file gives itself
    given = {t["name"] for t in tables if isinstance(t, dict) and isinstance(t.get("name"), str)}
    shape = in_shape
    for index, table in enumerate(tables, start=1):
        kind, options, repeat = _check_layer_table(table, source, section, index)
        for copy_no in range(1, repeat + 1):
            if "name" in table:
                name = table["name"] if repeat == 1 else f"{table['name']}_{copy_no}"
            else:
                name = ""
                while not name or name in given:
                    counters[kind.name] = counters.get(kind.name, 0) + 1
                    name = f"{kind.name}{counters[kind.name]}"
            layer = Layer(section, index, copy_no, repeat, name, kind.name, dict(options), shape)
            where_copy = _layer_where(source, section, index, table, copy_no, repeat)
            layer.out_shape = _out_shape(layer, where_copy)
            shape = layer.out_shape
            layers.append(layer)
    # the classifier: explicit, last, and the only place "num_classes" may appear
    last = layers[-1]
    last_where = _layer_where(source, section, last.index, tables[last.index - 1], last.copy, last.repeat)
    if last.type != "dense" or last.options.get("units") != NUM_CLASSES:
        raise InputError(f"{last_where}: the last layer must be the classifier: type = \"dense\", "
                         f"units = \"num_classes\" (add it after this layer)")
    for layer in layers[:-1]:
        if layer.options.get("units") == NUM_CLASSES:
            w = _layer_where(source, section, layer.index, tables[layer.index - 1], layer.copy, layer.repeat)
            raise InputError(f"{w}: units = \"num_classes\" marks the classifier, which must be the last "
                             f"layer only; give this dense layer a number of units")
    if last.options["activation"] != "none" or last.options["dropout"] != 0:
        raise InputError(f"{last_where}: the classifier outputs logits: remove its activation and "
                         f"dropout (the loss applies softmax itself)")
    last.is_classifier = True
    names: dict[str, Layer] = {}
    for layer in layers:
        if layer.name in names:
            w = _layer_where(source, section, layer.index, tables[layer.index - 1], layer.copy, layer.repeat)
            raise InputError(f"{w}: the name '{layer.name}' is already used by layer "
                             f"{names[layer.name].index}; layer names must be unique")
        names[layer.name] = layer
    return layers


def _resolve_units(layers: list[Layer], num_classes: int) -> None:
    for layer in layers:
        if layer.is_classifier:
            layer.options["units"] = num_classes
            layer.out_shape = (num_classes,)


def _default_norm(channels: int, backbone_info: ModelInfo | None):
    if backbone_info is not None and len(backbone_info.mean) == channels:
        return tuple(backbone_info.mean), tuple(backbone_info.std)
    if channels == 1:
        return GRAY_MEAN, GRAY_STD
    if channels == 3:
        return IMAGENET_MEAN, IMAGENET_STD
    return (0.5,) * channels, (0.5,) * channels


def _check_backbone(table: Any, source: str) -> tuple[dict[str, Any], ModelInfo]:
    from cnncli.models.registry import get_model_info

    where = f"{_prefix(source)}[backbone]"
    if not isinstance(table, dict):
        raise InputError(f"{where}: must be a table with 'model' (and pretrained, weights)")
    _check_keys(table, BACKBONE_KEYS, where, "[backbone]")
    if "model" not in table:
        raise InputError(f"{where}: missing 'model' (a hand-built name such as \"resnet18\" or "
                         f"\"timm/<name>\")")
    name = _check_value("str", table["model"], where, "model")
    if is_model_file(name):
        raise InputError(f"{where}: a backbone is a hand-built network or timm/<name>, not another "
                         f"model file ({name})")
    try:
        info = get_model_info(name)
    except InputError as e:
        raise InputError(f"{where}: {e}") from None
    pretrained = _check_value("bool", table.get("pretrained", False), where, "pretrained")
    weights = table.get("weights")
    if weights is not None:
        _check_value("str", weights, where, "weights")
        if is_model_file(source) and not Path(weights).is_absolute():
            weights = str(Path(source).parent / weights)  # relative to the model file, as usual
    return {"model": name, "pretrained": pretrained, "weights": weights}, info


def check_spec(spec: Any, source: str = "", num_classes: int | None = None,
               in_chans: int | None = None) -> ModelPlan:
    """Check a parsed model file completely; return the plan to build it. A plain layer list is
    checked by arithmetic; a backbone's feature-map shape comes from a build on the meta device."""
    pre = _prefix(source)
    if not isinstance(spec, dict):
        raise InputError(f"{pre}a model file is a TOML document with a [model] table")
    _check_keys(spec, TOP_KEYS, f"{pre}top level", "a model file")
    model = spec.get("model")
    if not isinstance(model, dict):
        raise InputError(f"{pre}missing the [model] table (name, description, input, num_classes)")
    where = f"{pre}[model]"
    _check_keys(model, MODEL_KEYS, where, "[model]")
    has_layers, has_backbone = "layers" in spec, "backbone" in spec
    if has_layers == has_backbone:
        raise InputError(f"{pre}a model file has either [[layers]] or a [backbone] with [[head]] layers"
                         + (", not both" if has_layers else ""))
    if has_backbone and "head" not in spec:
        raise InputError(f"{pre}a [backbone] needs [[head]] layers on top, ending with the classifier "
                         f"(type = \"dense\", units = \"num_classes\")")
    if has_layers and "head" in spec:
        raise InputError(f"{pre}[[head]] goes with a [backbone]; without one, put every layer in [[layers]]")

    name = _check_value("str", model.get("name", Path(source).stem if source else "model_file"), where, "name")
    description = _check_value("str", model.get("description", ""), where, "description")
    if "num_classes" not in model:
        raise InputError(f"{where}: missing 'num_classes' (the number of classes of the classifier)")
    classes = model["num_classes"]
    if not (_is_int(classes) and classes >= 1):
        raise InputError(f"{where}: 'num_classes' must be a positive integer, got {_show(classes)}")
    if num_classes is not None:
        classes = num_classes
    if not (_is_int(classes) and classes >= 1):
        raise InputError(f"number of classes must be a positive integer, got {classes!r}")

    backbone, backbone_info = None, None
    if has_backbone:
        backbone, backbone_info = _check_backbone(spec["backbone"], source)
    if "input" in model:
        input_size = parse_input_size(model["input"], where)
    elif backbone_info is not None:
        input_size = tuple(backbone_info.input_size)
    else:
        raise InputError(f"{where}: missing 'input' (the image shape [C, H, W], e.g. [1, 28, 28])")
    if in_chans is not None:
        if not (_is_int(in_chans) and in_chans >= 1):
            raise InputError(f"input channels must be a positive integer, got {in_chans!r}")
        input_size = (in_chans, *input_size[1:])

    mean, std = _default_norm(input_size[0], backbone_info)
    for key in ("mean", "std"):
        if key in model:
            value = model[key]
            if not (isinstance(value, list) and len(value) == input_size[0] and all(_is_number(v) for v in value)
                    and (key == "mean" or all(v > 0 for v in value))):
                raise InputError(f"{where}: '{key}' must be a list of {input_size[0]} numbers (one per "
                                 f"input channel{', positive' if key == 'std' else ''}), got {_show(value)}")
            if key == "mean":
                mean = tuple(float(v) for v in value)
            else:
                std = tuple(float(v) for v in value)

    backbone_shape = None
    if backbone is not None:
        backbone_shape = backbone_feature_shape(backbone["model"], input_size, source)
        layers = _check_layers(spec["head"], source, "head", backbone_shape)
    else:
        layers = _check_layers(spec["layers"], source, "layers", input_size)
    _resolve_units(layers, classes)
    extra: dict[str, Any] = {"path": source}
    if backbone is not None:
        # For `finetune`: what the file asks for; building never loads weights (a checkpoint
        # rebuild gets them from the checkpoint, finetune from its weight sources).
        extra["backbone_weights"] = dict(backbone)
    return ModelPlan(name=name, description=description, input_size=input_size, num_classes=classes,
                     mean=mean, std=std, layers=layers, backbone=backbone, backbone_shape=backbone_shape,
                     source=source, extra=extra)


@functools.lru_cache(maxsize=32)
def _probe_backbone(model_name: str, input_size: tuple[int, int, int]) -> tuple[tuple[int, ...], frozenset[str]]:
    """(feature-map shape, names of parameters forward_features never uses) of a backbone, from a
    build and a forward/backward on the meta device: shapes only, no memory, no weights."""
    from cnncli.models.registry import create_model

    # gradients are needed even when a caller runs under no_grad or inference_mode
    with torch.inference_mode(False), torch.enable_grad():
        backbone = create_model(model_name, in_chans=input_size[0], device="meta").eval()
        if hasattr(backbone, "reset_classifier"):
            backbone.reset_classifier(0)
        named = [(n, p) for n, p in backbone.named_parameters() if p.requires_grad]
        out = backbone.forward_features(torch.empty(1, *input_size, device="meta"))
        grads = torch.autograd.grad(out.sum(), [p for _, p in named], allow_unused=True) if named else []
    unused = frozenset(n for (n, _), g in zip(named, grads) if g is None)
    return tuple(out.shape[1:]), unused


def backbone_feature_shape(model_name: str, input_size: tuple[int, int, int], source: str = "") -> tuple[int, ...]:
    """The shape of a backbone's `forward_features` output for one image (built on the meta
    device: no memory, no weights)."""
    try:
        return _probe_backbone(model_name, tuple(input_size))[0]
    except CnnError:
        raise
    except (RuntimeError, ValueError, AssertionError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise InputError(f"{_prefix(source)}[backbone] {model_name} does not take a "
                         f"{_shape_str(input_size)} input ({first}); change [model] input") from None


# ---------------------------------------------------------------------------------------------
# Information and building
# ---------------------------------------------------------------------------------------------


def _info(plan: ModelPlan, params: int | None = None) -> ModelInfo:
    return ModelInfo(name=plan.name, source="file", description=plan.description,
                     input_size=plan.input_size, num_classes=plan.num_classes, mean=plan.mean,
                     std=plan.std, params=params, extra=dict(plan.extra))


def model_file_info(path: str | Path) -> ModelInfo:
    """Describe a model file without building it (the whole file is checked)."""
    return _info(check_spec(load_spec(path), source=str(path)))


def create_model_from_file(path: str | Path, num_classes: int | None = None, in_chans: int | None = None):
    """Build the network of a model file; returns (module, ModelInfo)."""
    return create_model_from_spec(load_spec(path), num_classes=num_classes, in_chans=in_chans,
                                  source=str(path))


def create_model_from_spec(spec: dict[str, Any], num_classes: int | None = None, in_chans: int | None = None,
                           source: str = ""):
    """Build a network from a parsed model file (the document a checkpoint stores); returns
    (module, ModelInfo). `source` names the file in error messages."""
    from cnncli.models.registry import count_params

    plan = check_spec(spec, source=source, num_classes=num_classes, in_chans=in_chans)
    model = build(plan)
    model.cnncli_model_file = copy.deepcopy(spec)  # what a checkpoint stores whole
    return model, _info(plan, count_params(model))


def build(plan: ModelPlan) -> Network:
    """The nn.Module of a checked plan (fresh weights; nothing is loaded)."""
    layers = [(layer.name, make_layer(layer)) for layer in plan.layers]
    if plan.backbone is None:
        return FileNetwork(plan, layers)
    from cnncli.models.registry import create_model

    backbone = create_model(plan.backbone["model"], in_chans=plan.input_size[0])
    _, unused = _probe_backbone(plan.backbone["model"], plan.input_size)
    return BackboneWithHead(plan, _without_unused(backbone, unused), layers)


def make_layer(layer: Layer) -> nn.Module:
    """One checked layer as a block of cnncli.layers (the classifier as a plain nn.Linear,
    as in the hand-built networks and timm)."""
    o, t, shape = layer.options, layer.type, layer.in_shape
    act = None if o.get("activation") == "none" else o.get("activation")
    if t == "conv":
        return ConvLayer(shape[0], o["filters"], _arg(o["kernel"]), _arg(o["stride"]), _arg(o["padding"]),
                         activation=act, batch_norm=o["batch_norm"], bias=o["bias"], groups=o["groups"],
                         dilation=o["dilation"])
    if t == "separable_conv":
        return SeparableConvLayer(shape[0], o["filters"], _arg(o["kernel"]), _arg(o["stride"]),
                                  _arg(o["padding"]), activation=act, batch_norm=o["batch_norm"],
                                  bias=o["bias"], dilation=o["dilation"])
    if t in ("maxpool", "avgpool"):
        pool = MaxPool if t == "maxpool" else AvgPool
        stride = None if o["stride"] is None else _arg(o["stride"])
        return pool(_arg(o["kernel"]), stride, _arg(o["padding"]))
    if t == "global_avgpool":
        return GlobalAvgPool()
    if t == "lrn":
        return LocalResponseNorm(o["size"], o["alpha"], o["beta"], o["k"])
    if t == "dropout":
        return Dropout(o["rate"])
    if t == "flatten":
        return Flatten()
    if t == "dense":
        if layer.is_classifier:
            return nn.Linear(shape[0], o["units"], bias=o["bias"])
        return Dense(shape[0], o["units"], activation=act, dropout=o["dropout"], bias=o["bias"])
    if t == "inception":
        return InceptionModule(shape[0], o["c1x1"], o["c3x3_reduce"], o["c3x3"], o["c5x5_reduce"],
                               o["c5x5"], o["pool_proj"])
    if t == "residual":
        return ResidualUnit(shape[0], o["filters"], o["stride"], se=o["se"])
    if t == "bottleneck":
        return BottleneckUnit(shape[0], o["filters"], o["stride"], expansion=o["expansion"], se=o["se"])
    if t == "se":
        return SEBlock(shape[0], o["reduction"])
    raise AssertionError(t)  # pragma: no cover - check_spec knows every type


def _arg(value):
    """TOML arrays become tuples (kernel = [1, 7]); strings and ints pass through."""
    return tuple(value) if isinstance(value, list) else value


class SeparableConvLayer(SeparableConv2d):
    """Xception's separable convolution followed, as a conv layer of a model file is, by an
    optional batch norm and an activation (one row in `inspect`)."""

    def __init__(self, in_channels, out_channels, kernel_size=3, stride=1, padding="same",
                 activation=None, batch_norm=False, bias=False, dilation=1):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, bias=bias, dilation=dilation)
        self.bn = nn.BatchNorm2d(out_channels) if batch_norm else None
        self.act = make_activation(activation)
        self.activation = activation
        self.batch_norm = batch_norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = super().forward(x)
        if self.bn is not None:
            x = self.bn(x)
        return self.act(x)


def _stages_from_groups(groups: list[tuple[str, list[nn.Module]]]) -> list[tuple[str, nn.Module]]:
    """(name, modules) groups -> stages, leaving out groups without parameters (pooling,
    flatten, dropout: nothing to freeze or unfreeze)."""
    stages = []
    for name, modules in groups:
        if any(True for m in modules for _ in m.parameters()):
            stages.append((name, modules[0] if len(modules) == 1 else nn.Sequential(*modules)))
    return stages


def _group_name(names: list[str]) -> str:
    return names[0] if len(names) == 1 else f"{names[0]}..{names[-1]}"


class FileNetwork(Network):
    """A plain layer list. The layers are children named as in the file; `forward_features`
    runs them while they produce feature maps (so `num_features` is the channel count of the
    last maps, as in timm), `forward_head` runs the rest, the classifier last."""

    def __init__(self, plan: ModelPlan, layers: list[tuple[str, nn.Module]]):
        super().__init__()
        for name, module in layers:
            self.add_module(name, module)
        specs = plan.layers
        n_features = 0
        while n_features < len(specs) and len(specs[n_features].out_shape) == 3:
            n_features += 1
        self._feature_names = [layer.name for layer in specs[:n_features]]
        self._head_names = [layer.name for layer in specs[n_features:-1]]
        self.classifier_name = specs[-1].name
        self.num_features = specs[n_features - 1].out_shape[0] if n_features else plan.input_size[0]
        self.num_classes = plan.num_classes
        # natural stages: a group ends after each pooling layer, and a layer that shrinks the
        # maps itself (a strided convolution or residual unit) starts a new one
        self._stage_names: list[list[str]] = [[]]
        for layer in specs[:-1]:
            shrinks = len(layer.out_shape) == 3 and layer.out_shape[1:] != layer.in_shape[1:]
            if shrinks and layer.type not in POOLING_TYPES and self._stage_names[-1]:
                self._stage_names.append([])
            self._stage_names[-1].append(layer.name)
            if layer.type in POOLING_TYPES:
                self._stage_names.append([])

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        for name in self._feature_names:
            x = self._modules[name](x)
        return x

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        for name in self._head_names:
            x = self._modules[name](x)
        return x if pre_logits else self.get_classifier()(x)

    def stages(self) -> list[tuple[str, nn.Module]]:
        return _stages_from_groups([(_group_name(names), [self._modules[n] for n in names])
                                    for names in self._stage_names if names])


class BackboneWithHead(Network):
    """A backbone (hand-built or timm) without its classifier, and head layers from the file on
    top of its feature maps. `stages()` are the backbone's (the base); the head layers are not
    in any stage: they are the part that fine-tuning trains first."""

    def __init__(self, plan: ModelPlan, backbone: nn.Module, layers: list[tuple[str, nn.Module]]):
        super().__init__()
        self.backbone = backbone
        for name, module in layers:
            self.add_module(name, module)
        self._head_names = [name for name, _ in layers[:-1]]
        self.classifier_name = layers[-1][0]
        self.num_features = backbone.num_features
        self.num_classes = plan.num_classes
        self.backbone_name = plan.backbone["model"]

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.backbone.forward_features(x)

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        for name in self._head_names:
            x = self._modules[name](x)
        return x if pre_logits else self.get_classifier()(x)

    def stages(self) -> list[tuple[str, nn.Module]]:
        if callable(getattr(self.backbone, "stages", None)):  # a hand-built network declares them
            groups = [(f"backbone.{name}", [m]) for name, m in self.backbone.stages()]
        else:  # timm: the model's own group matcher, never name guessing
            groups = [(f"backbone.{name}", modules) for name, modules in _timm_groups(self.backbone)]
        return _stages_from_groups(groups)


def _timm_groups(model: nn.Module) -> list[tuple[str, list[nn.Module]]]:
    """timm's coarse parameter groups (stem, each block stage, the final conv) as modules:
    for each group, the largest modules whose parameters all belong to it."""
    from timm.models import group_parameters

    matcher = getattr(model, "group_matcher", None)
    if matcher is None:
        return [("all", [model])]
    groups = []
    for params in group_parameters(model, matcher(coarse=True)).values():
        members = set(params)
        chosen: list[tuple[str, nn.Module]] = []
        for name, module in model.named_modules():
            if not name or any(name.startswith(c + ".") for c, _ in chosen):
                continue
            own = [f"{name}.{p}" for p, _ in module.named_parameters()]
            if own and all(p in members for p in own):
                chosen.append((name, module))
        # parameters of the model itself (a ViT's cls_token, pos_embed) in a holder sharing them
        loose = [p for p in params if "." not in p]
        if loose:
            holder = nn.Module()
            for p in loose:
                holder.register_parameter(p, getattr(model, p))
            chosen.insert(0, ("+".join(loose), holder))
        if chosen:
            groups.append(("+".join(n for n, _ in chosen), [m for _, m in chosen]))
    return groups


def _without_unused(backbone: nn.Module, unused: frozenset[str]) -> nn.Module:
    """Replace the backbone's modules that `forward_features` never uses (its own head: the
    classifier's hidden layers, timm's conv_head of some families) by identities, so that no
    dead parameter is counted, trained, saved or trips DistributedDataParallel."""
    if hasattr(backbone, "reset_classifier"):
        backbone.reset_classifier(0)
    for name, module in list(backbone.named_modules()):
        if not name:
            continue
        params = [f"{name}.{p}" for p, _ in module.named_parameters()]
        if params and all(p in unused for p in params):
            try:
                backbone.get_submodule(name)
            except AttributeError:  # already inside a module replaced above
                continue
            parent, _, child = name.rpartition(".")
            setattr(backbone.get_submodule(parent) if parent else backbone, child, nn.Identity())
    return backbone


# ---------------------------------------------------------------------------------------------
# Writing a model file that follows the seed's good practice (`cnncli new-model`)
# ---------------------------------------------------------------------------------------------

LARGE_INPUT = 64  # from this many pixels on, the first convolution takes stride 2


def _toml_layer(name: str, kind: str, comment: str = "", **options) -> str:
    lines = ["[[layers]]", f'name = "{name}"', f'type = "{kind}"']
    for key, value in options.items():
        lines.append(f"{key} = {json.dumps(value)}")
    if comment:
        lines[-1] += f"    # {comment}"
    return "\n".join(lines) + "\n"


def good_practice_toml(name: str, input_size: tuple[int, int, int], num_classes: int, blocks: int = 3,
                       width: int = 64) -> str:
    """A model file (TOML text, commented, ready to edit) following the seed's good practice:
    a larger first filter (7x7, stride 2 when the input is at least 64 pixels, else 1), then
    3x3 filters, the number of filters doubling after each pooling layer, ReLU, then dense
    layers that shrink, each followed by dropout 0.5. With the defaults on a 1x28x28 input and
    10 classes it is exactly the seed's typical CNN (1,413,834 parameters)."""
    c, h, w = input_size
    for what, value in (("blocks", blocks), ("width", width), ("classes", num_classes)):
        if not (_is_int(value) and value >= 1):
            raise InputError(f"--{what} must be a positive integer, got {value!r}")
    stride = 2 if min(h, w) >= LARGE_INPUT else 1
    side = min(-(-h // stride), -(-w // stride))
    fits = 0
    while side // 2 >= 1 and fits < blocks:
        side //= 2
        fits += 1
    if fits < blocks:
        raise InputError(f"--blocks {blocks} is too many for a {h}x{w} input: each block halves the "
                         f"maps, so at most {fits} fit; use fewer blocks or a larger --input")
    out = [
        f"# {name}: a CNN following the seed's good practice, written by `cnncli new-model`.",
        "# A larger first filter (7x7, stride 2 on large inputs), then 3x3 filters; the number of",
        "# filters doubles after each pooling layer; ReLU; dense layers that shrink, with dropout.",
        "# Edit freely; `cnncli inspect` on this file checks it and shows every layer's shape.",
        "",
        "[model]",
        f"name = {json.dumps(name)}",
        f"description = {json.dumps(f'Good-practice CNN: {blocks} blocks from {width} filters, for {c}x{h}x{w} input')}",
        f"input = [{c}, {h}, {w}]",
        f"num_classes = {num_classes}",
        "",
    ]
    conv = 0
    for block in range(1, blocks + 1):
        filters = width * 2 ** (block - 1)
        out.append(f"# block {block}: {filters} filters")
        if block == 1:
            conv += 1
            options = {"filters": filters, "kernel": 7, "stride": stride, "padding": "same"}
            if stride == 1:
                del options["stride"]
            out.append(_toml_layer(f"conv{conv}", "conv", "larger first filter" +
                                   (", stride 2 on a large input" if stride == 2 else ""), **options))
        else:
            for _ in range(2):
                conv += 1
                out.append(_toml_layer(f"conv{conv}", "conv", filters=filters, kernel=3, padding="same"))
        out.append(_toml_layer(f"pool{block}", "maxpool", kernel=2))
    out.append("# dense layers that shrink, each with dropout 0.5")
    out.append(_toml_layer("flatten", "flatten"))
    for i, units in enumerate((2 * width, width), start=1):
        out.append(_toml_layer(f"fc{i}", "dense", units=units, activation="relu"))
        out.append(_toml_layer(f"drop{i}", "dropout", rate=0.5))
    out.append(_toml_layer("out", "dense", "the classifier (logits)", units=NUM_CLASSES))
    return "\n".join(out)
