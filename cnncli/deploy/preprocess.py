"""Image decoding and preprocessing in numpy and Pillow, without torch.

`predict` on an ONNX or OpenVINO file must start in well under a second, and `import torch`
alone costs more. This module mirrors `cnncli.data.transforms` step for step, so an exported
file gives the probabilities the checkpoint gives (a test holds the two paths within 1e-5 on
real PNG and JPEG files):

- decoding: PNG, GIF, BMP, TIFF and PPM through Pillow as there; JPEG and WebP through Pillow
  too, where the torch path uses torchvision's libjpeg-turbo / libwebp; the EXIF orientation
  applied to every format; the pixels as data/formats.py makes them (gray stays one channel,
  colour is RGB, alpha is dropped, 16-bit keeps the high byte);
- uint8 to float32 in [0, 1]; colour to luma (ITU-R 601-2, torchvision's weights) before the
  resize when the network is gray; antialiased bilinear resize (Pillow's resampling on float
  images, the algorithm torchvision's `antialias=True` was ported from); gray repeated to 3
  channels after it; then (x - mean) / std with the same adaptation of the statistics.

A run trained on a streaming dataset (its metadata's `data_pipeline.kind` is "stream") prepares
files with that pipeline's eval transform instead (data/stream.py `PhotoTransform`, data/
photo_decode.py): `photo_array_for_network` mirrors it: JPEG decoded at the smallest DCT scale
that keeps the shorter side, the EXIF orientation applied to every format, colour to gray as
uint8 first where the network is gray, the shorter side resized to size / crop_pct (uint8,
antialiased, bilinear or the bicubic the pipeline records), the centre size x size crop. Pixels
agree with the torch path within one grey level for bilinear, three for bicubic at sharp edges
(Pillow's and torch's fixed-point rounding).
"""

from __future__ import annotations

import io
import math
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cnncli.data.formats import FORMATS, IMAGE_EXTENSIONS, NOT_AN_IMAGE, pixels  # noqa: F401 - re-exported
from cnncli.errors import InputError

# The same bound as cnncli.data.transforms.MAX_IMAGE_PIXELS (a test keeps the two equal;
# importing it from there would import torch).
MAX_IMAGE_PIXELS = 100_000_000
DEFAULT_CROP_PCT = 0.875  # cnncli.data.stream.DEFAULT_CROP_PCT (a test keeps the two equal)
_LUMA = (0.2989, 0.587, 0.114)
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _read(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise InputError(f"{path}: file not found") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a folder, not an image file") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read: {e.strerror or e}") from None
    if not data:
        raise InputError(f"{path}: empty file, not an image")
    return data


