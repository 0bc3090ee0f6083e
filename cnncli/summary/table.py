"""`summarize()`: build the network, trace one forward pass, and assemble the layer table.

torch is imported when a table is made (through `cnncli.summary.trace`), never when
`cnncli.summary` is imported.
"""

from __future__ import annotations

from cnncli.errors import InputError
from cnncli.summary import build
from cnncli.summary.flops import module_macs, total_macs
from cnncli.summary.geometry import dilation_and_ceil, effective_stride, geometry
from cnncli.summary.roles import layer_type_of, plan, role
from cnncli.summary.rows import FLOAT32_BYTES, LayerRow, ModelSummary, Part, format_size


def summarize(model_or_name, input_size=None, num_classes: int | None = None,
              depth: int | None = None) -> ModelSummary:
    """The layer table and totals of a network (a registry name, a checkpoint, or a module).

    `input_size` is (C, H, W) (default: the model's own); `num_classes` rebuilds the head;
    `depth` opens composite blocks down to that depth (None: every block is one row).
    """
    from cnncli.summary.trace import ForwardFailed, device_of, trace

    if depth is not None and depth < 1:
        raise InputError(f"--depth must be 1 or more, got {depth}")
    if input_size is not None:
        input_size = tuple(int(v) for v in input_size)
        if len(input_size) != 3 or min(input_size) < 1:
            raise InputError(f"input size must be C, H, W with positive integers, got {input_size}")

    if isinstance(model_or_name, str):
        target = build.resolve_target(model_or_name, input_size, num_classes)
        name = model_or_name
        model = build.build_for_shapes(target)
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

    from cnncli.cost import check_input

    check_input(model, input_size, label=f"{name} with the input")
    planned = plan(model, depth)
    try:
        recorder, counter = trace(model, input_size, planned)
    except ForwardFailed as failed:
        from cnncli.summary.diagnose import input_error

        if target is None or not build.meta_unsupported(failed.error):
            raise input_error(name, model, input_size, default_input, failed) from failed.error
        # an operation that needs real data, or a tensor the constructor left on the meta
        # device: build for real (initialised weights) on the CPU and try once more
        model = build.build_on(target, "cpu")
        planned = plan(model, depth)
        try:
            recorder, counter = trace(model, input_size, planned)
        except ForwardFailed as again:
            raise input_error(name, model, input_size, default_input, again) from again.error
    device = device_of(model).type

    rows = rows_of(model, recorder, counter)
    params = {id(p): p for p in model.parameters()}.values()
    total = sum(p.numel() for p in params)
    trainable = sum(p.numel() for p in params if p.requires_grad)
    weight_bytes = sum(p.numel() * p.element_size() for p in params)
    weight_bytes += sum(b.numel() * b.element_size() for b in model.buffers())
    _, declared_classes = build.declared(target)
    classes = num_classes if num_classes is not None else (
        getattr(model, "num_classes", None) or declared_classes)
    return ModelSummary(
        model=name,
        input_size=tuple(input_size),
        num_classes=classes,
        rows=rows,
        total_params=total,
        trainable_params=trainable,
        frozen_params=total - trainable,
        macs=total_macs(counter),
        weight_bytes=int(weight_bytes),
        activation_bytes=recorder.activation_elements * FLOAT32_BYTES,
        device=str(device),
    )


def rows_of(model, recorder, counter) -> list[LayerRow]:
    """The table's rows from a trace (`cnncli.summary.trace.Recorder`) and its flop counter."""
    counts = counter.get_flop_counts()
    root = type(model).__name__
    rows = []
    for rec in recorder.rows:
        module, planned = rec.module, rec.planned
        shape = list(rec.output.shape[1:]) if rec.output is not None else []
        dilation, ceil_mode = None, False
        if planned.role == "activation":
            kernel = stride = padding = None
            layer_type = "Activation"
        else:
            kernel, stride, padding = geometry(module)
            if kernel is not None:
                dilation, ceil_mode = dilation_and_ceil(module)
            layer_type = layer_type_of(module)
            if stride is None and role(module) in ("block", "container"):
                stride = effective_stride(rec.input, rec.output)
        if len(shape) >= 3:
            maps, size = shape[0], format_size(shape[1:])
        elif len(shape) == 2:
            maps, size = shape[-1], str(shape[0])
        else:
            maps, size = None, format_size(shape) if shape else "-"
        field_, in_field = rec.field, rec.input_field
        path = None if planned.depth == 0 else planned.path
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
            macs=module_macs(counts, root, path),
            receptive_field=[round(field_[0]), round(field_[1])] if field_ else None,
            depth=planned.depth,
            input_shape=list(rec.input.shape[1:]) if rec.input is not None else None,
            jump=_exact(field_[2:]) if field_ else None,
            input_receptive_field=_exact(in_field[:2]) if in_field else None,
            input_jump=_exact(in_field[2:]) if in_field else None,
            dilation=dilation,
            ceil_mode=ceil_mode,
            parts=parts_of(module, path, root, counts, recorder.shapes),
        ))
    return rows


def parts_of(module, path: str | None, root: str, counts, shapes) -> list[Part]:
    """The modules inside a row that hold parameters of their own or do multiply-adds of their
    own (a module without children), with their figures as the trace and the counter saw them."""
    parts = []
    for sub_name, sub in module.named_modules():
        tensors = [(name, list(p.shape)) for name, p in sub.named_parameters(recurse=False)]
        leaf = not any(True for _ in sub.children())
        full = ".".join(n for n in (path, sub_name) if n) or None
        macs = module_macs(counts, root, full) if leaf else 0
        if not tensors and not macs:
            continue
        in_shape, out_shape = shapes.get(sub, (None, None))
        parts.append(Part(
            name=sub_name, type=type(sub).__name__, tensors=tensors, macs=macs,
            input_shape=list(in_shape[1:]) if in_shape else None,
            output_shape=list(out_shape[1:]) if out_shape else None,
            groups=int(getattr(sub, "groups", 1) or 1),
        ))
    return parts


def _exact(values) -> list[float]:
    """Field figures as numbers: whole ones as int (4, not 4.0), fractions as they are."""
    return [int(v) if float(v).is_integer() else float(v) for v in values]
