"""The seed's building blocks behave as the seed (and TF/Keras, timm, torchvision) define them."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from cnncli.errors import InputError
from cnncli.layers import (
    AvgPool,
    BottleneckUnit,
    Conv2dSame,
    ConvLayer,
    Dense,
    GlobalAvgPool,
    InceptionModule,
    LocalResponseNorm,
    MaxPool,
    ResidualUnit,
    SEBlock,
    SeparableConv2d,
    same_padding,
    se_reduced_channels,
)


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


SIZES = range(1, 40)
KERNELS = [1, 2, 3, 4, 5, 7, 11]
STRIDES = [1, 2, 3, 4]


# --- padding arithmetic ------------------------------------------------------------------------


def brute_force_same(in_size: int, k: int, s: int, d: int = 1) -> tuple[int, int]:
    """The smallest total padding that gives ceil(in/s) windows which all fit, split with the
    odd zero at the end: found by trying totals, not by the closed formula."""
    want = math.ceil(in_size / s)
    for total in range(k * d + s + 1):
        if (in_size + total - (k - 1) * d - 1) // s + 1 >= want:
            return total // 2, total - total // 2
    raise AssertionError("no padding found")


@pytest.mark.parametrize("d", [1, 2])
def test_same_padding_matches_brute_force_and_timm(d):
    from timm.layers import get_same_padding

    for n in SIZES:
        for k in KERNELS:
            for s in STRIDES:
                before, after = same_padding(n, k, s, d)
                assert (before, after) == brute_force_same(n, k, s, d), (n, k, s, d)
                assert before + after == get_same_padding(n, k, s, d)
                assert after - before in (0, 1)  # "as evenly as possible", extra at bottom/right


def test_same_padding_known_values():
    # AlexNet's C3: 27x27, 5x5, stride 1 -> two zeros each side
    assert same_padding(27, 5, 1) == (2, 2)
    # GoogLeNet's first conv: 224, 7x7, stride 2 -> 112 outputs need 5 zeros: 2 top, 3 bottom
    assert same_padding(224, 7, 2) == (2, 3)
    # kernel smaller than stride: no padding
    assert same_padding(10, 1, 2) == (0, 0)


@pytest.mark.parametrize("stride", [1, 2, 3])
@pytest.mark.parametrize("kernel", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("size", [7, 8, 9, 16])
def test_conv_output_sizes_valid_and_same(size, kernel, stride):
    x = torch.randn(1, 2, size, size + 1)
    same = Conv2dSame(2, 3, kernel, stride, padding="same")(x)
    valid = Conv2dSame(2, 3, kernel, stride, padding="valid")(x)
    assert same.shape[-2:] == (math.ceil(size / stride), math.ceil((size + 1) / stride))
    assert valid.shape[-2:] == ((size - kernel) // stride + 1, (size + 1 - kernel) // stride + 1)


@pytest.mark.parametrize("kernel,stride,size", [(3, 2, 8), (4, 1, 9), (3, 3, 10), (7, 2, 15), (5, 1, 6)])
def test_conv_same_equals_timm_pad_same(kernel, stride, size):
    from timm.layers import pad_same

    conv = Conv2dSame(2, 3, kernel, stride, padding="same")
    x = torch.randn(2, 2, size, size + 3)
    reference = nn.functional.conv2d(pad_same(x, conv.kernel_size, conv.stride), conv.weight, conv.bias, stride)
    torch.testing.assert_close(conv(x), reference)


def test_same_conv_stride1_odd_kernel_uses_static_padding():
    conv = Conv2dSame(1, 1, 3, 1, padding="same")
    assert not conv.dynamic_same and conv.padding == (1, 1)
    assert Conv2dSame(1, 1, 3, 2, padding="same").dynamic_same
    assert Conv2dSame(1, 1, 2, 1, padding="same").dynamic_same  # even kernel: asymmetric


def test_same_conv_places_the_odd_zero_bottom_right():
    # a 2x2 box filter on a 3x3 image of ones with 'same': only the last row/column see padding
    conv = Conv2dSame(1, 1, 2, 1, padding="same", bias=False)
    with torch.no_grad():
        conv.weight.fill_(1.0)
    out = conv(torch.ones(1, 1, 3, 3))[0, 0]
    assert out.tolist() == [[4, 4, 2], [4, 4, 2], [2, 2, 1]]


def test_bad_padding_and_activation_are_input_errors():
    with pytest.raises(InputError, match="padding"):
        ConvLayer(1, 1, 3, padding="full")
    with pytest.raises(InputError, match="activation"):
        ConvLayer(1, 1, 3, activation="relu6x")


# --- pooling ------------------------------------------------------------------------------------


def test_max_pool_valid_drops_what_does_not_fit():
    x = torch.arange(25.0).view(1, 1, 5, 5)
    out = MaxPool(2, 2)(x)  # stride defaults to the kernel
    assert out.shape[-2:] == (2, 2)
    assert out[0, 0].tolist() == [[6, 8], [16, 18]]


def test_max_pool_same_ignores_padded_cells():
    # all negative input: zero padding would win the max, -inf padding never does
    x = -torch.arange(1.0, 10.0).view(1, 1, 3, 3)
    out = MaxPool(2, 2, padding="same")(x)
    assert out.shape[-2:] == (2, 2)
    assert out[0, 0].tolist() == [[-1, -3], [-7, -9]]
    # stride 1, odd kernel (static padding path)
    out = MaxPool(3, 1, padding="same")(x)
    assert out.shape[-2:] == (3, 3) and out.max() == -1 and out[0, 0, 2, 2] == -5


def test_avg_pool_same_divides_by_real_cells():
    x = torch.arange(1.0, 10.0).view(1, 1, 3, 3)
    out = AvgPool(2, 2, padding="same")(x)[0, 0]
    # windows: [1,2,4,5] [3,6] [7,8] [9]; TF counts only the real cells
    assert out.tolist() == [[3.0, 4.5], [7.5, 9.0]]
    out = AvgPool(3, 1, padding="same")(x)[0, 0]
    assert out[0, 0].item() == pytest.approx((1 + 2 + 4 + 5) / 4)
    assert out[1, 1].item() == pytest.approx(5.0)


@pytest.mark.parametrize("cls", [MaxPool, AvgPool])
@pytest.mark.parametrize("kernel,stride,size", [(2, 2, 7), (3, 2, 8), (3, 3, 10), (4, 1, 5)])
def test_pool_output_sizes(cls, kernel, stride, size):
    x = torch.randn(1, 2, size, size)
    assert cls(kernel, stride, "same")(x).shape[-1] == math.ceil(size / stride)
    assert cls(kernel, stride, "valid")(x).shape[-1] == (size - kernel) // stride + 1


def test_global_avg_pool():
    x = torch.randn(2, 3, 4, 5)
    torch.testing.assert_close(GlobalAvgPool()(x), x.mean((2, 3)))
    assert GlobalAvgPool(flatten=False)(x).shape == (2, 3, 1, 1)


# --- local response normalisation ------------------------------------------------------------


def lrn_loop(a: torch.Tensor, r: int, alpha: float, beta: float, k: float) -> torch.Tensor:
    """The seed's equation (3), written as a loop over the channels."""
    f_n = a.shape[1]
    b = torch.empty_like(a)
    for i in range(f_n):
        lo, hi = max(0, i - r // 2), min(i + r // 2, f_n - 1)
        s = sum(a[:, j] ** 2 for j in range(lo, hi + 1))
        b[:, i] = a[:, i] * (k + alpha * s) ** (-beta)
    return b


@pytest.mark.parametrize("r", [1, 2, 3, 4, 5, 8])
@pytest.mark.parametrize("channels", [3, 7])
def test_lrn_matches_equation_3(r, channels):
    torch.manual_seed(r)
    a = torch.randn(2, channels, 4, 3, dtype=torch.float64) * 3
    alpha, beta, k = 0.05, 0.6, 1.5  # large alpha so that a wrong window or scale shows
    got = LocalResponseNorm(r, alpha, beta, k)(a)
    torch.testing.assert_close(got, lrn_loop(a, r, alpha, beta, k))


def test_lrn_defaults_are_alexnets():
    lrn = LocalResponseNorm()
    assert (lrn.size, lrn.alpha, lrn.beta, lrn.k) == (5, 1e-4, 0.75, 2.0)
    a = torch.rand(1, 10, 2, 2, dtype=torch.float64) * 20
    torch.testing.assert_close(lrn(a), lrn_loop(a, 5, 1e-4, 0.75, 2.0))
    # and it is not torch's LocalResponseNorm with the same numbers (that one divides alpha by 5)
    assert not torch.allclose(lrn(a), nn.LocalResponseNorm(5, 1e-4, 0.75, 2.0)(a))


# --- blocks: shapes and parameter counts ------------------------------------------------------


def test_conv_layer_params_and_attributes():
    c = ConvLayer(3, 96, 11, 4, "valid")
    assert n_params(c) == 96 * 3 * 11 * 11 + 96
    assert (c.kernel_size, c.stride, c.padding, c.activation, c.out_channels) == ((11, 11), (4, 4), "valid", "relu", 96)
    assert c(torch.randn(1, 3, 227, 227)).shape == (1, 96, 55, 55)  # AlexNet's C1
    bn = ConvLayer(3, 8, 3, padding="same", batch_norm=True, activation=None)
    assert bn.conv.bias is None and n_params(bn) == 8 * 27 + 2 * 8
    assert bn.activation is None


def test_dense_and_separable_params():
    with torch.device("meta"):
        assert n_params(Dense(9216, 4096, "relu")) == 9216 * 4096 + 4096
    d = Dense(4, 3, "sigmoid")
    y = d(torch.randn(5, 4))
    assert y.shape == (5, 3) and bool(((y > 0) & (y < 1)).all())
    s = SeparableConv2d(728, 1024, 3)
    assert n_params(s) == 728 * 9 + 728 * 1024
    assert s(torch.randn(1, 728, 5, 5)).shape == (1, 1024, 5, 5)
    assert SeparableConv2d(4, 6, 3, stride=2)(torch.randn(1, 4, 9, 9)).shape == (1, 6, 5, 5)


def test_inception_module_3a():
    m = InceptionModule(192, 64, 96, 128, 16, 32, 32)
    assert m.out_channels == 256
    weights = 192 * 64 + 192 * 96 + 96 * 9 * 128 + 192 * 16 + 16 * 25 * 32 + 192 * 32
    biases = 64 + 96 + 128 + 16 + 32 + 32
    assert n_params(m) == weights + biases
    assert m(torch.randn(1, 192, 7, 7)).shape == (1, 256, 7, 7)


def test_se_block():
    torch.manual_seed(0)
    se = SEBlock(64, reduction=16)
    assert se.hidden_channels == 8
    assert n_params(se) == 64 * 8 + 8 + 8 * 64 + 64
    x = torch.randn(2, 64, 5, 5) * 10
    w = se.weights(x)
    assert w.shape == (2, 64, 1, 1) and bool(((w > 0) & (w < 1)).all())
    torch.testing.assert_close(se(x), x * w)


@pytest.mark.parametrize("channels", [64, 96, 200, 256, 512, 1024, 2048, 24])
def test_se_hidden_width_matches_timm(channels):
    from timm.layers import SEModule

    assert se_reduced_channels(channels) == SEModule(channels).fc1.out_channels
    assert n_params(SEBlock(channels)) == n_params(SEModule(channels))


def test_residual_unit_identity_and_projection_skip():
    same = ResidualUnit(64, 64)
    assert same.downsample is None
    assert n_params(same) == 2 * (64 * 64 * 9 + 2 * 64)
    x = torch.randn(2, 64, 8, 8)
    assert same(x).shape == x.shape
    # with the residual branch switched off (zero BN scale), the unit passes relu(x) through
    with torch.no_grad():
        same.conv2.bn.weight.zero_()
        same.conv2.bn.bias.zero_()
    same.eval()
    torch.testing.assert_close(same(x), torch.relu(x))

    down = ResidualUnit(64, 128, stride=2)
    assert down.downsample is not None
    assert down.downsample.kernel_size == (1, 1) and down.downsample.stride == (2, 2)
    assert n_params(down) == 64 * 128 * 9 + 128 * 128 * 9 + 4 * 128 + 64 * 128 + 2 * 128
    assert down(x).shape == (2, 128, 4, 4)


def test_residual_units_match_torchvision_blocks():
    from torchvision.models.resnet import BasicBlock, Bottleneck, conv1x1

    def shapes(m):
        return [tuple(p.shape) for p in m.parameters()]

    ds = nn.Sequential(conv1x1(64, 128, 2), nn.BatchNorm2d(128))
    assert shapes(ResidualUnit(64, 128, 2)) == shapes(BasicBlock(64, 128, 2, downsample=ds))
    ds = nn.Sequential(conv1x1(256, 512, 2), nn.BatchNorm2d(512))
    unit = BottleneckUnit(256, 128, stride=2)
    assert shapes(unit) == shapes(Bottleneck(256, 128, 2, downsample=ds))
    assert unit.conv2.stride == (2, 2) and unit.conv1.stride == (1, 1)  # v1.5: stride on the 3x3
    assert unit(torch.randn(1, 256, 8, 8)).shape == (1, 512, 4, 4)
    se_unit = BottleneckUnit(256, 64, se=True)
    assert se_unit.downsample is None
    assert n_params(se_unit) == n_params(BottleneckUnit(256, 64)) + n_params(SEBlock(256))
