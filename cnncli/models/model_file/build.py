"""Building the nn.Module of a checked model file (`schema.ModelPlan`) from the blocks of
`cnncli.layers`: `FileNetwork` for a plain layer list, `BackboneWithHead` for a backbone with
head layers. A backbone comes from the factory the caller gives (`backbone.BackboneFactory`),
never from an import of the registry.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from cnncli.errors import CnnError
from cnncli.layers import (
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
    WhiteningConv,
    dirac_init,
    make_activation,
)
from cnncli.models.info import ModelInfo, count_params
from cnncli.models.model_file.backbone import BackboneFactory, _timm_groups
from cnncli.models.model_file.schema import Layer, ModelPlan, check_spec, load_spec, plan_info
from cnncli.models.model_file.vocabulary import POOLING_TYPES


def create_model_from_spec(spec: dict[str, Any], num_classes: int | None = None, in_chans: int | None = None,
                           source: str = "", backbones: BackboneFactory | None = None) -> tuple[Network, ModelInfo]:
    """Build a network from a parsed model file (the document a checkpoint stores); returns
    (module, ModelInfo). A [backbone] is described and built by `backbones` (the registry gives
    its own: `cnncli.models.registry.build_model_file`); `source` names the file in errors."""
    plan = check_spec(spec, source=source, num_classes=num_classes, in_chans=in_chans, backbones=backbones)
    model = build(plan, backbones)
    return model, plan_info(plan, count_params(model))


def create_model_from_file(path: str | Path, num_classes: int | None = None, in_chans: int | None = None,
                           backbones: BackboneFactory | None = None) -> tuple[Network, ModelInfo]:
    """Build the network of a model file; returns (module, ModelInfo)."""
    return create_model_from_spec(load_spec(path), num_classes=num_classes, in_chans=in_chans,
                                  source=str(path), backbones=backbones)


def build(plan: ModelPlan, backbones: BackboneFactory | None = None) -> Network:
    """The nn.Module of a checked plan (fresh weights; nothing is loaded)."""
    layers = [(layer.name, make_layer(layer)) for layer in plan.layers]
    if plan.backbone is None:
        return FileNetwork(plan, layers)
    if backbones is None:
        raise CnnError("a model file with a [backbone] is built through cnncli.models.registry "
                       "(no backbone factory was given)")
    return BackboneWithHead(plan, backbones.build(plan.backbone["model"], plan.input_size), layers)


def make_layer(layer: Layer) -> nn.Module:
    """One checked layer as a block of cnncli.layers (the classifier as a plain nn.Linear,
    as in the hand-built networks and timm)."""
    o, t, shape = layer.options, layer.type, layer.in_shape
    act = None if o.get("activation") == "none" else o.get("activation")
    if t == "conv":
        conv = ConvLayer(shape[0], o["filters"], _arg(o["kernel"]), _arg(o["stride"]), _arg(o["padding"]),
                         activation=act, batch_norm=o["batch_norm"], bias=o["bias"], groups=o["groups"],
                         dilation=o["dilation"])
        if o.get("init") == "dirac":
            dirac_init(conv.conv)
        return conv
    if t == "whiten":
        return WhiteningConv(shape[0], _arg(o["kernel"]), _arg(o["padding"]), activation=act, eps=o["eps"])
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
