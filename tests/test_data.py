"""Datasets, splits and the input pipeline, on tiny files written here in the real formats.

Nothing here needs the real Fashion-MNIST, CIFAR-10 or a network: the helpers below write
IDX files with struct + gzip and CIFAR batches with pickle (protocol 2, as the originals),
independently of the code under test.
"""

from __future__ import annotations

import gzip
import json
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from cnncli.data import registry
from cnncli.data.cifar import read_batch, restricted_load
from cnncli.data.idx import read_idx, write_idx
from cnncli.data.registry import list_datasets, load_dataset
from cnncli.data.splits import channel_stats, stratified_cap, stratified_holdout
from cnncli.data.transforms import load_image_files, needs_adaptation, prepare_batch, prepare_images
from cnncli.errors import InputError

# the tests write PNG/JPEG with torchvision's encoders, which 0.29 marks as moving to torchcodec
pytestmark = pytest.mark.filterwarnings("ignore:The image decoding and encoding:DeprecationWarning")

# ---------------------------------------------------------------- writers of the real formats


def idx_bytes(array: np.ndarray) -> bytes:
    """IDX by hand: 0x0000, type 0x08 (uint8), ndim, big-endian dims, then the bytes."""
    array = np.asarray(array, dtype=np.uint8)
    return struct.pack(">HBB", 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def write_fashion(folder: Path, n_train=40, n_test=20, marker=0, compress=True, size=28) -> Path:
    """Four IDX files; pixel (0, 0) of every image holds `marker` so a test can tell folders apart."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        labels = (np.arange(n) % 10).astype(np.uint8)
        images = rng.integers(0, 256, size=(n, size, size), dtype=np.uint8)
        images[:, 0, 0] = marker
        for kind, arr in (("images-idx3", images), ("labels-idx1", labels)):
            name = f"{prefix}-{kind}-ubyte"
            data = idx_bytes(arr)
            if compress:
                (folder / (name + ".gz")).write_bytes(gzip.compress(data))
            else:
                (folder / name).write_bytes(data)
    return folder


def cifar_batch(n: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        b"batch_label": b"training batch 1 of 5",
        b"labels": [int(v) for v in np.arange(n) % 10],
        b"data": rng.integers(0, 256, size=(n, 3072), dtype=np.uint8),
        b"filenames": [b"img_%d.png" % i for i in range(n)],
    }


def write_cifar(folder: Path, n=20) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i, name in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        (folder / name).write_bytes(pickle.dumps(cifar_batch(n, seed=i), protocol=2))
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    meta = {b"label_names": names, b"num_cases_per_batch": n, b"num_vis": 3072}
    (folder / "batches.meta").write_bytes(pickle.dumps(meta, protocol=2))
    return folder


# No test sees the machine's datasets (conftest's autouse `isolated_data`): the cache is
# tmp_path/"cache", $CNNCLI_DATA is unset and the only system folder is tmp_path/"system".


# ---------------------------------------------------------------- IDX


def test_idx_reads_gzip_and_plain_files_alike(tmp_path):
    array = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a.gz").write_bytes(gzip.compress(idx_bytes(array)))
    (tmp_path / "a").write_bytes(idx_bytes(array))
    assert np.array_equal(read_idx(tmp_path / "a.gz"), array)
    assert np.array_equal(read_idx(tmp_path / "a"), array)


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32, np.float32, np.float64])
def test_idx_writer_round_trips_and_stores_big_endian(tmp_path, dtype):
    array = (np.arange(12).reshape(3, 4) - 3).astype(dtype) if dtype != np.uint8 else np.arange(12, dtype=dtype)
    write_idx(tmp_path / "x.gz", array)
    back = read_idx(tmp_path / "x.gz")
    assert back.dtype == np.dtype(dtype) and np.array_equal(back, array)
    raw = gzip.decompress((tmp_path / "x.gz").read_bytes())
    assert raw[4 + 4 * array.ndim :] == array.astype(np.dtype(dtype).newbyteorder(">")).tobytes()


def test_truncated_idx_is_one_clear_error_naming_the_file(tmp_path):
    data = idx_bytes(np.zeros((10, 28, 28), np.uint8))
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(data[:-100]))
    with pytest.raises(InputError) as e:
        read_idx(path)
    assert str(path) in str(e.value) and "truncated" in str(e.value) and "7840" in str(e.value)


def test_cut_gzip_stream_and_non_gzip_file_are_input_errors(tmp_path):
    path = tmp_path / "cut.gz"
    noise = np.random.default_rng(0).integers(0, 256, (100, 28, 28), dtype=np.uint8)
    path.write_bytes(gzip.compress(idx_bytes(noise))[:2000])
    with pytest.raises(InputError, match="cut.gz: truncated gzip"):
        read_idx(path)
    bogus = tmp_path / "bogus.gz"
    bogus.write_bytes(b"this is not gzip at all")
    with pytest.raises(InputError, match="bogus.gz: not a valid gzip"):
        read_idx(bogus)


def test_wrong_magic_and_too_short_files_are_rejected(tmp_path):
    (tmp_path / "png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    with pytest.raises(InputError, match="not an IDX file"):
        read_idx(tmp_path / "png")
    (tmp_path / "tiny").write_bytes(b"\x00\x00")
    with pytest.raises(InputError, match="only 2 bytes"):
        read_idx(tmp_path / "tiny")
    (tmp_path / "extra").write_bytes(idx_bytes(np.zeros(5, np.uint8)) + b"\x00")
    with pytest.raises(InputError, match="trailing bytes"):
        read_idx(tmp_path / "extra")


def test_labels_out_of_range_and_count_mismatch_are_named(tmp_path):
    folder = write_fashion(tmp_path / "d", n_train=10, n_test=10)
    bad = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 12], np.uint8)
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(bad)))
    with pytest.raises(InputError, match=r"t10k-labels-idx1-ubyte.gz: label 12 at position 9 is out of range 0..9"):
        load_dataset("fashion-mnist", data_dir=folder)
    (folder / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(idx_bytes(np.zeros(9, np.uint8))))
    with pytest.raises(InputError, match="holds 10 images but .* holds 9 labels"):
        load_dataset("fashion-mnist", data_dir=folder)


# ---------------------------------------------------------------- fashion-mnist lookup


def test_fashion_mnist_loads_as_uint8_with_the_seed_class_names(tmp_path):
    folder = write_fashion(tmp_path / "fm", n_train=50, n_test=20)
    splits = load_dataset("fashion-mnist", data_dir=folder, val_fraction=0.2)
    assert splits.train.images.dtype == torch.uint8 and splits.train.images.shape[1:] == (1, 28, 28)
    assert splits.train.labels.dtype == torch.int64
    assert (len(splits.train), len(splits.val), len(splits.test)) == (40, 10, 20)
    assert splits.class_names[0] == "T-shirt/top" and splits.class_names[9] == "Ankle boot"
    assert splits.info["source"] == str(folder)
    raw = read_idx(folder / "t10k-images-idx3-ubyte.gz")
    assert torch.equal(splits.test.images[:, 0], torch.from_numpy(raw.copy()))


def test_lookup_order_data_dir_then_env_then_cache_then_system(tmp_path, monkeypatch):
    write_fashion(tmp_path / "system" / "fashion-mnist", marker=4)
    assert load_dataset("fashion-mnist").test.images[0, 0, 0, 0] == 4
    write_fashion(tmp_path / "cache" / "cnncli" / "fashion-mnist", marker=3)
    assert load_dataset("fashion-mnist").test.images[0, 0, 0, 0] == 3
    write_fashion(tmp_path / "env" / "fashion-mnist", marker=2)  # the sub-folder of $CNNCLI_DATA
    monkeypatch.setenv("CNNCLI_DATA", str(tmp_path / "env"))
    assert load_dataset("fashion-mnist").test.images[0, 0, 0, 0] == 2
    write_fashion(tmp_path / "given", marker=1, compress=False)  # uncompressed files count too
    splits = load_dataset("fashion-mnist", data_dir=tmp_path / "given")
    assert splits.test.images[0, 0, 0, 0] == 1 and splits.info["source"] == str(tmp_path / "given")


def test_torchvision_download_layout_is_found(tmp_path):
    write_fashion(tmp_path / "tv" / "FashionMNIST" / "raw", marker=7)
    assert load_dataset("fashion-mnist", data_dir=tmp_path / "tv").test.images[0, 0, 0, 0] == 7


def test_missing_dataset_is_one_line_naming_the_folders_and_three_ways(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNCLI_DATA", str(tmp_path / "env"))
    with pytest.raises(InputError) as e:
        load_dataset("fashion-mnist", data_dir=tmp_path / "nowhere")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("fashion-mnist not found")
    for where in (tmp_path / "nowhere", tmp_path / "env", tmp_path / "cache" / "cnncli", tmp_path / "system"):
        assert str(where) in msg
    for way in ("--data-dir", "apt-get install dataset-fashion-mnist", "--download", "CNNCLI_DATA"):
        assert way in msg
    assert e.value.exit_code == 2


def test_incomplete_copy_is_pointed_out(tmp_path):
    folder = write_fashion(tmp_path / "half")
    (folder / "t10k-images-idx3-ubyte.gz").unlink()
    with pytest.raises(InputError, match=f"incomplete copies in: {folder}"):
        load_dataset("fashion-mnist", data_dir=folder)


def test_download_without_network_is_a_clear_runtime_failure(monkeypatch):
    import sys
    import types

    class Offline:  # what torchvision's FashionMNIST(download=True) does with no network
        def __init__(self, *a, **k):
            raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nTried mirror, got: <urlopen error>")

    monkeypatch.setitem(sys.modules, "torchvision.datasets", types.SimpleNamespace(FashionMNIST=Offline))
    from cnncli.errors import RuntimeFailure

    with pytest.raises(RuntimeFailure, match="could not download fashion-mnist .*apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist", download=True)


def test_fallback_to_embedded_subset_says_so_once(capsys):
    splits = load_dataset("fashion-mnist", fallback_to_embedded=True)
    err = capsys.readouterr().err
    assert "fashion-mnist-mini" in err and "not found" in err and err.count("\n") == 1
    assert splits.info["embedded"] and splits.info["name"] == "fashion-mnist-mini"
    assert len(splits.train) + len(splits.val) == 5000 and len(splits.test) == 1000
    load_dataset("fashion-mnist", fallback_to_embedded=True)
    assert capsys.readouterr().err == ""
    with pytest.raises(InputError, match="not found"):
        load_dataset("fashion-mnist")


def test_embedded_subset_is_real_balanced_and_licensed():
    splits = load_dataset("fashion-mnist-mini", val_fraction=0.0)
    assert splits.train.class_counts() == [500] * 10 and splits.test.class_counts() == [100] * 10
    # real clothing on a black background: dark borders, bright middle, not noise
    images = splits.train.images.float()
    assert images[:, :, :, 0].mean() < 10 and images[:, :, 10:18, 10:18].mean() > 60
    # trousers (1) are tall and narrow, bags (8) are wide: a real-data fact
    col_mass = lambda k: (splits.train.images[splits.train.labels == k].float().mean(dim=(0, 1, 2)) > 40).sum()
    assert col_mass(1) < col_mass(8)
    folder = registry.EMBEDDED_DIR
    assert "Zalando SE" in (folder / "LICENSE-fashion-mnist.txt").read_text()
    assert sum(p.stat().st_size for p in folder.glob("*.gz")) < 4 << 20


# ---------------------------------------------------------------- CIFAR-10


def test_cifar10_batches_load_with_planes_in_rgb_order(tmp_path):
    write_cifar(tmp_path / "data" / "cifar-10-batches-py", n=20)
    splits = load_dataset("cifar10", data_dir=tmp_path / "data", val_fraction=0.1)
    assert splits.train.images.shape[1:] == (3, 32, 32) and splits.train.images.dtype == torch.uint8
    assert len(splits.train) + len(splits.val) == 100 and len(splits.test) == 20
    assert splits.class_names[3] == "cat" and len(splits.mean) == 3
    raw = cifar_batch(20, seed=5)[b"data"]  # test_batch
    assert torch.equal(splits.test.images[0, 0].flatten(), torch.from_numpy(raw[0, :1024]))  # red plane
    assert torch.equal(splits.test.images[0, 2].flatten(), torch.from_numpy(raw[0, 2048:]))  # blue plane
    assert splits.test.labels.tolist() == [i % 10 for i in range(20)]


def test_batches_written_by_numpy_1_are_accepted(tmp_path):
    # the original files name numpy.core.multiarray (numpy 1.x); numpy 2 writes numpy._core
    data = pickle.dumps(cifar_batch(4), protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"numpy.core.multiarray" in data
    (tmp_path / "b").write_bytes(data)
    images, labels = read_batch(tmp_path / "b")
    assert images.shape == (4, 3, 32, 32) and labels.tolist() == [0, 1, 2, 3]


class _Exploit:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_and_runs_nothing(tmp_path):
    marker = tmp_path / "pwned"
    batch = cifar_batch(4)
    batch[b"labels"] = _Exploit(marker)
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps(batch, protocol=2))
    with pytest.raises(InputError) as e:
        restricted_load(path)
    assert not marker.exists()
    msg = str(e.value)
    assert "refuses to load" in msg and "system" in msg and str(path) in msg
    # the same file inside a dataset folder stops the load just the same
    folder = write_cifar(tmp_path / "cifar-10-batches-py", n=4)
    (folder / "data_batch_3").write_bytes(path.read_bytes())
    with pytest.raises(InputError, match="data_batch_3: refuses to load"):
        load_dataset("cifar10", data_dir=folder)
    assert not marker.exists()


@pytest.mark.parametrize(
    "payload",
    [
        b"cbuiltins\neval\n(V__import__('os').system('true')\ntR.",  # builtins.eval
        b"cbuiltins\ngetattr\n(cbuiltins\nobject\nV__subclasses__\ntR.",
        b"c_codecs\nencode\n(Vx\nVrot13\ntR.",  # codecs.encode with another codec
    ],
)
def test_other_globals_are_refused(tmp_path, payload):
    (tmp_path / "b").write_bytes(payload)
    with pytest.raises(InputError, match="refuses to load|not a readable CIFAR-10 batch"):
        restricted_load(tmp_path / "b")


def test_cifar_structure_is_validated(tmp_path):
    def check(obj, pattern):
        (tmp_path / "b").write_bytes(pickle.dumps(obj, protocol=2))
        with pytest.raises(InputError, match=pattern):
            read_batch(tmp_path / "b")

    check([1, 2, 3], "expected a dict")
    check({b"data": np.zeros((2, 3072), np.uint8)}, "expected keys 'data' and 'labels'")
    check({b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]}, r"shape \(N, 3072\)")
    check({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, "uint8")
    check({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 10]}, "label 10 at position 1")
    check({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, "2 images but 1 labels")
    (tmp_path / "t").write_bytes(pickle.dumps(cifar_batch(3), protocol=2)[:-300])
    with pytest.raises(InputError, match="not a readable CIFAR-10 batch"):
        read_batch(tmp_path / "t")


def test_missing_cifar_message(tmp_path):
    with pytest.raises(InputError, match=r"cifar10 not found: .*cifar-10-batches-py/.*--download"):
        load_dataset("cifar10", data_dir=tmp_path)


# ---------------------------------------------------------------- imagefolder


def _png(path: Path, image: torch.Tensor) -> None:
    from torchvision.io import encode_png

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_png(image).numpy().tobytes())


def _jpeg(path: Path, image: torch.Tensor) -> None:
    from torchvision.io import encode_jpeg

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(encode_jpeg(image, quality=95).numpy().tobytes())


def test_imagefolder_mixed_sizes_and_channels(tmp_path):
    root = tmp_path / "pets"
    for i in range(5):
        _png(root / "cat" / f"{i}.png", torch.full((1, 20, 30), 200, dtype=torch.uint8))  # gray
    for i in range(4):
        _jpeg(root / "dog" / f"{i}.JPG", torch.full((3, 40, 40), 60, dtype=torch.uint8))  # colour
    (root / "dog" / ".DS_Store").write_bytes(b"junk")  # hidden files are skipped
    splits = load_dataset(f"imagefolder:{root}", val_fraction=0.0)
    assert splits.class_names == ["cat", "dog"]
    assert splits.train.images.shape[1:] == (3, 20, 30)  # any colour -> 3; median height and width
    assert len(splits.train) + len(splits.test) == 9 and splits.test.class_counts() == [1, 1]
    dogs = splits.train.images[splits.train.labels == 1].int()
    assert ((dogs - 60).abs() <= 2).all()  # a flat colour stays flat through JPEG and resizing
    cats = splits.train.images[splits.train.labels == 0]
    assert (cats == 200).all()  # gray repeated to three channels, resized without changing it
    again = load_dataset(f"imagefolder:{root}", val_fraction=0.0, seed=5, image_size=16)
    assert again.train.images.shape[1:] == (3, 16, 16)
    assert torch.equal(again.test.labels, splits.test.labels)  # the test split does not follow --seed


def test_imagefolder_with_train_and_test_folders(tmp_path):
    for split, n in (("train", 4), ("test", 2)):
        for k, name in enumerate(["a", "b", "c"]):
            for i in range(n):
                _png(tmp_path / "d" / split / name / f"{i}.png", torch.full((1, 8, 8), 10 * k, dtype=torch.uint8))
    splits = load_dataset(f"imagefolder:{tmp_path / 'd'}", val_fraction=0.25)
    assert splits.info["test_split"] == "given"
    assert splits.test.class_counts() == [2, 2, 2] and len(splits.train) + len(splits.val) == 12
    assert splits.train.images.shape[1:] == (1, 8, 8)


def test_imagefolder_errors_name_the_problem(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_dataset(f"imagefolder:{tmp_path / 'none'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no class sub-folders"):
        load_dataset(f"imagefolder:{tmp_path / 'empty'}")
    root = tmp_path / "d"
    _png(root / "a" / "1.png", torch.zeros((1, 8, 8), dtype=torch.uint8))
    (root / "b").mkdir()
    with pytest.raises(InputError, match=f"class folder {root / 'b'} holds no images"):
        load_dataset(f"imagefolder:{root}")
    _png(root / "b" / "1.png", torch.zeros((1, 8, 8), dtype=torch.uint8))
    (root / "b" / "notes.txt").write_text("hello")
    with pytest.raises(InputError, match=f"{root / 'b' / 'notes.txt'} is not an image"):
        load_dataset(f"imagefolder:{root}")
    (root / "b" / "notes.txt").unlink()
    (root / "b" / "broken.png").write_bytes((root / "b" / "1.png").read_bytes()[:30])
    with pytest.raises(InputError, match=f"{root / 'b' / 'broken.png'}: cannot decode"):
        load_dataset(f"imagefolder:{root}")
    with pytest.raises(InputError, match="imagefolder needs a folder"):
        load_dataset("imagefolder")


# ---------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_and_takes_options():
    a = load_dataset("synthetic", n=200, size=16, classes=4, channels=3)
    b = load_dataset("synthetic:n=200,size=16,classes=4,channels=3")
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.images, b.test.images)
    assert a.train.images.shape[1:] == (3, 16, 16) and a.num_classes == 4
    c = load_dataset("synthetic", n=200, size=16, classes=4, channels=3, seed=1)
    assert not torch.equal(a.train.images, c.train.images)
    with pytest.raises(InputError, match="no option colour"):
        load_dataset("synthetic", colour=3)
    with pytest.raises(InputError, match="channels must be 1 or 3"):
        load_dataset("synthetic:channels=2")


@pytest.mark.slow
def test_synthetic_is_learnable_by_a_small_cnn():
    torch.manual_seed(0)
    splits = load_dataset("synthetic", n=1500, classes=10)
    net = torch.nn.Sequential(
        torch.nn.Conv2d(1, 16, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(16, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.MaxPool2d(2),
        torch.nn.Conv2d(32, 32, 3, padding=1), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(), torch.nn.Linear(32, 10),
    )
    opt = torch.optim.Adam(net.parameters(), 3e-3)
    x = prepare_batch(splits.train.images, (1, 28, 28), splits.mean, splits.std)
    for _ in range(2):
        for idx in torch.randperm(len(x)).split(32):
            loss = torch.nn.functional.cross_entropy(net(x[idx]), splits.train.labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        test_x = prepare_batch(splits.test.images, (1, 28, 28), splits.mean, splits.std)
        accuracy = (net(test_x).argmax(1) == splits.test.labels).float().mean().item()
    assert accuracy > 0.5  # chance is 0.1


# ---------------------------------------------------------------- splits


def test_validation_split_is_stratified_disjoint_and_fixed_by_seed():
    labels = torch.arange(1000) % 10
    keep, held = stratified_holdout(labels, 0.1, seed=3)
    assert len(held) == 100 and torch.bincount(labels[held]).tolist() == [10] * 10
    assert set(keep.tolist()).isdisjoint(held.tolist()) and len(keep) + len(held) == 1000
    _, held2 = stratified_holdout(labels, 0.1, seed=3)
    assert torch.equal(held, held2)
    assert not torch.equal(held, stratified_holdout(labels, 0.1, seed=4)[1])


def test_every_class_keeps_a_validation_sample_and_a_training_sample():
    labels = torch.tensor([0] * 50 + [1] * 3 + [2])
    keep, held = stratified_holdout(labels, 0.1, seed=0)
    assert sorted(labels[held].tolist()) == [0] * 5 + [1]
    assert 2 in labels[keep].tolist()


def test_max_samples_is_equal_per_class_and_does_not_move_validation(tmp_path):
    folder = write_fashion(tmp_path / "fm", n_train=400, n_test=10)
    full = load_dataset("fashion-mnist", data_dir=folder, val_fraction=0.1, seed=7)
    capped = load_dataset("fashion-mnist", data_dir=folder, val_fraction=0.1, seed=7, max_samples=50)
    assert capped.train.class_counts() == [5] * 10
    assert len(capped.val) == 10 and capped.val.class_counts() == [1] * 10
    full_val = {tuple(img.flatten()[:40].tolist()) for img in full.val.images}
    assert all(tuple(img.flatten()[:40].tolist()) in full_val for img in capped.val.images)
    assert stratified_cap(torch.arange(100) % 10, 23).shape == (23,)


def test_mean_and_std_are_exact_and_from_the_training_split():
    images = torch.tensor([0, 255, 51, 102], dtype=torch.uint8).view(4, 1, 1, 1).expand(4, 1, 2, 2)
    mean, std = channel_stats(images)
    values = torch.tensor([0, 1, 0.2, 0.4], dtype=torch.float64)
    assert mean[0] == pytest.approx(values.mean().item(), abs=1e-6)
    assert std[0] == pytest.approx(values.std(unbiased=False).item(), abs=1e-6)


# ---------------------------------------------------------------- transforms


def test_prepare_batch_resizes_repeats_channels_and_normalizes():
    batch = torch.full((2, 1, 28, 28), 255, dtype=torch.uint8)
    out = prepare_batch(batch, (3, 56, 56), mean=(0.5,), std=(0.25,))
    assert out.shape == (2, 3, 56, 56) and out.dtype == torch.float32
    assert torch.allclose(out, torch.full_like(out, 2.0))  # (1 - 0.5) / 0.25
    ramp = torch.arange(28, dtype=torch.uint8).view(1, 1, 1, 28).expand(1, 1, 28, 28) * 9
    same = prepare_batch(ramp, (1, 28, 28), (0.0,), (1.0,))
    assert torch.allclose(same, ramp.float() / 255)  # no resize when the size matches


def test_prepare_batch_turns_colour_into_luma_gray():
    batch = torch.zeros((1, 3, 4, 4), dtype=torch.uint8)
    batch[:, 1] = 255  # pure green
    out = prepare_batch(batch, (1, 4, 4), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    assert out.shape == (1, 1, 4, 4) and torch.allclose(out, torch.full_like(out, 0.587), atol=1e-3)


def test_needs_adaptation_says_what_is_done():
    assert needs_adaptation((1, 28, 28), (3, 227, 227)) == "resizing 28x28 -> 227x227 and repeating 1 channel to 3"
    assert needs_adaptation((3, 32, 32), (1, 32, 32)) == "converting colour to gray"
    assert needs_adaptation((1, 28, 28), (1, 28, 28)) is None


def test_load_image_files_reports_bad_files_and_prepare_images_stacks(tmp_path):
    _png(tmp_path / "a.png", torch.full((1, 10, 12), 128, dtype=torch.uint8))
    _jpeg(tmp_path / "b.jpg", torch.full((3, 50, 30), 128, dtype=torch.uint8))
    (tmp_path / "c.txt").write_text("not an image")
    images, errors = load_image_files([tmp_path / "a.png", tmp_path / "c.txt", tmp_path / "b.jpg", tmp_path / "gone.png"])
    assert [Path(p).name for p, _ in images] == ["a.png", "b.jpg"]
    assert [Path(p).name for p, _ in errors] == ["c.txt", "gone.png"]
    assert "not a PNG, JPEG, WebP, GIF, BMP, TIFF or PPM image" in errors[0][1] and "file not found" in errors[1][1]
    batch = prepare_images([img for _, img in images], (1, 28, 28), (0.5,), (0.5,))
    assert batch.shape == (2, 1, 28, 28)
    assert torch.allclose(batch, torch.full_like(batch, 128 / 255 * 2 - 1), atol=0.02)


# ---------------------------------------------------------------- listing and the CLI


def test_list_datasets_reports_found_and_missing(tmp_path):
    write_fashion(tmp_path / "given")
    rows = {r["name"]: r for r in list_datasets(tmp_path / "given")}
    assert rows["fashion-mnist"]["found"] and rows["fashion-mnist"]["location"] == str(tmp_path / "given")
    assert rows["cifar10"]["found"] is False and rows["cifar10"]["channels"] == 3
    assert rows["fashion-mnist-mini"]["found"] and rows["synthetic"]["found"]
    assert rows["fashion-mnist"]["image_size"] == [28, 28] and rows["fashion-mnist"]["classes"] == 10


def test_datasets_command_json_and_table(tmp_path):
    from cnncli.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["datasets", "--json", "--data-dir", str(write_fashion(tmp_path / "g"))])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    names = [d["name"] for d in doc["datasets"]]
    assert names[:3] == ["fashion-mnist", "fashion-mnist-mini", "cifar10"]
    assert doc["datasets"][0]["location"] == str(tmp_path / "g")
    table = runner.invoke(app, ["datasets"])
    assert table.exit_code == 0 and "not found" in table.stdout and "28x28" in table.stdout
    assert "apt-get install dataset-fashion-mnist" in table.stdout  # fashion-mnist is missing here


def test_cli_module_imports_no_torch():
    import subprocess
    import sys

    code = "import sys, cnncli.cli.datasets, cnncli.data; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_unknown_dataset_suggests_close_names():
    with pytest.raises(InputError, match="unknown dataset 'fashion-mnst'; did you mean 'fashion-mnist'"):
        load_dataset("fashion-mnst")


def test_pickle_module_is_never_used_unrestricted():
    source = (Path(registry.__file__).parent / "cifar.py").read_text()
    assert "pickle.load(" not in source and "pickle.loads(" not in source
