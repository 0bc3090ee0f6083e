"""What the benchmark scripts share: the machine record, JSON lines, torchvision's Fashion-MNIST.

Every script prints one JSON object per line on stdout (`emit`), starting with a `machine`
line, so `bench/run_all.sh > figures.jsonl` collects everything in one file.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

FASHION_FILES = ["train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"]


def emit(**fields) -> None:
    print(json.dumps(fields, default=str), flush=True)


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def machine(bench: str) -> dict:
    """Cores, CPU, device, versions and the load when the bench started (the figures depend on it)."""
    import torch
    import torchvision

    flags = cpu_flags()
    info = {
        "bench": bench,
        "kind": "machine",
        "cpu": cpu_model(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "bf16_cpu_fast_path": bool({"avx512_bf16", "amx_bf16"} & flags),
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "load_average": [round(v, 2) for v in os.getloadavg()],
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    emit(**info)
    return info


def fashion_source() -> Path:
    """The folder holding the four Fashion-MNIST .gz files, found the way cnncli finds them."""
    from cnncli.data.registry import find_dataset

    folder = find_dataset("fashion-mnist")
    if folder is None:
        sys.exit("fashion-mnist not found: apt-get install dataset-fashion-mnist, or set CNNCLI_DATA")
    return folder


def torchvision_root() -> tempfile.TemporaryDirectory:
    """A temporary root laid out as torchvision's FashionMNIST expects (`FashionMNIST/raw/`).

    The .gz files are symlinked and torchvision's own extract_archive unpacks them there
    (offline: download=True would re-fetch, since Debian's .gz differ from the md5 sums
    torchvision knows, although the data inside is the same).
    """
    from torchvision.datasets.utils import extract_archive

    source = fashion_source()
    tmp = tempfile.TemporaryDirectory(prefix="cnncli-bench-")
    raw = Path(tmp.name) / "FashionMNIST" / "raw"
    raw.mkdir(parents=True)
    for name in FASHION_FILES:
        src = source / name
        if not src.exists():  # cnncli also accepts the uncompressed files
            os.symlink(source / name[:-3], raw / name[:-3])
            continue
        os.symlink(src, raw / name)
        extract_archive(str(raw / name), str(raw))
    return tmp
