"""The hand-built networks are the papers' / the seed's networks, and equal torchvision's and
timm's where those exist (parameters in order and shape, and outputs once weights are shared)."""

from __future__ import annotations

import ast
import functools
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from cnncli.layers import ConvLayer
from cnncli.models.registry import HAND_BUILT, build_model, count_params, create_model

META = torch.device("meta")
ALL = list(HAND_BUILT)


def shapes(m: nn.Module) -> list[tuple[int, ...]]:
    return [tuple(p.shape) for p in m.parameters()]


def meta(name: str, **kw) -> nn.Module:
    return create_model(name, device="meta", **kw)


@functools.cache
def shared(name: str) -> nn.Module:
    """One meta build per network for the tests that only read it (keeps the suite fast)."""
    return meta(name)


@functools.cache
def shared_features(name: str) -> torch.Tensor:
    return shared(name).forward_features(default_input(name, batch=2))


# the deepest networks: a meta forward pass costs seconds there, so some tests skip it
DEEP = {"resnet101", "resnet152"}


def default_input(name: str, batch: int = 1, device=META) -> torch.Tensor:
    c, h, w = HAND_BUILT[name].input_size
    return torch.empty(batch, c, h, w, device=device)


def load_by_position(dst: nn.Module, src: nn.Module) -> None:
    """Copy a reference network's state dict into ours, entry by entry (names differ)."""
    src_sd, dst_keys = src.state_dict(), list(dst.state_dict())
    assert len(src_sd) == len(dst_keys)
    dst.load_state_dict(dict(zip(dst_keys, src_sd.values())))


def empty_cpu(name: str) -> nn.Module:
    """Our network with uninitialised CPU storage, for a reference's weights to be loaded into
    (skips a random initialisation that would be overwritten anyway)."""
    return meta(name).to_empty(device="cpu").eval()


def assert_same_outputs(ours: torch.Tensor, ref: torch.Tensor) -> None:
    """Equal up to float rounding, relative to the output's scale (randomly initialised
    networks without trained batch norms can have tiny activations that an absolute
    tolerance would wave through)."""
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4 * ref.abs().max().item())


def first_conv(m: nn.Module) -> nn.Conv2d:
    return next(x for x in m.modules() if isinstance(x, nn.Conv2d))


# --- the registry's figures ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_registry_params_equal_the_built_network(name):
    m = shared(name)
    assert count_params(m) == HAND_BUILT[name].params
    assert m.num_classes == HAND_BUILT[name].num_classes


@pytest.mark.parametrize("name", ALL)
def test_default_input_gives_logits_and_features(name):
    m = shared(name)
    feats = shared_features(name)
    assert feats.dim() == 4 and feats.shape[:2] == (2, m.num_features)
    assert m.forward_head(feats, pre_logits=True).shape[0] == 2
    assert m.forward_head(feats).shape == (2, HAND_BUILT[name].num_classes)
    if name not in DEEP:
        assert m(default_input(name, batch=2)).shape == (2, HAND_BUILT[name].num_classes)


@pytest.mark.parametrize("name", ALL)
def test_in_chans_and_num_classes_change_first_conv_and_classifier(name):
    built = build_model(name, device="meta", in_chans=1, num_classes=7)
    m = built.module
    assert first_conv(m).in_channels == 1
    assert m.get_classifier().out_features == 7
    assert built.info.input_size[0] == 1
    assert built.spec == {"name": name, "num_classes": 7, "in_chans": 1, "kwargs": {}}
    _, h, w = HAND_BUILT[name].input_size
    if name not in DEEP:
        assert m(torch.empty(2, 1, h, w, device=META)).shape == (2, 7)
    default = shared(name)
    assert first_conv(default).in_channels == HAND_BUILT[name].input_size[0]


