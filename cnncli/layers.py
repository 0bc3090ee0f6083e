"""The seed's building blocks, as small PyTorch modules.

Each block follows a section of the seed (`seed/cnn-slides.txt`): convolution and its
'valid'/'same' padding (fig. 10), max and average pooling (fig. 11), local response
normalisation (equation 3), dense layers, the inception module (fig. 15), residual units
and their skip connections (figs. 19-20), the SE block (fig. 23) and Xception's separable
convolution. They wrap torch (and follow timm's `layers/` for TF-style padding) rather than
re-implementing arithmetic that torch already has.

Every block carries two class attributes that `cnncli inspect` reads:

* `layer_type`: the name shown in the layer table ("Convolution", "Max pooling", ...);
* `atomic`: True for a block shown as one row and never expanded (a convolution with its
  batch norm and activation, a pooling layer, a dense layer); False for composite blocks
  that `inspect --depth` may open (inception module, residual unit, SE block).

Where meaningful a block also exposes `kernel_size` and `stride` (tuples), `padding` (the
string "valid"/"same" or the int/tuple given), `activation` (a name such as "relu", or None)
and `out_channels`.

This module imports torch only (never timm): `cnncli inspect alexnet` must stay fast.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from cnncli.errors import InputError
from cnncli.geometry import Pair, pair, same_padding

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "selu": nn.SELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "softmax": nn.Softmax,
}

PADDINGS = ("valid", "same")


def make_activation(name: str | None) -> nn.Module:
    """An activation module by name ("relu", "tanh", "sigmoid", ...); None means identity."""
    if name is None or name in ("none", "linear", "identity"):
        return nn.Identity()
    key = name.lower()
    if key not in ACTIVATIONS:
        raise InputError(f"unknown activation '{name}'; use one of {', '.join(ACTIVATIONS)} or none")
    if key == "softmax":
        return nn.Softmax(dim=1)
    if key in ("relu", "silu", "swish", "elu", "selu", "leaky_relu"):
        return ACTIVATIONS[key](inplace=True)
    return ACTIVATIONS[key]()


def _check_padding(padding) -> str | Pair:
    if isinstance(padding, str):
        if padding.lower() not in PADDINGS:
            raise InputError(f"unknown padding '{padding}'; use 'valid', 'same' or a number of pixels")
        return padding.lower()
    return pair(padding, "padding")


# ---------------------------------------------------------------------------------------------
# Padding at run time (seed: "Padding", fig. 10; the arithmetic is in cnncli.geometry)
# ---------------------------------------------------------------------------------------------


def _is_static_same(kernel: Pair, stride: Pair, dilation: Pair) -> bool:
    """'same' padding is the same symmetric amount for every input size only at stride 1
    with an odd effective kernel; then the conv/pool's own padding argument does the job."""
    return all(s == 1 and ((k - 1) * d) % 2 == 0 for k, s, d in zip(kernel, stride, dilation))


def _same_pad_arg(x: torch.Tensor, kernel: Pair, stride: Pair, dilation: Pair) -> list[int]:
    """F.pad's (left, right, top, bottom) for 'same' padding of x's last two axes."""
    top, bottom = same_padding(x.shape[-2], kernel[0], stride[0], dilation[0])
    left, right = same_padding(x.shape[-1], kernel[1], stride[1], dilation[1])
    return [left, right, top, bottom]


# ---------------------------------------------------------------------------------------------
# Convolution (seed: "Convolutional Layer", equation 2)
# ---------------------------------------------------------------------------------------------


