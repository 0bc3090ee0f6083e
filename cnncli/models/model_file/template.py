"""What `cnncli new-model` writes: a model file following the seed's good practice, as TOML
text, and the check that the text is a model file that builds (on the meta device: shapes
only), with what the command reports about it."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from cnncli.errors import InputError
from cnncli.models.info import ModelInfo
from cnncli.models.model_file.schema import _is_int, loads_spec
from cnncli.models.model_file.vocabulary import NUM_CLASSES

LARGE_INPUT = 64  # from this many pixels on, the first convolution takes stride 2


def _toml_layer(name: str, kind: str, comment: str = "", **options) -> str:
    lines = ["[[layers]]", f'name = "{name}"', f'type = "{kind}"']
    for key, value in options.items():
        lines.append(f"{key} = {json.dumps(value)}")
    if comment:
        lines[-1] += f"    # {comment}"
    return "\n".join(lines) + "\n"


def good_practice_toml(name: str, input_size: tuple[int, int, int], num_classes: int, blocks: int = 3,
                       width: int = 64) -> str:
    """A model file (TOML text, commented, ready to edit) following the seed's good practice:
    a larger first filter (7x7, stride 2 when the input is at least 64 pixels, else 1), then
    3x3 filters, the number of filters doubling after each pooling layer, ReLU, then dense
    layers that shrink, each followed by dropout 0.5. With the defaults on a 1x28x28 input and
    10 classes it is exactly the seed's typical CNN (1,413,834 parameters)."""
    c, h, w = input_size
    for what, value in (("blocks", blocks), ("width", width), ("classes", num_classes)):
        if not (_is_int(value) and value >= 1):
            raise InputError(f"--{what} must be a positive integer, got {value!r}")
    stride = 2 if min(h, w) >= LARGE_INPUT else 1
    side = min(-(-h // stride), -(-w // stride))
    fits = 0
    while side // 2 >= 1 and fits < blocks:
        side //= 2
        fits += 1
    if fits < blocks:
        raise InputError(f"--blocks {blocks} is too many for a {h}x{w} input: each block halves the "
                         f"maps, so at most {fits} fit; use fewer blocks or a larger --input")
    out = [
        f"# {name}: a CNN following the seed's good practice, written by `cnncli new-model`.",
        "# A larger first filter (7x7, stride 2 on large inputs), then 3x3 filters; the number of",
        "# filters doubles after each pooling layer; ReLU; dense layers that shrink, with dropout.",
        "# Edit freely; `cnncli inspect` on this file checks it and shows every layer's shape.",
        "",
        "[model]",
        f"name = {json.dumps(name)}",
        f"description = {json.dumps(f'Good-practice CNN: {blocks} blocks from {width} filters, for {c}x{h}x{w} input')}",
        f"input = [{c}, {h}, {w}]",
        f"num_classes = {num_classes}",
        "",
    ]
    conv = 0
    for block in range(1, blocks + 1):
        filters = width * 2 ** (block - 1)
        out.append(f"# block {block}: {filters} filters")
        if block == 1:
            conv += 1
            options = {"filters": filters, "kernel": 7, "stride": stride, "padding": "same"}
            if stride == 1:
                del options["stride"]
            out.append(_toml_layer(f"conv{conv}", "conv", "larger first filter" +
                                   (", stride 2 on a large input" if stride == 2 else ""), **options))
        else:
            for _ in range(2):
                conv += 1
                out.append(_toml_layer(f"conv{conv}", "conv", filters=filters, kernel=3, padding="same"))
        out.append(_toml_layer(f"pool{block}", "maxpool", kernel=2))
    out.append("# dense layers that shrink, each with dropout 0.5")
    out.append(_toml_layer("flatten", "flatten"))
    for i, units in enumerate((2 * width, width), start=1):
        out.append(_toml_layer(f"fc{i}", "dense", units=units, activation="relu"))
        out.append(_toml_layer(f"drop{i}", "dropout", rate=0.5))
    out.append(_toml_layer("out", "dense", "the classifier (logits)", units=NUM_CLASSES))
    return "\n".join(out)


@dataclass(frozen=True)
class NewModelFile:
    """A written-to-be model file, checked: its text, parsed document, info and parameter count."""

    text: str
    spec: dict[str, Any]
    info: ModelInfo
    params: int

    @property
    def layers(self) -> int:
        return len(self.spec["layers"])


def new_model_file(name: str, input_size: tuple[int, int, int], num_classes: int, blocks: int = 3,
                   width: int = 64, source: str = "") -> NewModelFile:
    """`good_practice_toml`, parsed and built on the meta device (shapes only) to check it and
    count its parameters. `source` (the path it will be written to) names it in errors."""
    import torch

    from cnncli.models.info import count_params
    from cnncli.models.model_file.build import create_model_from_spec

    text = good_practice_toml(name, input_size, num_classes, blocks=blocks, width=width)
    spec = loads_spec(text, source)
    from cnncli.cost import check_input, check_network

    with torch.device("meta"):
        model, info = create_model_from_spec(spec, source=source)
    # a file no machine here could train is refused, like any network a file describes
    label = f"{name} (--input {'x'.join(map(str, input_size))}, --classes {num_classes}, --width {width})"
    check_network(model, label)
    check_input(model, input_size, label=f"{label}: one image")
    return NewModelFile(text, spec, info, count_params(model))
