"""`cnncli eval` as a library function: a checkpoint (or a name plus weights) on a dataset split."""

from __future__ import annotations

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
) -> dict[str, Any]:
    import torch

    from cnncli.checkpoint import is_checkpoint_ref, load_model
    from cnncli.data import load_dataset
    from cnncli.data.transforms import prepare_batch
    from cnncli.engine import distributed
    from cnncli.engine.device import resolve_device, set_threads, use_channels_last
    from cnncli.engine.evaluate import evaluate
    from cnncli.engine.trainer import channel_stats

    if split not in ("train", "val", "test"):
        raise InputError(f"--split must be train, val or test; got '{split}'")
    ctx = distributed.init_distributed(device)
    dev = resolve_device(device, ctx.local_rank)
    set_threads(threads)
    if is_checkpoint_ref(checkpoint) and weights is None:
        model, meta = load_model(checkpoint, device=str(dev))
        data = data or meta.get("dataset")
        if not data:
            raise InputError(f"{checkpoint} does not record its dataset; pass --data NAME")
    else:
        meta = None
    splits = load_dataset(data, data_dir=data_dir, download=download, val_fraction=0.1 if split == "val" else 0.0,
                          max_samples=None, seed=(meta or {}).get("seed", 0))
    subset = {"train": splits.train, "val": splits.val, "test": splits.test}[split]
    if subset is None or len(subset.labels) == 0:
        raise InputError(f"dataset '{data}' has no {split} split")
    if max_samples:
        subset = _first_per_class(subset, max_samples)
    class_names = list(splits.class_names)
    if meta is None:
        from cnncli.checkpoint import load_state_strict
        from cnncli.engine.weights import read_state_dict
        from cnncli.models.registry import create_model

        if weights is None:
            raise InputError(f"'{checkpoint}' is not a checkpoint; to evaluate a registry network pass "
                             "--weights FILE too")
        model = create_model(checkpoint, num_classes=len(class_names))
        load_state_strict(model, read_state_dict(weights), weights)
        model.to(dev).eval()
        input_size = tuple(model.cnncli_info.input_size)
        mean = channel_stats(splits.mean, input_size[0])
        std = channel_stats(splits.std, input_size[0])
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

    use_channels_last(model, dev)

    def prepare(batch: torch.Tensor) -> torch.Tensor:
        return prepare_batch(batch, input_size, mean, std, dev)

    result = evaluate(model, subset.images, subset.labels, prepare, len(class_names), class_names,
                      batch_size=batch_size, device=dev)
    doc = {"checkpoint": str(checkpoint), "model": model_name, "dataset": data, "split": split,
           **result.to_dict(), "class_names": class_names}
    return doc


def _first_per_class(subset, n: int):
    from cnncli.data.splits import stratified_cap

    return subset.subset(stratified_cap(subset.labels, n))


def default_plot_path(checkpoint: str) -> Path:
    p = Path(checkpoint)
    return (p if p.is_dir() else p.parent) / "confusion.png"
