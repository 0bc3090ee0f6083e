"""The datasets cnncli knows, where it looks for them, and `load_dataset`, the one door in.

Names: `fashion-mnist`, `fashion-mnist-mini` (a real subset shipped inside the package),
`cifar10`, `synthetic` (options: size, channels, classes, n, n_test; also written
`synthetic:size=32,channels=3`), `imagefolder:PATH` and `csv:FILE` (options: image_size,
test_fraction) and `wds:PATTERN` (WebDataset tar shards, always streamed: data/shards/).

Files are looked up, in order, in: the `data_dir` argument, `$CNNCLI_DATA`, the user's cache
folder (`$XDG_CACHE_HOME/cnncli`, by default `~/.cache/cnncli`), and `/usr/share/datasets`
(where Debian's `dataset-fashion-mnist` installs); in each folder itself and in the
dataset's usual sub-folder (`fashion-mnist/`, torchvision's `FashionMNIST/raw/`,
`cifar-10-batches-py/`). This module imports no torch: listing datasets is instant.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cnncli.data.paths import absolute_name, dataset_name, looks_like_path
from cnncli.errors import InputError, RuntimeFailure, UnknownNameError

FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
FASHION_FILES = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}
CIFAR_FILES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]

EMBEDDED_DIR = Path(__file__).resolve().parent / "embedded"
# Folders outside the user's control that a system package may fill; tests replace this list.
SYSTEM_DIRS: list[Path] = [Path("/usr/share/datasets")]
ENV_VAR = "CNNCLI_DATA"


@dataclass(frozen=True)
class DatasetSpec:
    """What is known about a dataset before loading it (listing needs no file access beyond a stat)."""

    name: str
    description: str
    num_classes: int | None
    image_shape: tuple[int, int, int] | None  # C, H, W (None: depends on the files)
    train_size: int | None = None
    test_size: int | None = None
    subfolders: tuple[str, ...] = ()
    options: tuple[str, ...] = ()


DATASETS: dict[str, DatasetSpec] = {
    s.name: s
    for s in [
        DatasetSpec("fashion-mnist", "Zalando's article images (the seed's first dataset), 4 IDX .gz files",
                    10, (1, 28, 28), 60_000, 10_000, ("fashion-mnist", "FashionMNIST/raw")),
        DatasetSpec("fashion-mnist-mini", "a real Fashion-MNIST subset shipped with cnncli (500/class train, "
                    "100/class test)", 10, (1, 28, 28), 5_000, 1_000),
        DatasetSpec("cifar10", "CIFAR-10 python batches (cifar-10-batches-py/)", 10, (3, 32, 32), 50_000,
                    10_000, ("cifar-10-batches-py", "cifar10/cifar-10-batches-py")),
        DatasetSpec("synthetic", "generated oriented bars, learnable; for tests and offline demos", 10,
                    (1, 28, 28), 6_000, 1_200, options=("size", "channels", "classes", "n", "n_test")),
        DatasetSpec("imagefolder:PATH", "PATH/<class>/*.png|jpg|webp|gif|bmp|tif|ppm, or PATH/train|val|test/<class>/*",
                    None, None, options=("image_size", "test_fraction")),
        DatasetSpec("csv:FILE", "a CSV with columns path,label[,split] (paths relative to its folder)",
                    None, None, options=("image_size", "test_fraction")),
        DatasetSpec("wds:PATTERN", "WebDataset tar shards (KEY.jpg|png + KEY.cls): a folder 'datasets pack' "
                    "wrote, or shards/train-{000000..000099}.tar", None, None),
    ]
}
ALIASES = {
    "fashion_mnist": "fashion-mnist", "fashionmnist": "fashion-mnist", "fmnist": "fashion-mnist",
    "fashion-mnist-embedded": "fashion-mnist-mini", "fashion_mnist_mini": "fashion-mnist-mini",
    "cifar-10": "cifar10", "cifar_10": "cifar10", "imagefolder": "imagefolder:PATH", "csv": "csv:FILE",
}

_warned_fallback = False


def cache_dir() -> Path:
    """The user's cache folder for cnncli (downloads land in its sub-folders)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "cnncli"