class Conv2dSame(nn.Conv2d):
    """nn.Conv2d whose padding is 'valid', 'same' (TF semantics, any stride) or pixels.

    Its parameters are exactly nn.Conv2d's (`weight`, `bias`), so state dicts load either way.
    'same' uses the convolution's own symmetric padding when that is right for every input
    size (stride 1, odd kernel) and otherwise pads each input with F.pad (like timm's
    `Conv2dSame`): PyTorch's own padding='same' refuses stride > 1.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding="same",
                 dilation=1, groups: int = 1, bias: bool = True):
        kernel, strides, dil = pair(kernel_size, "kernel"), pair(stride, "stride"), pair(dilation, "dilation")
        spec = _check_padding(padding)
        self.dynamic_same = spec == "same" and not _is_static_same(kernel, strides, dil)
        if spec == "same":
            static = (0, 0) if self.dynamic_same else tuple((k - 1) * d // 2 for k, d in zip(kernel, dil))
        elif spec == "valid":
            static = (0, 0)
        else:
            static = spec
        super().__init__(in_channels, out_channels, kernel, strides, static, dil, groups, bias)
        self.padding_spec = spec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.dynamic_same:
            x = F.pad(x, _same_pad_arg(x, self.kernel_size, self.stride, self.dilation))
        return super().forward(x)


class ConvLayer(nn.Module):
    """A convolutional layer as the seed's tables list it: conv (+ batch norm) (+ activation).

    `padding` is "valid" (no zeros; what does not fit is dropped), "same" (ceil(in/stride)
    outputs, TF/Keras placement, any stride) or a number of pixels (PyTorch style, used where a
    network must match torchvision exactly). The bias defaults to on without batch norm and off
    with it (the norm's shift replaces it).
    """

    layer_type = "Convolution"
    atomic = True

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding="valid",
                 activation: str | None = "relu", batch_norm: bool = False, bias: bool | None = None,
                 groups: int = 1, dilation=1):
        super().__init__()
        if bias is None:
            bias = not batch_norm
        self.conv = Conv2dSame(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias)
        self.bn = nn.BatchNorm2d(out_channels) if batch_norm else None
        self.act = make_activation(activation)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = self.conv.kernel_size
        self.stride = self.conv.stride
        self.padding = self.conv.padding_spec
        self.activation = None if activation in (None, "none", "linear", "identity") else activation
        self.batch_norm = batch_norm
        self.groups = groups

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return self.act(x)


class SeparableConv2d(nn.Module):
    """Depthwise-separable convolution (Xception): a per-channel k x k convolution, then a 1x1
    convolution that mixes channels. Parameters: in*k*k + in*out (no bias by default)."""

    layer_type = "Separable convolution"
    atomic = True

    def __init__(self, in_channels: int, out_channels: int, kernel_size=3, stride=1, padding="same",
                 bias: bool = False, dilation=1):
        super().__init__()
        self.depthwise = Conv2dSame(in_channels, in_channels, kernel_size, stride, padding, dilation,
                                    groups=in_channels, bias=bias)
        self.pointwise = nn.Conv2d(in_channels, out_channels, 1, bias=bias)
        self.in_channels = in_channels
        self.out_channels = out_channels
        self.kernel_size = self.depthwise.kernel_size
        self.stride = self.depthwise.stride
        self.padding = self.depthwise.padding_spec
        self.activation = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pointwise(self.depthwise(x))


# ---------------------------------------------------------------------------------------------
# Pooling (seed: "Pooling Layer", fig. 11; GoogLeNet's global average pooling)
# ---------------------------------------------------------------------------------------------


class _Pool(nn.Module):
    atomic = True

    def __init__(self, kernel_size, stride=None, padding="valid"):
        super().__init__()
        self.kernel_size = pair(kernel_size, "kernel")
        self.stride = self.kernel_size if stride is None else pair(stride, "stride")
        self.padding = _check_padding(padding)
        self._static_same = self.padding == "same" and _is_static_same(self.kernel_size, self.stride, (1, 1))
        self.activation = None

    def _pixels(self) -> Pair:
        if self.padding == "valid":
            return (0, 0)
        if self.padding == "same":  # only reached when static
            return (self.kernel_size[0] // 2, self.kernel_size[1] // 2)
        return self.padding  # type: ignore[return-value]

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding!r}"


class MaxPool(_Pool):
    """Max pooling. 'same' pads with -inf so that padded cells never win (TF semantics);
    'valid' drops what does not fit; pixels pad like nn.MaxPool2d."""

    layer_type = "Max pooling"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding == "same" and not self._static_same:
            x = F.pad(x, _same_pad_arg(x, self.kernel_size, self.stride, (1, 1)), value=-math.inf)
            return F.max_pool2d(x, self.kernel_size, self.stride)
        return F.max_pool2d(x, self.kernel_size, self.stride, self._pixels())


class AvgPool(_Pool):
    """Average pooling. 'same' averages only the real cells of each window (TF semantics:
    padded zeros are not counted); 'valid' drops what does not fit; pixels pad like
    nn.AvgPool2d (zeros counted)."""

    layer_type = "Average pooling"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.padding == "same":
            if self._static_same:
                return F.avg_pool2d(x, self.kernel_size, self.stride, self._pixels(), count_include_pad=False)
            pad = _same_pad_arg(x, self.kernel_size, self.stride, (1, 1))
            summed = F.avg_pool2d(F.pad(x, pad), self.kernel_size, self.stride)
            real = torch.ones((1, 1, *x.shape[-2:]), dtype=x.dtype, device=x.device)
            fraction = F.avg_pool2d(F.pad(real, pad), self.kernel_size, self.stride)
            return summed / fraction
        return F.avg_pool2d(x, self.kernel_size, self.stride, self._pixels())


class GlobalAvgPool(nn.Module):
    """Mean of each feature map (GoogLeNet, ResNet, SE block): (N, C, H, W) -> (N, C), or
    (N, C, 1, 1) with flatten=False."""

    layer_type = "Global average pooling"
    atomic = True

    def __init__(self, flatten: bool = True):
        super().__init__()
        self.flatten = flatten

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3), keepdim=not self.flatten)


class AdaptiveAvgPool(nn.AdaptiveAvgPool2d):
    """Average pooling to a fixed grid (VGG's 7x7 before its dense layers, as torchvision)."""

    layer_type = "Adaptive average pooling"
    atomic = True


# ---------------------------------------------------------------------------------------------
# Local response normalisation (seed: equation 3)
# ---------------------------------------------------------------------------------------------


class LocalResponseNorm(nn.Module):
    """The seed's equation (3):

        b_i = a_i * (k + alpha * sum_{j=max(0, i - r//2)}^{min(i + r//2, f_n - 1)} a_j^2) ** -beta

    with r//2 integer division, so the window spans 2*(r//2)+1 channels (r even or odd), and
    alpha multiplying the plain sum. torch's LocalResponseNorm divides alpha by its window
    size, so this wraps F.local_response_norm with alpha rescaled by that size.

    Defaults are the AlexNet paper's (Krizhevsky et al. 2012): k=2, r=n=5, alpha=1e-4,
    beta=0.75. (The seed prints k=0.75, alpha=1e-3, beta=0.75, which are garbled.)
    """

    layer_type = "LRN"
    atomic = True

    def __init__(self, size: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0):
        super().__init__()
        if size < 1:
            raise InputError(f"LRN depth radius must be at least 1, got {size}")
        self.size, self.alpha, self.beta, self.k = size, alpha, beta, k
        self.window = 2 * (size // 2) + 1
        self.activation = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.local_response_norm(x, self.window, alpha=self.alpha * self.window, beta=self.beta, k=self.k)

    def extra_repr(self) -> str:
        return f"size={self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}"


# ---------------------------------------------------------------------------------------------
# Dense layers and friends (seed: "Fully Connected Layers")
# ---------------------------------------------------------------------------------------------


class Dense(nn.Module):
    """A fully connected layer: Linear (+ activation) (+ dropout when dropout > 0)."""

    layer_type = "Fully connected"
    atomic = True

    def __init__(self, in_features: int, out_features: int, activation: str | None = None,
                 dropout: float = 0.0, bias: bool = True):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=bias)
        self.act = make_activation(activation)
        self.drop = nn.Dropout(dropout) if dropout > 0 else None
        self.in_features = in_features
        self.out_features = out_features
        self.out_channels = out_features
        self.activation = None if activation in (None, "none", "linear", "identity") else activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.linear(x))
        return x if self.drop is None else self.drop(x)


class Dropout(nn.Dropout):
    """nn.Dropout with the attributes `inspect` reads."""

    layer_type = "Dropout"
    atomic = True


class Flatten(nn.Flatten):
    """nn.Flatten with the attributes `inspect` reads."""

    layer_type = "Flatten"
    atomic = True


# ---------------------------------------------------------------------------------------------
# Inception module (seed: fig. 15)
# ---------------------------------------------------------------------------------------------


class InceptionModule(nn.Module):
    """GoogLeNet's inception module (seed fig. 15; Szegedy et al. 2014, table 1).

    Four branches on the same input, concatenated along depth: 1x1; 1x1 reduce then 3x3;
    1x1 reduce then 5x5; 3x3 max pool (stride 1) then 1x1 projection. Every convolution is
    stride 1, 'same', ReLU. Output depth: c1x1 + c3x3 + c5x5 + pool_proj.
    """

    layer_type = "Inception module"
    atomic = False

    def __init__(self, in_channels: int, c1x1: int, c3x3_reduce: int, c3x3: int,
                 c5x5_reduce: int, c5x5: int, pool_proj: int):
        super().__init__()
        self.branch1 = ConvLayer(in_channels, c1x1, 1, padding="same")
        self.branch2 = nn.Sequential(ConvLayer(in_channels, c3x3_reduce, 1, padding="same"),
                                     ConvLayer(c3x3_reduce, c3x3, 3, padding="same"))
        self.branch3 = nn.Sequential(ConvLayer(in_channels, c5x5_reduce, 1, padding="same"),
                                     ConvLayer(c5x5_reduce, c5x5, 5, padding="same"))
        self.branch4 = nn.Sequential(MaxPool(3, 1, padding="same"),
                                     ConvLayer(in_channels, pool_proj, 1, padding="same"))
        self.in_channels = in_channels
        self.out_channels = c1x1 + c3x3 + c5x5 + pool_proj

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)], dim=1)


