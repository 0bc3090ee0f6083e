"""`datasets pack` writes WebDataset shards and `wds:` reads them back: the same classes, counts and
images; every rank and worker reads its own part, every sample exactly once per epoch."""

from __future__ import annotations

import collections
import io
import json
import tarfile
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from cnncli.data.shards import ShardDataset, open_source, split_dataset
from cnncli.errors import InputError


def write_photos(root: Path, per_class: int = 6, classes=("cat", "dog", "owl"), sizes=((40, 30), (24, 52))) -> Path:
    """Real JPEG and PNG files of different sizes, one sub-folder per class."""
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            w, h = sizes[i % len(sizes)]
            image = Image.new("RGB", (w, h), (40 * c + 20, 10 * i, 200 - 30 * c))
            image.save(root / name / f"{i:03d}.{'png' if i % 3 == 0 else 'jpg'}")
    return root


def write_shards(folder: Path, shards: int, per_shard: int, classes: int = 4) -> list[Path]:
    """Hand-made shards (the plain tar layout): KEY.png + KEY.cls, keys unique across shards."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for s in range(shards):
        path = folder / f"train-{s:06d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(per_shard):
                n = s * per_shard + i
                buf = io.BytesIO()
                Image.new("L", (8, 8), n % 256).save(buf, format="PNG")
                for ext, data in (("png", buf.getvalue()), ("cls", str(n % classes).encode())):
                    info = tarfile.TarInfo(f"s{n:05d}.{ext}")
                    info.size = len(data)
                    tar.addfile(info, io.BytesIO(data))
        paths.append(path)
    return paths


def read_keys(ds: ShardDataset, workers: int, epoch: int = 0) -> list[str]:
    ds.with_keys = True
    ds.set_epoch(epoch)
    keys = []
    for _, _, k in DataLoader(ds, batch_size=5, num_workers=workers):
        keys += [key.rsplit(":", 1)[1] for key in k]
    return keys


def test_pack_synthetic_reads_back_same_classes_counts_and_pixels(run_cli, tmp_path):
    from cnncli.data.registry import load_dataset

    data = "synthetic:n=120,n_test=24,classes=3,size=16"
    result = run_cli("datasets", "pack", data, tmp_path / "out", "--shard-size", "40", "--json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    expected = load_dataset(data, val_fraction=0.1, seed=0)
    source = open_source(f"wds:{tmp_path / 'out'}")
    assert source.class_names == expected.class_names == doc["class_names"]
    assert source.sizes() == {"train": len(expected.train), "val": len(expected.val), "test": len(expected.test)}
    assert [len(s) for s in doc["splits"]["train"]["shards"]] and len(doc["splits"]["train"]["shards"]) == 3
    assert source.splits["train"].class_counts == expected.train.class_counts()
    # in order (no shuffle) the shards hold exactly the split's images and labels, lossless PNG
    ds = split_dataset(source, "test", shuffle=False)
    images, labels = zip(*list(ds))
    assert torch.equal(torch.stack(images), expected.test.images)
    assert list(labels) == expected.test.labels.tolist()


def test_pack_image_folder_keeps_files_and_labels_and_scales_with_img_size(run_cli, tmp_path):
    folder = write_photos(tmp_path / "photos")
    assert run_cli("datasets", "pack", f"imagefolder:{folder}", tmp_path / "raw").exit_code == 0
    doc = json.loads((tmp_path / "raw" / "index.json").read_text())
    assert doc["class_names"] == ["cat", "dog", "owl"]
    counts = {s: v["count"] for s, v in doc["splits"].items()}
    assert sum(counts.values()) == 18 and counts["test"] == 3 and counts["val"] == 3  # held out, 1 per class
    # without --img-size a file's bytes are stored as they are
    with tarfile.open(tmp_path / "raw" / doc["splits"]["train"]["shards"][0]) as tar:
        members = {m.name: tar.extractfile(m).read() for m in tar}
    first = next(k for k in members if k.endswith(".id.txt"))
    original = Path(members[first].decode())
    stored = next(v for k, v in members.items() if k.startswith(first[:-7]) and k.endswith((".jpg", ".png")))
    assert stored == original.read_bytes() and original.parent.name in doc["class_names"]
    # with --img-size the shorter side is scaled to it; labels follow the class folders
    assert run_cli("datasets", "pack", f"imagefolder:{folder}", tmp_path / "small", "--img-size", "12").exit_code == 0
    ds = split_dataset(open_source(f"wds:{tmp_path / 'small'}"), "train", shuffle=False, with_keys=True)
    labels = collections.Counter()
    for image, label, _ in ds:
        assert min(image.shape[1:]) == 12 and image.shape[0] == 3
        labels[label] += 1
    assert [labels[c] for c in range(3)] == doc["splits"]["train"]["class_counts"] == [4, 4, 4]


def test_pack_refuses_foreign_files_and_replaces_its_own_only_with_force(run_cli, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    data = "synthetic:n=40,n_test=8,classes=2,size=8"
    result = run_cli("datasets", "pack", data, out)
    assert result.exit_code == 2 and "notes.txt" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    (out / "notes.txt").unlink()
    assert run_cli("datasets", "pack", data, out, "--shard-size", "10").exit_code == 0
    before = sorted(p.name for p in out.iterdir())
    assert "train-000003.tar" in before
    again = run_cli("datasets", "pack", data, out)
    assert again.exit_code == 2 and "--force" in again.stderr
    assert run_cli("datasets", "pack", data, out, "--shard-size", "100", "--force").exit_code == 0
    after = sorted(p.name for p in out.iterdir())
    assert after == ["index.json", "test-000000.tar", "train-000000.tar", "val-000000.tar"]


@pytest.mark.parametrize("world,workers", [(1, 0), (1, 2), (2, 0), (2, 2), (4, 1)])
def test_ranks_and_workers_read_every_sample_exactly_once_per_epoch(tmp_path, world, workers):
    write_shards(tmp_path / "s", shards=8, per_shard=6)
    source = open_source(f"wds:{tmp_path / 's'}/train-{{000000..000007}}.tar")
    assert source.sizes() == {"train": 48} and source.counted_from == "tar headers"
    keys = []
    for rank in range(world):
        ds = split_dataset(source, "train", seed=3, rank=rank, world=world)
        part = read_keys(ds, workers, epoch=1)
        assert len(part) == len(ds) == 48 // world  # equal shares: ranks take the same steps
        keys += part
    assert sorted(keys) == [f"s{n:05d}" for n in range(48)]


def test_fewer_shards_than_workers_split_by_sample(tmp_path):
    write_shards(tmp_path / "s", shards=3, per_shard=7)
    ds = split_dataset(open_source(f"wds:{tmp_path / 's'}"), "train", seed=0)
    keys = read_keys(ds, workers=2)
    assert collections.Counter(keys) == collections.Counter(f"s{n:05d}" for n in range(21))


def test_order_is_fixed_by_seed_and_epoch(tmp_path):
    write_shards(tmp_path / "s", shards=4, per_shard=10)
    source = open_source(f"wds:{tmp_path / 's'}")

    def order(seed, epoch):
        return read_keys(split_dataset(source, "train", seed=seed, buffer=8), workers=0, epoch=epoch)

    assert order(0, 0) == order(0, 0)
    assert order(0, 0) != order(0, 1) and order(0, 0) != order(1, 0)
    assert sorted(order(0, 1)) == sorted(order(0, 0))
    # persistent workers see set_epoch: the epoch lives in shared memory
    ds = split_dataset(source, "train", seed=0, buffer=8, with_keys=True)
    loader = DataLoader(ds, batch_size=40, num_workers=1, persistent_workers=True)
    for epoch in (0, 1):
        ds.set_epoch(epoch)
        (_, _, k), = list(loader)
        assert [key.rsplit(":", 1)[1] for key in k] == order(0, epoch)


def test_split_patterns_pipe_urls_and_header_counts(tmp_path):
    shards = write_shards(tmp_path / "s", shards=3, per_shard=5, classes=3)
    val = tmp_path / "s" / "train-000002.tar"
    spec = f"wds:train=pipe:cat {shards[0]};test={val}"
    source = open_source(spec)
    assert source.sizes() == {"train": 5, "test": 5}
    assert source.class_names == ["0", "1", "2"]
    assert len(list(split_dataset(source, "train"))) == 5
    with pytest.raises(InputError, match="train-000003.tar not found"):
        open_source(f"wds:{tmp_path / 's'}/train-{{000000..000009}}.tar")
    with pytest.raises(InputError, match="no val split"):
        split_dataset(source, "val")


def test_a_corrupt_image_in_a_shard_stops_with_its_name(tmp_path):
    from cnncli.errors import RuntimeFailure

    path = tmp_path / "train-000000.tar"
    with tarfile.open(path, "w") as tar:
        for ext, data in (("jpg", b"\xff\xd8not a jpeg"), ("cls", b"0")):
            info = tarfile.TarInfo(f"bad.{ext}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with pytest.raises(RuntimeFailure, match="bad"):
        list(split_dataset(open_source(f"wds:{path}"), "train"))


def test_train_on_packed_shards_keeps_the_class_names_and_split_sizes(run_cli, tmp_path):
    from cnncli.checkpoint import read_meta

    folder = write_photos(tmp_path / "photos", per_class=5, sizes=((40, 30), (30, 44)))
    assert run_cli("datasets", "pack", f"imagefolder:{folder}", tmp_path / "shards", "--shard-size", "4").exit_code == 0
    doc = json.loads((tmp_path / "shards" / "index.json").read_text())
    result = run_cli("train", "lenet5", "--data", f"wds:{tmp_path / 'shards'}", "--epochs", "1", "--threads", "1",
                     "--workers", "0", "--img-size", "32", "--batch-size", "4", "--out", tmp_path / "run", "--quiet")
    assert result.exit_code == 0, result.output
    meta = read_meta(tmp_path / "run" / "model.safetensors")
    assert meta["class_names"] == doc["class_names"] == ["cat", "dog", "owl"]
    data = meta["data_source"]
    sizes = {s: data[s] for s in ("train", "val", "test")}
    assert sizes == {s: v["count"] for s, v in doc["splits"].items()} == {"train": 9, "val": 3, "test": 3}


def test_shard_order_keeps_each_rank_on_its_own_shards_and_uses_every_sample_once():
    from cnncli.data.shards import shard_order

    groups = torch.arange(8).repeat_interleave(6)  # 8 shards of 6 samples
    parts = [shard_order(groups, epoch=2, seed=5, rank=r, world=4) for r in range(4)]
    assert sorted(torch.cat(parts).tolist()) == list(range(48))
    assert all(len(set(groups[p].tolist())) == 2 for p in parts)  # 12 samples = exactly 2 whole shards
    assert torch.equal(parts[0], shard_order(groups, epoch=2, seed=5, rank=0, world=4))
    assert not torch.equal(parts[0], shard_order(groups, epoch=3, seed=5, rank=0, world=4))


def test_pipe_shards_train_from_a_copy_in_the_cache_folder(tmp_path):
    from cnncli.data import registry

    write_shards(tmp_path / "s", shards=2, per_shard=10, classes=2)
    spec = f"wds:train=pipe:cat {tmp_path / 's'}/train-00000{{0,1}}.tar"
    data = registry.load_dataset(spec, val_fraction=0.1, seed=0)
    assert len(data.train) + len(data.val) + len(data.test) == 20 and len(data.val) == 2 and len(data.test) == 4
    copies = sorted((registry.cache_dir() / "shards").iterdir())
    assert len(copies) == 2 and all(p.stat().st_size == (tmp_path / "s" / "train-000000.tar").stat().st_size
                                    for p in copies)
    assert data.train.src.load(0).shape == (1, 8, 8)


def test_pack_refuses_shards_as_a_source(run_cli, tmp_path):
    write_shards(tmp_path / "s", shards=1, per_shard=2)
    result = run_cli("datasets", "pack", f"wds:{tmp_path / 's'}", tmp_path / "out")
    assert result.exit_code == 2 and "shards already" in result.stderr and not (tmp_path / "out").exists()


def test_training_on_shards_stopped_mid_epoch_resumes_to_the_uninterrupted_weights(run_cli, tmp_path):
    """SIGTERM inside epoch 2 (in-process), then --resume, with --cache disk on (workers: test_stream.py):
    the shard order is a function of (seed, epoch), so the weights end the same."""
    from cnncli.checkpoint import load_checkpoint
    from cnncli.engine.config import build_config
    from cnncli.engine.console import TrainingInterrupted
    from cnncli.engine.trainer import Trainer
    from cnncli.track.base import Logger

    class StopAt(Logger):
        wants_steps = True

        def on_step(self, step, scalars):
            if step == 10:
                import os
                import signal

                os.kill(os.getpid(), signal.SIGTERM)

    folder = write_photos(tmp_path / "photos", per_class=7, sizes=((40, 30), (30, 44)))
    assert run_cli("datasets", "pack", f"imagefolder:{folder}", tmp_path / "sh", "--shard-size", "3").exit_code == 0
    options = {"model": "lenet5", "data": f"wds:{tmp_path / 'sh'}", "epochs": 2, "batch_size": 2, "img_size": 32,
               "seed": 3, "deterministic": True, "augment": ["flip"], "threads": 1, "workers": 0, "cache": "disk"}
    Trainer(build_config(None, {**options, "out": str(tmp_path / "straight")}), quiet=True).fit()
    stopped = tmp_path / "stopped"
    with pytest.raises(TrainingInterrupted):
        Trainer(build_config(None, {**options, "out": str(stopped)}), quiet=True, callbacks=[StopAt()]).fit()
    from cnncli.checkpoint import read_meta

    state = read_meta(stopped / "train_state.safetensors")["train_state"]
    assert state["epoch"] == 1 and 0 < state["step"] < 8  # inside epoch 2 (of 8 steps)
    done = run_cli("train", "--resume", stopped, "--threads", "1", "--quiet")
    assert done.exit_code == 0, done.stderr
    a, _ = load_checkpoint(stopped / "last.safetensors")
    b, _ = load_checkpoint(tmp_path / "straight" / "last.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_datasets_check_on_shards_is_one_line_pointing_to_the_source(run_cli, tmp_path):
    write_shards(tmp_path / "s", shards=1, per_shard=2)
    result = run_cli("datasets", "check", f"wds:{tmp_path / 's'}")
    assert result.exit_code == 2 and "packed from" in result.stderr and "Traceback" not in result.output


def test_a_read_neither_moves_nor_trusts_the_shared_file_offset(tmp_path):
    """DataLoader workers forked after the parent opened a shard share its file offset: a read must
    be positional (one worker's seek between another's seek and read gave it the wrong bytes)."""
    import os

    from cnncli.data.shards import TarSource

    path = write_shards(tmp_path, shards=1, per_shard=3)[0]
    source = TarSource([str(path)], [str(c) for c in range(4)])
    with tarfile.open(path) as tar:
        want = [tar.extractfile(f"s{n:05d}.png").read() for n in range(3)]
    assert source.read(0) == want[0]  # opens the shard, as the parent does before forking workers
    fd = source._files[0].fileno()
    os.lseek(fd, 5, os.SEEK_SET)  # where another process's seek may have left the shared offset
    assert [source.read(i) for i in (2, 1)] == [want[2], want[1]]
    assert os.lseek(fd, 0, os.SEEK_CUR) == 5  # untouched: no other reader is disturbed either


def test_packed_bmp_tiff_gif_train_through_two_workers(run_cli, tmp_path):
    """pack writes the formats shards do not carry as PNG; 2 workers decode every sample right."""
    root = write_photos(tmp_path / "photos", per_class=6)
    for c, name in enumerate(("cat", "dog", "owl")):
        for k, ext in enumerate(("bmp", "tif", "gif")):
            Image.new("RGB", (36, 28), (60 * c, 90, 40 * k)).save(root / name / f"x{k}.{ext}")
    assert run_cli("datasets", "pack", root, tmp_path / "shards", "--shard-size", "8").exit_code == 0
    members = collections.Counter(
        m.rsplit(".", 1)[1] for p in sorted((tmp_path / "shards").glob("*.tar")) for m in tarfile.open(p).getnames())
    assert set(members) == {"jpg", "png", "cls", "id.txt"} or set(members) == {"jpg", "png", "cls", "txt"}, members
    assert members["jpg"] + members["png"] == 27
    result = run_cli("train", "lenet5", "--data", tmp_path / "shards", "--epochs", "2", "--threads", "1",
                     "--workers", "2", "--batch-size", "4", "--out", tmp_path / "run")  # the size from the headers: read in this process, before the workers fork
    assert result.exit_code == 0, result.stderr
    assert "skipped" not in result.stderr
