"""One forward pass of a zero image, recorded: which modules ran in which order, their inputs
and outputs, the receptive field of every output, the multiply-adds of every module, and, when
the forward fails, the module that was running.

Forward (pre-)hooks on every module see the order and the tensors; `ReceptiveFieldMode` sees
the operations inside them; torch's FlopCounterMode counts the multiply-adds. An activation
module that directly follows a row is folded into that row (conv -> ReLU reads as one layer).

This module imports torch: import it only where a forward pass runs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._pytree import tree_leaves

from cnncli.summary.flops import flop_counter
from cnncli.summary.receptive_field import ReceptiveFieldMode
from cnncli.summary.roles import Planned, activation_of_module, plan


@dataclass
class Recorded:
    """What the trace saw of one planned module."""

    module: Any
    planned: Planned
    order: int
    output: Any = None
    input: Any = None
    input_field: tuple | None = None  # receptive field of the input (rf_h, rf_w, jump_h, jump_w)
    activation: str | None = None
    activation_from_attr: bool = False
    field: tuple | None = None  # receptive field of the output
    merged_into: Recorded | None = None
    done: bool = False


class ForwardFailed(Exception):
    """The forward pass raised: the error, and where it happened."""

    def __init__(self, error: BaseException, module, path: str | None, input_shape, previous):
        super().__init__(str(error))
        self.error = error
        self.module = module
        self.path = path
        self.input_shape = input_shape
        self.previous = previous  # (path, output shape) of the last row that ran, or None


def _first_tensor(value):
    for t in tree_leaves(value):
        if isinstance(t, torch.Tensor):
            return t
    return None


def device_of(model):
    for t in model.parameters():
        return t.device
    for t in model.buffers():
        return t.device
    return torch.device("cpu")


class Recorder:
    """Forward hooks on every module: execution order, outputs, the module that failed."""

    def __init__(self, model, planned: dict, rf_mode: ReceptiveFieldMode):
        self.model = model
        self.planned = planned
        self.rf = rf_mode
        self.names = {m: n for n, m in model.named_modules()}
        self.stack: list = []
        self.inputs: dict = {}  # module -> shape of its first input (for error messages)
        self.shapes: dict = {}  # module -> (input shape, output shape) of its first call
        self.records: dict = {}  # module -> Recorded
        self.rows: list[Recorded] = []  # execution order
        self.activation_outputs: dict[int, tuple] = {}  # id(tensor) -> (tensor, activation name)
        self.handles: list = []
        # activation memory counts the layers of the fully opened table, whatever the depth shown
        self.memory_layers = {m for m, p in plan(model, None, open_all=True).items() if p.role == "layer"}
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
            rec = Recorded(module, planned, len(self.records), input=x,
                           input_field=self.rf.get(x) if x is not None else None)
            self.records[module] = rec
            if planned.role == "layer":
                self.rows.append(rec)

    def _post(self, module, args, output):
        if self.stack and self.stack[-1] is module:
            self.stack.pop()
        out = _first_tensor(output)
        if out is not None and module not in self.shapes:
            x = _first_tensor(args)
            self.shapes[module] = (tuple(x.shape) if x is not None else None, tuple(out.shape))
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
            rec.planned = Planned(rec.planned.path, rec.planned.depth, "layer")
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


def trace(model, input_size, planned: dict):
    """Run one forward pass of a zero image of batch 1 with the recorder, the receptive-field
    mode and the flop counter; (recorder, counter), or ForwardFailed saying where it failed."""
    device = device_of(model)
    x = torch.zeros((1, *input_size), device=device)
    rf = ReceptiveFieldMode(tuple(input_size[1:]))
    rf.mark(x, (1.0, 1.0, 1.0, 1.0))
    recorder = Recorder(model, planned, rf)
    counter = flop_counter()
    recorder.attach()
    try:
        with torch.no_grad(), counter, rf:
            model(x)
    except Exception as e:  # classified by the caller: the input, or meta's limits
        module = recorder.failing_module()
        path = recorder.names.get(module) if module is not None else None
        done = [r for r in recorder.rows if r.output is not None]
        previous = (done[-1].planned.path, tuple(done[-1].output.shape[1:])) if done else None
        raise ForwardFailed(e, module, path, recorder.inputs.get(module), previous) from e
    finally:
        recorder.detach()
    return recorder, counter
