"""`cnncli eval` as a library function: a checkpoint (or a name plus weights) on a dataset split."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnncli.errors import InputError


def evaluate_checkpoint(
    checkpoint: str,
    data: str | None = None,
    split: str = "test",
    data_dir: str | None = None,
    weights: str | None = None,
    batch_size: int = 512,
    device: str = "auto",
    threads: int | None = None,
    max_samples: int | None = None,
    download: bool = False,
    pretrained: bool = False,
    predictions: list | None = None,
    tta: str = "none",
    workers: int | None = None,
    stream: bool | None = None,
    skip_bad_images: bool = False,
) -> dict[str, Any]:
    """Evaluate a checkpoint, a registry network with a weights file for the dataset's classes,
    or (`pretrained`) a pretrained network as is: its own classes (ImageNet's), with the
    dataset's classes matched onto them by name, WordNet ID or index (cnncli.class_match).

    `predictions`: a list that receives one `cnncli.engine.predictions.Prediction` per image.
    `tta`: test-time augmentation (cnncli.engine.tta: none, flip, multicrop), recorded as "tta".
    `workers`, `stream`, `skip_bad_images`: as train's, for imagefolder/csv (a folder is streamed
    when skipping bad images, which only the streaming path can do); skipped files are counted in
    "skipped_images"."""
    import torch

    from cnncli.engine.tta import check_tta

    tta = check_tta(tta)

    from cnncli.data.transforms import prepare_batch
    from cnncli.engine import distributed
    from cnncli.engine.device import resolve_device, set_threads, use_channels_last
    from cnncli.engine.evaluate import evaluate
    from cnncli.engine.trainer import channel_stats

    if split not in SPLITS:
        raise InputError(f"--split must be one of {', '.join(SPLITS)}; got '{split}'")
    from cnncli.checkpoint import is_checkpoint_ref
    from cnncli.engine.open import locate_network, open_network

    if pretrained and is_checkpoint_ref(checkpoint):
        raise InputError("--pretrained applies to registry names; a checkpoint is evaluated on its own classes")
    kind = locate_network(checkpoint).kind
    if pretrained and weights:
        raise InputError("pass either --pretrained or --weights, not both")
    ctx = distributed.init_distributed(device)
    dev = resolve_device(device, ctx.local_rank)
    set_threads(threads)
    meta = None
    if pretrained:
        if not data:
            raise InputError("--pretrained needs --data: a dataset whose classes are among the network's")
    elif kind != "name" and kind != "model-file":
        opened = open_network(checkpoint, weights=weights, device=str(dev))
        model, meta = opened.module, opened.document
        from cnncli.data.paths import recorded_dataset

        data = data or recorded_dataset(meta)
        if not data:
            raise InputError(f"{checkpoint} does not record its dataset; pass --data NAME")
    from cnncli.data.stream import stream_choice, trained_streaming, weights_pipeline

    stream = stream_choice(stream, None, skip_bad_images)
    file_pipeline = None  # a timm network's weights file: its pretrained config's transform and mean/std
    if weights and meta is None:
        from cnncli.models.registry import get_model_info

        file_pipeline = weights_pipeline(get_model_info(checkpoint))
    if (pretrained or trained_streaming(meta) or file_pipeline) and stream is None:
        from cnncli.data.registry import canonical_dataset_name

        if canonical_dataset_name(data).partition(":")[0].lower() in ("imagefolder", "csv"):
            stream = True  # photos through the network's own eval transform (shorter side, centre crop), as timm validates
    subset, class_names, stats = _load_split(data, split, data_dir, download, (meta or {}).get("seed", 0), stream)
    if subset.ids is None:  # an image is named by its index in the split, before any cap
        subset.ids = [str(i) for i in range(len(subset.labels))]
    if max_samples:
        from cnncli.engine.sample_cap import check_capped_split

        uncapped, subset = subset.labels, _first_per_class(subset, max_samples)
        check_capped_split(subset.labels, class_names, max_samples, split, before=uncapped, note=ctx.is_main)
    extra: dict[str, Any] = {}
    if pretrained:
        as_is = _pretrained_as_is(checkpoint, subset, class_names)
        model, subset, extra = as_is.model.to(dev).eval(), as_is.subset, as_is.record
        input_size, mean, std, model_name = as_is.input_size, as_is.mean, as_is.std, checkpoint
    elif meta is None:
        if weights is None:
            raise InputError(f"'{checkpoint}' is not a checkpoint; to evaluate a registry network pass "
                             "--weights FILE (trained for the dataset's classes) or --pretrained (as is)")
        opened = open_network(checkpoint, weights=weights, num_classes=len(class_names), device=str(dev))
        model = opened.module
        input_size = opened.input_size
        mean = opened.mean if file_pipeline else channel_stats(stats.mean, input_size[0])
        std = opened.std if file_pipeline else channel_stats(stats.std, input_size[0])
        model_name = checkpoint
    else:
        if meta["num_classes"] != len(class_names):
            raise InputError(f"{checkpoint} was trained for {meta['num_classes']} classes, but '{data}' has "
                             f"{len(class_names)}; evaluate it on data with the same classes")
        trained_names = meta.get("class_names")
        if trained_names and list(trained_names) != class_names:
            raise InputError(f"{checkpoint} was trained on classes {trained_names[:3]}..., "
                             f"but '{data}' has {class_names[:3]}...: the classes do not match")
        input_size, mean, std = tuple(meta["input_size"]), meta["mean"], meta["std"]
        model_name = meta["model"]["name"]

    # a folder or CSV: which layout was understood, once the data fits (an error stays one line)
    from cnncli.data.registry import canonical_dataset_name

    if ctx.is_main and canonical_dataset_name(data).partition(":")[0].lower() in ("imagefolder", "csv"):
        from cnncli.data.registry import say_split_sizes

        say_split_sizes(stats)
    given_pipeline = extra.pop("eval_pipeline", None) or file_pipeline  # popped: not a result
    if getattr(subset, "streaming", False):  # decoded in DataLoader workers at the network's size
        from cnncli.data.stream import StreamConfig, own_eval

        subset.configure(StreamConfig(size=int(input_size[1]), channels=int(input_size[0]),
                                      **own_eval(meta, given_pipeline),
                                      workers=workers,
                                      pin_memory=dev.type == "cuda", skip_bad=skip_bad_images))
    use_channels_last(model, dev)

    def prepare(batch: torch.Tensor) -> torch.Tensor:
        return prepare_batch(batch, input_size, mean, std, dev)

    output_names = as_is.network_names if pretrained else class_names
    collector = None
    if predictions is not None:
        from cnncli.engine.predictions import PredictionCollector

        collector = PredictionCollector(len(subset.labels), len(output_names))
    from cnncli.engine.console import announced
    from cnncli.engine.tta import wrap

    with announced(f"evaluating on the {split} split ({len(subset.labels):,} images)", enabled=ctx.is_main):
        result = evaluate(wrap(model, tta, prepare), subset.images, subset.labels, prepare, len(output_names),
                          output_names, batch_size=batch_size, device=dev, on_batch=collector)
    doc_result = _restricted(result.to_dict(), extra["class_map"]) if pretrained else result.to_dict()
    if collector is not None:
        collector.gather()
        predictions.extend(collector.rows(subset.labels, output_names, subset.ids, data, split))
    from cnncli.engine.metrics import averages, confused_pairs

    names = doc_result.get("class_names", class_names)
    doc_result.update(averages(doc_result["per_class"]))
    doc_result["confused_pairs"] = confused_pairs(doc_result["confusion"], names)
    from cnncli.engine.skips import gather_skipped

    count, first = gather_skipped(list(getattr(subset, "skipped", None) or []))  # every rank: summed
    if count:
        extra["skipped_images"] = {"count": count, "first": first}
        if ctx.is_main:
            from cnncli import output

            output.note(f"skipped {count} image(s) that could not be decoded (--skip-bad-images), "
                        f"first: {first[0]}")
    return {"checkpoint": str(checkpoint), "model": model_name, "dataset": data, "split": split,
            "tta": tta, "class_names": class_names, **doc_result, **extra}


SPLITS = ("train", "val", "test", "all")


def _load_split(data: str, split: str, data_dir: str | None, download: bool, seed: int,
                stream: bool | None = None):
    """The images of one split (`all`: every image the dataset has), the dataset's class names and
    its training split's per-channel (mean, std)."""
    import torch

    from cnncli.data import load_dataset
    from cnncli.data.splits import ImageData
    from cnncli.engine.console import announced, is_generated

    with announced(f"loading {data}", enabled=not is_generated(data)):
        splits = load_dataset(data, data_dir=data_dir, download=download, val_fraction=0.1 if split == "val" else 0.0,
                              max_samples=None, seed=seed, hold_out_test=split != "all", stream=stream)
    if split == "all" and getattr(splits, "streaming", False):
        from cnncli.data.stream import concat_splits

        subset = concat_splits([s for s in (splits.train, splits.val, splits.test) if len(s)])
    elif split == "all":
        parts = [s for s in (splits.train, splits.val, splits.test) if s is not None and len(s.labels)]
        first = parts[0]
        ids = [i for s in parts for i in s.ids] if all(s.ids is not None for s in parts) else None
        subset = ImageData(torch.cat([s.images for s in parts]), torch.cat([s.labels for s in parts]),
                           first.class_names, first.name, first.source, ids)
    else:
        subset = {"train": splits.train, "val": splits.val, "test": splits.test}[split]
    if subset is None or len(subset.labels) == 0:
        raise InputError(f"dataset '{data}' has no {split} split")
    return subset, list(splits.class_names), splits  # splits.mean/std: measured only when asked (streaming)


