"""`inspect --explain`: the arithmetic behind every figure of the layer table, with its numbers.

Built from the rows alone (`LayerRow` and its `parts`), never from a second pass over the
network: each explanation ends in the row's own figure, the one the table prints, and the
formula is shown only when its numbers give exactly that figure. Where they would not (a
layer whose arithmetic the rules below do not cover), the explanation says where the figure
comes from instead of showing a formula that disagrees with the column.

Per row (`explain_row`), four items, each a JSON-ready dict with `text` (what the table prints
under the row), `expression` (plain arithmetic that evaluates to the figure, or None) and
`value` (the row's figure):

* `size`: output units per axis from the padding rule, 'valid' `floor((227 - 11) / 4) + 1 = 55`,
  'same' `ceil(27 / 1) = 27` and the zeros added on each side, or pixels of padding;
* `params`: from the shapes of the parameter tensors, `11*11*3*96 + 96 = 34,944`;
* `macs`: output values times multiply-adds per value, `55*55*96 * (11*11*3) = 105.42M`;
* `receptive_field`: `r = r_prev + (k - 1) * j_prev` and the jump `j = j_prev * s`.

Once per network (`explain_network`): what a fully connected layer with the same output as
the first convolution would cost on this input, the comparison that motivates convolution.

Pure Python: no torch import of its own.
"""

from __future__ import annotations

import math
from typing import Any

from cnncli.output import human_bytes, human_count
from cnncli.summary.rows import FLOAT32_BYTES, LayerRow, ModelSummary, Part

LEGEND = [
    "size: output units per axis from the padding rule (k: kernel, s: stride); 'valid' adds "
    "no zeros and drops what does not fit, floor((in - k) / s) + 1; 'same' adds zeros so "
    "that ceil(in / s) units remain.",
    "params: one weight per entry of each weight tensor (k*k*c_in*c_out for a convolution, "
    "in*out for a dense layer) plus the biases.",
    "MACs: multiply-adds, output values * multiply-adds per value; only convolutions and "
    "dense layers are counted (bias, norms, pooling and activations are not).",
    "field: receptive field r = r_prev + (k - 1) * j_prev and jump j = j_prev * s, in input "
    "pixels (j: the distance between neighbouring units of the map); a field larger than the "
    "image reaches into the padding.",
    "docs/concepts.md explains each rule with the lecture's numbers.",
]

_NORMS = ("BatchNorm", "LayerNorm", "GroupNorm", "InstanceNorm")


# ------------------------------------------------------------------------ the table's cells


def size_cell(row: LayerRow) -> str:
    return row.size


def params_cell(row: LayerRow) -> str:
    return f"{row.params:,}"


def macs_cell(row: LayerRow) -> str:
    return human_count(row.macs) if row.macs else "0"


def field_cell(row: LayerRow) -> str:
    return "x".join(str(v) for v in row.receptive_field) if row.receptive_field else "-"


def _num(value) -> str:
    """4 -> '4', 4.0 -> '4', 2.3333 -> '2.333'."""
    value = float(value)
    return str(int(value)) if value.is_integer() else f"{value:.4g}"


def _article(figure: str) -> str:
    """'an' before a figure read with a vowel sound (8x8, 11x11, 18, 80), else 'a'."""
    head = figure.split("x")[0]
    return "an" if head.startswith("8") or head in ("11", "18") else "a"


def _hw(values) -> str:
    return "x".join(_num(v) for v in values)


def _per_axis(texts: list[str], what: str = "") -> str:
    """One formula for both axes when they agree, else height and width."""
    if len(texts) == 2 and texts[0] == texts[1]:
        return f"{texts[0]} on each axis{what}"
    if len(texts) == 2:
        return f"{texts[0]} (height), {texts[1]} (width){what}"
    return ", ".join(texts) + what


# ------------------------------------------------------------------------------- per row


def explain_row(row: LayerRow) -> dict[str, Any]:
    """The arithmetic of one row: size, params, macs, receptive_field (see the module doc)."""
    return {
        "size": _size(row),
        "params": _params(row),
        "macs": _macs(row),
        "receptive_field": _field(row),
    }


