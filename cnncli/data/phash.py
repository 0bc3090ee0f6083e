"""Perceptual hashes of images and the pairs of hashes that lie close together.

The hash is the DCT pHash: an image is made gray, resized to 32x32, transformed with a 2-D
DCT-II, and its 8x8 lowest frequencies (the DC term left out, 63 values, padded with one
constant bit) are compared with their median: one bit each, 64 bits in one unsigned integer.
Noise, JPEG re-encoding and a shift by a pixel or two change few of those bits; a different
picture changes about half of them. Two images are near duplicates when their hashes differ
in at most `threshold` bits (the Hamming distance). Exactly 31 of the 63 values lie above
their median, so every hash has 31 bits set and distances are even: thresholds 5 and 4 find
the same pairs.

Finding the close pairs does not compare every hash with every other (4.9 billion pairs for
Fashion-MNIST's 70,000 images): by the pigeonhole principle, two 64-bit hashes within distance
t agree exactly on at least one of t + 1 disjoint bit bands, so only hashes that share a band
value are candidates (multi-index hashing). Each band is sorted once, and the candidates of
its buckets are checked with XOR and a popcount in numpy. A bucket so full that its pairs would
be too many (thousands of copies of one plain picture) is not expanded pair by pair: its
hashes are counted as a group (see `close_pairs`).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

HASH_SIZE = 32  # the side of the gray thumbnail the DCT is taken of
LOW = 8  # the side of the block of low frequencies kept
DEFAULT_THRESHOLD = 6


def _dct_matrix(n: int) -> np.ndarray:
    """The orthonormal DCT-II matrix: D @ x is the DCT of the column x."""
    k = np.arange(n)[:, None]
    i = np.arange(n)[None, :]
    d = np.cos(np.pi * (2 * i + 1) * k / (2 * n)) * np.sqrt(2.0 / n)
    d[0] /= np.sqrt(2.0)
    return d.astype(np.float32)


_DCT = _dct_matrix(HASH_SIZE)[:LOW]  # only the rows of the kept frequencies are ever needed
_BIT_WEIGHTS = (np.uint64(1) << np.arange(64, dtype=np.uint64)).astype(np.uint64)


def phash_thumbnails(gray: np.ndarray) -> np.ndarray:
    """pHashes (uint64, one per image) of gray thumbnails (N, 32, 32), any numeric dtype."""
    x = np.asarray(gray, dtype=np.float32)
    if x.ndim != 3 or x.shape[1:] != (HASH_SIZE, HASH_SIZE):
        raise ValueError(f"thumbnails must be (N, {HASH_SIZE}, {HASH_SIZE}), got {x.shape}")
    low = _DCT @ x @ _DCT.T  # (N, 8, 8): rows and columns of the lowest frequencies
    coeffs = low.reshape(len(x), LOW * LOW)[:, 1:]  # the DC term is the mean brightness: left out
    median = np.median(coeffs, axis=1, keepdims=True)
    bits = np.zeros((len(x), 64), dtype=bool)
    bits[:, 1:] = coeffs > median
    return (bits.astype(np.uint64) * _BIT_WEIGHTS).sum(axis=1, dtype=np.uint64)


def resize_matrix(size_in: int, size_out: int) -> np.ndarray:
    """(size_out, size_in) weights of an antialiased bilinear (triangle filter) resize, as Pillow's
    BILINEAR resize computes them: `M_h @ image @ M_w.T` resizes a 2-D image."""
    scale = size_in / size_out
    support = max(scale, 1.0)
    centers = (np.arange(size_out) + 0.5) * scale
    weights = np.maximum(0.0, 1.0 - np.abs(np.arange(size_in)[None, :] + 0.5 - centers[:, None]) / support)
    return (weights / weights.sum(axis=1, keepdims=True)).astype(np.float32)


def thumbnails_from_tensor(images) -> np.ndarray:
    """Gray 32x32 thumbnails (N, 32, 32) float32 of uint8 images (N, C, H, W) (a tensor or an array).

    Plain numpy (two small matrix products an image): no torch threads to contend for the CPU.
    """
    x = images.numpy() if hasattr(images, "numpy") else np.asarray(images)
    if x.shape[1] >= 3:  # ITU-R 601-2 luma, as Pillow's convert("L")
        gray = 0.299 * x[:, 0].astype(np.float32) + 0.587 * x[:, 1] + 0.114 * x[:, 2]
    else:
        gray = x[:, 0].astype(np.float32)
    h, w = gray.shape[1:]
    if (h, w) == (HASH_SIZE, HASH_SIZE):
        return gray
    return resize_matrix(h, HASH_SIZE) @ gray @ resize_matrix(w, HASH_SIZE).T


def phash_tensor(images, batch: int = 8192) -> np.ndarray:
    """pHashes of a uint8 tensor (N, C, H, W), computed in batches (no float copy of the whole set)."""
    out = np.empty(len(images), dtype=np.uint64)
    for start in range(0, len(images), batch):
        out[start:start + batch] = phash_thumbnails(thumbnails_from_tensor(images[start:start + batch]))
    return out


def hamming(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Bits in which uint64 hashes differ, elementwise."""
    return np.bitwise_count(np.bitwise_xor(a, b)).astype(np.int64)


