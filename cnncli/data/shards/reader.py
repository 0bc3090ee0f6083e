"""`ShardDataset`: a torch IterableDataset that reads shards front to back, split by rank and worker."""

from __future__ import annotations

import multiprocessing
import os
import random
from collections.abc import Callable, Iterator

from cnncli.data.shards.order import _buffer_shuffle, _slot_seed
from cnncli.data.shards.source import IMAGE_KEYS, SHUFFLE_BUFFER, ShardSource, _label
from cnncli.errors import InputError, RuntimeFailure


def decode_image_bytes(data: bytes, name: str):
    """Image bytes of a shard member as uint8 (C, H, W), C 1 or 3; InputError naming the sample
    (the decoders of image files, cnncli.data.transforms, headers priced first)."""
    from cnncli.data.transforms import decode_image_data

    if not data:
        raise InputError(f"{name}: empty image")
    return decode_image_data(data, name)



def _world() -> tuple[int, int]:
    """(rank, world size): torch.distributed when initialized, else torchrun's environment."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except ImportError:  # pragma: no cover
        pass
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def _torch_iterable():
    from torch.utils.data import IterableDataset

    return IterableDataset


class ShardDataset(_torch_iterable()):
    """The samples of one split's shards: (transform(uint8 image), label), split by rank and worker.

    `rank`/`world` default to torch.distributed's (or torchrun's environment). `shuffle=False`
    reads shards and samples in order (evaluation). `len()` is the samples this rank yields.
    """

    def __init__(self, urls: list[str], count: int, num_classes: int,
                 transform: Callable | None = None, seed: int = 0, shuffle: bool = True,
                 rank: int | None = None, world: int | None = None, channels: int | None = None,
                 buffer: int = SHUFFLE_BUFFER, with_keys: bool = False):
        if not urls:
            raise InputError("wds: no shards to read")
        auto_rank, auto_world = _world()
        self.urls = list(urls)
        self.count = int(count)
        self.num_classes = int(num_classes)
        self.transform = transform
        self.seed = int(seed)
        self.shuffle = shuffle
        self.rank = auto_rank if rank is None else int(rank)
        self.world = auto_world if world is None else int(world)
        self.channels = channels
        self.buffer = max(1, int(buffer))
        self.with_keys = with_keys
        if not 0 <= self.rank < self.world:
            raise InputError(f"wds: rank {self.rank} is not in a world of {self.world}")
        self._epoch = multiprocessing.Value("q", 0, lock=False)

    def set_epoch(self, epoch: int) -> None:
        """The epoch whose order the next iteration follows (seen by persistent workers too)."""
        self._epoch.value = int(epoch)

    @property
    def epoch(self) -> int:
        return int(self._epoch.value)

    def __len__(self) -> int:
        return self.count if self.world == 1 else self.count // self.world

    def plan(self, epoch: int, worker: int = 0, workers: int = 1) -> tuple[list[str], int, int]:
        """(shards this slot reads, sample stride, sample offset) for (rank, worker) at `epoch`."""
        order = list(self.urls)
        if self.shuffle:
            random.Random(_slot_seed(self.seed, epoch)).shuffle(order)
        slots = self.world * workers
        slot = self.rank * workers + worker
        if len(order) >= slots:  # whole shards per slot: each file is opened by one process
            return order[slot::slots], 1, 0
        if len(order) >= self.world:  # shards per rank, samples per worker
            return order[self.rank::self.world], workers, worker
        return order, slots, slot  # too few shards: every slot reads all, keeps its samples

    def _samples(self, urls: list[str], stride: int, offset: int) -> Iterator[tuple[str, str, bytes, int]]:
        from webdataset.tariterators import group_by_keys, tar_file_expander, url_opener

        def reraise(exn: Exception) -> bool:
            raise RuntimeFailure(f"wds: cannot read shard {exn.args[-1] if exn.args else ''}: "
                                 f"{exn.args[0] if exn.args else exn}") from None

        stream = group_by_keys(tar_file_expander(url_opener(({"url": u} for u in urls), handler=reraise),
                                                 handler=reraise), handler=reraise)
        for i, sample in enumerate(stream):
            if stride > 1 and i % stride != offset:
                continue
            ext = next((k for k in IMAGE_KEYS if k in sample), None)
            url, key = sample.get("__url__", "?"), sample["__key__"]
            if ext is None or "cls" not in sample:
                continue  # a sample of other members (metadata): not an image sample
            label = _label(sample["cls"], url, key)
            if label >= self.num_classes:
                raise RuntimeFailure(f"wds: {url}: sample {key} has class {label}, but the dataset has "
                                     f"{self.num_classes} classes")
            yield url, key, sample[ext], label

    def _slot_stream(self, epoch: int, worker: int, workers: int):
        urls, stride, offset = self.plan(epoch, worker, workers)
        samples = self._samples(urls, stride, offset)
        if self.shuffle:
            rng = random.Random(_slot_seed(self.seed, epoch, self.rank * workers + worker))
            samples = _buffer_shuffle(samples, rng, self.buffer)
        return samples

    def _quota(self, worker: int, workers: int) -> int | None:
        if self.world == 1:
            return None
        share = len(self)
        return share // workers + (1 if worker < share % workers else 0)

    def __iter__(self):
        from torch.utils.data import get_worker_info

        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        epoch = self.epoch
        quota = self._quota(worker, workers)
        produced, rounds = 0, 0
        while True:
            for url, key, data, label in self._slot_stream(epoch + rounds * 7919, worker, workers):
                if quota is not None and produced >= quota:
                    return
                yield self._item(url, key, data, label)
                produced += 1
            if quota is None or produced >= quota:
                return
            if produced == 0 and rounds == 0:
                raise RuntimeFailure(f"wds: rank {self.rank} worker {worker} got no samples; "
                                     "pack into more shards or use fewer workers")
            rounds += 1  # DDP: top this rank up to its equal share from another pass over its shards

    def _item(self, url: str, key: str, data: bytes, label: int):
        try:
            image = decode_image_bytes(data, f"{url}:{key}")
        except InputError as e:
            raise RuntimeFailure(str(e)) from None
        if self.channels == 3 and image.shape[0] == 1:
            image = image.expand(3, -1, -1).contiguous()
        elif self.channels == 1 and image.shape[0] == 3:
            from torchvision.transforms.v2.functional import rgb_to_grayscale

            image = rgb_to_grayscale(image)
        if self.transform is not None:
            image = self.transform(image)
        if self.with_keys:
            return image, label, f"{url}:{key}"
        return image, label

    def __getstate__(self):
        # shared memory travels only to a process being started (DataLoader's spawned workers);
        # any other copy (a deepcopy, a pickle) gets its own epoch counter with the same value
        from multiprocessing.context import get_spawning_popen

        state = dict(self.__dict__)
        if get_spawning_popen() is None:
            state["_epoch"] = int(self._epoch.value)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        if isinstance(self._epoch, int):
            self._epoch = multiprocessing.Value("q", self._epoch, lock=False)


def split_dataset(source: ShardSource, split: str, **kwargs) -> ShardDataset:
    """The ShardDataset of one split of a source (kwargs as ShardDataset takes them)."""
    if split not in source.splits:
        raise InputError(f"wds:{source.spec} has no {split} split (it has {', '.join(source.splits)})")
    s = source.splits[split]
    if "channels" not in kwargs and source.index.get("channels") in (1, 3):
        kwargs["channels"] = source.index["channels"]
    return ShardDataset(s.urls, s.count, source.num_classes, **kwargs)

