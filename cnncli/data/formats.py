"""The image files cnncli reads, and how a decoded Pillow image becomes uint8 pixels.

One list for every reader: the in-memory and predict path (data/transforms.py: JPEG and WebP
through torchvision, the rest through Pillow), the streaming path (data/photo_decode.py) and the
torch-free predict path of exported models (deploy/preprocess.py), so a folder means the same
files to all of them. The formats are what torchvision's ImageFolder, Keras and Ultralytics read
from a photo folder between them: PNG, JPEG, WebP, GIF (its first frame), BMP, TIFF (its first
page) and PPM/PGM. The pixels: gray stays one channel (16-bit gray keeps its high byte), everything else
becomes RGB (alpha dropped, palettes and CMYK converted); 32-bit float images are refused.
Torch-free and Pillow-free at import.
"""

from __future__ import annotations

from typing import Any

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".webp", ".gif", ".bmp", ".tif", ".tiff", ".ppm", ".pgm")
# Pillow's names for them (MPO: a JPEG with extra frames, as some cameras write)
FORMATS = frozenset({"PNG", "JPEG", "MPO", "WEBP", "GIF", "BMP", "TIFF", "PPM"})
NOT_AN_IMAGE = "not a PNG, JPEG, WebP, GIF, BMP, TIFF or PPM image"
GRAY_MODES = ("1", "L", "LA", "La")
DEEP_GRAY_MODES = ("I;16", "I;16B", "I;16L", "I")


def gray_mode(mode: str) -> bool:
    """Whether a Pillow mode decodes to one channel (a header is enough to tell)."""
    return mode in GRAY_MODES or mode in DEEP_GRAY_MODES


def pixels(image: Any):
    """A loaded Pillow image as a uint8 numpy array, (H, W) gray or (H, W, 3) colour (module
    doc); may be read-only (a view of Pillow's buffer). ValueError for a layout cnncli refuses."""
    import numpy as np

    mode = image.mode
    if mode in DEEP_GRAY_MODES:  # 16-bit gray: keep the high byte
        return (np.asarray(image, dtype=np.uint32) >> 8).astype(np.uint8)
    if mode == "F":
        raise ValueError("32-bit float pixels (mode F) are not a photo; convert it to 8 or 16 bits first")
    if mode in GRAY_MODES:
        return np.asarray(image if mode == "L" else image.convert("L"))
    return np.asarray(image if mode == "RGB" else image.convert("RGB"))