@pytest.mark.parametrize("name", ALL)
def test_stages_cover_every_non_classifier_parameter_once(name):
    m = shared(name)
    seen: list[int] = []
    for stage_name, stage in m.stages():
        assert isinstance(stage_name, str) and isinstance(stage, nn.Module)
        seen += [id(p) for p in stage.parameters()]
    classifier = {id(p) for p in m.get_classifier().parameters()}
    everything = {id(p) for p in m.parameters()}
    assert len(seen) == len(set(seen)), "a parameter belongs to two stages"
    assert set(seen) == everything - classifier
    # input -> output order: the first stage holds the first convolution
    assert first_conv(m) in list(m.stages()[0][1].modules())


@pytest.mark.parametrize("name", ALL)
def test_reset_classifier(name):
    m = meta(name)
    before = m.get_classifier()
    m.reset_classifier(5)
    fc = m.get_classifier()
    assert fc is not before and fc.in_features == before.in_features
    assert isinstance(fc, nn.Linear) and fc.out_features == 5 and fc.weight.device.type == "meta"
    feats = shared_features(name)  # same architecture up to the head
    assert m.forward_head(feats).shape == (2, 5)
    m.reset_classifier(0)  # timm's convention: no classifier, pre-logits out
    assert m.forward_head(feats).shape == m.forward_head(feats, pre_logits=True).shape
    m.reset_classifier(3)
    assert m.forward_head(feats).shape == (2, 3)
    if name not in DEEP:
        assert m(default_input(name)).shape == (1, 3)


def test_real_forward_on_small_batches():
    torch.manual_seed(0)
    for name, size in [("lenet5", 32), ("typical_cnn", 28), ("resnet18", 64)]:
        m = create_model(name, num_classes=10).eval()
        c = HAND_BUILT[name].input_size[0]
        y = m(torch.randn(3, c, size, size))
        assert y.shape == (3, 10) and torch.isfinite(y).all()


# --- LeNet-5 ------------------------------------------------------------------------------------


def test_lenet5_layers_match_lecun_1998():
    m = meta("lenet5")
    # the paper's counts where the architecture is the paper's
    assert count_params(m.C1) == 156
    assert count_params(m.C5) == 48_120
    assert count_params(m.F6) == 10_164
    # C3 connects all 6 maps to all 16 (the paper's connection table gives 1,516)
    assert count_params(m.C3) == 16 * (6 * 25 + 1) == 2_416
    assert m.C1.activation == m.C3.activation == m.C5.activation == m.F6.activation == "tanh"
    assert m.S2.layer_type == m.S4.layer_type == "Average pooling"
    x = torch.empty(1, 1, 32, 32, device=META)
    sizes = []
    for layer in (m.C1, m.S2, m.C3, m.S4, m.C5):
        x = layer(x)
        sizes.append(tuple(x.shape[1:]))
    assert sizes == [(6, 28, 28), (6, 14, 14), (16, 10, 10), (16, 5, 5), (120, 1, 1)]


# --- the seed's typical CNN ---------------------------------------------------------------------