def decode_image_array(path: str | Path, min_side: int | None = None) -> np.ndarray:
    """One image file as uint8 (C, H, W), C 1 (gray) or 3 (colour); InputError naming the file.

    `min_side` given: as the streaming pipeline decodes (data/photo_decode.py): a JPEG at the
    smallest DCT scale whose shorter side is still at least `min_side`."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    data = _read(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:  # reads the header only
                width, height = image.size
                fmt = image.format
                if width * height > MAX_IMAGE_PIXELS:
                    raise InputError(f"{path}: {width}x{height} pixels is more than cnncli decodes "
                                     f"({MAX_IMAGE_PIXELS // 1_000_000} megapixels at most); resize it first")
                if fmt not in FORMATS:
                    raise InputError(f"{path}: {NOT_AN_IMAGE}")
                if min_side and fmt == "JPEG":  # photo_decode's draft: the same scale, the same pixels
                    scale = max(1.0, min(width, height) / min_side)
                    image.draft("RGB" if image.mode != "L" else "L", (math.ceil(width / scale), math.ceil(height / scale)))
                image.load()
                image = ImageOps.exif_transpose(image)  # as decode_image(apply_exif_orientation=True)
                array = pixels(image)  # gray or RGB uint8 (data/formats.py)
    except InputError:
        raise
    except Image.DecompressionBombError:
        raise InputError(f"{path}: its size is more than cnncli decodes "
                         f"({MAX_IMAGE_PIXELS // 1_000_000} megapixels at most); resize it first") from None
    except UnidentifiedImageError:
        if data.startswith(_PNG_SIGNATURE):  # a PNG that Pillow cannot read: as the torch path says
            raise InputError(f"{path}: cannot decode the image: not a readable PNG") from None
        raise InputError(f"{path}: {NOT_AN_IMAGE}") from None
    except Exception as e:  # noqa: BLE001 - corrupt data: OSError, SyntaxError, ValueError, zlib.error...
        reason = " ".join(str(e).split()) or type(e).__name__
        raise InputError(f"{path}: cannot decode the image: {reason}") from None
    if array.size == 0:
        raise InputError(f"{path}: unsupported image layout {array.shape}")
    return array[None] if array.ndim == 2 else np.ascontiguousarray(array.transpose(2, 0, 1))


def _adapt_stats(values: Sequence[float], channels: int) -> np.ndarray:
    values = [float(v) for v in values]
    if len(values) == 1:
        values = values * channels
    elif len(values) == 3 and channels == 1:
        values = [sum(w * v for w, v in zip(_LUMA, values))]
    if len(values) != channels:
        raise InputError(f"mean/std have {len(values)} values but the network takes {channels} channels")
    return np.asarray(values, dtype=np.float32).reshape(-1, 1, 1)


def _to_luma(x: np.ndarray) -> np.ndarray:
    r, g, b = x[0], x[1], x[2]
    return (np.float32(_LUMA[0]) * r + np.float32(_LUMA[1]) * g + np.float32(_LUMA[2]) * b)[None]


def _adapt_channels(x: np.ndarray, channels: int) -> np.ndarray:
    have = x.shape[0]
    if have == channels:
        return x
    if have in (2, 4):
        x, have = x[: have - 1], have - 1
        if have == channels:
            return x
    if have == 1 and channels == 3:
        return np.repeat(x, 3, axis=0)
    if have == 3 and channels == 1:
        return _to_luma(x)
    raise InputError(f"cannot turn images of {have} channels into the {channels} channels the network expects")


def _resize(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """Antialiased bilinear resize of float32 (C, H, W), one channel at a time (Pillow's 'F' mode)."""
    from PIL import Image

    out = np.empty((x.shape[0], height, width), dtype=np.float32)
    for c in range(x.shape[0]):
        plane = Image.fromarray(np.ascontiguousarray(x[c], dtype=np.float32))
        out[c] = np.asarray(plane.resize((width, height), Image.Resampling.BILINEAR), dtype=np.float32)
    return out


def _gray_uint8(image: np.ndarray) -> np.ndarray:
    """torchvision's rgb_to_grayscale on uint8 (C, H, W): 601-2 luma in float32, truncated."""
    x = image.astype(np.float32)
    return np.trunc(_to_luma(x)).astype(np.uint8)


def photo_array_for_network(path: str | Path, input_size: Sequence[int], crop_pct: float | None = None,
                            interpolation: str | None = None) -> np.ndarray:
    """One file through a streaming run's eval transform: uint8 (C, size, size); InputError.

    The shorter side to max(size, floor(size / crop_pct)), the longer in proportion (torchvision's
    Resize(int)), bicubic where `interpolation` says so (else bilinear), then the centre crop
    (torchvision's CenterCrop offsets)."""
    from PIL import Image

    resample = Image.Resampling.BICUBIC if str(interpolation).lower() == "bicubic" else Image.Resampling.BILINEAR

    channels, size = int(input_size[0]), int(input_size[1])
    resize_to = max(size, int(math.floor(size / float(crop_pct or DEFAULT_CROP_PCT))))
    image = decode_image_array(path, min_side=resize_to)
    if image.shape[0] != channels:
        image = np.repeat(image, channels, axis=0) if image.shape[0] == 1 else _gray_uint8(image)
    _, h, w = image.shape
    short, long = (h, w) if h <= w else (w, h)
    new_long = int(resize_to * long / short)
    nh, nw = (resize_to, new_long) if h <= w else (new_long, resize_to)
    if (nh, nw) != (h, w):
        planes = image[0] if channels == 1 else np.ascontiguousarray(image.transpose(1, 2, 0))
        resized = np.asarray(Image.fromarray(planes).resize((nw, nh), resample))
        image = resized[None] if resized.ndim == 2 else resized.transpose(2, 0, 1)
    top, left = int(round((nh - size) / 2.0)), int(round((nw - size) / 2.0))
    return np.ascontiguousarray(image[:, top:top + size, left:left + size])


def prepare_array(image: np.ndarray, input_size: Sequence[int], mean: Sequence[float],
                  std: Sequence[float]) -> np.ndarray:
    """uint8 (C, H, W) -> the network's normalized float32 input (C, H, W)."""
    channels, height, width = (int(v) for v in input_size)
    x = image.astype(np.float32) / np.float32(255.0)
    if x.shape[0] > channels:
        x = _adapt_channels(x, channels)
    if x.shape[1:] != (height, width):
        x = _resize(x, height, width)
    if x.shape[0] != channels:
        x = _adapt_channels(x, channels)
    return (x - _adapt_stats(mean, channels)) / _adapt_stats(std, channels)


def prepare_arrays(images: Sequence[np.ndarray], input_size: Sequence[int], mean: Sequence[float],
                   std: Sequence[float]) -> np.ndarray:
    """Images of any sizes as one normalized float32 batch (N, C, H, W)."""
    channels, height, width = (int(v) for v in input_size)
    if not images:
        return np.zeros((0, channels, height, width), dtype=np.float32)
    return np.stack([prepare_array(img, input_size, mean, std) for img in images]).astype(np.float32, copy=False)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits.astype(np.float32) - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)
