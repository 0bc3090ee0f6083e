"""The `inspect` table as data: one row per layer, then the totals, independent of rendering.

How the figures are obtained, rather than computed by hand-written formulas, one module each:

* `build`: the network is built on PyTorch's `meta` device, its weights replaced by
  zero-filled CPU tensors, and it runs one forward pass on a zero image of batch 1.
* `trace`: forward hooks record the modules that run, in order, with their tensors.
* `flops`: multiply-adds come from PyTorch's own counter, `torch.utils.flop_counter`
  (the one module that patches a private torch API, to keep torch._dynamo unimported).
* `receptive_field`: receptive fields and jumps are propagated through the operations that
  actually run, by a `TorchFunctionMode` that sees their real kernel, stride and dilation.
* `roles` and `geometry`: which modules become rows and what each is called; kernel, stride
  and padding from the module's own attributes.
* `diagnose`: an input the network cannot take, as one line naming the layer.
* `rows`: the row and summary dataclasses; `table`: `summarize()`, which puts them together.
* `explain`: the arithmetic behind every row's figures, from the rows (`inspect --explain`).

Importing this package does not import torch; `summarize()` does.
"""

from cnncli.summary.build import CPU_WEIGHT_LIMIT
from cnncli.summary.explain import explain_network, explain_row, explain_rows
from cnncli.summary.roles import SKIP_TYPES, activation_of_module, layer_type_of
from cnncli.summary.rows import (
    FLOAT32_BYTES,
    LayerRow,
    ModelSummary,
    Part,
    display_activation,
    format_size,
)
from cnncli.summary.table import summarize

__all__ = [
    "CPU_WEIGHT_LIMIT",
    "FLOAT32_BYTES",
    "SKIP_TYPES",
    "LayerRow",
    "ModelSummary",
    "Part",
    "activation_of_module",
    "display_activation",
    "explain_network",
    "explain_row",
    "explain_rows",
    "format_size",
    "layer_type_of",
    "summarize",
]
