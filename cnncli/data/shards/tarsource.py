"""`TarSource`: random access to local tar shards by their header index, and `load_shards` for train/eval."""

from __future__ import annotations

import io
import os
import tarfile
from typing import Any

from cnncli.data.shards.order import shard_order
from cnncli.data.shards.source import (
    IMAGE_KEYS,
    _is_local,
    _label,
    _local_path,
    _open_stream,
    tar_members,
)
from cnncli.data.shards.spec import open_source
from cnncli.errors import InputError


def localize(url: str) -> str:
    """A local path for a shard URL: itself, or (a `pipe:` command) its output copied once into
    the cache folder (`cache_dir()/shards/`, keyed by the command), read from there afterwards."""
    if _is_local(url):
        return str(_local_path(url))
    import hashlib
    import shutil

    from cnncli.data.registry import cache_dir
    from cnncli.output import note

    folder = cache_dir() / "shards"
    target = folder / f"{hashlib.sha256(url.encode()).hexdigest()[:24]}.tar"
    if target.is_file():
        return str(target)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{target.name}.{os.getpid()}.tmp"
    note(f"wds: copying {url} into {folder} once (training reads shards at random)")
    stream = _open_stream(url)
    try:
        with open(tmp, "wb") as f:
            shutil.copyfileobj(stream, f, 1 << 20)
        stream.close()
        os.replace(tmp, target)
    except Exception as e:  # noqa: BLE001 - the pipe's exit status, a full disk: one line either way
        tmp.unlink(missing_ok=True)
        raise InputError(f"wds: cannot read {url}: {e}") from None
    return str(target)


class TarSource:
    """The samples of local tar shards with random access (an `ImageSource`, data/stream.py).

    Built from the tar headers: each sample's image member is an (offset, size) in its shard,
    its label the `.cls` member; `load(i)` reads those bytes and decodes them as a file is
    decoded. `groups[i]` is the shard of sample i (for orders that keep a rank on its shards).
    """

    def __init__(self, urls: list[str], class_names: list[str]):
        import torch

        self.shards = [localize(u) for u in urls]
        self.urls = list(urls)
        self.class_names = list(class_names)
        ids, labels, groups, offsets, sizes = [], [], [], [], []
        for g, (url, path) in enumerate(zip(self.urls, self.shards)):
            found: dict[str, list] = {}
            try:
                with tarfile.open(path, "r:") as tar:
                    for key, ext, member in tar_members(tar):
                        entry = found.setdefault(key, [None, None])
                        if ext in IMAGE_KEYS:
                            entry[0] = (member.offset_data, member.size)
                        elif ext == "cls":
                            entry[1] = _label(tar.extractfile(member).read(65), url, key)
            except (tarfile.TarError, OSError, EOFError) as e:
                raise InputError(f"wds: {url} is not a readable (uncompressed) tar shard: {e}") from None
            for key, (image, label) in found.items():
                if image is None:
                    continue
                if label is None:
                    raise InputError(f"wds: {url}: sample {key} has an image but no .cls label")
                if label >= len(self.class_names):
                    raise InputError(f"wds: {url}: sample {key} has class {label}, but the dataset has "
                                     f"{len(self.class_names)} classes")
                ids.append(f"{url}:{key}")
                labels.append(label)
                groups.append(g)
                offsets.append(image[0])
                sizes.append(image[1])
        self.ids = ids
        self.labels = torch.tensor(labels, dtype=torch.int64)
        self.groups = torch.tensor(groups, dtype=torch.int64)
        self.offsets = torch.tensor(offsets, dtype=torch.int64)
        self.sizes = torch.tensor(sizes, dtype=torch.int64)
        self.min_side: int | None = None
        self._files: dict[int, Any] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def read(self, i: int) -> bytes:
        g = int(self.groups[i])
        f = self._files.get(g)
        if f is None:
            f = self._files[g] = open(self.shards[g], "rb")  # noqa: SIM115 - kept open for the next samples
        # pread, not seek + read: DataLoader workers forked after this process opened a shard share
        # its file offset, and one worker's seek between another's seek and read gave it the
        # wrong bytes ("cannot decode the image" on sound samples, at random)
        size = int(self.sizes[i])
        data = os.pread(f.fileno(), size, int(self.offsets[i]))
        if len(data) != size:
            raise OSError(f"the shard ends {size - len(data)} bytes early (changed since it was indexed?)")
        return data

    def load(self, i: int):
        from cnncli.data.photo_decode import BadImage, decode_photo_data

        try:
            data = self.read(i)
        except OSError as e:
            raise BadImage(self.ids[i], f"cannot read: {e.strerror or e}") from None
        return decode_photo_data(data, self.ids[i], self.min_side)

    def declared_size(self, i: int):
        from PIL import Image

        try:
            with Image.open(io.BytesIO(self.read(i))) as image:
                w, h = image.size
                return h, w
        except Exception:  # noqa: BLE001 - unknown size
            return None

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_files"] = {}  # each worker opens the shards itself
        return state



def _stream_split_class():
    from cnncli.data.stream import StreamSplit, SubsetSource

    class ShardStreamSplit(StreamSplit):
        """A streaming split of shards whose epoch order keeps each rank on its own shards."""

        def epoch_order(self, epoch: int, seed: int, rank: int, world: int):
            src = self.src  # a SubsetSource of the TarSource, or a --cache store over one
            groups = src.groups if hasattr(src, "groups") else src.base.groups[src.positions]
            return shard_order(groups, epoch, seed, rank, world)

        def subset(self, index):
            return self._shares(ShardStreamSplit(SubsetSource(self.src, index), self.name, self.source, self.config))

    return ShardStreamSplit


def load_shards(name: str, *, val_fraction: float = 0.1, max_samples: int | None = None, seed: int = 0,
                hold_out_test: bool = True, test_fraction: float = 0.2, info: dict[str, Any] | None = None):
    """`wds:SPEC` as a StreamingSplits: splits from the index (or held out as for folders)."""

    from cnncli.data.folders import StreamingSplits, _details, plan_splits
    from cnncli.data.index import ImageIndex
    from cnncli.data.stream import SubsetSource

    source = open_source(name)
    urls = [u for s in source.splits.values() for u in s.urls]
    tars = TarSource(urls, source.class_names)
    split_of = {u: s for s, sp in source.splits.items() for u in sp.urls}
    splits = [split_of[tars.urls[int(g)]] for g in tars.groups.tolist()]
    for s, sp in source.splits.items():
        found = splits.count(s)
        if source.counted_from == "index" and found != sp.count:
            raise InputError(f"wds:{source.spec}: the index says {sp.count:,} {s} samples, the shards hold {found:,}")
    ix = ImageIndex(tars.ids, tars.labels.tolist(), splits, source.class_names, f"wds:{source.spec}", source.spec)
    plan, how = plan_splits(ix, val_fraction, max_samples, seed, hold_out_test, test_fraction)
    details = dict(info or {})
    details.update(how)
    details["kind"] = "stream"
    details["shards"] = {s: len(sp.urls) for s, sp in source.splits.items()}
    details["counted_from"] = source.counted_from

    split_class = _stream_split_class()
    parts = {s: split_class(SubsetSource(tars, pos), ix.source, source.spec) for s, pos in plan.items()}
    return StreamingSplits(parts["train"], parts["val"], parts["test"], source.class_names,
                           _details(ix, parts, details, seed, val_fraction, max_samples, None))
