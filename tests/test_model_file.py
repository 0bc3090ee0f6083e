"""Networks written as TOML model files (cnncli.models.model_file) and `cnncli new-model`.

What is checked: every shipped file builds and runs; the typical-CNN file is the hand-built
`typical_cnn` exactly (same state-dict keys and shapes, same outputs with the same weights);
the shape arithmetic that checks a file before building agrees with real forwards for every
layer type; each kind of mistake is one InputError naming the layer and the key; a backbone
with a head builds on timm and hand-built networks; a checkpoint rebuilds a file network
without the file; `new-model` writes the seed's good practice and never overwrites silently.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from cnncli.checkpoint import load_model, save_checkpoint
from cnncli.cli import app
from cnncli.errors import InputError
from cnncli.layers import ACTIVATIONS
from cnncli.models.model_file import (
    ACTIVATION_NAMES,
    LAYER_TYPES,
    check_spec,
    create_model_from_file,
    good_practice_toml,
    load_spec,
    loads_spec,
    model_file_info,
    new_model_file,
)
from cnncli.models.registry import (
    build_model,
    build_model_file,
    count_params,
    create_model,
    get_model_info,
)

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes" / "models"
SHIPPED = sorted(RECIPES.glob("*.toml"))


def _spec(layers, input_=(1, 28, 28), num_classes=10, **model):
    return {"model": {"name": "t", "input": list(input_), "num_classes": num_classes, **model},
            "layers": layers}


CLASSIFIER = {"type": "dense", "units": "num_classes"}


def _error(spec, **kwargs) -> str:
    with pytest.raises(InputError) as err:
        build_model_file(spec, source="bad.toml", **kwargs)
    message = str(err.value)
    assert "\n" not in message and err.value.exit_code == 2
    return message


def _layer_shapes(model, x):
    """Real output shape (without batch) of every child, by name."""
    shapes = {}
    hooks = [m.register_forward_hook(lambda mod, i, o, n=n: shapes.__setitem__(n, tuple(o.shape[1:])))
             for n, m in model.named_children()]
    with torch.no_grad():
        model.eval()(x)
    for h in hooks:
        h.remove()
    return shapes


# --------------------------------------------------------------------------- shipped files

def test_the_recipes_folder_ships_the_promised_networks():
    names = {p.name for p in SHIPPED}
    assert {"typical_cnn.toml", "small_resnet.toml", "small_senet.toml", "efficientnet_lite0_head.toml",
            "fashion_fast.toml", "fashion_narrow.toml"} <= names


@pytest.mark.parametrize("path", [p for p in SHIPPED if "head" not in p.name], ids=lambda p: p.stem)
def test_every_plain_shipped_file_builds_and_its_checked_shapes_are_the_real_ones(path):
    spec = load_spec(path)
    plan = check_spec(spec, source=str(path))
    model, info = create_model_from_file(path)
    x = torch.randn(2, *info.input_size)
    real = _layer_shapes(model, x)
    assert {layer.name: layer.out_shape for layer in plan.layers} == real
    assert model(x).shape == (2, info.num_classes)
    assert info.source == "file" and info.params == count_params(model)
    assert build_model(str(path)).spec["model_file"] == spec  # what a checkpoint stores whole
    # the timm-like API: features, then head; the classifier is the last layer
    feats = model.forward_features(x)
    assert feats.shape[1] == model.num_features
    assert torch.equal(model.forward_head(feats), model(x))
    assert isinstance(model.get_classifier(), torch.nn.Linear)


@pytest.mark.slow
def test_the_efficientnet_lite0_head_file_builds_offline_without_weights():
    path = RECIPES / "efficientnet_lite0_head.toml"
    spec = load_spec(path)
    assert spec["backbone"] == {"model": "timm/tf_efficientnet_lite0", "pretrained": True}
    small = copy.deepcopy(spec)
    small["model"]["input"] = [3, 64, 64]  # the same network; a small input keeps the test fast
    model, info = build_model_file(small, source=str(path))
    assert model(torch.randn(1, 3, 64, 64)).shape == (1, 10)
    assert model.num_features == 1280
    assert info.mean == (0.5, 0.5, 0.5)  # the backbone's pretrained normalization
    assert info.extra["backbone_weights"] == {"model": "timm/tf_efficientnet_lite0", "pretrained": True,
                                              "weights": None}
    # the stages are timm's own coarse groups (stem, blocks.0..6 with the final conv)
    names = [n for n, _ in model.stages()]
    assert names[0] == "backbone.conv_stem+bn1" and names[-1] == "backbone.blocks.6+conv_head+bn2"
    assert len(names) == 8


# --------------------------------------------------------------------------- typical CNN

def test_typical_cnn_file_is_exactly_the_hand_built_typical_cnn():
    torch.manual_seed(0)
    hand = create_model("typical_cnn")
    mine, info = create_model_from_file(RECIPES / "typical_cnn.toml")
    assert count_params(mine) == count_params(hand) == 1_413_834
    assert [(k, tuple(v.shape)) for k, v in mine.state_dict().items()] == \
           [(k, tuple(v.shape)) for k, v in hand.state_dict().items()]
    assert info.input_size == get_model_info("typical_cnn").input_size
    x = torch.randn(3, 1, 28, 28)
    assert _layer_shapes(mine, x) == _layer_shapes(hand, x)
    mine.load_state_dict(hand.state_dict())
    hand.eval(), mine.eval()
    with torch.no_grad():
        assert torch.allclose(mine(x), hand(x), atol=1e-6)
        assert torch.equal(mine.forward_features(x), hand.forward_features(x))
    assert mine.num_features == hand.num_features == 256


# --------------------------------------------------------------------------- shape arithmetic

EVERY_TYPE = [
    {"type": "whiten", "kernel": 2, "padding": "valid"},  # 3 channels x 2x2 patches: 24 maps, one smaller
    {"type": "conv", "filters": 8, "kernel": [3, 5], "stride": 2, "padding": "same", "batch_norm": True,
     "init": "dirac"},
    {"type": "lrn", "size": 3},
    {"type": "conv", "filters": 8, "kernel": 3, "padding": [1, 2], "groups": 2, "dilation": 2},
    {"type": "maxpool", "kernel": 3, "stride": 2, "padding": "same"},
    {"type": "inception", "c1x1": 4, "c3x3_reduce": 4, "c3x3": 6, "c5x5_reduce": 2, "c5x5": 3, "pool_proj": 3},
    {"type": "residual", "filters": 16, "stride": 2, "se": True},
    {"type": "bottleneck", "filters": 4, "stride": 2, "expansion": 4},
    {"type": "se", "reduction": 4},
    {"type": "separable_conv", "filters": 12, "stride": 2, "batch_norm": True},
    {"type": "avgpool", "kernel": 2, "stride": 1, "padding": "same"},
    {"type": "conv", "filters": 6, "kernel": 1, "activation": "tanh"},
    {"type": "global_avgpool"},
    {"type": "dropout", "rate": 0.2},
    {"type": "dense", "units": 7, "activation": "gelu", "dropout": 0.1, "repeat": 2},
    CLASSIFIER,
]


@pytest.mark.parametrize("size", [(3, 37, 23), (3, 64, 64)])
def test_every_layer_type_builds_and_the_checked_shapes_match_torch(size):
    spec = _spec(EVERY_TYPE, input_=size, num_classes=5)
    plan = check_spec(spec)
    assert {layer.type for layer in plan.layers} == set(LAYER_TYPES) - {"flatten"}
    model, _ = build_model_file(spec)
    real = _layer_shapes(model, torch.randn(2, *size))
    assert {layer.name: layer.out_shape for layer in plan.layers} == real
    assert [layer.name for layer in plan.layers][-3:] == ["dense1", "dense2", "dense3"]


def test_automatic_names_step_over_the_names_the_file_gives():
    plan = check_spec(_spec([{"type": "flatten"}, {"type": "dense", "units": 4, "name": "dense1"},
                             {"type": "dense", "units": 4}, CLASSIFIER]))
    assert [layer.name for layer in plan.layers] == ["flatten1", "dense1", "dense2", "dense3"]


@pytest.mark.parametrize("kind", ["conv", "maxpool", "avgpool", "separable_conv"])
@pytest.mark.parametrize("padding", ["valid", "same", 1])
@pytest.mark.parametrize("kernel,stride", [(1, 1), (2, 2), (3, 2), (3, 3), (5, 1), (4, 3)])
def test_spatial_arithmetic_agrees_with_the_layers_for_odd_sizes(kind, padding, kernel, stride):
    if kind in ("maxpool", "avgpool") and padding == 1 and kernel < 2:
        return  # torch: pooling padding at most half the kernel (checked separately)
    if kind == "separable_conv" and padding == 1 and kernel == 5:
        return
    layer = {"type": kind, "kernel": kernel, "stride": stride, "padding": padding}
    if kind in ("conv", "separable_conv"):
        layer["filters"] = 2
    spec = _spec([layer, {"type": "flatten"}, CLASSIFIER], input_=(2, 13, 10))
    plan = check_spec(spec)
    model, _ = build_model_file(spec)
    name = plan.layers[0].name
    assert _layer_shapes(model, torch.randn(1, 2, 13, 10))[name] == plan.layers[0].out_shape


def test_activation_names_are_those_of_the_layers_module():
    assert set(ACTIVATION_NAMES) == set(ACTIVATIONS) | {"none"}


# --------------------------------------------------------------------------- errors

def test_unknown_layer_type_names_the_layer_and_lists_the_valid_ones():
    msg = _error(_spec([{"type": "conv", "filters": 4, "kernel": 3},
                        {"type": "convolution", "name": "c2", "filters": 4}, CLASSIFIER]))
    assert msg.startswith("bad.toml: layer 2 ('c2', convolution): unknown layer type \"convolution\"")
    assert "did you mean 'conv'?" in msg and "valid types: conv, maxpool" in msg


def test_missing_option_names_the_layer_and_the_key():
    msg = _error(_spec([{"type": "conv", "kernel": 3}, {"type": "flatten"}, CLASSIFIER]))
    assert msg.startswith("bad.toml: layer 1 (conv): missing option 'filters'")


@pytest.mark.parametrize("key,value,expected", [
    ("filters", "64", "'filters' must be a positive integer, got \"64\" (a string)"),
    ("filters", 0, "'filters' must be a positive integer, got 0 (an integer)"),
    ("filters", True, "'filters' must be a positive integer, got true (a boolean)"),
    ("padding", "full", "'padding' must be \"valid\", \"same\" or a number of pixels"),
    ("batch_norm", "yes", "'batch_norm' must be true or false"),
    ("kernel", [3, 3, 3], "'kernel' must be a positive integer or a pair [height, width]"),
    ("activation", "rleu", "unknown activation \"rleu\" for 'activation'; did you mean 'relu'?"),
])
def test_mistyped_option_names_the_layer_the_key_and_the_value(key, value, expected):
    layer = {"type": "conv", "name": "c1", "filters": 4, "kernel": 3, key: value}
    msg = _error(_spec([layer, {"type": "flatten"}, CLASSIFIER]))
    assert msg.startswith("bad.toml: layer 1 ('c1', conv): ") and expected in msg


def test_unknown_option_suggests_the_closest_one():
    msg = _error(_spec([{"type": "conv", "filter": 4, "kernel": 3}, {"type": "flatten"}, CLASSIFIER]))
    assert "layer 1 (conv): unknown option 'filter'; did you mean 'filters'?" in msg
    assert "conv takes: filters, kernel, stride=1" in msg


def test_dense_after_a_convolution_without_flatten_is_a_shape_error():
    msg = _error(_spec([{"type": "conv", "name": "c1", "filters": 8, "kernel": 3},
                        {"type": "dense", "name": "fc1", "units": 32}, CLASSIFIER]))
    assert msg == ("bad.toml: layer 2 ('fc1', dense): a dense layer needs a vector but gets feature maps "
                   "8x26x26 (CxHxW); add a flatten or global_avgpool layer before it")


def test_a_convolution_after_flatten_is_a_shape_error():
    msg = _error(_spec([{"type": "flatten"}, {"type": "conv", "filters": 8, "kernel": 3}, CLASSIFIER]))
    assert "layer 2 (conv): conv needs feature maps (C, H, W) but gets a vector of 784 features" in msg


def test_a_size_that_collapses_to_zero_names_the_layer_and_the_copy():
    msg = _error(_spec([{"type": "conv", "filters": 4, "kernel": 3, "padding": "same"},
                        {"type": "maxpool", "name": "pool", "kernel": 2, "repeat": 5},
                        {"type": "flatten"}, CLASSIFIER]))
    # 28 -> 14 -> 7 -> 3 -> 1 -> 0: the fifth copy collapses
    assert msg.startswith("bad.toml: layer 2 ('pool', maxpool, copy 5 of 5): the 1x1 maps collapse to 0x0")


def test_a_kernel_larger_than_the_input_collapses():
    msg = _error(_spec([{"type": "conv", "filters": 4, "kernel": 11}, {"type": "flatten"}, CLASSIFIER],
                       input_=(1, 8, 8)))
    assert "layer 1 (conv): the 8x8 maps collapse to 0x0 (kernel 11x11" in msg


def test_bad_toml_syntax_names_the_file_and_the_line(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text('[model]\nname = "x"\ninput = [1, 28, 28]]\n')
    with pytest.raises(InputError) as err:
        create_model_from_file(path)
    assert str(err.value).startswith(f"{path}: not valid TOML:") and "line 3" in str(err.value)


def test_a_missing_file_is_an_input_error(tmp_path):
    with pytest.raises(InputError, match="model file not found"):
        model_file_info(tmp_path / "nope.toml")


@pytest.mark.parametrize("layers,expected", [
    ([{"type": "flatten"}, {"type": "dense", "units": 10}],
     "layer 2 (dense): the last layer must be the classifier: type = \"dense\", units = \"num_classes\""),
    ([{"type": "flatten"}, {"type": "dense", "units": "num_classes"}, {"type": "dropout"}],
     "layer 3 (dropout): the last layer must be the classifier"),
    ([{"type": "flatten"}, {"type": "dense", "units": "num_classes", "activation": "softmax"}],
     "the classifier outputs logits"),
    ([{"type": "flatten"}, {"type": "dense", "units": "num_classes"}, CLASSIFIER],
     "layer 2 (dense): units = \"num_classes\" marks the classifier"),
    ([{"type": "flatten", "name": "x"}, {"type": "dense", "units": 4, "name": "x"}, CLASSIFIER],
     "layer 2 ('x', dense): the name 'x' is already used by layer 1"),
    ([{"type": "flatten", "name": "dense1", "repeat": 2}, {"type": "dense", "units": 4, "name": "dense1_2"}, CLASSIFIER],
     "layer 2 ('dense1_2', dense): the name 'dense1_2' is already used by layer 1"),
    ([{"type": "flatten", "repeat": 0}, CLASSIFIER], "'repeat' must be an integer from 1 to 1000"),
    ([{"type": "flatten", "name": "a.b"}, CLASSIFIER], "'name' must be a non-empty string without dots"),
    ([{"filters": 3}, CLASSIFIER], "layer 1: missing 'type'"),
    ([], "[[layers]]: must be a non-empty list"),
])
def test_classifier_names_and_list_mistakes(layers, expected):
    assert expected in _error(_spec(layers))


@pytest.mark.parametrize("mutate,expected", [
    (lambda s: s["model"].pop("num_classes"), "[model]: missing 'num_classes'"),
    (lambda s: s["model"].update(input="28x28"), "'input' must be [C, H, W] or \"CxHxW\""),
    (lambda s: s["model"].update(inputs=[1, 28, 28]), "[model]: unknown key 'inputs'; did you mean 'input'?"),
    (lambda s: s.update(layer=[]), "top level: unknown key 'layer'; did you mean 'layers'?"),
    (lambda s: s["model"].update(mean=[0.5, 0.5]), "'mean' must be a list of 1 numbers"),
    (lambda s: s.update(backbone={"model": "resnet18"}), "either [[layers]] or a [backbone]"),
])
def test_model_table_mistakes(mutate, expected):
    spec = _spec([{"type": "flatten"}, CLASSIFIER])
    mutate(spec)
    assert expected in _error(spec)


def test_the_input_may_be_written_as_a_string_and_overridden():
    spec = _spec([{"type": "conv", "filters": 4, "kernel": 3}, {"type": "flatten"}, CLASSIFIER])
    spec["model"]["input"] = "3x16x16"
    model, info = build_model_file(spec, num_classes=4, in_chans=2)
    assert info.input_size == (2, 16, 16) and info.num_classes == 4
    assert model(torch.randn(1, 2, 16, 16)).shape == (1, 4)
    assert spec["model"]["input"] == "3x16x16"  # the document itself is never changed


# --------------------------------------------------------------------------- through the CLI

def test_cli_inspect_of_a_bad_file_is_one_line_and_exit_2(runner, tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text('[model]\nname = "bad"\ninput = [1, 28, 28]\nnum_classes = 10\n\n'
                    '[[layers]]\ntype = "conv"\nfilters = 8\nkernel = 3\n\n'
                    '[[layers]]\nname = "fc"\ntype = "dense"\nunits = "num_classes"\n')
    result = runner.invoke(app, ["inspect", str(path)])
    assert result.exit_code == 2
    assert result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: layer 2 ('fc', dense): a dense layer")


def test_cli_inspect_reads_a_model_file_with_the_file_names_as_rows(runner):
    result = runner.invoke(app, ["inspect", str(RECIPES / "typical_cnn.toml"), "--format", "json"])
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["total_params"] == 1_413_834
    names = [row["name"] for row in doc["layers"]]
    assert {"conv1", "pool3", "fc1", "out"} <= set(names)


# --------------------------------------------------------------------------- registry and checkpoint

def test_registry_and_checkpoint_rebuild_a_file_network_without_the_file(tmp_path):
    path = tmp_path / "net.toml"
    path.write_text((RECIPES / "small_senet.toml").read_text())
    built = build_model(str(path), num_classes=3)
    model = built.module
    assert built.spec["model_file"] == load_spec(path)
    assert get_model_info(str(path)).source == "file"
    meta = {"model": built.spec, "num_classes": 3}
    save_checkpoint(tmp_path / "model.safetensors", model.state_dict(), meta)
    path.unlink()  # the checkpoint alone must be enough
    rebuilt, _ = load_model(tmp_path / "model.safetensors")
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model.eval()(x))


def test_reset_classifier_and_stages_of_a_plain_file():
    model, _ = create_model_from_file(RECIPES / "small_resnet.toml")
    # stages: split where the maps shrink; the classifier is in none of them
    assert [n for n, _ in model.stages()] == ["stem..stage1_2", "down2..stage2", "down3..pool"]
    staged = {id(p) for _, m in model.stages() for p in m.parameters()}
    assert {id(p) for p in model.fc.parameters()}.isdisjoint(staged)
    assert len(staged) == len(list(model.parameters())) - 2
    model.reset_classifier(5)
    assert model(torch.randn(1, 1, 28, 28)).shape == (1, 5)
    model.reset_classifier(0)
    assert model(torch.randn(1, 1, 28, 28)).shape == (1, model.num_features)


# --------------------------------------------------------------------------- backbone + head

def _head_spec(backbone, input_=(3, 32, 32), head=None):
    return {"model": {"name": "bh", "input": list(input_), "num_classes": 4},
            "backbone": {"model": backbone, "pretrained": False},
            "head": head or [{"type": "global_avgpool"}, {"type": "dense", "units": 16, "activation": "relu"},
                             {"type": "dropout"}, {"type": "dense", "units": "num_classes", "name": "classifier"}]}


def test_timm_backbone_with_a_head_builds_forwards_and_groups_its_stages():
    model, info = build_model_file(_head_spec("timm/test_efficientnet"))
    x = torch.randn(2, 3, 32, 32)
    assert model(x).shape == (2, 4)
    assert isinstance(model.get_classifier(), torch.nn.Linear) and model.classifier.out_features == 4
    assert isinstance(model.backbone.get_classifier(), torch.nn.Identity)  # its own classifier is gone
    stages = model.stages()
    assert [n for n, _ in stages][:2] == ["backbone.conv_stem+bn1", "backbone.blocks.0"]
    staged = {id(p) for _, m in stages for p in m.parameters()}
    assert staged == {id(p) for p in model.backbone.parameters()}  # the base: all of the backbone
    head = [p for n, p in model.named_parameters() if not n.startswith("backbone.")]
    assert head and all(id(p) not in staged for p in head)  # the head trains first
    assert info.extra["backbone_weights"] == {"model": "timm/test_efficientnet", "pretrained": False,
                                              "weights": None}


def test_a_backbone_with_head_checkpoint_rebuilds_without_the_file(tmp_path):
    path = tmp_path / "bh.toml"
    path.write_text('[model]\nname = "bh"\ninput = [3, 32, 32]\nnum_classes = 4\n\n'
                    '[backbone]\nmodel = "timm/test_efficientnet"\nweights = "w/base.safetensors"\n\n'
                    '[[head]]\ntype = "global_avgpool"\n\n[[head]]\ntype = "dense"\nunits = "num_classes"\n')
    info = get_model_info(str(path))
    # a weights path in a model file is relative to the file; loading it is finetune's job
    assert info.extra["backbone_weights"]["weights"] == str(tmp_path / "w" / "base.safetensors")
    built = build_model(str(path))
    model = built.module
    save_checkpoint(tmp_path / "model.safetensors", model.state_dict(), {"model": built.spec})
    path.unlink()
    rebuilt, _ = load_model(tmp_path / "model.safetensors")
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(rebuilt(x), model.eval()(x))


def test_train_loads_the_backbone_weights_a_model_file_asks_for(tmp_path):
    """`train` on a file whose [backbone] names weights starts from them (as Keras' weights=),
    records where they came from, and trains the whole network; without a request it starts random."""
    import timm
    from safetensors.torch import save_file

    from cnncli.checkpoint import load_checkpoint

    torch.manual_seed(7)
    base = timm.create_model("test_efficientnet", num_classes=0)
    (tmp_path / "w").mkdir()
    save_file(base.state_dict(), str(tmp_path / "w" / "base.safetensors"))
    head = '[[head]]\ntype = "global_avgpool"\n\n[[head]]\ntype = "dense"\nunits = "num_classes"\n'
    asks = tmp_path / "asks.toml"
    asks.write_text('[model]\nname = "bh"\ninput = [3, 32, 32]\nnum_classes = 4\n\n'
                    '[backbone]\nmodel = "timm/test_efficientnet"\nweights = "w/base.safetensors"\n\n' + head)
    result = CliRunner().invoke(app, ["train", str(asks), "--data", "synthetic:size=32,channels=3,n=64",
                                      "--epochs", "1", "--lr", "1e-12", "--out", str(tmp_path / "runs"), "--json"])
    assert result.exit_code == 0, result.stderr
    state, meta = load_checkpoint(json.loads(result.stdout)["checkpoint"])
    assert meta["weights_source"]["kind"] == "file"
    assert meta["weights_source"]["path"] == str((tmp_path / "w" / "base.safetensors").resolve())
    assert torch.allclose(state["backbone.conv_stem.weight"], base.conv_stem.weight, atol=1e-8)  # as loaded

    random_start = tmp_path / "random.toml"
    random_start.write_text(asks.read_text().replace('weights = "w/base.safetensors"', "pretrained = false"))
    result = CliRunner().invoke(app, ["train", str(random_start), "--data", "synthetic:size=32,channels=3,n=64",
                                      "--epochs", "1", "--lr", "1e-12", "--out", str(tmp_path / "runs2"), "--json"])
    assert result.exit_code == 0, result.stderr
    state, meta = load_checkpoint(json.loads(result.stdout)["checkpoint"])
    assert meta.get("weights_source") is None
    assert not torch.allclose(state["backbone.conv_stem.weight"], base.conv_stem.weight, atol=1e-3)


def test_hand_built_backbone_loses_its_dense_layers_and_keeps_its_stages():
    model, _ = build_model_file(_head_spec("typical_cnn", input_=(1, 28, 28)))
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 4)
    # typical_cnn's own fc1/fc2 are never used by forward_features: removed, not carried dead
    convs = sum(p.numel() for n, p in create_model("typical_cnn").named_parameters() if n.startswith("conv"))
    head = 256 * 16 + 16 + 16 * 4 + 4
    assert count_params(model) == convs + head
    assert [n for n, _ in model.stages()] == [f"backbone.conv{i}" for i in range(1, 6)]


def test_a_head_that_does_not_fit_the_backbone_maps_is_a_shape_error():
    head = [{"type": "dense", "units": "num_classes"}]
    msg = _error(_head_spec("timm/test_efficientnet", head=head))
    assert msg.startswith("bad.toml: head layer 1 (dense): a dense layer needs a vector but gets feature maps 256x1x1")


def test_an_unknown_backbone_suggests_names():
    msg = _error(_head_spec("resnet19"))
    assert msg.startswith("bad.toml: [backbone]: unknown model 'resnet19'; did you mean")


# --------------------------------------------------------------------------- new-model

def _register_new_model():
    names = {c.name for c in app.registered_commands}
    if "new-model" not in names:  # until the lead registers it in cnncli/cli/__init__.py
        from cnncli.cli.new_model import new_model

        app.command("new-model")(new_model)


def test_new_model_defaults_are_the_seeds_typical_cnn(runner, tmp_path):
    _register_new_model()
    out = tmp_path / "my_cnn.toml"
    result = runner.invoke(app, ["new-model", "my_cnn", "--out", str(out)])
    assert result.exit_code == 0, result.stderr
    assert result.stdout.strip() == str(out)
    model, info = create_model_from_file(out)
    hand = create_model("typical_cnn")
    assert [(k, tuple(v.shape)) for k, v in model.state_dict().items()] == \
           [(k, tuple(v.shape)) for k, v in hand.state_dict().items()]
    assert info.name == "my_cnn" and info.input_size == (1, 28, 28) and info.num_classes == 10


def test_new_model_follows_the_good_practice_on_a_large_input_and_refuses_to_overwrite(runner, tmp_path, monkeypatch):
    _register_new_model()
    monkeypatch.chdir(tmp_path)
    args = ["new-model", "big", "--input", "3x96x96", "--classes", "5", "--blocks", "4", "--width", "16", "--json"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["path"] == "big.toml" and doc["input"] == [3, 96, 96] and doc["num_classes"] == 5
    spec = load_spec(tmp_path / "big.toml")
    convs = [layer for layer in spec["layers"] if layer["type"] == "conv"]
    assert convs[0]["kernel"] == 7 and convs[0]["stride"] == 2  # large input: big filter, stride 2
    assert all(c["kernel"] == 3 and "stride" not in c for c in convs[1:])
    assert [c["filters"] for c in convs] == [16, 32, 32, 64, 64, 128, 128]  # doubling after each pool
    dense = [layer["units"] for layer in spec["layers"] if layer["type"] == "dense"]
    assert dense == [32, 16, "num_classes"]  # shrinking
    assert all(layer["rate"] == 0.5 for layer in spec["layers"] if layer["type"] == "dropout")
    model, _ = create_model_from_file(tmp_path / "big.toml")
    assert model(torch.randn(1, 3, 96, 96)).shape == (1, 5)
    assert count_params(model) == doc["params"]

    before = (tmp_path / "big.toml").read_text()
    again = runner.invoke(app, ["new-model", "big", "--width", "8"])
    assert again.exit_code == 2 and "already exists; pass --force" in again.stderr
    assert (tmp_path / "big.toml").read_text() == before
    forced = runner.invoke(app, ["new-model", "big", "--width", "8", "--force"])
    assert forced.exit_code == 0 and (tmp_path / "big.toml").read_text() != before


def test_new_model_refuses_more_blocks_than_the_input_allows(runner, tmp_path):
    _register_new_model()
    result = runner.invoke(app, ["new-model", "deep", "--blocks", "5", "--out", str(tmp_path / "d.toml")])
    assert result.exit_code == 2
    assert "--blocks 5 is too many for a 28x28 input" in result.stderr and "at most 4" in result.stderr
    assert not (tmp_path / "d.toml").exists()


def test_good_practice_text_is_valid_toml_for_odd_names():
    text = good_practice_toml('we"ird\\name', (1, 28, 28), 3, blocks=1, width=4)
    assert loads_spec(text)["model"]["name"] == 'we"ird\\name'


# --------------------------------------------------------------------------- library doors

def test_new_model_file_is_checked_by_the_library_without_the_cli():
    """What `cnncli new-model` writes and reports comes from the library: the text, its parsed
    document and the parameter count of a meta-device build (no memory)."""
    made = new_model_file("x", (1, 28, 28), 10)
    assert made.text == good_practice_toml("x", (1, 28, 28), 10)
    assert made.spec == loads_spec(made.text)
    assert made.params == 1_413_834 and made.layers == 14
    assert made.info.input_size == (1, 28, 28) and made.info.num_classes == 10
    with pytest.raises(InputError, match="--blocks 6 is too many for a 28x28 input"):
        new_model_file("x", (1, 28, 28), 10, blocks=6)


def test_a_backbone_needs_the_registrys_factory_and_says_so_in_one_line():
    """model_file never imports the registry: without a backbone factory a [backbone] file is
    refused with one line (exit 1: a caller's mistake, not the file's); through the registry it builds."""
    from cnncli.errors import CnnError

    spec = {"model": {"name": "bh", "input": [1, 28, 28], "num_classes": 4},
            "backbone": {"model": "typical_cnn"}, "head": [{"type": "global_avgpool"}, CLASSIFIER]}
    with pytest.raises(CnnError) as err:
        check_spec(spec, source="bh.toml")
    assert "\n" not in str(err.value) and err.value.exit_code == 1 and "registry" in str(err.value)
    model, info = build_model_file(spec, source="bh.toml")
    assert model(torch.randn(2, 1, 28, 28)).shape == (2, 4) and info.source == "file"


@pytest.mark.parametrize("size", [1, 2, 7, 28, 31])
@pytest.mark.parametrize("kernel,stride,padding,dilation", [(3, 1, "same", 1), (3, 2, "same", 1), (5, 3, "valid", 1),
                                                            (3, 2, 1, 1), (3, 1, 0, 2), (2, 2, "valid", 1)])
def test_the_shared_size_helpers_give_the_sizes_the_layers_produce(size, kernel, stride, padding, dilation):
    from cnncli.geometry import output_size, same_padding
    from cnncli.layers import ConvLayer

    expected = output_size(size, kernel, stride, padding, dilation)
    if expected < 1:
        return  # the checks refuse such a layer before it is built
    conv = ConvLayer(1, 1, kernel, stride, padding, dilation=dilation)
    assert conv(torch.zeros(1, 1, size, size)).shape[-1] == expected
    if padding == "same":
        before, after = same_padding(size, kernel, stride, dilation)
        assert (size + before + after - dilation * (kernel - 1) - 1) // stride + 1 == expected