# ---------------------------------------------------------------------------------------------
# SE block (seed: figs. 21-23)
# ---------------------------------------------------------------------------------------------


def se_reduced_channels(channels: int, reduction: int = 16, divisor: int = 8) -> int:
    """Hidden width of an SE block: channels / reduction rounded to the nearest multiple of
    `divisor` (at least `divisor`), as timm's SEModule (make_divisible, round_limit=0)."""
    return max(divisor, int(channels / reduction + divisor / 2) // divisor * divisor)


class SEBlock(nn.Module):
    """Squeeze-and-excitation (seed fig. 23; Hu et al. 2017): global average pooling, a dense
    layer of C/r units with ReLU ("squeeze"), a dense layer of C units with sigmoid
    ("excite"), then each feature map is multiplied by its recalibration weight in (0, 1).

    The two dense layers are written as 1x1 convolutions with bias on the pooled (N, C, 1, 1)
    tensor (the same arithmetic), so that the parameters have timm SEModule's shapes and
    pretrained SE-ResNet weights load.
    """

    layer_type = "SE block"
    atomic = False

    def __init__(self, channels: int, reduction: int = 16, divisor: int = 8):
        super().__init__()
        hidden = se_reduced_channels(channels, reduction, divisor)
        self.fc1 = nn.Conv2d(channels, hidden, 1)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, 1)
        self.gate = nn.Sigmoid()
        self.in_channels = self.out_channels = channels
        self.hidden_channels = hidden

    def weights(self, x: torch.Tensor) -> torch.Tensor:
        """The recalibration vector, shape (N, C, 1, 1), values in (0, 1)."""
        return self.gate(self.fc2(self.act(self.fc1(x.mean((2, 3), keepdim=True)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weights(x)


# ---------------------------------------------------------------------------------------------
# Residual units (seed: figs. 17-20)
# ---------------------------------------------------------------------------------------------


def _projection(in_channels: int, out_channels: int, stride: int) -> ConvLayer | None:
    """Skip connection (seed fig. 20): identity when the shape is kept, else a 1x1 convolution
    with the unit's stride and batch norm, so that input and output can be added."""
    if stride == 1 and in_channels == out_channels:
        return None
    return ConvLayer(in_channels, out_channels, 1, stride, padding=0, activation=None, batch_norm=True)


class ResidualUnit(nn.Module):
    """ResNet's residual unit (seed figs. 19-20): two 3x3 convolutions with batch norm (ReLU
    after the first, after the addition for the second) plus the skip connection.

    Same parameters, in the same order, as torchvision's BasicBlock (symmetric 1-pixel padding,
    stride on the first conv), so torchvision weights load. With se=True an SE block rescales
    the residual before the addition (SE-ResNet, timm's placement).
    """

    layer_type = "Residual unit"
    atomic = False
    expansion = 1

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, se: bool = False):
        super().__init__()
        self.conv1 = ConvLayer(in_channels, out_channels, 3, stride, padding=1, batch_norm=True)
        self.conv2 = ConvLayer(out_channels, out_channels, 3, 1, padding=1, batch_norm=True, activation=None)
        self.se = SEBlock(out_channels) if se else None
        self.downsample = _projection(in_channels, out_channels, stride)
        self.act = nn.ReLU(inplace=True)
        self.in_channels, self.out_channels = in_channels, out_channels
        self.stride = (stride, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.downsample is None else self.downsample(x)
        y = self.conv2(self.conv1(x))
        if self.se is not None:
            y = self.se(y)
        return self.act(y + skip)


class BottleneckUnit(nn.Module):
    """ResNet-50/101/152's bottleneck unit: 1x1 reduce, 3x3, 1x1 expand (x `expansion`), each
    with batch norm, plus the skip connection. The stride sits on the 3x3 convolution
    ("ResNet v1.5", as torchvision and timm); parameters match torchvision's Bottleneck in
    order and shape. With se=True an SE block rescales the residual before the addition.
    """

    layer_type = "Bottleneck unit"
    atomic = False

    def __init__(self, in_channels: int, mid_channels: int, stride: int = 1, expansion: int = 4,
                 se: bool = False):
        super().__init__()
        out_channels = mid_channels * expansion
        self.conv1 = ConvLayer(in_channels, mid_channels, 1, padding=0, batch_norm=True)
        self.conv2 = ConvLayer(mid_channels, mid_channels, 3, stride, padding=1, batch_norm=True)
        self.conv3 = ConvLayer(mid_channels, out_channels, 1, padding=0, batch_norm=True, activation=None)
        self.se = SEBlock(out_channels) if se else None
        self.downsample = _projection(in_channels, out_channels, stride)
        self.act = nn.ReLU(inplace=True)
        self.in_channels, self.mid_channels, self.out_channels = in_channels, mid_channels, out_channels
        self.stride = (stride, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = x if self.downsample is None else self.downsample(x)
        y = self.conv3(self.conv2(self.conv1(x)))
        if self.se is not None:
            y = self.se(y)
        return self.act(y + skip)


# ---------------------------------------------------------------------------------------------
# The interface every hand-built network offers (timm-like)
# ---------------------------------------------------------------------------------------------


class Network(nn.Module):
    """Base of the hand-built networks: the small timm-like API that finetune and the
    "backbone + head" model files rely on.

    Subclasses implement `forward_features` (feature maps before the head), `forward_head`
    (which ends with the classifier named by `classifier_name`, honouring pre_logits) and
    `stages` (natural blocks, input to output, without the classifier), and set
    `num_features` and `num_classes`.
    """

    classifier_name = "fc"
    num_features: int
    num_classes: int

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        """The final layer (nn.Linear; nn.Identity after reset_classifier(0))."""
        return getattr(self, self.classifier_name)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the final layer by a fresh one with `num_classes` outputs (0: identity, the
        network then returns its pre-logits features, as in timm)."""
        old = self.get_classifier()
        in_features = old.in_features if isinstance(old, nn.Linear) else self._classifier_in_features
        self._classifier_in_features = in_features
        ref = next(self.parameters())
        new = (nn.Linear(in_features, num_classes, device=ref.device, dtype=ref.dtype)
               if num_classes > 0 else nn.Identity())
        new.train(self.training)
        setattr(self, self.classifier_name, new)
        self.num_classes = num_classes

    def stages(self) -> list[tuple[str, nn.Module]]:
        raise NotImplementedError

    def _group(self, *names: str) -> nn.Module:
        """One stage made of several attributes (shares their parameters, adds none)."""
        if len(names) == 1:
            return getattr(self, names[0])
        return nn.Sequential(*(getattr(self, n) for n in names))


def init_conv_relu(module: nn.Module) -> None:
    """torchvision's initialisation for ReLU networks without pretrained weights: He normal
    (fan_out) convolutions, N(0, 0.01) linear layers, zero biases, unit batch norms.

    Skipped on the meta device: there is nothing to fill, and torch's random fills on meta
    tensors import torch._dynamo (seconds), which `cnncli inspect` must not pay."""
    if any(p.is_meta for p in module.parameters()):
        return
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
