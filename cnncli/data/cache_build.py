"""Building an image store (data/cache.py): the plan of offsets from the headers, and the decode
into it in DataLoader workers that write the pixels themselves (a file by `pwrite` for --cache
disk, a shared tensor for --cache ram), JPEGs decoded at the store's DCT scale."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from cnncli.errors import InputError, RuntimeFailure


def scaled_size(height: int, width: int, side: int) -> tuple[int, int]:
    """(H, W) with the shorter side `side` (never scaled up), aspect ratio kept."""
    short = min(height, width)
    if short <= side:
        return height, width
    scale = side / short
    return max(1, round(height * scale)), max(1, round(width * scale))


class _Decode:
    """Map-style dataset for the build: sample i decoded, scaled and written into the store by
    the worker that decoded it (`sink(offset, image)`); what comes back to the building process
    is (i, None) when it does not decode (that entry stays empty, as a header that could not be
    read), (i, shape) when it decoded to another size than its header said, else (i, True): no
    pixels cross between processes, and the writes run in the workers, in parallel."""

    def __init__(self, fetch: Callable[[int], object], n: int, table, sink):
        self.fetch, self.n, self.table, self.sink = fetch, n, table, sink

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        from torchvision.transforms import InterpolationMode
        from torchvision.transforms.v2.functional import resize

        from cnncli.data.photo_decode import BadImage

        off, c, h, w = (int(v) for v in self.table[i])
        if h == 0:
            return i, None
        try:
            image = self.fetch(i)
        except BadImage as e:
            return i, e.reason  # why, for the line that reports the file (the store keeps it)
        except InputError as e:
            return i, str(e)
        if image.shape[0] != c:
            if c == 3:
                image = image.expand(3, -1, -1)
            else:
                from torchvision.transforms.v2.functional import rgb_to_grayscale

                image = rgb_to_grayscale(image)
        if tuple(image.shape[1:]) != (h, w):
            mode = InterpolationMode(getattr(self.fetch, "interpolation", "bilinear"))  # the run's resize
            image = resize(image, [h, w], interpolation=mode, antialias=True)
        if tuple(image.shape) != (c, h, w):
            return i, tuple(image.shape)
        self.sink(off, image.contiguous())
        return i, True


class _FileSink:
    """Writes an image's bytes at its offset of the store's file (`os.pwrite`: no memory map,
    so the pages written are the page cache's, not resident memory of the writing process)."""

    def __init__(self, path: Path):
        self.path, self._fd, self._pid = path, None, None

    def __call__(self, offset: int, image) -> None:
        if self._fd is None or self._pid != os.getpid():  # each worker opens the file itself
            self._fd, self._pid = os.open(self.path, os.O_WRONLY), os.getpid()
        data = memoryview(image.numpy()).cast("B")
        while data:
            written = os.pwrite(self._fd, data, offset)
            data, offset = data[written:], offset + written

    def close(self) -> None:
        if self._fd is not None and self._pid == os.getpid():
            os.close(self._fd)
        self._fd = None

    def __getstate__(self):
        return {"path": self.path, "_fd": None, "_pid": None}


class _TensorSink:
    """Writes into a flat uint8 tensor in shared memory (--cache ram): the workers' writes are
    the building process's pixels."""

    def __init__(self, target):
        self.target = target

    def __call__(self, offset: int, image) -> None:
        self.target[offset:offset + image.numel()] = image.reshape(-1)

    def close(self) -> None:
        pass


def _plan(headers: Callable[[int], tuple[int, int, int] | None], n: int, side: int, channels: int | None):
    """The table (offset, C, H, W per image) and the total bytes; an image whose header cannot be
    read gets no pixels (reading it later raises BadImage, which --skip-bad-images skips)."""
    import torch

    table = torch.zeros((n, 4), dtype=torch.int64)
    offset = 0
    for i in range(n):
        header = headers(i)
        if header is None:
            table[i] = torch.tensor([offset, channels or 3, 0, 0])
            continue
        c, h, w = header
        c = channels or c
        h, w = scaled_size(h, w, side)
        table[i] = torch.tensor([offset, c, h, w])
        offset += c * h * w
    return table, offset


class _ScaledFetch:
    """`fetch(i)` for the build: a JPEG file decodes at the smallest DCT scale that still gives the
    store's shorter side (PIL draft mode, as the streaming eval pass decodes), not at full size
    and then resized down: a 900 px photo cached at 256 px costs about a quarter of the decode."""

    def __init__(self, source, side: int, interpolation: str = "bilinear"):
        self.source, self.side, self.interpolation = source, side, interpolation  # the store's resize

    def __call__(self, i: int):
        from cnncli.data.stream import load_sample

        return load_sample(self.source, i, self.side)


def _as_is(item):
    return item


BUILD_CHUNK = 16  # images per task of a build worker


def _fill(sink, fetch, ids, table, workers: int, progress: Callable | None) -> dict[int, str]:
    """Decode every sample into the store through `sink`; {sample: why} of those that did not
    decode (their entries emptied)."""
    import torchvision.transforms.v2.functional  # noqa: F401 - imported once here, not in every forked worker
    from torch.utils.data import DataLoader

    # indices go to the workers in chunks: one queue round trip per image cost more than its decode
    loader = DataLoader(_Decode(fetch, len(ids), table, sink), batch_size=BUILD_CHUNK, shuffle=False,
                        num_workers=workers, collate_fn=_as_is)
    failed: dict[int, str] = {}
    try:
        for n, (i, status) in enumerate((item for chunk in loader for item in chunk), start=1):
            if status is None or isinstance(status, str):
                table[i, 2:] = 0
                failed[i] = status or "not a readable image (its header)"
            elif status is not True:
                _, c, h, w = (int(v) for v in table[i])
                raise RuntimeFailure(f"--cache: {ids[i]} decoded to {status}, its header said {(c, h, w)}")
            if progress is not None:
                progress(n, len(ids))
    finally:
        sink.close()
    return failed
