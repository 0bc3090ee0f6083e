"""How long `cnncli datasets check` takes on the 70,000 Fashion-MNIST images, beside the plain
baseline a user would write (exact duplicates by hashing every image's bytes, no near duplicates).

    python bench/datasets_check.py [--data-dir DIR] [--threshold 4] [--folder N]

Needs the full Fashion-MNIST (apt-get install dataset-fashion-mnist, or --data-dir). With
--folder N, also writes N of its images as PNG files into a temporary image folder and times
the streaming path (reading, verifying and decoding every file) on it.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def baseline(data_dir) -> tuple[float, int]:
    """Exact duplicates only, the way one would do it by hand: a set of the images' bytes."""
    from cnncli.data import load_dataset

    start = time.perf_counter()
    data = load_dataset("fashion-mnist", data_dir=data_dir, val_fraction=0.0)
    images = [data.train.images, data.test.images]
    seen, dupes = set(), 0
    for part in images:
        for row in part.reshape(len(part), -1).numpy():
            digest = hashlib.blake2b(row.tobytes(), digest_size=16).digest()
            dupes += digest in seen
            seen.add(digest)
    return time.perf_counter() - start, dupes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--threshold", type=int, default=None)
    parser.add_argument("--folder", type=int, default=0, help="also time an image folder of this many PNGs")
    args = parser.parse_args()

    import torch

    from cnncli.data.check import DEFAULT_THRESHOLD, check_dataset

    threshold = DEFAULT_THRESHOLD if args.threshold is None else args.threshold
    print(f"machine: {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
          f"load average {os.getloadavg()[0]:.1f} (other work on the machine slows every figure)")
    seconds, dupes = baseline(args.data_dir)
    print(f"baseline (exact duplicates by bytes only): {seconds:6.1f} s, {dupes} duplicate images")
    report = check_dataset("fashion-mnist", data_dir=args.data_dir, threshold=threshold, max_pairs=10)
    print(f"cnncli datasets check fashion-mnist:        {report['seconds']:6.1f} s for {report['images']:,} images "
          f"(threshold {threshold} bits, similarity >= {report['settings']['min_similarity']})")
    print(f"  exact duplicate pairs {report['exact_duplicates']['pairs']:,}, near duplicate pairs "
          f"{report['near_duplicates']['pairs']:,}, test images also in train "
          f"{report['leaks']['held_out_images']:,}, label conflicts {report['label_conflicts']:,}")
    if args.folder:
        from PIL import Image

        from cnncli.data import load_dataset

        data = load_dataset("fashion-mnist", data_dir=args.data_dir, val_fraction=0.0)
        with tempfile.TemporaryDirectory() as tmp:
            n = min(args.folder, len(data.train))
            for k in range(n):
                folder = Path(tmp) / str(int(data.train.labels[k]))
                folder.mkdir(exist_ok=True)
                Image.fromarray(data.train.images[k, 0].numpy()).save(folder / f"{k}.png")
            folder_report = check_dataset(f"imagefolder:{tmp}", threshold=threshold, max_pairs=10)
            rate = n / folder_report["seconds"]
            print(f"cnncli datasets check imagefolder ({n:,} PNG files): {folder_report['seconds']:6.1f} s "
                  f"({rate:,.0f} files/s), near duplicate pairs {folder_report['near_duplicates']['pairs']:,}")


if __name__ == "__main__":
    main()