def explain_rows(summary: ModelSummary) -> list[dict[str, Any]]:
    return [explain_row(row) for row in summary.rows]


def _item(text: str, expression: str | None, value, **extra) -> dict[str, Any]:
    return {"text": text, "expression": expression, "value": value, **extra}


# --- size ------------------------------------------------------------------------------------


def _spatial(shape) -> list[int] | None:
    return list(shape[-2:]) if shape and len(shape) >= 3 else None


def _window_axis(n: int, k: int, s: int, d: int, padding, ceil_mode: bool):
    """(expression, units, zeros before/after) of one axis of a conv/pool window."""
    ke = (k - 1) * d + 1
    if padding == "valid":
        return f"floor(({n} - {ke}) / {s}) + 1", (n - ke) // s + 1, (0, 0)
    if padding == "same":
        from cnncli.layers import same_padding  # torch is loaded: a table was just made

        return f"ceil({n} / {s})", -(-n // s), same_padding(n, k, s, d)
    p = int(padding)
    rounding = "ceil" if ceil_mode else "floor"
    units = (-(-(n + 2 * p - ke) // s) if ceil_mode else (n + 2 * p - ke) // s) + 1
    if ceil_mode and (units - 1) * s >= n + p:
        units -= 1  # torch: the last window must start inside the input or the left padding
    expr = f"{rounding}(({n} + 2*{p} - {ke}) / {s}) + 1" if p else f"{rounding}(({n} - {ke}) / {s}) + 1"
    return expr, units, (p, p)


def _size(row: LayerRow) -> dict[str, Any]:
    cell = size_cell(row)
    out_hw, in_hw = _spatial(row.output_shape), _spatial(row.input_shape)
    value = out_hw or list(row.output_shape)
    if row.kernel and row.stride and in_hw and out_hw and row.padding is not None:
        found = _window_size(row, in_hw, out_hw, cell)
        if found is not None:
            return found
    if in_hw and out_hw:
        if out_hw == [1, 1] and in_hw != out_hw and "pool" in row.type.lower():
            return _item(f"each of the {row.input_shape[0]:,} maps of {_hw(in_hw)} reduced to one "
                         f"value: {cell}", None, value)
        if in_hw == out_hw:
            why = "the layers inside keep the size" if row.stride else "no window, no stride"
            return _item(f"kept from the input ({why}): {cell}", None, value)
        stride = row.stride or [1, 1]
        axes = [f"ceil({n} / {s}) = {-(-n // s)}" for n, s in zip(in_hw, stride)]
        if [-(-n // s) for n, s in zip(in_hw, stride)] == out_hw and stride != [1, 1]:
            by = _num(stride[0]) if stride[0] == stride[1] else _hw(stride)
            return _item(f"{_hw(in_hw)} strided by {by} inside the block: {_per_axis(axes)}: "
                         f"{cell}", ", ".join(a.split(" = ")[0] for a in axes), value)
        return _item(f"{_hw(in_hw)} -> {_hw(out_hw)} as the forward pass gave it: {cell}", None,
                     value)
    if in_hw and len(row.output_shape) == 1:
        maps = row.input_shape[0]
        if "pool" in row.type.lower():
            return _item(f"each of the {maps:,} maps of {_hw(in_hw)} reduced to one value: "
                         f"{cell}", None, value)
        total = math.prod(row.input_shape)
        return _item(f"{cell} units, each connected to all {_hw(row.input_shape)} = "
                     f"{total:,} input values: {cell}", None, value)
    if row.input_shape and len(row.output_shape) == 1 and len(row.input_shape) == 1:
        if row.input_shape == row.output_shape and "Fully" not in row.type:
            return _item(f"kept from the input: {cell}", None, value)
        return _item(f"{cell} units, each connected to all {row.input_shape[0]:,} inputs: "
                     f"{cell}", None, value)
    if len(row.output_shape) == 2:  # tokens (a transformer's sequence) of C values each
        tokens, width = row.output_shape
        if row.input_shape == row.output_shape:
            return _item(f"kept from the input: {tokens} tokens of {width} values: {cell}", None,
                         value)
        return _item(f"{tokens} tokens of {width} values, as the forward pass gave it: {cell}",
                     None, value)
    return _item(f"as the forward pass gave it: {cell}", None, value)


def _window_size(row: LayerRow, in_hw, out_hw, cell) -> dict[str, Any] | None:
    """The padding rule of a conv/pool row, or None when its numbers do not give the row's size."""
    dilation = row.dilation or [1, 1]
    pads = row.padding if isinstance(row.padding, list) else [row.padding, row.padding]
    axes = [_window_axis(n, k, s, d, p, row.ceil_mode)
            for n, k, s, d, p in zip(in_hw, row.kernel, row.stride, dilation, pads)]
    if [units for _, units, _ in axes] != out_hw:
        return None
    formulas = [f"{expr} = {units}" for expr, units, _ in axes]
    pool = "pool" in row.type.lower()
    if row.padding == "valid":
        rule = "valid, no padding"
        zeros = ""
    elif row.padding == "same":
        rule = "same"
        zeros = _zeros_text([z for _, _, z in axes], pool)
    elif pads == [0, 0]:  # ceil mode without padding
        rule = "no padding, ceil mode keeps a last window that runs past the edge"
        zeros = ""
    else:
        rule = "padding"
        zeros = _zeros_text([z for _, _, z in axes], pool)
        if row.ceil_mode:
            rule = "padding, ceil mode"
    dilated = ""
    if dilation != [1, 1]:
        dilated = (f" (dilation {_hw(dilation)}: the kernel spans (k - 1) * d + 1 = "
                   f"{_hw([(k - 1) * d + 1 for k, d in zip(row.kernel, dilation)])})")
    text = f"{rule}: {_per_axis(formulas, zeros)}{dilated}: {cell}"
    return _item(text, ", ".join(expr for expr, _, _ in axes), out_hw,
                 padding=[list(z) for _, _, z in axes])


def _zeros_text(zeros: list[tuple[int, int]], pool: bool) -> str:
    what = "padding cells" if pool else "zeros"
    if all(z == (0, 0) for z in zeros):
        return f", no {what} needed"
    if zeros[0] == zeros[1] and zeros[0][0] == zeros[0][1]:
        n = zeros[0][0]
        return f", {n} {what if n != 1 else what[:-1]} added on each side"
    if zeros[0] == zeros[1]:  # TF's 'same': the odd one goes after (bottom, right)
        a, b = zeros[0]
        return f", {what} added on each axis: {a} before, {b} after"
    parts = [f"{a} before and {b} after" if a != b else f"{a} on each side" for a, b in zeros]
    return f", {what} added: {parts[0]} (height), {parts[1]} (width)"


# --- parameters ------------------------------------------------------------------------------


def _tensor_terms(part: Part) -> list[tuple[str, int]]:
    """(expression, count) per parameter tensor of a part, in the lecture's order."""
    if part.type.startswith(_NORMS) and len(part.tensors) == 2:
        (_, a), (_, b) = part.tensors
        if a == b and len(a) == 1:
            return [(f"2*{a[0]}", 2 * a[0])]  # a scale and a shift per channel
    terms = []
    for name, shape in part.tensors:
        count = math.prod(shape)
        if name == "weight" and len(shape) == 4:  # conv: out, in / groups, kh, kw
            out, in_g, kh, kw = shape
            terms.append((f"{kh}*{kw}*{in_g}*{out}", count))
        elif name == "weight" and len(shape) == 2:  # dense: out, in
            terms.append((f"{shape[1]}*{shape[0]}", count))
        else:
            terms.append(("*".join(str(v) for v in shape) or "1", count))
    return terms


def _params(row: LayerRow) -> dict[str, Any]:
    cell = params_cell(row)
    parts = [p for p in row.parts if p.tensors]
    if not parts:
        if row.params:
            return _item(f"from the module's parameters: {cell}", None, row.params)
        return _item(f"{_no_weights(row)}: {cell}", "0", 0)
    per_part = [(p, _tensor_terms(p)) for p in parts]
    if sum(count for _, terms in per_part for _, count in terms) != row.params:
        return _item(f"from the module's parameters (some are shared): {cell}", None, row.params)
    named = len(parts) > 1 and not _one_layer(parts)
    pieces, terms_json = [], []
    for part, terms in per_part:
        expr = " + ".join(e for e, _ in terms)
        pieces.append(f"{part.name} {expr}" if named else expr)
        terms_json.append({"part": part.name, "expression": expr,
                           "value": sum(c for _, c in terms)})
    expression = " + ".join(t["expression"] for t in terms_json)
    gloss = _params_gloss(row, parts)
    return _item(f"{' + '.join(pieces)} = {cell}{gloss}", expression, row.params, terms=terms_json)


def _one_layer(parts: list[Part]) -> bool:
    """A conv with its batch norm, a separable conv: one layer in the table, its parts unnamed."""
    return len(parts) <= 2 and all("." not in p.name for p in parts)


def _no_weights(row: LayerRow) -> str:
    kind = row.type.lower()
    if row.type == "LRN":
        return "no weights: LRN divides each value by the activity of the same position in neighbouring maps"
    if "pool" in kind:
        return "no weights: pooling takes the max or the mean of each window"
    if kind == "activation":
        return "no weights: the activation is applied to each value"
    return "no weights"


def _params_gloss(row: LayerRow, parts: list[Part]) -> str:
    first = parts[0]
    weight = dict(first.tensors).get("weight")
    if first.type.startswith(_NORMS) and len(parts) == 1:
        return " (a scale and a shift per map; running mean and variance are buffers, not parameters)"
    if len(parts) > 2 or weight is None:
        return ""
    if row.type == "SE block" and len(parts) == 2:
        squeeze, excite = weight[0], weight[1]
        return (f" (squeeze {excite} -> {squeeze} and excite {squeeze} -> {excite}: two dense "
                "layers on the means of the maps, written as 1x1 convolutions)")
    has_bias = "bias" in dict(first.tensors)
    if len(weight) == 4:
        out, in_g, kh, kw = weight
        if first.groups > 1 and in_g == 1:
            text = f"one {kh}x{kw} filter per map, {out} maps"
        else:
            text = f"{kh}x{kw}x{in_g} weights per filter, {out} filters"
        if has_bias:
            text += ", one bias each"
        if len(parts) == 2 and parts[1].type.startswith(_NORMS):
            text += "; batch norm: a scale and a shift per map" + ("" if has_bias else ", no bias")
        elif len(parts) == 2:
            second = dict(parts[1].tensors).get("weight")
            if second is not None and len(second) == 4:
                text += f"; then {second[2]}x{second[3]}x{second[1]} weights for each of the {second[0]} outputs"
        return f" ({text})"
    if len(weight) == 2:
        return f" (one weight per input-output pair{', one bias per unit' if has_bias else ''})"
    return ""


# --- multiply-adds ---------------------------------------------------------------------------


def _part_macs(part: Part) -> tuple[str, str] | None:
    """(text, expression) of a part's multiply-adds when its shapes give exactly its count."""
    weight = dict(part.tensors).get("weight")
    out = part.output_shape
    if weight is None or not out:
        return None
    if len(weight) == 4 and len(out) == 3:
        _, in_g, kh, kw = weight
        c, h, w = out
        if h * w * c * kh * kw * in_g == part.macs:
            expr = f"{h}*{w}*{c} * ({kh}*{kw}*{in_g})"
            return expr, expr
    if len(weight) == 2 and out[-1] == weight[0]:
        lead = math.prod(out[:-1])
        if lead * weight[1] * weight[0] == part.macs:
            expr = f"{weight[1]}*{weight[0]}" if lead == 1 else f"{lead} * ({weight[1]}*{weight[0]})"
            return expr, expr
    return None


def _macs(row: LayerRow) -> dict[str, Any]:
    cell = macs_cell(row)
    parts = [p for p in row.parts if p.macs]
    if row.macs == 0:
        return _item(f"{_no_macs(row)}: {cell}", "0", 0)
    pieces, terms_json = [], []
    named = len(parts) > 1 and not _one_layer(parts)
    formulas = [_part_macs(part) for part in parts]
    if len(parts) == 1 and formulas[0] is None and row.macs == parts[0].macs:
        return _item(f"counted by torch (no formula for this layer here): {cell}", str(row.macs),
                     row.macs, terms=[{"part": parts[0].name, "expression": str(row.macs),
                                       "value": row.macs}])
    for part, found in zip(parts, formulas):
        expr = found[1] if found else str(part.macs)
        text = found[0] if found else f"{human_count(part.macs)} (counted by torch)"
        pieces.append(f"{part.name} {text}" if named else text)
        terms_json.append({"part": part.name, "expression": expr, "value": part.macs})
    rest = row.macs - sum(p.macs for p in parts)
    if rest:
        pieces.append(f"other operations {human_count(rest)}")
        terms_json.append({"part": None, "expression": str(rest), "value": rest})
    expression = " + ".join(f"({t['expression']})" if len(terms_json) > 1 else t["expression"]
                            for t in terms_json)
    gloss = ""
    if len(parts) == 1 and not rest and formulas[0] is not None:
        gloss = _macs_gloss(parts[0])
    return _item(f"{' + '.join(pieces)} = {cell}{gloss}", expression, row.macs, terms=terms_json)


def _no_macs(row: LayerRow) -> str:
    kind = row.type.lower()
    if "pool" in kind:
        return "none counted: pooling compares or averages, it multiplies no weights"
    if row.type == "LRN" or "norm" in kind:
        return "none counted: normalisation is not counted as multiply-adds"
    return "none counted: only convolutions and dense layers are"


def _macs_gloss(part: Part) -> str:
    weight = dict(part.tensors).get("weight")
    if weight is not None and len(weight) == 4 and part.output_shape and len(part.output_shape) == 3:
        _, in_g, kh, kw = weight
        window = f"{kh}x{kw}x{in_g}"
        return (f" (each of the {_hw(part.output_shape[1:])}x{part.output_shape[0]} outputs is "
                f"{_article(window)} {window} dot product)")
    if weight is not None and len(weight) == 2:
        return f" (each of the {weight[0]:,} outputs is a dot product of {weight[1]:,} inputs)"
    return ""


# --- receptive field -------------------------------------------------------------------------


def _field(row: LayerRow) -> dict[str, Any]:
    cell = field_cell(row)
    value, jump = row.receptive_field, row.jump
    r_prev, j_prev = row.input_receptive_field, row.input_jump
    if value is None:
        return _item(f"unknown: the trace could not follow this layer's operations: {cell}", None,
                     None, jump=None)
    if r_prev is None or j_prev is None or jump is None:
        return _item(f"as the trace propagated it: {cell}", None, value, jump=jump)
    if row.kernel and row.stride:
        dilation = row.dilation or [1, 1]
        axes = []
        for rp, jp, k, s, d in zip(r_prev, j_prev, row.kernel, row.stride, dilation):
            ke = (k - 1) * d + 1
            axes.append((f"r = {_num(rp)} + ({ke} - 1) * {_num(jp)} = {_num(rp + (ke - 1) * jp)}, "
                         f"j = {_num(jp)} * {s} = {_num(jp * s)}",
                         f"{_num(rp)} + ({ke} - 1) * {_num(jp)}", rp + (ke - 1) * jp, jp * s))
        if ([round(a[2]) for a in axes] == list(value)
                and all(math.isclose(a[3], j) for a, j in zip(axes, jump))):
            return _item(f"{_per_axis([a[0] for a in axes])}: {cell}",
                         ", ".join(a[1] for a in axes), value, jump=jump)
        return _item(f"as the trace propagated it, j = {_hw(jump)}: {cell}", None, value, jump=jump)
    out_hw = _spatial(row.output_shape)
    if row.output_shape and (len(row.output_shape) == 1 or out_hw == [1, 1]):
        axes = [f"max({_num(rp)}, {_num(j)})" for rp, j in zip(r_prev, jump)]
        if [round(max(rp, j)) for rp, j in zip(r_prev, jump)] == list(value):
            return _item(f"every unit sees the whole image, r = max(r_prev, image): "
                         f"{_per_axis([f'{a} = {v}' for a, v in zip(axes, value)])}: {cell}",
                         ", ".join(axes), value, jump=jump)
    same = ([round(v) for v in r_prev] == list(value)
            and all(math.isclose(a, b) for a, b in zip(j_prev, jump)))
    if same:
        why = "through the layers inside" if row.stride else "no window, no stride"
        return _item(f"unchanged, j = {_hw(jump)} ({why}): {cell}", None, value, jump=jump)
    return _item(f"through the layers inside ({_hw(r_prev)} -> {_hw(value)}, j {_hw(j_prev)} -> "
                 f"{_hw(jump)}; --depth opens them one by one): {cell}", None, value, jump=jump)


# ---------------------------------------------------------------------------- per network


def first_convolution(summary: ModelSummary) -> LayerRow | None:
    """The first row that is a convolution on feature maps (None when the network has none)."""
    for row in summary.rows:
        if ("onvolution" in row.type and row.kernel and row.input_shape
                and len(row.input_shape) == 3 and len(row.output_shape) == 3):
            return row
    return None


def explain_network(summary: ModelSummary) -> dict[str, Any]:
    """The legend, and what a fully connected layer with the first convolution's output would
    cost on this input (None when the network has no convolution on feature maps)."""
    return {"legend": list(LEGEND), "dense_comparison": dense_comparison(summary)}


def dense_comparison(summary: ModelSummary) -> dict[str, Any] | None:
    row = first_convolution(summary)
    if row is None:
        return None
    inputs, outputs = math.prod(row.input_shape), math.prod(row.output_shape)
    dense_params = inputs * outputs + outputs  # a weight per input-output pair, a bias per unit
    dense_macs = inputs * outputs
    params_ratio = dense_params / row.params if row.params else None
    macs_ratio = dense_macs / row.macs if row.macs else None
    kh, kw = row.kernel
    in_ch = row.input_shape[0]
    text = [
        f"Why convolution: {row.name} turns the {_hw(row.input_shape)} input ({inputs:,} values) "
        f"into {_hw(row.output_shape)} ({outputs:,} values) with {row.params:,} parameters and "
        f"{macs_cell(row)} multiply-adds.",
        f"A fully connected layer with the same output would need {inputs:,}*{outputs:,} + "
        f"{outputs:,} = {human_count(dense_params)} parameters ({dense_params:,}; "
        f"{human_bytes(dense_params * FLOAT32_BYTES)} of float32 weights"
        + (f", {params_ratio:,.0f}x as many" if params_ratio else "")
        + f") and {inputs:,}*{outputs:,} = {human_count(dense_macs)} multiply-adds"
        + (f" ({macs_ratio:,.0f}x as many)" if macs_ratio else "") + ".",
        f"A convolution connects each output value to {_article(str(kh))} {kh}x{kw}x{in_ch} "
        "window only, and each "
        f"of its {row.output_shape[0]} filters uses the same weights at all "
        f"{_hw(row.output_shape[1:])} positions.",
    ]
    return {
        "layer": row.name,
        "input_values": inputs,
        "output_values": outputs,
        "convolution": {"params": row.params, "macs": row.macs},
        "dense": {"params": dense_params, "macs": dense_macs,
                  "params_expression": f"{inputs}*{outputs} + {outputs}",
                  "macs_expression": f"{inputs}*{outputs}",
                  "weight_bytes": dense_params * FLOAT32_BYTES},
        "params_ratio": params_ratio,
        "macs_ratio": macs_ratio,
        "text": text,
    }
