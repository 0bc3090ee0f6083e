"""The `inspect` table as data: one `LayerRow` per layer, then the totals (`ModelSummary`).

Plain dataclasses, independent of how the figures were obtained and of how they are rendered.
Besides the columns of the table (and of `--format json`), each row keeps the figures an
explanation needs to show its arithmetic: the input shape, the jump (the distance in input
pixels between neighbouring units) and the receptive field and jump of the row's input.
Those are data on the row but not part of its JSON document (`to_dict`), which stays as it is,
and so are the row's `parts`: the modules inside it that hold parameters or do multiply-adds,
with their tensors' shapes and their own counted figures (`cnncli.summary.explain` shows the
arithmetic from them).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

FLOAT32_BYTES = 4

_ACTIVATION_DISPLAY = {
    "relu": "ReLU", "relu6": "ReLU6", "leaky_relu": "LeakyReLU", "prelu": "PReLU", "elu": "ELU",
    "selu": "SELU", "celu": "CELU", "gelu": "GELU", "silu": "SiLU", "swish": "Swish",
    "mish": "Mish", "hard_swish": "Hardswish", "hard_sigmoid": "Hardsigmoid",
}

# LayerRow fields that are data for the library but not keys of the JSON document
_NOT_IN_JSON = ("input_shape", "jump", "input_receptive_field", "input_jump", "dilation",
                "ceil_mode", "parts")


@dataclass
class Part:
    """One module inside a row that holds parameters or does multiply-adds (the row's own
    module too): what the row's Params and MACs columns are the sum of."""

    name: str  # path inside the row ("conv", "branch2.1.conv"); "" for the row's own module
    type: str  # the module's class name: "Conv2d", "Linear", "BatchNorm2d", ...
    tensors: list[tuple[str, list[int]]]  # its own parameters: (name, shape)
    macs: int  # multiply-adds counted for this module (0 for a module with children)
    input_shape: list[int] | None = None  # without the batch axis
    output_shape: list[int] | None = None
    groups: int = 1


@dataclass
class LayerRow:
    """One row of the layer table (one atomic layer, or one collapsed composite block)."""

    name: str  # module path, e.g. "C1" or "layer1.0"
    type: str  # display name: "Convolution", "Max pooling", "Inception module", ...
    maps: int | None  # output feature maps (channels); None for a vector
    size: str  # "55x55" for feature maps, "4096" for a vector
    kernel: list[int] | None  # [kh, kw]
    stride: list[int] | None  # [sh, sw]
    padding: str | list[int] | None  # "valid", "same" or [ph, pw] pixels
    activation: str | None  # "relu", "tanh", ... (lower case) or None
    output_shape: list[int]  # without the batch axis
    params: int
    macs: int
    receptive_field: list[int] | None  # [h, w] in input pixels
    depth: int
    # the arithmetic behind the figures (not in to_dict): an explanation reuses these
    input_shape: list[int] | None = field(default=None)  # the row's first input, no batch axis
    jump: list[float] | None = field(default=None)  # [h, w] input pixels between output units
    input_receptive_field: list[float] | None = field(default=None)  # of the row's input
    input_jump: list[float] | None = field(default=None)  # of the row's input
    dilation: list[int] | None = field(default=None)  # [dh, dw] of the row's kernel
    ceil_mode: bool = False  # a pooling window that keeps what does not fit
    parts: list[Part] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """The row's JSON document (the columns of the table)."""
        data = asdict(self)
        for key in _NOT_IN_JSON:
            del data[key]
        return data

    def figures(self) -> dict[str, Any]:
        """The per-row figures as numbers: shapes, parameters, multiply-adds, receptive field
        and jump of the output and of the input (None where the trace could not tell)."""
        return {
            "input_shape": self.input_shape,
            "output_shape": self.output_shape,
            "params": self.params,
            "macs": self.macs,
            "receptive_field": self.receptive_field,
            "jump": self.jump,
            "input_receptive_field": self.input_receptive_field,
            "input_jump": self.input_jump,
        }


@dataclass
class ModelSummary:
    model: str
    input_size: tuple[int, int, int]
    num_classes: int | None
    rows: list[LayerRow]
    total_params: int
    trainable_params: int
    frozen_params: int
    macs: int
    weight_bytes: int
    activation_bytes: int
    device: str = "meta"  # where the shapes were computed

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model,
            "input": list(self.input_size),
            "num_classes": self.num_classes,
            "total_params": self.total_params,
            "trainable_params": self.trainable_params,
            "frozen_params": self.frozen_params,
            "macs": self.macs,
            "weight_bytes": self.weight_bytes,
            "activation_bytes": self.activation_bytes,
            "layers": [r.to_dict() for r in self.rows],
        }


def display_activation(name: str | None) -> str:
    """'relu' -> 'ReLU' for tables (the seed writes ReLU); None -> '-'."""
    if not name:
        return "-"
    return _ACTIVATION_DISPLAY.get(name, name)


def format_size(dims) -> str:
    return "x".join(str(int(d)) for d in dims)


def pair_or_none(value) -> list[int] | None:
    """A module's kernel/stride/size argument as the rows hold it: 3 -> [3, 3], (1, 7) -> [1, 7],
    (5,) -> [5, 5]; None for anything that is not one or two integers (cnncli.geometry.pair,
    leniently)."""
    from cnncli.errors import InputError
    from cnncli.geometry import pair

    if isinstance(value, (tuple, list)) and len(value) == 1:
        value = value[0]
    try:
        return list(pair(value))
    except (TypeError, ValueError, InputError):
        return None
