"""Reading and checking a model file, torch-free: the parse, every check with its one-line
message, and the shape arithmetic (`cnncli.geometry`, the same helpers `cnncli.layers` runs
with). The result is a `ModelPlan`: everything needed to build the network, nothing built.

A `[backbone]` is the one part arithmetic cannot check: it is described and probed through a
`Backbones` object (the registry gives its own), so this module imports no source of networks.
"""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from cnncli.errors import CnnError, InputError
from cnncli.geometry import MAX_WHITEN_PATCH, output_size, pair
from cnncli.models.info import ModelInfo, default_norm, is_model_file
from cnncli.models.model_file.vocabulary import (
    _EXPECTED,
    ACTIVATION_NAMES,
    BACKBONE_KEYS,
    COMMON_KEYS,
    LAYER_TYPES,
    MAX_REPEAT,
    MODEL_KEYS,
    NUM_CLASSES,
    RESERVED_NAMES,
    TOP_KEYS,
    LayerType,
)


class Backbones(Protocol):
    """How a model file's backbone is described and probed (see `backbone.BackboneFactory`)."""

    def describe(self, name: str) -> ModelInfo: ...

    def feature_shape(self, name: str, input_size: tuple[int, int, int], source: str = "") -> tuple[int, ...]: ...


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
    elif kind == "positive_float":
        ok = _is_number(value) and value > 0
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
    elif kind == "init":
        ok = value in ("default", "dirac")
    if not ok:
        raise InputError(f"{where}: '{key}' must be {_EXPECTED[kind]}, got {_show(value)}")
    limit = _LIMITS.get(kind)
    numbers = [value] if _is_int(value) else value if isinstance(value, list) else []
    if limit is not None and any(_is_int(v) and v > limit for v in numbers):
        raise InputError(f"{where}: '{key}' = {_show(value)} is past what any network uses "
                         f"(at most {limit:,})")
    return value


# sizes (kernel, stride, padding) and counts (filters, units) beyond which no layer is real:
# torch would overflow computing its storage before a cost could be priced
_LIMITS = {"size": 65536, "padding": 65536, "pool_padding": 65536, "pos_int": 2**31 - 1, "units": 2**31 - 1}


def _check_keys(table: dict, allowed, where: str, what: str) -> None:
    for key in table:
        if key not in allowed:
            raise InputError(f"{where}: unknown key '{key}'{_closest(key, allowed)} "
                             f"({what} takes: {', '.join(allowed)})")


# ---------------------------------------------------------------------------------------------
# Shapes (pure arithmetic, cnncli.geometry's as cnncli.layers uses it; tests compare with
# real forwards)
# ---------------------------------------------------------------------------------------------


def _spatial(h: int, w: int, kernel, stride, padding, dilation: int = 1,
             where: str = "") -> tuple[int, int]:
    kh, kw = pair(kernel)
    sh, sw = pair(stride)
    ph, pw = (padding, padding) if padding in ("valid", "same") else pair(padding)
    out_h = output_size(h, kh, sh, ph, dilation)
    out_w = output_size(w, kw, sw, pw, dilation)
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
    if t == "whiten":
        kh, kw = pair(o["kernel"])
        if c * kh * kw > MAX_WHITEN_PATCH:
            raise InputError(f"{where}: whitening {c}-channel {kh}x{kw} patches means {c * kh * kw:,} values per "
                             f"patch and {2 * c * kh * kw:,} filters; at most {MAX_WHITEN_PATCH} values "
                             f"(put it first, on the image, with a small kernel)")
        return (2 * c * kh * kw, *_spatial(h, w, o["kernel"], 1, o["padding"], 1, where))
    if t == "separable_conv":
        return (o["filters"], *_spatial(h, w, o["kernel"], o["stride"], o["padding"],
                                        o["dilation"], where))
    if t in ("maxpool", "avgpool"):
        stride = o["stride"] if o["stride"] is not None else o["kernel"]
        if not isinstance(o["padding"], str):
            kh, kw = pair(o["kernel"])
            ph, pw = pair(o["padding"])
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
    return default_norm(channels)


def _check_backbone(table: Any, source: str, backbones: Backbones | None) -> tuple[dict[str, Any], ModelInfo]:
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
    if backbones is None:
        raise CnnError(f"{where}: a backbone is resolved by a registry; check this file through "
                       f"cnncli.models.registry (no backbone factory was given)")
    try:
        info = backbones.describe(name)
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
               in_chans: int | None = None, backbones: Backbones | None = None) -> ModelPlan:
    """Check a parsed model file completely; return the plan to build it. A plain layer list is
    checked by arithmetic; a backbone is described, and its feature-map shape probed, by
    `backbones` (the registry's factory: a build on the meta device)."""
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
        backbone, backbone_info = _check_backbone(spec["backbone"], source, backbones)
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
        backbone_shape = backbones.feature_shape(backbone["model"], input_size, source)
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


# ---------------------------------------------------------------------------------------------
# Information without a build
# ---------------------------------------------------------------------------------------------


def plan_info(plan: ModelPlan, params: int | None = None) -> ModelInfo:
    return ModelInfo(name=plan.name, source="file", description=plan.description,
                     input_size=plan.input_size, num_classes=plan.num_classes, mean=plan.mean,
                     std=plan.std, params=params, extra=dict(plan.extra))


def model_file_info(path: str | Path, backbones: Backbones | None = None) -> ModelInfo:
    """Describe a model file without building it (the whole file is checked)."""
    return plan_info(check_spec(load_spec(path), source=str(path), backbones=backbones))
