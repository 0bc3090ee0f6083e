"""cnncli.summary: the inspect table as data, checked against the seed's AlexNet table, hand
counts of multiply-adds and receptive fields, and the registry's parameter counts."""

from __future__ import annotations

from collections import OrderedDict

import pytest
import torch
from torch import nn

from cnncli.errors import InputError
from cnncli.layers import ConvLayer, GlobalAvgPool, MaxPool, SEBlock
from cnncli.models.registry import HAND_BUILT
from cnncli.summary import summarize

# The seed's figs. 13-14 (HML's table): name, type, maps, size, kernel, stride, padding, activation.
# F9/F10/out have no maps: their size is the number of units. The output layer is written
# "softmax" in the seed; cnncli's network returns logits (the loss applies the softmax).
SEED_ALEXNET = [
    ("C1", "Convolution", 96, "55x55", [11, 11], [4, 4], "valid", "relu"),
    ("N1", "LRN", 96, "55x55", None, None, None, None),
    ("S2", "Max pooling", 96, "27x27", [3, 3], [2, 2], "valid", None),
    ("C3", "Convolution", 256, "27x27", [5, 5], [1, 1], "same", "relu"),
    ("N3", "LRN", 256, "27x27", None, None, None, None),
    ("S4", "Max pooling", 256, "13x13", [3, 3], [2, 2], "valid", None),
    ("C5", "Convolution", 384, "13x13", [3, 3], [1, 1], "same", "relu"),
    ("C6", "Convolution", 384, "13x13", [3, 3], [1, 1], "same", "relu"),
    ("C7", "Convolution", 256, "13x13", [3, 3], [1, 1], "same", "relu"),
    ("S8", "Max pooling", 256, "6x6", [3, 3], [2, 2], "valid", None),
    ("F9", "Fully connected", None, "4096", None, None, None, "relu"),
    ("F10", "Fully connected", None, "4096", None, None, None, "relu"),
    ("out", "Fully connected", None, "1000", None, None, None, None),
]


@pytest.fixture(scope="module")
def alexnet():
    return summarize("alexnet")


def test_alexnet_rows_read_like_the_seed_table(alexnet):
    got = [(r.name, r.type, r.maps, r.size, r.kernel, r.stride, r.padding, r.activation)
           for r in alexnet.rows]
    assert got == SEED_ALEXNET
    assert alexnet.input_size == (3, 227, 227)


def test_alexnet_totals(alexnet):
    assert alexnet.total_params == HAND_BUILT["alexnet"].params == 62_378_344
    assert alexnet.trainable_params == alexnet.total_params and alexnet.frozen_params == 0
    assert alexnet.weight_bytes == 4 * alexnet.total_params  # float32, no buffers
    # multiply-adds by hand: conv = out_h * out_w * out_c * k_h * k_w * in_c; dense = in * out
    c1 = 55 * 55 * 96 * 11 * 11 * 3
    c3 = 27 * 27 * 256 * 5 * 5 * 96
    c5, c6, c7 = (13 * 13 * 384 * 9 * 256, 13 * 13 * 384 * 9 * 384, 13 * 13 * 256 * 9 * 384)
    dense = 9216 * 4096 + 4096 * 4096 + 4096 * 1000
    by_name = {r.name: r.macs for r in alexnet.rows}
    assert by_name["C1"] == c1 and by_name["C3"] == c3 and by_name["F9"] == 9216 * 4096
    assert alexnet.macs == c1 + c3 + c5 + c6 + c7 + dense
    assert sum(r.params for r in alexnet.rows) == alexnet.total_params
    # every layer's output once, float32
    assert alexnet.activation_bytes == 4 * sum(
        int(torch.Size(r.output_shape).numel()) for r in alexnet.rows)