def dataset_names() -> list[str]:
    return list(DATASETS)


def canonical_dataset_name(name: str) -> str:
    """A bare path as its prefixed name (`photos/` -> `imagefolder:photos/`, data/paths.py);
    registered names and prefixed ones as given."""
    return dataset_name(name, tuple(ALIASES) + tuple(DATASETS))


def parse_dataset_name(name: str) -> tuple[str, str | None, dict[str, str]]:
    """'imagefolder:PATH' -> ('imagefolder:PATH', 'PATH', {}); 'synthetic:size=32' -> ('synthetic', None, {'size': '32'});
    a bare folder 'photos/' -> ('imagefolder:PATH', 'photos/', {}) (canonical_dataset_name)."""
    raw = canonical_dataset_name(name).strip()
    head, sep, rest = raw.partition(":")
    key = head.lower()
    key = ALIASES.get(key, key)
    if key == "imagefolder:PATH":
        if not sep or not rest:
            raise InputError("imagefolder needs a folder: --data imagefolder:PATH (one sub-folder per class)")
        return key, rest, {}
    if key == "csv:FILE":
        if not sep or not rest:
            raise InputError("csv needs a file: --data csv:FILE (columns path,label[,split])")
        return key, rest, {}
    if key not in DATASETS:
        if looks_like_path(raw):
            what = "not a dataset" if Path(raw).expanduser().exists() else "no such folder or file"
            raise InputError(f"dataset {raw}: {what} (a folder of <class>/ image folders, a .csv file or a "
                             "folder of shards)")
        raise UnknownNameError("dataset", head, list(ALIASES) + dataset_names(), hint="or imagefolder:PATH; see 'cnncli datasets'")
    options: dict[str, str] = {}
    if sep:
        for item in filter(None, (p.strip() for p in rest.split(","))):
            k, eq, v = item.partition("=")
            if not eq:
                raise InputError(f"dataset option '{item}' must be KEY=VALUE (e.g. {key}:size=32,channels=3)")
            options[k.strip()] = v.strip()
    return key, None, options


def _base_dirs(data_dir: str | os.PathLike | None) -> list[tuple[str, Path]]:
    """(how to name it in a message, folder) for each base folder, in lookup order."""
    bases: list[tuple[str, Path]] = []
    if data_dir is not None:
        bases.append((str(data_dir), Path(data_dir).expanduser()))
    if os.environ.get(ENV_VAR):
        bases.append((f"${ENV_VAR}={os.environ[ENV_VAR]}", Path(os.environ[ENV_VAR]).expanduser()))
    bases.append((str(cache_dir()), cache_dir()))
    bases += [(str(d), d) for d in SYSTEM_DIRS]
    return bases


def _candidate_dirs(spec: DatasetSpec, data_dir: str | os.PathLike | None) -> list[Path]:
    """Every folder to try, in lookup order: each base folder, then its sub-folders."""
    return [folder for _, base in _base_dirs(data_dir) for folder in [base] + [base / s for s in spec.subfolders]]


def _fashion_file(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):  # the uncompressed file reads faster when both exist
        if (folder / name).is_file():
            return folder / name
    return None


def _complete(name: str, folder: Path) -> tuple[bool, list[str]]:
    """(all files present, names of the present ones) for a candidate folder."""
    if name == "fashion-mnist":
        present = [stem for stem in FASHION_FILES.values() if _fashion_file(folder, stem)]
        return len(present) == len(FASHION_FILES), present
    present = [f for f in CIFAR_FILES if (folder / f).is_file()]
    return len(present) == len(CIFAR_FILES), present


def find_dataset(name: str, data_dir: str | os.PathLike | None = None) -> Path | None:
    """The first folder in lookup order holding every file of `name` (fashion-mnist or cifar10)."""
    spec = DATASETS[name]
    for folder in _candidate_dirs(spec, data_dir):
        if _complete(name, folder)[0]:
            return folder
    return None


