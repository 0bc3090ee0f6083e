"""The `inspect` table as data: one row per layer, then the totals, independent of rendering.

How the figures are obtained, rather than computed by hand-written formulas:

* The network is built on PyTorch's `meta` device (no weight initialisation, so even VGG-16
  builds instantly), its weights are then replaced by zero-filled CPU tensors and it runs one
  forward pass on a zero image of batch 1 (CPU kernels are C++; many meta kernels are Python
  whose first use imports torch._dynamo and sympy, which costs more than the whole command).
  Networks with more than 1 GiB of weights run on the meta device instead; an operation that
  cannot run without real data makes it rebuild with real weights on the CPU.
* Multiply-adds come from PyTorch's own counter, `torch.utils.flop_counter.FlopCounterMode`,
  per module through its module hierarchy (MACs = FLOPs / 2; convolution and matrix products,
  as is the convention: bias, norms, pooling and activations are not counted).
* Receptive fields are propagated through the operations that actually run: a
  `TorchFunctionMode` sees every conv/pool/linear call with its real kernel, stride and
  dilation and carries (size, jump) per axis from input to output tensor; element-wise
  operations and concatenation take the largest field of their inputs (ignoring inputs
  broadcast over space, such as an SE block's per-channel weights); dense layers on a
  vector, global pooling and attention cover the whole image.
* Which modules become rows: blocks from `cnncli.layers` declare `layer_type` and `atomic`;
  torch/timm/torchvision classes are recognised by class name. By default every container
  is opened, atomic layers are one row each, and composite blocks (inception modules,
  residual units, timm's blocks) are one row each. With `depth=N`, modules are opened down
  to depth N (the model's children are depth 1) and whatever is still composite at depth N
  becomes one row. An activation module that directly follows a row is folded into that
  row's activation column (conv -> ReLU reads as one layer, as in the seed's tables).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from cnncli.errors import InputError
from cnncli.geometry import pair

FLOAT32_BYTES = 4
# Networks whose weights fit in this run on the CPU with zero weights; bigger ones on meta.
CPU_WEIGHT_LIMIT = 1 << 30

# Rows that carry no information in a layer table.
SKIP_TYPES = {"Dropout", "Flatten", "Identity"}

# torch / timm / torchvision classes, recognised by the name of any class in their MRO.
_ATOMIC_TYPES = {
    "Conv1d": "Convolution",
    "Conv2d": "Convolution",
    "Conv3d": "Convolution",
    "ConvTranspose2d": "Transposed convolution",
    "Linear": "Fully connected",
    "MaxPool2d": "Max pooling",
    "AvgPool2d": "Average pooling",
    "AdaptiveAvgPool2d": "Adaptive average pooling",
    "AdaptiveMaxPool2d": "Adaptive max pooling",
    "SelectAdaptivePool2d": "Global pooling",
    "BatchNormAct2d": "Batch norm",
    "BatchNorm1d": "Batch norm",
    "BatchNorm2d": "Batch norm",
    "LayerNorm": "Layer norm",
    "LayerNorm2d": "Layer norm",
    "GroupNorm": "Group norm",
    "LocalResponseNorm": "LRN",
    "ConvNormAct": "Convolution",
    "ConvBnAct": "Convolution",
    "ConvNormActAa": "Convolution",
    "BasicConv2d": "Convolution",
    "Conv2dNormActivation": "Convolution",
}
_BLOCK_TYPES = {
    "BasicBlock": "Residual unit",
    "Bottleneck": "Bottleneck unit",
    "SEModule": "SE block",
    "SqueezeExcite": "SE block",
    "SqueezeExcitation": "SE block",
    "InvertedResidual": "Inverted residual",
    "DepthwiseSeparableConv": "Separable convolution",
    "SeparableConv2d": "Separable convolution",
    "EdgeResidual": "Edge residual",
    "Inception": "Inception module",
    "InceptionA": "Inception module",
    "InceptionB": "Inception module",
    "InceptionC": "Inception module",
    "InceptionD": "Inception module",
    "InceptionE": "Inception module",
    "InceptionAux": "Auxiliary classifier",
    "ConvNeXtBlock": "ConvNeXt block",
    "PatchEmbed": "Patch embedding",
}
_ACTIVATIONS = {
    "ReLU": "relu", "ReLU6": "relu6", "LeakyReLU": "leaky_relu", "PReLU": "prelu",
    "ELU": "elu", "SELU": "selu", "CELU": "celu", "GELU": "gelu", "GELUTanh": "gelu",
    "QuickGELU": "gelu", "SiLU": "silu", "Swish": "silu", "Mish": "mish",
    "Sigmoid": "sigmoid", "Tanh": "tanh", "Hardswish": "hard_swish", "HardSwish": "hard_swish",
    "Hardsigmoid": "hard_sigmoid", "HardSigmoid": "hard_sigmoid", "Softmax": "softmax",
    "LogSoftmax": "log_softmax", "Softplus": "softplus",
}
_SKIP_CLASSES = {"Dropout", "Dropout2d", "AlphaDropout", "Identity", "Flatten", "Unflatten",
                 "DropPath", "DropBlock2d"}
_CONTAINERS = {"Sequential", "ModuleList", "ModuleDict"}

_ACTIVATION_DISPLAY = {
    "relu": "ReLU", "relu6": "ReLU6", "leaky_relu": "LeakyReLU", "prelu": "PReLU", "elu": "ELU",
    "selu": "SELU", "celu": "CELU", "gelu": "GELU", "silu": "SiLU", "swish": "Swish",
    "mish": "Mish", "hard_swish": "Hardswish", "hard_sigmoid": "Hardsigmoid",
}


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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


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


# ---------------------------------------------------------------------------------------------
# Which modules are rows
# ---------------------------------------------------------------------------------------------


def _class_lookup(module, table: dict[str, str]) -> str | None:
    for cls in type(module).__mro__:
        if cls.__name__ in table:
            return table[cls.__name__]
    return None


def _class_in(module, names: set[str]) -> bool:
    return any(cls.__name__ in names for cls in type(module).__mro__)


def activation_of_module(module) -> str | None:
    """'relu' for an nn.ReLU, None for anything that is not an activation module."""
    if getattr(type(module), "layer_type", None) is not None:
        return None
    return _class_lookup(module, _ACTIVATIONS)


def _role(module) -> str:
    """skip | activation | atomic | block | container | leaf."""
    layer_type = getattr(type(module), "layer_type", None)
    if isinstance(layer_type, str):
        if layer_type in SKIP_TYPES:
            return "skip"
        return "atomic" if getattr(type(module), "atomic", True) else "block"
    if activation_of_module(module):
        return "activation"
    if _class_in(module, _SKIP_CLASSES):
        return "skip"
    if _class_lookup(module, _ATOMIC_TYPES):
        return "atomic"
    if not any(True for _ in module.children()):
        return "leaf"
    if _class_lookup(module, _BLOCK_TYPES):
        return "block"
    if type(module).__name__ in _CONTAINERS or type(module).__module__.startswith("cnncli."):
        return "container"  # plain containers, and cnncli's helpers that declare no layer_type
    return "block"  # a foreign module with children and its own forward: a block of its own


def layer_type_of(module) -> str:
    """The display name of a module's row."""
    layer_type = getattr(type(module), "layer_type", None)
    if isinstance(layer_type, str):
        return layer_type
    if activation_of_module(module):
        return "Activation"
    name = type(module).__name__
    if name == "SelectAdaptivePool2d":
        kind = {"avg": "average", "max": "max", "avgmax": "average+max"}.get(
            str(getattr(module, "pool_type", "")), str(getattr(module, "pool_type", "")))
        return f"Global {kind} pooling".replace("  ", " ")
    found = _class_lookup(module, _ATOMIC_TYPES) or _class_lookup(module, _BLOCK_TYPES)
    if found is None and name in ("Sequential", "ModuleList"):
        count = len(module)  # a collapsed stage of a backbone
        return f"Stage ({count} block{'s' if count != 1 else ''})"
    if found == "Convolution":
        groups, in_ch = getattr(module, "groups", 1), getattr(module, "in_channels", 0)
        if groups > 1 and groups == in_ch:
            return "Depthwise convolution"
    if found in ("Adaptive average pooling", "Adaptive max pooling"):
        if _pair_or_none(getattr(module, "output_size", None)) == [1, 1]:
            return found.replace("Adaptive", "Global")
    return found or name