def keras_book_model() -> nn.Sequential:
    """HML's Fashion-MNIST CNN written out as a plain nn.Sequential ('same' 3x3 = padding 1)."""
    return nn.Sequential(
        nn.Conv2d(1, 64, 7, padding=3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.Conv2d(128, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(128, 256, 3, padding=1), nn.ReLU(), nn.Conv2d(256, 256, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(256 * 3 * 3, 128), nn.ReLU(), nn.Dropout(0.5),
        nn.Linear(128, 64), nn.ReLU(), nn.Dropout(0.5), nn.Linear(64, 10),
    )


def test_typical_cnn_equals_the_books_model():
    torch.manual_seed(0)
    ours, ref = create_model("typical_cnn"), keras_book_model()
    assert count_params(ours) == count_params(ref) == 1_413_834
    assert shapes(ours) == shapes(ref)
    load_by_position(ours, ref)
    x = torch.randn(4, 1, 28, 28)
    torch.testing.assert_close(ours.eval()(x), ref.eval()(x))


# --- AlexNet ------------------------------------------------------------------------------------


def test_alexnet_rows_match_the_seed_table():
    m = meta("alexnet")
    x = torch.empty(1, 3, 227, 227, device=META)
    rows = {}
    for name in ("C1", "N1", "S2", "C3", "N3", "S4", "C5", "C6", "C7", "S8"):
        x = getattr(m, name)(x)
        rows[name] = tuple(x.shape[1:])
    expect = {"C1": (96, 55, 55), "S2": (96, 27, 27), "C3": (256, 27, 27), "S4": (256, 13, 13),
              "C5": (384, 13, 13), "C6": (384, 13, 13), "C7": (256, 13, 13), "S8": (256, 6, 6)}
    assert {k: rows[k] for k in expect} == expect
    assert rows["N1"] == rows["C1"] and rows["N3"] == rows["C3"]
    table = {  # name: (kernel, stride, padding, activation) from the seed's figs. 13-14
        "C1": (11, 4, "valid", "relu"), "S2": (3, 2, "valid", None), "C3": (5, 1, "same", "relu"),
        "S4": (3, 2, "valid", None), "C5": (3, 1, "same", "relu"), "C6": (3, 1, "same", "relu"),
        "C7": (3, 1, "same", "relu"), "S8": (3, 2, "valid", None),
    }
    for name, (k, s, pad, act) in table.items():
        layer = getattr(m, name)
        assert (layer.kernel_size, layer.stride, layer.padding, layer.activation) == ((k, k), (s, s), pad, act), name
    assert m.F9.out_features == m.F10.out_features == 4096 and m.F9.activation == "relu"
    assert m.D9.p == m.D10.p == 0.5
    assert isinstance(m.N1, type(m.N3)) and m.N1.layer_type == "LRN"


# --- GoogLeNet ----------------------------------------------------------------------------------

# Szegedy et al. 2014, table 1: output depth, params (K) and ops (M) of each inception module.
GOOGLENET_TABLE = {
    "3a": (256, 159, 128, 28), "3b": (480, 380, 304, 28),
    "4a": (512, 364, 73, 14), "4b": (512, 437, 88, 14), "4c": (512, 463, 100, 14),
    "4d": (528, 580, 119, 14), "4e": (832, 840, 170, 14),
    "5a": (832, 1072, 54, 7), "5b": (1024, 1388, 71, 7),
}
# The paper's table is not self-consistent for two rows: for 4c the ops column (100M) fits
# the filter numbers (497.5K weights x 14 x 14 = 99.8M) but the params column says 463K; for
# 5a neither column fits (1018K weights; 1072K x 7 x 7 = 52.5M, not 54M).
PAPER_TYPOS = {"4c", "5a"}


def conv_weights(m: nn.Module) -> int:
    return sum(c.weight.numel() for c in m.modules() if isinstance(c, nn.Conv2d))


def test_googlenet_inception_modules_match_table_1():
    m = meta("googlenet")
    x = torch.empty(1, 3, 224, 224, device=META)
    for name in m._STAGES["stem"]:
        x = getattr(m, name)(x)
    assert tuple(x.shape[1:]) == (192, 28, 28)
    for module, (depth, params_k, ops_m, side) in GOOGLENET_TABLE.items():
        if module in ("4a", "5a"):
            x = getattr(m, f"pool{int(module[0]) - 1}")(x)
        block = getattr(m, f"inception{module}")
        x = block(x)
        assert tuple(x.shape[1:]) == (depth, side, side), module
        weights = conv_weights(block)  # the paper counts weights, not biases
        ops = weights * side * side / 1e6
        assert ops == pytest.approx(ops_m, rel=0.01) or module == "5a", module
        if module not in PAPER_TYPOS:
            assert weights / 1024 == pytest.approx(params_k, rel=0.02), module
    assert conv_weights(m.conv2_reduce) + conv_weights(m.conv2) == 112 * 1024  # "conv 3x3: 112K"
    assert m.fc.weight.numel() / 1024 == pytest.approx(1000)  # "linear: 1000K"


def test_googlenet_sizes_halve_to_7x7():
    m = meta("googlenet")
    x = torch.empty(1, 3, 224, 224, device=META)
    sides = {}
    for names in m._STAGES.values():
        for n in names:
            x = getattr(m, n)(x)
            sides[n] = x.shape[-1]
    assert [sides[n] for n in ("conv1", "pool1", "pool2", "pool3", "pool4")] == [112, 56, 28, 14, 7]
    assert m.dropout.p == 0.4
    assert not any(isinstance(b, nn.BatchNorm2d) for b in m.modules())


# --- VGG and ResNet against torchvision ----------------------------------------------------------

TORCHVISION = ["vgg16", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]


@pytest.mark.parametrize("name", TORCHVISION)
def test_parameters_equal_torchvision_in_order(name):
    import torchvision

    with META:
        ref = getattr(torchvision.models, name)(weights=None)
    ours = meta(name)
    assert count_params(ours) == count_params(ref)
    assert shapes(ours) == shapes(ref)
    # buffers too (batch-norm statistics), so a whole torchvision state dict loads by position
    assert [tuple(v.shape) for v in ours.state_dict().values()] == [tuple(v.shape) for v in ref.state_dict().values()]
    if name not in DEEP:
        x = torch.empty(2, 3, 224, 224, device=META)
        assert ours(x).shape == ref(x).shape


def test_resnet18_with_torchvision_weights_gives_torchvision_outputs():
    import torchvision

    torch.manual_seed(0)
    ref = torchvision.models.resnet18(weights=None).eval()
    ours = empty_cpu("resnet18")
    load_by_position(ours, ref)
    x = torch.randn(2, 3, 64, 64)
    trunk = nn.Sequential(*list(ref.children())[:-2])  # torchvision's resnet up to layer4
    with torch.no_grad():
        assert_same_outputs(ours.forward_features(x), trunk(x))
        assert_same_outputs(ours(x), ref(x))


@pytest.mark.slow
def test_vgg16_with_torchvision_weights_gives_torchvision_outputs():
    import torchvision

    torch.manual_seed(0)
    ref = torchvision.models.vgg16(weights=None).eval()
    ours = empty_cpu("vgg16")
    load_by_position(ours, ref)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert_same_outputs(ours.forward_features(x), ref.features(x))
        assert_same_outputs(ours(x), ref(x))


# --- SE-ResNet and Xception against timm ----------------------------------------------------------


@pytest.mark.parametrize("name,timm_name", [("se_resnet50", "seresnet50"), ("xception", "legacy_xception")])
def test_parameters_equal_timm_in_order(name, timm_name):
    import timm

    ref = timm.create_model(timm_name, pretrained=False, device=META)
    ours = meta(name)
    assert count_params(ours) == count_params(ref) == HAND_BUILT[name].params
    assert shapes(ours) == shapes(ref)
    assert [tuple(v.shape) for v in ours.state_dict().values()] == [tuple(v.shape) for v in ref.state_dict().values()]


def test_se_units_give_timm_outputs():
    """SE block placement (after the last BN, before the addition) and arithmetic equal timm's:
    checked on the cheap SE-ResNet-18 that both can build."""
    import timm

    from cnncli.layers import ResidualUnit
    from cnncli.models.resnet import ResNet

    torch.manual_seed(0)
    ref = timm.create_model("seresnet18", pretrained=False).eval()
    with META:
        ours = ResNet(ResidualUnit, (2, 2, 2, 2), se=True)
    ours = ours.to_empty(device="cpu").eval()
    load_by_position(ours, ref)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert_same_outputs(ours.forward_features(x), ref.forward_features(x))
        assert_same_outputs(ours(x), ref(x))


@pytest.mark.slow
def test_se_resnet50_with_timm_weights_gives_timm_outputs():
    import timm

    torch.manual_seed(0)
    ref = timm.create_model("seresnet50", pretrained=False).eval()
    ours = empty_cpu("se_resnet50")
    load_by_position(ours, ref)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert_same_outputs(ours.forward_features(x), ref.forward_features(x))
        assert_same_outputs(ours(x), ref(x))


def test_xception_with_timm_weights_gives_timm_outputs():
    import timm

    torch.manual_seed(0)
    ref = timm.create_model("legacy_xception", pretrained=False).eval()
    ours = empty_cpu("xception")
    load_by_position(ours, ref)
    # 64 -> 31 -> 29 -> 15 -> 8 -> 4 -> 2: block12's max pool sees an even size, where its
    # 1-pixel padding and TF 'same' padding would differ
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert_same_outputs(ours.forward_features(x), ref.forward_features(x))
        assert_same_outputs(ours(x), ref(x))
    assert ours.forward_features(x).shape == ref.forward_features(x).shape


# --- what inspect reads ---------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_every_layer_block_declares_inspect_attributes(name):
    m = shared(name)
    blocks = [b for b in m.modules() if hasattr(b, "layer_type")]
    assert blocks, name
    for b in blocks:
        assert isinstance(b.layer_type, str) and isinstance(b.atomic, bool)
    convs = [b for b in blocks if isinstance(b, ConvLayer)]
    assert all(isinstance(c.kernel_size, tuple) and isinstance(c.stride, tuple) for c in convs)


# --------------------------------------------------------------------------- module structure

MODELS_DIR = Path(__file__).resolve().parents[1] / "cnncli" / "models"


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return found


def test_no_source_of_networks_imports_the_registry_back():
    """The registry dispatches over the sources; a source that imported it would make a cycle."""
    sources = [p for p in MODELS_DIR.rglob("*.py") if p.name != "registry.py" and p.parent.name != "__pycache__"]
    assert len(sources) > 10
    for path in sources:
        if path == MODELS_DIR / "__init__.py":
            continue  # the package's front door re-exports the registry
        bad = {m for m in _imports(path) if m.startswith("cnncli.models.registry") or m == "cnncli.models"}
        assert not bad, f"{path.relative_to(MODELS_DIR)} imports {bad}"


def test_what_only_describes_or_checks_a_network_imports_no_torch():
    """info, the hand-built table, the model-file vocabulary and schema, and the geometry they share
    load without torch, so `cnncli models` and a model file's checks stay instant."""
    code = ("import sys\n"
            "import cnncli.geometry, cnncli.models.info, cnncli.models.hand, cnncli.models.registry\n"
            "import cnncli.models.model_file.vocabulary, cnncli.models.model_file.schema\n"
            "from cnncli.models.model_file import check_spec, good_practice_toml, model_file_info\n"
            "assert 'torch' not in sys.modules\n")
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": str(MODELS_DIR.parents[1])})


@pytest.mark.parametrize("first", ["cnncli.models.model_file.build", "cnncli.models.model_file.template",
                                   "cnncli.models.registry", "cnncli.checkpoint"])
def test_every_models_module_imports_first_in_a_fresh_interpreter(first):
    """No import cycle: whichever module a caller imports first, the rest follow."""
    rest = sorted("cnncli." + ".".join(p.relative_to(MODELS_DIR.parent).with_suffix("").parts).removesuffix(".__init__")
                  for p in MODELS_DIR.rglob("*.py"))
    code = f"import {first}\n" + "".join(f"import {m}\n" for m in rest)
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": str(MODELS_DIR.parents[1])})


def test_no_models_module_is_over_600_lines():
    for path in [*MODELS_DIR.rglob("*.py"), MODELS_DIR.parent / "geometry.py"]:
        assert len(path.read_text().splitlines()) <= 600, path.name



def test_a_module_built_by_the_registry_carries_no_patched_attributes():
    """The spec and info travel beside the module (BuiltModel), never set on the nn.Module."""
    built = build_model("lenet5", device="meta")
    assert not hasattr(built.module, "cnncli_spec") and not hasattr(built.module, "cnncli_info")
    assert built.info.name == "lenet5" and built.spec["name"] == "lenet5"
    assert create_model("lenet5", device="meta").__class__ is built.module.__class__