def _not_found(name: str, data_dir) -> InputError:
    spec = DATASETS[name]
    bases = [label for label, _ in _base_dirs(data_dir)]
    if not os.environ.get(ENV_VAR):
        bases.insert(1 if data_dir is not None else 0, f"${ENV_VAR} (unset)")
    partial = []
    for folder in _candidate_dirs(spec, data_dir):
        ok, present = _complete(name, folder)
        if present and not ok:
            partial.append(str(folder))
    subs = " or ".join(f"{s}/" for s in spec.subfolders)
    what = "the four IDX files (train-images-idx3-ubyte.gz, ...)" if name == "fashion-mnist" else "data_batch_1..5 and test_batch"
    how = (
        "--data-dir DIR, `apt-get install dataset-fashion-mnist` (or --download with a network), or $CNNCLI_DATA=DIR"
        if name == "fashion-mnist"
        else "--data-dir DIR (the folder holding cifar-10-batches-py/), --download with a network, or $CNNCLI_DATA=DIR"
    )
    incomplete = f"; incomplete copies in: {', '.join(partial)}" if partial else ""
    return InputError(
        f"{name} not found: looked for {what} in {', '.join(bases)} (and their {subs} sub-folders)"
        f"{incomplete}; get it with {how}"
    )


def download_dataset(name: str) -> Path:
    """Fetch fashion-mnist or cifar10 through torchvision into the cache folder; the folder it landed in."""
    target = cache_dir()
    try:
        target.mkdir(parents=True, exist_ok=True)
        if name == "fashion-mnist":
            from torchvision.datasets import FashionMNIST

            # torchvision puts the .gz files (and their uncompressed copies) in FashionMNIST/raw
            FashionMNIST(root=str(target), train=True, download=True)
        else:
            # CIFAR10(download=True) would then unpickle the batches with pickle.load: only
            # fetch and unpack the archive, and read it with our restricted unpickler
            from torchvision.datasets import CIFAR10
            from torchvision.datasets.utils import download_and_extract_archive

            download_and_extract_archive(CIFAR10.url, str(target), filename=CIFAR10.filename, md5=CIFAR10.tgz_md5)
    except Exception as e:  # noqa: BLE001  (URLError, checksum RuntimeError, OSError: all one message)
        reason = " ".join(str(e).split())[:300]
        offline = "apt-get install dataset-fashion-mnist or --data-dir DIR" if name == "fashion-mnist" else "--data-dir DIR"
        raise RuntimeFailure(f"could not download {name} into {target}: {reason}; without a network use {offline}") from None
    found = find_dataset(name, target)
    if found is None:
        raise RuntimeFailure(f"downloaded {name} into {target} but its files are not where expected")
    return found


def _load_fashion(folder: Path, name: str, source: str):
    import torch

    from cnncli.data.idx import read_idx_images_labels
    from cnncli.data.splits import ImageData

    def split(images_key: str, labels_key: str) -> ImageData:
        images, labels = read_idx_images_labels(
            _fashion_file(folder, FASHION_FILES[images_key]) or folder / (FASHION_FILES[images_key] + ".gz"),
            _fashion_file(folder, FASHION_FILES[labels_key]) or folder / (FASHION_FILES[labels_key] + ".gz"),
            num_classes=len(FASHION_CLASSES),
        )
        return ImageData(
            torch.from_numpy(images.copy()).unsqueeze(1),
            torch.from_numpy(labels.astype("int64")),
            list(FASHION_CLASSES),
            name,
            source,
        )

    return split("train_images", "train_labels"), split("test_images", "test_labels")


def _load_cifar(folder: Path, source: str):
    import torch

    from cnncli.data.cifar import read_cifar10_folder
    from cnncli.data.splits import ImageData

    train_x, train_y, test_x, test_y, names = read_cifar10_folder(folder)
    return (
        ImageData(torch.from_numpy(train_x), torch.from_numpy(train_y), names, "cifar10", source),
        ImageData(torch.from_numpy(test_x), torch.from_numpy(test_y), names, "cifar10", source),
    )