def test_alexnet_receptive_fields(alexnet):
    # r_out = r_in + (k - 1) * j_in, j_out = j_in * s:  C1 11 (j 4); S2 11 + 2*4 = 19 (j 8);
    # C3 19 + 4*8 = 51; S4 51 + 2*8 = 67 (j 16); C5 99, C6 131, C7 163; S8 195; dense: all 227
    rf = {r.name: r.receptive_field for r in alexnet.rows}
    expected = {"C1": 11, "N1": 11, "S2": 19, "C3": 51, "S4": 67, "C5": 99, "C6": 131,
                "C7": 163, "S8": 195, "F9": 227, "out": 227}
    assert {k: rf[k] for k in expected} == {k: [v, v] for k, v in expected.items()}


def test_single_conv_macs_equal_the_hand_count():
    s = summarize(nn.Sequential(nn.Conv2d(3, 8, 3), nn.Flatten(), nn.Linear(8 * 14 * 14, 10)),
                  (3, 16, 16))
    conv, fc = s.rows
    assert conv.macs == 14 * 14 * 8 * 3 * 3 * 3
    assert fc.macs == 8 * 14 * 14 * 10
    assert conv.params == 8 * 27 + 8 and s.total_params == conv.params + fc.params


def _rf(model, size=(3, 32, 32)):
    return [r.receptive_field[0] for r in summarize(model, size).rows]


def test_receptive_field_of_stacked_convolutions():
    three = nn.Sequential(*[nn.Conv2d(3, 3, 3, padding=1) for _ in range(3)])
    assert _rf(three) == [3, 5, 7]
    strided = nn.Sequential(nn.Conv2d(3, 3, 3, stride=2), nn.Conv2d(3, 3, 3))  # 3 + 2*2
    assert _rf(strided) == [3, 7]
    dilated = nn.Sequential(nn.Conv2d(3, 3, 3, dilation=2))  # effective kernel 5
    assert _rf(dilated) == [5]
    rect = summarize(nn.Sequential(nn.Conv2d(3, 3, (1, 7))), (3, 16, 16)).rows[0]
    assert rect.receptive_field == [1, 7] and rect.kernel == [1, 7]


def test_receptive_field_of_pooling_and_global_layers():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.MaxPool2d(2), nn.Conv2d(4, 4, 3),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 2))
    # conv 3 (j 1); pool 3 + 1 = 4 (j 2); conv 4 + 2*2 = 8; global pooling and dense: whole image
    assert _rf(net) == [3, 4, 8, 32, 32]


class _Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(4, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 5, padding=2)

    def forward(self, x):
        return self.a(x) + self.b(x)


def test_receptive_field_takes_the_widest_branch_and_ignores_broadcast_gates():
    assert _rf(nn.Sequential(nn.Conv2d(3, 4, 1), _Residual()), (3, 16, 16)) == [1, 5]
    # an SE block multiplies each map by a weight computed from the whole image; the units'
    # receptive field is still that of the convolutions
    rows = summarize(nn.Sequential(ConvLayer(3, 16, 3, padding="same"), SEBlock(16)), (3, 16, 16)).rows
    assert [r.type for r in rows] == ["Convolution", "SE block"]
    assert [r.receptive_field for r in rows] == [[3, 3], [3, 3]]


def test_activation_modules_fold_into_the_layer_they_follow():
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 3),
                        nn.Tanh(), GlobalAvgPool(), nn.Linear(4, 3), nn.Softmax(dim=1))
    rows = summarize(net, (3, 12, 12)).rows
    assert [(r.type, r.activation) for r in rows] == [
        ("Convolution", None), ("Batch norm", "relu"), ("Convolution", "tanh"),
        ("Global average pooling", None), ("Fully connected", "softmax")]