@dataclass
class _Planned:
    path: str
    depth: int
    role: str  # "layer" or "activation"


def _plan(model, depth: int | None, open_all: bool = False) -> dict:
    """module -> _Planned for every module that may become a row (open_all: every block
    opened down to its atomic layers)."""
    planned: dict = {}
    root_role = _role(model)
    if root_role in ("atomic", "leaf", "activation"):
        planned[model] = _Planned(type(model).__name__, 0, "layer")
        return planned

    def visit(module, prefix: str, level: int, cap: int | None = None) -> None:
        for name, child in module.named_children():
            if child in planned:  # a module registered twice is one row
                continue
            path = prefix + name
            role = _role(child)
            if role == "skip":
                continue
            if role == "activation":
                planned[child] = _Planned(path, level, "activation")
            elif role in ("atomic", "leaf"):
                planned[child] = _Planned(path, level, "layer")
            elif not open_all and depth is None and level == 1 and name == "backbone":
                # a model file's backbone runs through forward_features, never its own
                # forward: show it by its stages (stem, blocks.N, ...), the head layer by layer
                visit(child, path + ".", level + 1, cap=level + 2)
            elif not open_all and ((depth is None and role == "block")
                                   or (depth is not None and level >= depth)
                                   or (cap is not None and level >= cap)):
                planned[child] = _Planned(path, level, "layer")
            else:
                visit(child, path + ".", level + 1, cap)

    visit(model, "", 1)
    return planned