def _check_options(name: str, options: dict[str, Any], allowed: tuple[str, ...]) -> dict[str, Any]:
    options = {k: v for k, v in options.items() if v is not None}
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        valid = ", ".join(allowed) if allowed else "none"
        raise InputError(f"dataset {name} takes no option {', '.join(unknown)} (valid: {valid})")
    return options


def _int_option(name: str, key: str, value: Any) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        raise InputError(f"dataset {name}: option {key} must be an integer, got '{value}'") from None


def load_dataset(
    name: str,
    data_dir: str | os.PathLike | None = None,
    download: bool = False,
    val_fraction: float = 0.1,
    max_samples: int | None = None,
    seed: int = 0,
    fallback_to_embedded: bool = False,
    hold_out_test: bool = True,
    stream: bool | None = None,
    say_sizes: bool = False,
    **options: Any,
):
    """Load a dataset by name into memory and split it: a `DatasetSplits`.

    Validation is held out of the training set (`val_fraction`, stratified, fixed by `seed`);
    `max_samples` caps the training set, equal per class. `fallback_to_embedded`: when the
    full fashion-mnist is not found (and not downloading), load `fashion-mnist-mini` and say
    so once on stderr. `hold_out_test=False`: an image folder without a test folder keeps all
    its images in train and has an empty test split (for `eval --split all`, which uses every
    image anyway, even of a folder too small to hold anything out). `stream`: for imagefolder
    and csv, True streams from the files, False loads them in memory, None decides by their
    decoded size (data/folders.py). Options: see the module doc; options given as None are
    ignored. `say_sizes`: say the split sizes on stderr (what every command does first).
    """
    splits = _load_dataset(name, data_dir, download, val_fraction, max_samples, seed, fallback_to_embedded,
                           hold_out_test, stream, **options)
    if say_sizes:
        say_split_sizes(splits)
    return splits


def say_split_sizes(splits) -> None:
    """One line on stderr (rank 0): the split sizes, classes and whether the images stream."""
    if os.environ.get("RANK", "0") != "0":
        return
    from cnncli.output import note

    info = getattr(splits, "info", {}) or {}
    kind = "streamed from its files" if getattr(splits, "streaming", False) else "in memory"
    note(f"data {info.get('requested') or info.get('name')}: {len(splits.train):,} train / {len(splits.val):,} val / "
         f"{len(splits.test):,} test images, {len(splits.class_names)} classes ({kind})")


def _info(name: str) -> dict[str, Any]:
    """What a run records of where its data came from; a folder's or file's absolute path too,
    for later commands run elsewhere (data.paths.recorded_dataset)."""
    info: dict[str, Any] = {"requested": name, "embedded": False}
    absolute = absolute_name(name)
    if absolute:
        info["absolute"] = absolute
    return info


