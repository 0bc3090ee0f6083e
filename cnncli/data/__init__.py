"""Datasets (fashion-mnist, its embedded subset, cifar10, imagefolder, synthetic) and the input pipeline.

The entry points, importable from here without importing torch until they are called:
- `load_dataset(name, ...) -> DatasetSplits` and `list_datasets()` (registry.py)
- `parse_augment(spec) -> BatchAugment` (augment.py)
- `prepare_batch`, `needs_adaptation`, `load_image_files`, `prepare_images` (transforms.py)
"""

from __future__ import annotations

from cnncli.data.registry import (  # noqa: F401  (torch-free)
    DATASETS,
    FASHION_CLASSES,
    cache_dir,
    dataset_names,
    find_dataset,
    list_datasets,
    load_dataset,
    parse_dataset_name,
)

_LAZY = {
    "ImageData": "cnncli.data.splits",
    "DatasetSplits": "cnncli.data.splits",
    "BatchAugment": "cnncli.data.augment",
    "parse_augment": "cnncli.data.augment",
    "prepare_batch": "cnncli.data.transforms",
    "prepare_images": "cnncli.data.transforms",
    "needs_adaptation": "cnncli.data.transforms",
    "load_image_files": "cnncli.data.transforms",
}


def __getattr__(name: str):
    # torch-dependent names load on first use, so `import cnncli.data` stays instant
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'cnncli.data' has no attribute {name!r}")