# ---------------------------------------------------------------------------------------------
# Geometry of a row: kernel, stride, padding
# ---------------------------------------------------------------------------------------------


def _pair_or_none(value) -> list[int] | None:
    """A module's kernel/stride/padding attribute as [h, w] (an int, a pair, or a 1-tuple), or
    None when it is not one (cnncli.geometry.pair, leniently)."""
    if isinstance(value, (tuple, list)) and len(value) == 1:
        value = value[0]
    try:
        return list(pair(value))
    except (TypeError, ValueError, InputError):
        return None


def _geometry_source(module):
    """The module whose kernel/stride/padding describe a row: itself, or for a foreign
    conv+norm+act wrapper (timm ConvNormAct, torchvision BasicConv2d) its first conv/pool."""
    if getattr(module, "kernel_size", None) is not None or getattr(module, "stride", None) is not None:
        return module
    if getattr(type(module), "layer_type", None) is None and _role(module) == "atomic":
        for sub in module.modules():
            if sub is not module and getattr(sub, "kernel_size", None) is not None:
                return sub
    return module


def _padding(module) -> str | list[int] | None:
    if type(module).__name__ in ("Conv2dSame", "MaxPool2dSame", "AvgPool2dSame"):
        return "same"  # timm's TF-style layers pad per input size, their .padding is 0
    value = getattr(module, "padding_spec", None)
    if value is None:
        value = getattr(module, "padding", None)
    if value is None or callable(value):
        return None
    if isinstance(value, str):
        return value.lower()
    pixels = _pair_or_none(value)
    if pixels is None:
        return None
    if pixels == [0, 0] and not getattr(module, "ceil_mode", False):
        return "valid"  # no zeros added and what does not fit is dropped: the seed's 'valid'
    return pixels


def _geometry(module) -> tuple[list[int] | None, list[int] | None, str | list[int] | None]:
    src = _geometry_source(module)
    kernel = _pair_or_none(getattr(src, "kernel_size", None))
    stride = _pair_or_none(getattr(src, "stride", None))
    if kernel is not None and stride is None:
        stride = kernel
    padding = _padding(src) if kernel is not None else None
    return kernel, stride, padding


# ---------------------------------------------------------------------------------------------
# Receptive fields, propagated through the operations that run
# ---------------------------------------------------------------------------------------------


_SPATIAL_REDUCTIONS = {"mean", "sum", "amax", "amin", "max", "min", "std", "var", "logsumexp",
                       "norm", "prod", "nanmean", "nansum"}
_MIXING = {"matmul", "__matmul__", "__rmatmul__", "bmm", "mm", "baddbmm", "einsum",
           "scaled_dot_product_attention"}