def _load_dataset(name, data_dir, download, val_fraction, max_samples, seed, fallback_to_embedded, hold_out_test,
                  stream, **options):
    from cnncli.data.splits import make_splits

    name = canonical_dataset_name(name)
    if name.strip().lower().startswith("wds:"):  # tar shards (data/shards/): always a stream
        from cnncli.data.shards import load_shards

        _check_options("wds", options, ())
        return load_shards(name, val_fraction=val_fraction, max_samples=max_samples, seed=seed,
                           hold_out_test=hold_out_test, info=_info(name))
    key, path_arg, name_options = parse_dataset_name(name)
    options = {**name_options, **options}
    spec = DATASETS[key]
    info = _info(name)

    if key in ("fashion-mnist", "cifar10"):
        _check_options(key, options, spec.options)
        folder = find_dataset(key, data_dir)
        if folder is None and download:
            folder = download_dataset(key)
        if folder is None and key == "fashion-mnist" and fallback_to_embedded:
            _warn_fallback(data_dir)
            key, spec, info["embedded"] = "fashion-mnist-mini", DATASETS["fashion-mnist-mini"], True
            info["fallback_from"] = "fashion-mnist"
        elif folder is None:
            raise _not_found(key, data_dir)
        else:
            _note_if_elsewhere(key, folder, data_dir)
            if key == "fashion-mnist":
                train, test = _load_fashion(folder, key, str(folder))
            else:
                train, test = _load_cifar(folder, str(folder))
            info["test_split"] = "original"
            return make_splits(train, test, val_fraction, max_samples, seed, info)

    if key == "fashion-mnist-mini":
        _check_options(key, options, spec.options)
        train, test = _load_fashion(EMBEDDED_DIR, "fashion-mnist-mini", "embedded")
        info["embedded"] = True
        info["test_split"] = "original"
        return make_splits(train, test, val_fraction, max_samples, seed, info)

    if key == "synthetic":
        from cnncli.data.synthetic import DEFAULTS, load_synthetic

        options = _check_options(key, options, spec.options)
        ints = {k: _int_option(key, k, v) for k, v in options.items()}
        train, test = load_synthetic(**{**DEFAULTS, **ints}, seed=seed)
        info["test_split"] = "generated"
        info["options"] = {**{k: v for k, v in DEFAULTS.items() if v is not None}, **ints}
        return make_splits(train, test, val_fraction, max_samples, seed, info)

    # imagefolder:PATH, csv:FILE: an index, then tensors or a stream (data/folders.py)
    from cnncli.data.folders import load_indexed

    kind = key.partition(":")[0]
    options = _check_options(kind, options, spec.options)
    try:
        test_fraction = float(options.get("test_fraction", 0.2))
    except ValueError:
        raise InputError(f"dataset {kind}: option test_fraction must be a number, got '{options['test_fraction']}'") from None
    return load_indexed(f"{kind}:{path_arg}", val_fraction=val_fraction, max_samples=max_samples, seed=seed,
                        hold_out_test=hold_out_test, test_fraction=test_fraction,
                        image_size=options.get("image_size"), stream=stream, info=info)


def _warn_fallback(data_dir) -> None:
    global _warned_fallback
    if _warned_fallback:
        return
    _warned_fallback = True
    from cnncli.output import warn

    spec = DATASETS["fashion-mnist-mini"]
    looked = ", ".join(label for label, _ in _base_dirs(data_dir))
    warn(
        f"fashion-mnist not found (looked in {looked}); using the embedded subset fashion-mnist-mini "
        f"({spec.train_size} train / {spec.test_size} test real images). For the full set: --data-dir DIR, "
        f"`apt-get install dataset-fashion-mnist`, or --download"
    )


def _note_if_elsewhere(name: str, folder: Path, data_dir) -> None:
    """Say so when --data-dir was given but the data came from a later place in the lookup."""
    if data_dir is None:
        return
    given = Path(data_dir).expanduser().resolve()
    if folder.resolve() != given and given not in folder.resolve().parents:
        from cnncli.output import note

        note(f"{name} is not in {data_dir}; using {folder}")


def list_datasets(data_dir: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """Every dataset with its shape and where it is (or is not) found; no data is loaded."""
    rows = []
    for spec in DATASETS.values():
        if spec.name in ("fashion-mnist", "cifar10"):
            folder = find_dataset(spec.name, data_dir)
            found, location = folder is not None, str(folder) if folder else None
        elif spec.name == "fashion-mnist-mini":
            found = all((EMBEDDED_DIR / (f + ".gz")).is_file() for f in FASHION_FILES.values())
            location = str(EMBEDDED_DIR) if found else None
        elif spec.name == "synthetic":
            found, location = True, "generated"
        else:
            found, location = None, None
        c, h, w = spec.image_shape or (None, None, None)
        rows.append(
            {
                "name": spec.name,
                "description": spec.description,
                "classes": spec.num_classes,
                "image_size": [h, w] if h else None,
                "channels": c,
                "train": spec.train_size,
                "test": spec.test_size,
                "found": found,
                "location": location,
                "options": list(spec.options),
            }
        )
    return rows
