"""`cnncli benchmark RUN|MODEL`: size, load time, latency, images/s and top-1 of every export format."""

from __future__ import annotations

import typer


def benchmark(
    model: str = typer.Argument(..., help="A cnncli run / checkpoint, or a registry name (random weights: "
                                "speed only)."),
    formats: str = typer.Option("pytorch,torchscript,onnx,onnx-int8,openvino", "--formats",
                                help="Comma-separated formats; PyTorch eager is always the reference row."),
    batch: str = typer.Option("1,32", "--batch", help="Comma-separated batch sizes to time."),
    images: int = typer.Option(500, "--images", min=1, help="Test images for top-1 (and as inputs)."),
    threads: int | None = typer.Option(None, "--threads", min=1, help="CPU threads for every runtime."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON document instead of the table."),
) -> None:
    """Export to each format in a temporary folder and time it beside PyTorch eager on this machine."""
    from cnncli import output
    from cnncli.deploy.benchmark import benchmark as run_benchmark
    from cnncli.deploy.benchmark import parse_batches, parse_formats

    doc = run_benchmark(model, formats=parse_formats(formats), batches=parse_batches(batch),
                        images=images, threads=threads)
    if json_out:
        output.emit_json(doc)
        return
    output.note(f"{doc['model']} ({doc['weights']} weights) on {doc['inputs']}; {doc['threads']} thread(s); "
                f"CPU flags: {' '.join(doc['cpu_flags']) or 'unknown'}")
    header = ["format", "size", "load s"]
    for b in doc["batches"]:
        header += [f"b{b} p50 ms", f"b{b} p95 ms", f"b{b} img/s"]
    header.append("top-1")
    rows = []
    for r in doc["rows"]:
        cells = [r["format"], output.human_bytes(r["bytes"]) if r["bytes"] is not None else "-",
                 f"{r['load_s']:.3f}" if r["load_s"] is not None else "-"]
        for b in doc["batches"]:
            lat = r["latency"].get(str(b))
            cells += ([f"{lat['p50_ms']:.3f}", f"{lat['p95_ms']:.3f}", f"{lat['images_per_s']:,.0f}"]
                      if lat else ["-", "-", "-"])
        cells.append(r["error"] if r["error"] else (f"{r['top1']:.4f}" if r["top1"] is not None else "-"))
        rows.append(cells)
    output.render_rows(header, rows, justify=["left"] + ["right"] * (len(header) - 2) + ["left"])