def _receptive_field_mode(image_hw: tuple[int, int]):
    """A TorchFunctionMode that carries (rf_h, rf_w, jump_h, jump_w) from tensor to tensor."""
    import torch
    from torch.overrides import TorchFunctionMode
    from torch.utils._pytree import tree_leaves

    full = (float(image_hw[0]), float(image_hw[1]))

    def arg(args, kwargs, index, name, default=None):
        if name in kwargs:
            return kwargs[name]
        return args[index] if len(args) > index else default

    class ReceptiveField(TorchFunctionMode):
        def __init__(self):
            super().__init__()
            self.fields: dict[int, tuple] = {}  # id(tensor) -> (tensor, field); keeps it alive

        def mark(self, tensor, value) -> None:
            self.fields[id(tensor)] = (tensor, value)

        def get(self, tensor):
            entry = self.fields.get(id(tensor))
            return entry[1] if entry is not None and entry[0] is tensor else None

        def clear(self) -> None:
            self.fields.clear()

        def __torch_function__(self, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            out = func(*args, **kwargs)
            outputs = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
            if outputs:
                inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
                tracked = [(t, f) for t in inputs if (f := self.get(t)) is not None]
                if tracked:
                    try:
                        value = self._propagate(getattr(func, "__name__", ""), args, kwargs,
                                                tracked, outputs[0])
                    except (TypeError, ValueError, IndexError, ZeroDivisionError):
                        value = None  # an unusual call signature: leave the field unknown
                    if value is not None:
                        for t in outputs:
                            self.mark(t, value)
            return out

        @staticmethod
        def _widest(tracked, out):
            # inputs broadcast over space (an SE block's per-channel weights, a scalar gate)
            # scale the map but do not widen what each unit sees through the conv path
            same = [f for t, f in tracked
                    if t.dim() >= 2 and out.dim() >= 2 and tuple(t.shape[-2:]) == tuple(out.shape[-2:])]
            fields = same or [f for _, f in tracked]
            return tuple(max(f[i] for f in fields) for i in range(4))

        @staticmethod
        def _global(field_):
            return (max(field_[0], full[0]), max(field_[1], full[1]), full[0], full[1])

        def _propagate(self, name, args, kwargs, tracked, out):
            first_tensor, first = tracked[0]
            name = name.lstrip("_") if name.startswith("_max_pool") else name
            if name in ("conv2d", "conv_transpose2d"):
                weight = arg(args, kwargs, 1, "weight")
                kernel = list(weight.shape[-2:])
                stride = _pair_or_none(arg(args, kwargs, 3, "stride", 1)) or [1, 1]
                dilation = _pair_or_none(arg(args, kwargs, 5, "dilation", 1)) or [1, 1]
                if name == "conv_transpose2d":
                    stride = [1.0 / s for s in stride]
                    dilation = _pair_or_none(arg(args, kwargs, 7, "dilation", 1)) or [1, 1]
                return self._window(first, kernel, stride, dilation)
            if name in ("max_pool2d", "max_pool2d_with_indices", "avg_pool2d", "lp_pool2d"):
                index = 2 if name == "lp_pool2d" else 1
                kernel = _pair_or_none(arg(args, kwargs, index, "kernel_size"))
                stride = _pair_or_none(arg(args, kwargs, index + 1, "stride")) or kernel
                dilation = [1, 1]
                if name.startswith("max_pool"):
                    dilation = _pair_or_none(arg(args, kwargs, 4, "dilation", 1)) or [1, 1]
                return self._window(first, kernel, stride, dilation)
            if name in ("adaptive_avg_pool2d", "adaptive_max_pool2d"):
                if out.dim() < 2:
                    return self._global(first)
                in_hw, out_hw = first_tensor.shape[-2:], out.shape[-2:]
                if tuple(out_hw) == (1, 1):
                    return self._global(first)
                kernel, stride = [], []
                for i, o in zip(in_hw, out_hw):
                    starts = [(j * i) // o for j in range(o)]
                    ends = [-(-((j + 1) * i) // o) for j in range(o)]
                    kernel.append(max(e - s for s, e in zip(starts, ends)))
                    stride.append(i / o)
                return self._window(first, kernel, stride, [1, 1])
            if name == "linear":
                # on a vector every unit sees everything; on (N, ..., C) it is per position
                return self._global(first) if first_tensor.dim() <= 2 else first
            if name in _MIXING:
                spatial = [t for t, _ in tracked if t.dim() > 2]
                if len(tracked) >= 2 or not spatial:
                    return self._global(self._widest(tracked, out))
                return first
            if name in _SPATIAL_REDUCTIONS and len(tracked) == 1:
                dim = arg(args, kwargs, 1, "dim")
                if not isinstance(dim, (int, tuple, list)) or isinstance(dim, bool):
                    if dim is None and out.dim() <= 1:
                        return self._global(first)  # the whole tensor reduced
                    return first
                ndim = first_tensor.dim()
                dims = {d % ndim for d in ([dim] if isinstance(dim, int) else dim)}
                if (ndim == 4 and len(dims & {1, 2, 3}) >= 2) or (ndim == 3 and 1 in dims):
                    return self._global(first)  # pooling over the spatial axes / tokens
                return first
            if name == "interpolate":
                if out.dim() >= 3 and first_tensor.dim() >= 3:
                    scale = [o / i for o, i in zip(out.shape[-2:], first_tensor.shape[-2:])]
                    return (first[0], first[1], first[2] / scale[0], first[3] / scale[1])
                return first
            return self._widest(tracked, out)

        @staticmethod
        def _window(field_, kernel, stride, dilation):
            rf_h, rf_w, jump_h, jump_w = field_
            eff = [(k - 1) * d + 1 for k, d in zip(kernel, dilation)]
            return (rf_h + (eff[0] - 1) * jump_h, rf_w + (eff[1] - 1) * jump_w,
                    jump_h * stride[0], jump_w * stride[1])

    return ReceptiveField()


# ---------------------------------------------------------------------------------------------
# One forward pass, recorded
# ---------------------------------------------------------------------------------------------


@dataclass
class _Recorded:
    module: Any
    planned: _Planned
    order: int
    output: Any = None
    input: Any = None
    activation: str | None = None
    activation_from_attr: bool = False
    field: tuple | None = None
    merged_into: _Recorded | None = None
    done: bool = False


class _ForwardFailed(Exception):
    def __init__(self, error: BaseException, module, path: str | None, input_shape, previous):
        super().__init__(str(error))
        self.error = error
        self.module = module
        self.path = path
        self.input_shape = input_shape
        self.previous = previous  # (path, output shape) of the last row that ran, or None


def _first_tensor(value):
    import torch
    from torch.utils._pytree import tree_leaves

    for t in tree_leaves(value):
        if isinstance(t, torch.Tensor):
            return t
    return None


class _Recorder:
    """Forward hooks on every module: execution order, outputs, the module that failed."""

    def __init__(self, model, planned: dict, rf_mode):
        self.model = model
        self.planned = planned
        self.rf = rf_mode
        self.names = {m: n for n, m in model.named_modules()}
        self.stack: list = []
        self.inputs: dict = {}  # module -> shape of its first input (for error messages)
        self.records: dict = {}  # module -> _Recorded
        self.rows: list[_Recorded] = []  # execution order
        self.activation_outputs: dict[int, tuple] = {}  # id(tensor) -> (tensor, activation name)
        self.handles: list = []
        # activation memory counts the layers of the fully opened table, whatever the depth shown
        self.memory_layers = {m for m, p in _plan(model, None, open_all=True).items() if p.role == "layer"}
        self.activation_elements = 0

    def attach(self) -> None:
        for module in self.model.modules():
            self.handles.append(module.register_forward_pre_hook(self._pre))
            self.handles.append(module.register_forward_hook(self._post))

    def detach(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def _pre(self, module, args):
        self.stack.append(module)
        x = _first_tensor(args)
        if x is not None:
            self.inputs[module] = tuple(x.shape)
        planned = self.planned.get(module)
        if planned is not None and module not in self.records:
            rec = _Recorded(module, planned, len(self.records), input=x)
            self.records[module] = rec
            if planned.role == "layer":
                self.rows.append(rec)

    def _post(self, module, args, output):
        if self.stack and self.stack[-1] is module:
            self.stack.pop()
        out = _first_tensor(output)
        act = activation_of_module(module)
        if act and out is not None:
            self.activation_outputs[id(out)] = (out, act)
        if module in self.memory_layers and out is not None:
            self.memory_layers.discard(module)  # counted once, as its row
            self.activation_elements += out[0].numel()
        rec = self.records.get(module)
        if rec is None or rec.done or out is None:
            return
        rec.done = True
        if rec.planned.role == "activation":
            last = self.rows[-1] if self.rows else None
            if (last is not None and last.output is rec.input and last.activation is None
                    and not last.activation_from_attr):
                last.activation = act
                last.output = out
                last.field = self.rf.get(out) or last.field
                rec.merged_into = last
                return
            rec.planned = _Planned(rec.planned.path, rec.planned.depth, "layer")
            rec.activation = act
            self.rows.append(rec)
        rec.output = out
        rec.field = self.rf.get(out)
        attr = getattr(module, "activation", None)
        if isinstance(attr, str) or (attr is None and hasattr(type(module), "layer_type")
                                     and "activation" in vars(module)):
            rec.activation = attr
            rec.activation_from_attr = True
        elif rec.activation is None:
            entry = self.activation_outputs.get(id(out))
            if entry is not None and entry[0] is out:
                rec.activation = entry[1]

    def failing_module(self):
        """The row (or else the deepest module) that was running when the forward failed."""
        for module in self.stack:
            if module in self.planned and self.planned[module].role == "layer":
                return module
        return self.stack[-1] if self.stack else None


def _device_of(model):
    import torch

    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


def _flop_counter():
    """torch's FlopCounterMode, without the import of torch._dynamo it would trigger.

    torch wraps every dispatch mode's `__torch_dispatch__` in `torch._disable_dynamo`, whose
    first call imports torch._dynamo: seconds, as long as the rest of `inspect` together. Nothing
    is compiled here, so the raw function is registered as its own dynamo-disabled version (the
    attribute that wrapper caches). Should torch's internals change, this silently does nothing.
    """
    from torch.utils import flop_counter

    try:
        raw = flop_counter._FlopCounterMode.__torch_dispatch__.__wrapped__
        if getattr(raw, "__dynamo_disable", None) is None:
            setattr(raw, "__dynamo_disable", raw)
    except AttributeError:  # pragma: no cover - another torch version
        pass
    return flop_counter.FlopCounterMode(display=False)


def _trace(model, input_size, planned):
    """Run one forward pass with the recorder, the receptive-field mode and the flop counter."""
    import torch

    device = _device_of(model)
    x = torch.zeros((1, *input_size), device=device)
    rf = _receptive_field_mode(tuple(input_size[1:]))
    rf.mark(x, (1.0, 1.0, 1.0, 1.0))
    recorder = _Recorder(model, planned, rf)
    counter = _flop_counter()
    recorder.attach()
    try:
        with torch.no_grad(), counter, rf:
            model(x)
    except Exception as e:  # classified by the caller: the input, or meta's limits
        module = recorder.failing_module()
        path = recorder.names.get(module) if module is not None else None
        done = [r for r in recorder.rows if r.output is not None]
        previous = (done[-1].planned.path, tuple(done[-1].output.shape[1:])) if done else None
        raise _ForwardFailed(e, module, path, recorder.inputs.get(module), previous) from e
    finally:
        recorder.detach()
    return recorder, counter


# ---------------------------------------------------------------------------------------------
# Building the model
# ---------------------------------------------------------------------------------------------


@dataclass
class _Target:
    name: str
    build: Any  # device -> model
    default_input: tuple[int, int, int] | None
    info: Any = None  # the built network's ModelInfo, once built by name


def _target(name: str, input_size, num_classes) -> _Target:
    from cnncli.checkpoint import is_checkpoint_ref

    in_chans = input_size[0] if input_size else None
    if is_checkpoint_ref(name):
        from cnncli.checkpoint import built_from_meta, read_meta, resolve_checkpoint_path

        meta = read_meta(resolve_checkpoint_path(name))
        spec = dict(meta["model"])
        if num_classes is not None:
            spec["num_classes"] = num_classes
        if in_chans is not None:
            spec["in_chans"] = in_chans
        default = meta.get("input_size")
        return _described(_Target(name, None, tuple(default) if default else None),
                          lambda device: built_from_meta({**meta, "model": spec}, device=device))

    from cnncli.models.registry import build_model, resolve_path_or_name

    resolve_path_or_name(name)

    return _described(_Target(name, None, None), lambda device: build_model(
        name, num_classes=num_classes, in_chans=in_chans, device=device))


def _described(target: _Target, build_model) -> _Target:
    """`target` building its module with `build_model` (device -> BuiltModel), keeping the info."""

    def build(device):
        built = build_model(device)
        target.info = built.info
        if target.default_input is None:
            target.default_input = tuple(built.info.input_size)
        return built.module

    target.build = build
    return target


def _build(target: _Target, device: str):
    model = target.build(device)
    model.eval()
    return model


def _build_for_shapes(target: _Target):
    """The network on the meta device (no weight initialisation), then, unless its weights
    are huge, on the CPU with zero-filled tensors.

    Why not run on meta: in torch 2.14 many meta kernels are Python references whose first
    call imports torch._dynamo and sympy (seconds; more than everything else `inspect` does).
    CPU kernels are C++, and zero-filled memory costs nothing until it is read.
    """
    try:
        model = _build(target, "meta")
    except (NotImplementedError, RuntimeError) as e:  # a constructor that needs real data
        if not _meta_unsupported(e):
            raise
        return _build(target, "cpu")
    if _weight_bytes(model) <= CPU_WEIGHT_LIMIT:
        model = _zeros_on_cpu(model)
    return model


def _weight_bytes(model) -> int:
    tensors = {id(t): t for t in (*model.parameters(), *model.buffers())}.values()
    return sum(t.numel() * t.element_size() for t in tensors)


def _zeros_on_cpu(model):
    """Replace every meta parameter and buffer by a zero-filled CPU tensor of the same shape
    (`Module.to_empty` would go through meta's Python kernels, see _build_for_shapes)."""
    import torch
    from torch import nn

    replaced: dict[int, tuple] = {}  # id(old) -> (old, new): keeps `old` alive, so ids stay unique

    def zeros(old, parameter: bool):
        entry = replaced.get(id(old))
        if entry is None:
            new = torch.zeros(tuple(old.shape), dtype=old.dtype)
            if parameter:
                new = nn.Parameter(new, requires_grad=old.requires_grad)
            entry = replaced[id(old)] = (old, new)  # tied weights stay tied
        return entry[1]

    for module in model.modules():
        for key, value in module._parameters.items():
            if value is not None and value.is_meta:
                module._parameters[key] = zeros(value, True)
        for key, value in module._buffers.items():
            if value is not None and value.is_meta:
                module._buffers[key] = zeros(value, False)
    return model


def _meta_unsupported(error: BaseException) -> bool:
    return isinstance(error, NotImplementedError) or "meta" in str(error).lower()


# ---------------------------------------------------------------------------------------------
# The public entry point
# ---------------------------------------------------------------------------------------------


def summarize(model_or_name, input_size=None, num_classes: int | None = None,
              depth: int | None = None) -> ModelSummary:
    """The layer table and totals of a network (a registry name, a checkpoint, or a module).

    `input_size` is (C, H, W) (default: the model's own); `num_classes` rebuilds the head;
    `depth` opens composite blocks down to that depth (None: every block is one row).
    """
    if depth is not None and depth < 1:
        raise InputError(f"--depth must be 1 or more, got {depth}")
    if input_size is not None:
        input_size = tuple(int(v) for v in input_size)
        if len(input_size) != 3 or min(input_size) < 1:
            raise InputError(f"input size must be C, H, W with positive integers, got {input_size}")

    if isinstance(model_or_name, str):
        target = _target(model_or_name, input_size, num_classes)
        name = model_or_name
        model = _build_for_shapes(target)
    else:
        model, target = model_or_name, None
        name = type(model).__name__
        if num_classes is not None:
            raise InputError("num_classes applies to a model built by name, not to a module")

    default_input = target.default_input if target else None
    if input_size is None:
        input_size = default_input
    if input_size is None:
        raise InputError(f"{name} declares no input size; pass one (C, H, W)")

    planned = _plan(model, depth)
    try:
        recorder, counter = _trace(model, input_size, planned)
    except _ForwardFailed as failed:
        if target is None or not _meta_unsupported(failed.error):
            raise _input_error(name, model, input_size, default_input, failed) from failed.error
        # an operation that needs real data, or a tensor the constructor left on the meta
        # device: build for real (initialised weights) on the CPU and try once more
        model = _build(target, "cpu")
        planned = _plan(model, depth)
        try:
            recorder, counter = _trace(model, input_size, planned)
        except _ForwardFailed as again:
            raise _input_error(name, model, input_size, default_input, again) from again.error
    device = _device_of(model).type

    rows = _rows(model, recorder, counter)
    params = {id(p): p for p in model.parameters()}.values()
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    weight_bytes = sum(p.numel() * p.element_size() for p in params)
    weight_bytes += sum(b.numel() * b.element_size() for b in model.buffers())
    info = target.info if target else None
    classes = num_classes if num_classes is not None else (
        getattr(model, "num_classes", None) or (info.num_classes if info else None))
    return ModelSummary(
        model=name,
        input_size=tuple(input_size),
        num_classes=classes,
        rows=rows,
        total_params=total,
        trainable_params=trainable,
        frozen_params=total - trainable,
        macs=int(counter.get_total_flops()) // 2,
        weight_bytes=int(weight_bytes),
        activation_bytes=recorder.activation_elements * FLOAT32_BYTES,
        device=str(device),
    )


def _rows(model, recorder: _Recorder, counter) -> list[LayerRow]:
    counts = counter.get_flop_counts()
    root = type(model).__name__
    rows = []
    for rec in recorder.rows:
        module, planned = rec.module, rec.planned
        shape = list(rec.output.shape[1:]) if rec.output is not None else []
        if planned.role == "activation":
            kernel = stride = padding = None
            layer_type = "Activation"
        else:
            kernel, stride, padding = _geometry(module)
            layer_type = layer_type_of(module)
            if stride is None and _role(module) in ("block", "container"):
                stride = _effective_stride(rec.input, rec.output)
        if len(shape) >= 3:
            maps, size = shape[0], format_size(shape[1:])
        elif len(shape) == 2:
            maps, size = shape[-1], str(shape[0])
        else:
            maps, size = None, format_size(shape) if shape else "-"
        key = root if planned.depth == 0 else f"{root}.{planned.path}"
        flops = sum(counts.get(key, {}).values())
        field_ = rec.field
        rows.append(LayerRow(
            name=planned.path,
            type=layer_type,
            maps=maps,
            size=size,
            kernel=kernel,
            stride=stride,
            padding=padding,
            activation=rec.activation,
            output_shape=shape,
            params=sum(p.numel() for p in module.parameters()),
            macs=int(flops) // 2,
            receptive_field=[round(field_[0]), round(field_[1])] if field_ else None,
            depth=planned.depth,
        ))
    return rows


def _effective_stride(x, y) -> list[int] | None:
    """A composite block's stride, read from its input and output maps (e.g. 28x28 -> 14x14: 2)."""
    if x is None or y is None or x.dim() != 4 or y.dim() != 4:
        return None
    return [max(1, round(i / o)) for i, o in zip(x.shape[-2:], y.shape[-2:])]


# ---------------------------------------------------------------------------------------------
# An input the network cannot take
# ---------------------------------------------------------------------------------------------


def _input_error(name, model, input_size, default_input, failed: _ForwardFailed) -> BaseException:
    if default_input is not None and tuple(input_size) == tuple(default_input):
        return failed.error  # the model's own input fails: a bug, not the user's input
    module, path = failed.module, failed.path
    where = ""
    if module is not None and path:
        where = f"at layer {path} ({layer_type_of(module)})"
    kernel = _geometry(module)[0] if module is not None else None
    shape = failed.input_shape
    hw = list(shape[-2:]) if shape and len(shape) >= 4 else None
    in_features = _in_features(module) if module is not None else None
    message = str(failed.error).strip().splitlines()[0].rstrip(".") if str(failed.error).strip() \
        else type(failed.error).__name__
    collapsed = any(s in message for s in ("too small", "can't be greater", "Kernel size"))
    if kernel and hw and any(h < k for h, k in zip(hw, kernel)):
        collapsed = True
        detail = f"the feature map is {format_size(hw)} but the kernel is {format_size(kernel)}"
    elif in_features and shape and shape[-1] != in_features:
        detail = f"it takes {in_features:,} features but gets {shape[-1]:,}"
        if failed.previous:
            detail += f" ({failed.previous[0]} outputs {format_size(failed.previous[1])})"
    elif hw:
        detail = f"on a {format_size(hw)} feature map: {message}"
    else:
        detail = message
    head = f"input {format_size(input_size)} is too small for {name}" if collapsed \
        else f"input {format_size(input_size)} does not fit {name}"
    text = f"{head}: {where + ', ' if where else ''}{detail}"
    hint = _working_input_hint(model, input_size, default_input)
    return InputError(text + (f"; {hint}" if hint else ""))


def _in_features(module) -> int | None:
    for sub in module.modules():
        value = getattr(sub, "in_features", None)
        if isinstance(value, int):
            return value
    return None


def _working_input_hint(model, input_size, default_input) -> str:
    """The smallest square input that runs (binary search on plain forwards), or the default."""
    if default_input is None:
        return ""
    import torch

    channels = input_size[0]
    device = _device_of(model)

    def runs(h, w) -> bool:
        try:
            with torch.no_grad():
                model(torch.zeros((1, channels, h, w), device=device))
            return True
        except Exception:  # noqa: BLE001 - any failure means "does not run"
            return False

    hi = max(default_input[1:])
    if not runs(hi, hi):
        return ""
    if max(input_size[1:]) > hi:
        return f"its default input {format_size((channels, *default_input[1:]))} works"
    lo = 1
    while lo < hi:
        mid = (lo + hi) // 2
        if runs(mid, mid):
            hi = mid
        else:
            lo = mid + 1
    return f"the smallest square input that works is {format_size((channels, hi, hi))}"
