"""Photo files to uint8 tensors: the one decoder of the streaming path (Pillow), and headers.

`decode_photo` reads a file, checks the pixel count its header declares before any pixel is
decoded, applies the EXIF orientation and, given the smallest shorter side the caller needs,
decodes a JPEG at the smallest DCT scale that still gives it. `BadImage` is what any of it
raises for a file that cannot be read or decoded (one line, naming the file).
"""

from __future__ import annotations

import io
import math
import warnings
from pathlib import Path

import torch

from cnncli.data.formats import FORMATS, NOT_AN_IMAGE, gray_mode, pixels
from cnncli.errors import InputError


class BadImage(Exception):
    """A sample that cannot be read or decoded: `id` names it, `reason` says why (one line)."""

    def __init__(self, id: str, reason: str):
        super().__init__(f"{id}: {reason}")
        self.id, self.reason = id, reason



def decode_photo(path: str | Path, min_side: int | None = None) -> torch.Tensor:
    """One image file as uint8 (C, H, W), C 1 (gray) or 3 (colour), EXIF orientation applied.

    The header's pixel count is checked before any pixel is decoded (transforms.MAX_IMAGE_PIXELS).
    `min_side`: the smallest shorter side the caller needs; a JPEG then decodes at the smallest
    DCT scale (1/2, 1/4, 1/8) that still gives it (PIL draft mode). Raises BadImage.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as e:
        raise BadImage(str(path), f"cannot read: {e.strerror or e}") from None
    return decode_photo_data(data, path, min_side)


def decode_photo_data(data: bytes, path: str | Path, min_side: int | None = None) -> torch.Tensor:
    """`decode_photo` of bytes already read (a tar shard's member); `path` names them."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    from cnncli.data.transforms import _check_pixel_count

    path = Path(path)
    if not data:
        raise BadImage(str(path), "empty file, not an image")
    try:
        _check_pixel_count(path, data)
    except InputError as e:
        raise BadImage(str(path), str(e).removeprefix(f"{path}: ")) from None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                if min_side and image.format == "JPEG":
                    w, h = image.size
                    scale = max(1.0, min(w, h) / min_side)
                    image.draft("RGB" if image.mode != "L" else "L", (math.ceil(w / scale), math.ceil(h / scale)))
                if image.format not in FORMATS:
                    raise BadImage(str(path), NOT_AN_IMAGE)
                ImageOps.exif_transpose(image, in_place=True)  # no copy when there is nothing to turn
                array = pixels(image)  # gray or RGB uint8 (data/formats.py)
    except BadImage:
        raise
    except UnidentifiedImageError:
        reason = "cannot decode the image: not a readable PNG" if data.startswith(b"\x89PNG") else NOT_AN_IMAGE
        raise BadImage(str(path), reason) from None
    except Exception as e:  # noqa: BLE001 - corrupt data surfaces as OSError, SyntaxError, ValueError...
        reason = " ".join(str(e).split()) or type(e).__name__
        raise BadImage(str(path), f"cannot decode the image: {reason}") from None
    if array.size == 0:
        raise BadImage(str(path), f"unsupported image layout {array.shape}")
    tensor = torch.from_numpy(array.copy() if not array.flags.writeable else array)
    # (C, H, W) over the decoder's (H, W, C) pixels, not copied: torch resizes uint8 channels-last
    # images on its fast path (PhotoTransform.apply returns contiguous samples)
    return tensor.unsqueeze(0) if tensor.dim() == 2 else tensor.permute(2, 0, 1)


def declared_size(path: str | Path) -> tuple[int, int, int] | None:
    """(channels, height, width) from an image's header (nothing decoded), or None if unreadable."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(path) as image:
                w, h = image.size
                channels = 1 if gray_mode(image.mode) else 3
                return channels, h, w
    except Exception:  # noqa: BLE001 - any unreadable header: unknown size
        return None
