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
a kernel or stride may be a pair [height, width]; `vocabulary.LAYER_TYPES` is the source of truth):

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
`get_classifier`, `reset_classifier`, `stages()`. The registry's spec of a file network
(`BuiltModel.spec["model_file"]`) holds the parsed document whole, which a checkpoint stores,
so a trained file network is rebuilt from the checkpoint alone.

The package: `vocabulary` (layer types and keys) and `schema` (parse, checks, shapes) are
torch-free; `build` makes the nn.Module; `backbone` probes and trims a backbone; `template` is
what `cnncli new-model` writes. A backbone is resolved through the factory the caller gives
(`cnncli.models.registry` passes its own), so nothing here imports the registry.
"""

from cnncli.models.model_file.schema import (
    Backbones,
    Layer,
    ModelPlan,
    check_spec,
    load_spec,
    loads_spec,
    model_file_info,
    parse_input_size,
    plan_info,
)
from cnncli.models.model_file.template import NewModelFile, good_practice_toml, new_model_file
from cnncli.models.model_file.vocabulary import (
    ACTIVATION_NAMES,
    LAYER_TYPES,
    NUM_CLASSES,
    LayerType,
    Option,
)

# The torch-using parts load on first use, so that checking a model file (`schema`) stays
# torch-free even through this package's front door.
_LAZY = {name: "build" for name in ("BackboneWithHead", "FileNetwork", "SeparableConvLayer", "build",
                                    "create_model_from_file", "create_model_from_spec", "make_layer")}
_LAZY["BackboneFactory"] = "backbone"


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"{__name__}.{_LAZY[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "ACTIVATION_NAMES", "LAYER_TYPES", "NUM_CLASSES", "BackboneFactory", "BackboneWithHead", "Backbones", "FileNetwork", "Layer",
    "LayerType", "ModelPlan", "NewModelFile", "Option", "SeparableConvLayer", "build", "check_spec",
    "create_model_from_file", "create_model_from_spec", "good_practice_toml", "load_spec", "loads_spec",
    "make_layer", "model_file_info", "new_model_file", "parse_input_size", "plan_info",
]