def _bands(threshold: int) -> list[tuple[int, int]]:
    """t + 1 disjoint (shift, width) bit bands covering the 64 bits as evenly as possible."""
    count = threshold + 1
    widths = [64 // count + (1 if i < 64 % count else 0) for i in range(count)]
    starts = np.cumsum([0] + widths[:-1])
    return [(int(s), int(w)) for s, w in zip(starts, widths)]


@dataclass
class PairBlock:
    """Close pairs found in one step: positions i < j into the hashes and their distances."""

    i: np.ndarray
    j: np.ndarray
    distance: np.ndarray


def close_pairs(
    hashes: np.ndarray, threshold: int = DEFAULT_THRESHOLD, block: int = 2_000_000
) -> Iterator[PairBlock]:
    """Every pair (i < j) of hashes within `threshold` bits, each exactly once, in blocks.

    Identical hashes are first gathered into one representative (a folder with 5,000 copies
    of a blank image would otherwise give 12.5 million pairs of candidates); the search runs on
    the distinct hashes, and the pairs among members of the same or of close representatives
    are then expanded in blocks of at most about `block` pairs, so a caller may count them
    without holding them all.
    """
    if not 0 <= threshold < 32:
        raise ValueError(f"threshold must be in [0, 32), got {threshold}")
    hashes = np.ascontiguousarray(hashes, dtype=np.uint64)
    unique, inverse = np.unique(hashes, return_inverse=True)
    order = np.argsort(inverse, kind="stable")  # members of each distinct hash, contiguous
    counts = np.bincount(inverse, minlength=len(unique))
    starts = np.concatenate([[0], np.cumsum(counts)[:-1]])

    # 1. pairs inside a group of identical hashes (distance 0): runs of `order`
    multi = counts > 1
    for a, b in _run_pairs(starts[multi], counts[multi], block):
        i, j = order[a], order[b]
        yield PairBlock(np.minimum(i, j), np.maximum(i, j), np.zeros(len(a), dtype=np.int64))
    # 2. pairs across distinct hashes within the threshold
    for a, b, d in _distinct_close(unique, threshold, block):
        yield from _cross_members(order, starts, counts, a, b, d)


def _all_pairs_of(members: np.ndarray, block: int) -> Iterator[PairBlock]:
    members = np.sort(members)
    m = len(members)
    rows = max(1, block // max(m, 1))
    for r0 in range(0, m - 1, rows):
        r = np.arange(r0, min(m - 1, r0 + rows))
        lengths = m - 1 - r
        ii = np.repeat(r, lengths)
        offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        jj = ii + 1 + offsets
        yield PairBlock(members[ii], members[jj], np.zeros(len(ii), dtype=np.int64))


def _cross_members(order, starts, counts, a, b, d) -> Iterator[PairBlock]:
    """Expand pairs of distinct hashes (a, b, distance) into pairs of their members."""
    single = (counts[a] == 1) & (counts[b] == 1)  # the common case: both hashes occur once
    i, j = order[starts[a[single]]], order[starts[b[single]]]
    yield PairBlock(np.minimum(i, j), np.maximum(i, j), d[single])
    multi = np.flatnonzero(~single)
    if len(multi):  # hashes shared by several images: every member of one with every member of the other
        ca, cb = counts[a[multi]], counts[b[multi]]
        sizes = ca * cb
        k = np.repeat(np.arange(len(multi)), sizes)
        local = np.arange(sizes.sum()) - np.repeat(np.cumsum(sizes) - sizes, sizes)
        ii = order[starts[a[multi]][k] + local // cb[k]]
        jj = order[starts[b[multi]][k] + local % cb[k]]
        yield PairBlock(np.minimum(ii, jj), np.maximum(ii, jj), d[multi][k])


def _distinct_close(unique: np.ndarray, threshold: int, block: int):
    """(a, b, distance) arrays of positions a < b into sorted distinct hashes within the threshold.

    Multi-index hashing: a pair is reported in the first band on which its hashes agree, so no
    pair comes twice. Buckets are expanded a slice at a time, so that memory stays bounded
    even for a band value that thousands of hashes share.
    """
    n = len(unique)
    if n < 2 or threshold == 0:
        return
    bands = _bands(threshold)
    keys = [((unique >> np.uint64(s)) & np.uint64((1 << w) - 1)).astype(np.int64) for s, w in bands]
    for band, key in enumerate(keys):
        order = np.argsort(key, kind="stable")
        sorted_key = key[order]
        edges = np.flatnonzero(np.diff(sorted_key)) + 1
        starts = np.concatenate([[0], edges])
        ends = np.concatenate([edges, [n]])
        sizes = ends - starts
        multi = sizes > 1
        for a, b in _run_pairs(starts[multi], sizes[multi], block):
            ia, ib = order[a], order[b]
            d = np.bitwise_count(np.bitwise_xor(unique[ia], unique[ib]))
            keep = np.flatnonzero(d <= threshold)  # few of the candidates: check the rest on those only
            ia, ib, d = ia[keep], ib[keep], d[keep].astype(np.int64)
            if band and len(ia):  # reported by an earlier band already?
                earlier = np.zeros(len(ia), dtype=bool)
                for prev in keys[:band]:
                    earlier |= prev[ia] == prev[ib]
                ia, ib, d = ia[~earlier], ib[~earlier], d[~earlier]
            if len(ia):
                yield np.minimum(ia, ib), np.maximum(ia, ib), d


def _run_pairs(starts: np.ndarray, sizes: np.ndarray, block: int):
    """(a, b) positions of every pair inside runs [start, start + size), about `block` pairs at a time."""
    cum = np.cumsum(sizes * (sizes - 1) // 2)
    lo = 0
    while lo < len(starts):
        hi = int(np.searchsorted(cum, (cum[lo - 1] if lo else 0) + block, side="right"))
        hi = max(hi, lo + 1)
        yield from _bucket_pairs(starts[lo:hi], sizes[lo:hi], block)
        lo = hi


def _bucket_pairs(starts: np.ndarray, sizes: np.ndarray, block: int):
    """(a, b) positions of every pair inside buckets [start, start + size), in slices of about `block`."""
    small = sizes * (sizes - 1) // 2 <= block
    if small.any():
        s, z = starts[small], sizes[small]
        # for every element, its partners after it in the same bucket
        elem = np.repeat(s, z) + (np.arange(z.sum()) - np.repeat(np.cumsum(z) - z, z))
        after = np.repeat(s + z, z) - elem - 1
        a = np.repeat(elem, after)
        b = a + 1 + (np.arange(after.sum()) - np.repeat(np.cumsum(after) - after, after))
        yield a, b
    for s, z in zip(starts[~small], sizes[~small]):
        for pb in _all_pairs_of(np.arange(s, s + z), block):
            yield pb.i, pb.j
