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

The blocks live in the package's modules, one family each (activations, padding, conv, pool,
lrn, dense, blocks, network, whiten); every name is importable from `cnncli.layers` as before.
"""

from __future__ import annotations

from cnncli.geometry import Pair, pair, same_padding  # noqa: F401 - re-exported (summary.explain)
from cnncli.layers.activations import ACTIVATIONS, make_activation  # noqa: F401
from cnncli.layers.blocks import (  # noqa: F401
    BottleneckUnit,
    InceptionModule,
    ResidualUnit,
    SEBlock,
    _projection,
    se_reduced_channels,
)
from cnncli.layers.conv import Conv2dSame, ConvLayer, SeparableConv2d  # noqa: F401
from cnncli.layers.dense import Dense, Dropout, Flatten  # noqa: F401
from cnncli.layers.lrn import LocalResponseNorm  # noqa: F401
from cnncli.layers.network import Network, dirac_init, init_conv_relu  # noqa: F401
from cnncli.layers.padding import PADDINGS, _check_padding, _is_static_same, _same_pad_arg  # noqa: F401
from cnncli.layers.pool import AdaptiveAvgPool, AvgPool, GlobalAvgPool, MaxPool, _Pool  # noqa: F401
from cnncli.layers.whiten import WhiteningConv, whitening_filters  # noqa: F401