class _Adds(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        self.act = nn.ReLU()

    def forward(self, x):
        return self.act(self.conv(x) + x)  # the activation follows an addition, not a layer


def test_activation_after_an_addition_is_its_own_row_inside_an_opened_block():
    rows = summarize(nn.Sequential(_Adds()), (3, 8, 8), depth=2).rows
    assert [(r.name, r.type, r.activation) for r in rows] == [
        ("0.conv", "Convolution", None), ("0.act", "Activation", "relu")]
    collapsed = summarize(nn.Sequential(_Adds()), (3, 8, 8)).rows
    assert [(r.name, r.type, r.activation) for r in collapsed] == [("0", "_Adds", "relu")]


@pytest.mark.parametrize("name, size", [("lenet5", None), ("typical_cnn", None),
                                        ("googlenet", (3, 64, 64)), ("resnet18", (3, 64, 64))])
def test_total_params_equal_the_registry(name, size):
    s = summarize(name, input_size=size)  # small inputs keep the test fast; counts do not change
    assert s.total_params == HAND_BUILT[name].params
    assert sum(r.params for r in s.rows) == s.total_params  # rows partition the network


def test_googlenet_depth_collapses_and_opens_inception_modules():
    small = (3, 112, 112)  # half the default size: the same layers at a quarter of the work
    default = summarize("googlenet", input_size=small)
    inception = [r for r in default.rows if r.type == "Inception module"]
    assert len(inception) == 9
    i3a = next(r for r in inception if r.name == "inception3a")
    assert i3a.maps == 256 and i3a.size == "14x14" and i3a.stride == [1, 1]
    # depth 2: each module shows its four branches; depth 3: every convolution and pooling
    two = summarize("googlenet", input_size=small, depth=2)
    assert [r.name for r in two.rows if r.name.startswith("inception3a.")] == [
        "inception3a.branch1", "inception3a.branch2", "inception3a.branch3", "inception3a.branch4"]
    three = summarize("googlenet", input_size=small, depth=3)
    inside = [(r.name, r.type, r.kernel) for r in three.rows if r.name.startswith("inception3a.")]
    assert inside == [
        ("inception3a.branch1", "Convolution", [1, 1]),
        ("inception3a.branch2.0", "Convolution", [1, 1]),
        ("inception3a.branch2.1", "Convolution", [3, 3]),
        ("inception3a.branch3.0", "Convolution", [1, 1]),
        ("inception3a.branch3.1", "Convolution", [5, 5]),
        ("inception3a.branch4.0", "Max pooling", [3, 3]),
        ("inception3a.branch4.1", "Convolution", [1, 1]),
    ]
    for s in (two, three):  # the totals do not depend on how the table is cut
        assert sum(r.params for r in s.rows) == default.total_params
        assert (s.macs, s.activation_bytes) == (default.macs, default.activation_bytes)
    # the module's field is the widest branch: the 5x5 one
    assert i3a.receptive_field == max(r.receptive_field for r in three.rows
                                      if r.name.startswith("inception3a."))


def test_resnet18_depth_one_shows_stages():
    s = summarize("resnet18", input_size=(3, 128, 128), depth=1)
    stages = [(r.name, r.maps, r.size, r.stride) for r in s.rows if r.name.startswith("layer")]
    assert stages == [("layer1", 64, "32x32", [1, 1]), ("layer2", 128, "16x16", [2, 2]),
                      ("layer3", 256, "8x8", [2, 2]), ("layer4", 512, "4x4", [2, 2])]
    default = summarize("resnet18", input_size=(3, 128, 128))
    assert [r.type for r in default.rows].count("Residual unit") == 8
    assert default.rows[-3].receptive_field == [435, 435]  # ResNet-18's well-known 435 pixels


def test_input_and_num_classes_rebuild_the_network():
    s = summarize("alexnet", input_size=(1, 227, 227), num_classes=10)
    assert s.rows[0].params == 96 * 11 * 11 * 1 + 96
    assert s.rows[-1].output_shape == [10]
    assert s.total_params == 62_378_344 - (96 * 11 * 11 * 2) - 4_097_000 + (4096 * 10 + 10)
    assert s.num_classes == 10 and s.input_size == (1, 227, 227)


def test_too_small_input_names_the_layer_where_the_size_collapses():
    with pytest.raises(InputError) as err:
        summarize("alexnet", input_size=(3, 32, 32))
    msg = str(err.value)
    assert msg.startswith("input 3x32x32 is too small for alexnet: at layer S4 (Max pooling)")
    assert "feature map is 2x2 but the kernel is 3x3" in msg
    assert "\n" not in msg
    with pytest.raises(InputError, match=r"at layer F9 \(Fully connected\), it takes 9,216 "
                                         r"features but gets 16,384 \(S8 outputs 256x8x8\)"):
        summarize("alexnet", input_size=(3, 300, 300))


def test_depth_must_be_positive():
    with pytest.raises(InputError):
        summarize("lenet5", depth=0)


class _NeedsRealData(nn.Module):
    """A forward that reads a value (no meta kernel can): forces the CPU fallback."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)

    def forward(self, x):
        y = self.conv(x)
        return y * (1 + int(y.abs().sum().item() > -1))


def test_meta_and_zero_weight_cpu_runs_agree(monkeypatch):
    from cnncli.summary import build

    on_cpu = summarize("googlenet", input_size=(3, 64, 64), depth=2)
    monkeypatch.setattr(build, "CPU_WEIGHT_LIMIT", 0)  # as for a network with huge weights
    on_meta = summarize("googlenet", input_size=(3, 64, 64), depth=2)
    assert (on_cpu.device, on_meta.device) == ("cpu", "meta")
    assert on_meta.rows == on_cpu.rows
    assert (on_meta.macs, on_meta.total_params, on_meta.activation_bytes, on_meta.weight_bytes) == (
        on_cpu.macs, on_cpu.total_params, on_cpu.activation_bytes, on_cpu.weight_bytes)


def test_falls_back_to_a_real_cpu_build_when_meta_cannot_run(monkeypatch):
    from cnncli.models.info import BuiltModel
    from cnncli.summary import build

    monkeypatch.setattr(build, "CPU_WEIGHT_LIMIT", 0)
    monkeypatch.setattr(build, "resolve_target", lambda name, size, classes: build.Target(
        name, lambda device: BuiltModel(_NeedsRealData().to(device), {"name": name}, None), (1, 8, 8)))
    s = summarize("needs-real-data")
    assert s.device == "cpu"
    assert s.rows[0].output_shape == [2, 6, 6] and s.total_params == 20


def test_hand_built_layers_report_their_geometry():
    net = nn.Sequential(OrderedDict(
        c=ConvLayer(3, 8, 5, 2, "same", activation="tanh"), p=MaxPool(3, 2, "same")))
    c, p = summarize(net, (3, 15, 15)).rows
    assert (c.size, c.kernel, c.stride, c.padding, c.activation) == ("8x8", [5, 5], [2, 2], "same", "tanh")
    assert (p.size, p.padding) == ("4x4", "same")
    assert c.receptive_field == [5, 5] and p.receptive_field == [5 + 2 * 2, 5 + 2 * 2]


@pytest.mark.slow  # timm's import takes seconds
def test_timm_model():
    pytest.importorskip("timm")
    s = summarize("timm/resnet18", num_classes=7)
    assert s.total_params == 11_689_512 - 513_000 + (512 * 7 + 7)
    assert [r.type for r in s.rows].count("Residual unit") == 8
    first = s.rows[0]
    assert (first.name, first.type, first.kernel, first.stride, first.size) == (
        "conv1", "Convolution", [7, 7], [2, 2], "112x112")
    assert s.rows[1].activation == "relu"  # bn1 + act1 read as one row
    assert s.rows[-1].output_shape == [7]
    assert s.rows[-2].receptive_field == [435, 435]


def test_backbone_plus_head_file_shows_backbone_stages_then_head_layers():
    import tempfile
    from pathlib import Path

    from cnncli.summary import summarize

    text = (
        '[model]\nname = "bb"\ninput = [1, 28, 28]\nnum_classes = 10\n'
        '[backbone]\nmodel = "typical_cnn"\n'
        '[[head]]\ntype = "global_avgpool"\n[[head]]\ntype = "dense"\nunits = "num_classes"\n'
    )
    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "bb.toml"
        path.write_text(text)
        rows = summarize(str(path)).rows
    names = [r.name for r in rows]
    assert any(n.startswith("backbone.") for n in names), names
    assert names[-1].endswith("dense1") or rows[-1].type == "Fully connected"
    # the backbone's own classifier is gone, the head follows the backbone's last row
    first_head = next(i for i, r in enumerate(rows) if not r.name.startswith("backbone."))
    assert all(r.name.startswith("backbone.") for r in rows[:first_head])
