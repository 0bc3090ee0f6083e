"""The IDX file format of (Fashion-)MNIST, read and written with full validation.

An IDX file is: two zero bytes, a type code, the number of dimensions, each dimension as a
big-endian uint32, then the values in row-major order, big-endian. Fashion-MNIST ships four
of them, gzip-compressed. A truncated download or a wrong file must come out as one clear
line naming the file, never as a gzip or numpy exception, so every step is checked here.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from cnncli.errors import InputError

# type code -> numpy dtype (big-endian, as the format stores multi-byte values)
IDX_TYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_CODE_OF = {(v.kind, v.itemsize): k for k, v in IDX_TYPES.items()}

# the largest file we agree to decompress: the full Fashion-MNIST train images are 47 MB
MAX_BYTES = 4 << 30


def _read_bytes(path: Path) -> bytes:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rb") as f:
                head = f.read(4 + 4 * 255)
                _price_header(head, path)  # before decompressing what the header declares
                data = head + f.read(MAX_BYTES + 1 - len(head))
        else:
            data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except EOFError:
        raise InputError(f"{path}: truncated gzip file (the download stopped early?); fetch it again") from None
    except (gzip.BadGzipFile, zlib.error) as e:
        raise InputError(f"{path}: not a valid gzip file ({e}); fetch it again") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror or e}") from None
    if len(data) > MAX_BYTES:
        raise InputError(f"{path}: larger than {MAX_BYTES >> 30} GiB once decompressed; not an IDX file")
    return data


def _price_header(head: bytes, name) -> None:
    """Refuse a header that declares more than the memory budget holds (as read, then as float32)."""
    if len(head) < 4 or head[:2] != b"\0\0" or head[2] not in IDX_TYPES:
        return  # parse_idx says what is wrong
    ndim = head[3]
    if ndim == 0 or len(head) < 4 + 4 * ndim:
        return
    from cnncli.cost import check_array

    dims = struct.unpack(f">{ndim}I", head[4:4 + 4 * ndim])
    check_array(dims, IDX_TYPES[head[2]].itemsize + 4, f"{name}")


def parse_idx(data: bytes, name: str = "IDX data") -> np.ndarray:
    """Parse the bytes of an IDX file into an array of its shape (native byte order)."""
    if len(data) < 4:
        raise InputError(f"{name}: only {len(data)} bytes; an IDX file starts with a 4-byte magic number")
    zero, code, ndim = struct.unpack(">HBB", data[:4])
    if zero != 0 or code not in IDX_TYPES:
        raise InputError(
            f"{name}: not an IDX file (magic number 0x{data[:4].hex()}, expected 0x0000 followed by a "
            f"type code such as 0x08 and the number of dimensions)"
        )
    if ndim == 0:
        raise InputError(f"{name}: IDX header declares zero dimensions")
    header = 4 + 4 * ndim
    if len(data) < header:
        raise InputError(f"{name}: truncated header ({len(data)} bytes, the {ndim} dimensions need {header})")
    dims = struct.unpack(f">{ndim}I", data[4:header])
    dtype = IDX_TYPES[code]
    _price_header(data[:header], name)
    expected = int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    actual = len(data) - header
    if actual != expected:
        what = "truncated" if actual < expected else "has trailing bytes"
        shape = "x".join(str(d) for d in dims)
        raise InputError(
            f"{name}: {what}: a {shape} array of {dtype.name} needs {expected} bytes after the "
            f"header, the file has {actual}; fetch it again"
        )
    array = np.frombuffer(data, dtype=dtype, offset=header).reshape(dims)
    return array.astype(dtype.newbyteorder("="), copy=False)


def read_idx(path: str | Path) -> np.ndarray:
    """Read an IDX file (gzip-compressed when its name ends in .gz) into a numpy array."""
    path = Path(path)
    return parse_idx(_read_bytes(path), str(path))


def encode_idx(array: np.ndarray) -> bytes:
    """The IDX bytes of an array (uint8, int8, int16, int32, float32 or float64)."""
    array = np.asarray(array)
    code = _CODE_OF.get((array.dtype.kind, array.dtype.itemsize))
    if code is None or array.ndim == 0 or array.ndim > 255:
        raise ValueError(f"cannot write a {array.dtype} array of {array.ndim} dimensions as IDX")
    header = struct.pack(">HBB", 0, code, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=IDX_TYPES[code]).tobytes()


def write_idx(path: str | Path, array: np.ndarray) -> Path:
    """Write an IDX file atomically; gzip it (reproducibly, mtime 0) when the name ends in .gz."""
    from cnncli.fileio import atomic_write_bytes

    path = Path(path)
    data = encode_idx(array)
    if path.suffix == ".gz":
        data = gzip.compress(data, compresslevel=9, mtime=0)
    return atomic_write_bytes(path, data)


def read_idx_images_labels(images_path: Path, labels_path: Path, num_classes: int | None = None):
    """Read a pair of IDX files: images (N, H, W) uint8 and labels (N,) uint8, checked together."""
    images = read_idx(images_path)
    labels = read_idx(labels_path)
    if images.dtype != np.uint8 or images.ndim != 3:
        raise InputError(
            f"{images_path}: expected uint8 images of 3 dimensions (N, H, W), got {images.dtype} "
            f"of shape {images.shape}"
        )
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise InputError(f"{labels_path}: expected uint8 labels of 1 dimension, got {labels.dtype} of shape {labels.shape}")
    if len(images) != len(labels):
        raise InputError(f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels")
    if num_classes is not None and len(labels) and int(labels.max()) >= num_classes:
        bad = int(np.argmax(labels >= num_classes))
        raise InputError(
            f"{labels_path}: label {int(labels[bad])} at position {bad} is out of range 0..{num_classes - 1}"
        )
    return images, labels