@dataclass
class _AsIs:
    """A pretrained network with its own classifier, and the split relabelled onto its outputs."""

    model: Any
    subset: Any  # ImageData, labels = the network's output indices
    input_size: tuple[int, ...]
    mean: list[float]
    std: list[float]
    network_names: list[str]  # the short name of every output
    record: dict[str, Any]  # what the result document adds: source, class map, classes left out


def _pretrained_as_is(name: str, subset, class_names: list[str]) -> _AsIs:
    import torch

    from cnncli import output
    from cnncli.class_match import match_classes
    from cnncli.engine import distributed
    from cnncli.engine.open import open_network
    from cnncli.engine.weights import imagenet_class_names, imagenet_wordnet_ids

    opened = open_network(name, pretrained=True)
    model = opened.module
    n_out = int(getattr(model, "num_classes", 0) or opened.info.num_classes)
    names = list(opened.descriptions) if opened.descriptions and len(opened.descriptions) == n_out else None
    if names is None:
        names = [str(i) for i in range(n_out)]
    ids = imagenet_wordnet_ids() if n_out == 1000 and names == imagenet_class_names() else None
    match = match_classes(class_names, names, ids)
    lookup = torch.full((len(class_names),), -1, dtype=torch.int64)
    for d, net_index in match.network_index.items():
        lookup[d] = net_index
    relabelled = lookup[subset.labels]
    keep = (relabelled >= 0).nonzero().flatten()
    if match.left_out and distributed.context().is_main:
        output.note(f"{len(match.left_out)} class(es) are not among the network's {n_out} and are left out "
                    f"with their {len(subset.labels) - len(keep)} images: {', '.join(match.left_out[:6])}"
                    + (" ..." if len(match.left_out) > 6 else ""))
    subset = subset.subset(keep)
    subset.labels = relabelled[keep]
    short = [n.split(",")[0].strip() for n in names]
    class_map = [{"class": class_names[d], "index": i, "network_class": short[i]}
                 for d, i in sorted(match.network_index.items())]
    record = {"pretrained_source": dict(opened.weights_source), "network_classes": n_out, "matched_by": match.by,
              "class_map": class_map, "classes_left_out": match.left_out,
              "eval_pipeline": dict(opened.document.get("data_pipeline") or {})}  # popped before the result is written
    return _AsIs(model, subset, opened.input_size, opened.mean, opened.std, short, record)


def _restricted(result: dict[str, Any], class_map: list[dict]) -> dict[str, Any]:
    """Top-1, top-5 and loss stay over all the network's outputs; the confusion matrix and the
    per-class report keep the dataset's (matched) classes, with a count of the predictions
    that fell on any other class of the network."""
    from cnncli.engine.metrics import per_class_report

    index = [m["index"] for m in class_map]
    full = result["confusion"]
    matrix = [[full[r][c] for c in index] for r in index]
    other = [sum(full[r]) - sum(row) for r, row in zip(index, matrix)]
    names = [m["class"] for m in class_map]
    # recall and support count every image of a class, those predicted as "other" included
    with_other = [row + [o] for row, o in zip(matrix, other)] + [[0] * (len(index) + 1)]
    per_class = per_class_report(with_other, names + ["other"])[:-1]
    return {**result, "confusion": matrix, "per_class": per_class, "predicted_other": other, "class_names": names}


def _first_per_class(subset, n: int):
    from cnncli.data.splits import stratified_cap

    return subset.subset(stratified_cap(subset.labels, n))


def default_plot_path(checkpoint: str) -> Path:
    p = Path(checkpoint)
    return (p if p.is_dir() else p.parent) / "confusion.png"
