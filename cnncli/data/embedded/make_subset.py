"""Make the embedded Fashion-MNIST subset (`fashion-mnist-mini`) from the full dataset.

    python cnncli/data/embedded/make_subset.py [/usr/share/datasets/fashion-mnist]

Takes, in file order, the first 500 images of each class from the training files and the
first 100 of each class from the test (t10k) files: no randomness, so anyone with the
original files gets byte-identical output (gzip with mtime 0). Writes the four IDX .gz files
next to this script, under the original names.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from cnncli.data.idx import read_idx_images_labels, write_idx

TRAIN_PER_CLASS = 500
TEST_PER_CLASS = 100


def first_per_class(labels: np.ndarray, per_class: int) -> np.ndarray:
    """Indices of the first `per_class` samples of each class, in file order."""
    chosen = [np.flatnonzero(labels == c)[:per_class] for c in range(int(labels.max()) + 1)]
    return np.sort(np.concatenate(chosen))


def main(source: Path, target: Path) -> None:
    for prefix, per_class in (("train", TRAIN_PER_CLASS), ("t10k", TEST_PER_CLASS)):
        images, labels = read_idx_images_labels(
            source / f"{prefix}-images-idx3-ubyte.gz", source / f"{prefix}-labels-idx1-ubyte.gz", num_classes=10
        )
        keep = first_per_class(labels, per_class)
        write_idx(target / f"{prefix}-images-idx3-ubyte.gz", images[keep])
        write_idx(target / f"{prefix}-labels-idx1-ubyte.gz", labels[keep])
        print(f"{prefix}: {len(keep)} images, {np.bincount(labels[keep]).tolist()} per class")


if __name__ == "__main__":
    src = Path(sys.argv[1] if len(sys.argv) > 1 else "/usr/share/datasets/fashion-mnist")
    main(src, Path(__file__).resolve().parent)
