"""From stored uint8 images to the float tensor a network wants.

Datasets stay uint8 at their own size; a network may want another size or channel count
(AlexNet takes 227x227x3, Fashion-MNIST is 28x28x1). `prepare_batch` adapts a whole batch on
the target device in one go: uint8 to float in [0, 1], channel adaptation, antialiased
bilinear resize, normalization by mean/std. `needs_adaptation` says in words what that will
do, so the trainer can say it once. `load_image_files` / `prepare_images` serve `predict`,
whose images come one file at a time in any size.
"""

from __future__ import annotations

import io
import re
import warnings
from collections.abc import Sequence
from pathlib import Path

import torch

from cnncli.data.formats import FORMATS, IMAGE_EXTENSIONS, NOT_AN_IMAGE, pixels  # noqa: F401 - re-exported
from cnncli.errors import InputError

# ITU-R 601-2 luma as torchvision's rgb_to_grayscale weighs it: the conversion colour data goes
# through on its way to a gray network (_adapt_channels); PIL's "L" (0.299) only meets images
# that are gray already. `adapt_stats` weighs the data's mean/std the same way.
_LUMA = (0.2989, 0.587, 0.114)


def _adapt_channels(x: torch.Tensor, channels: int) -> torch.Tensor:
    """(N, C, H, W) to `channels`: gray repeated to 3, colour to luma, alpha dropped."""
    have = x.shape[1]
    if have == channels:
        return x
    if have in (2, 4):  # gray + alpha, RGBA: the alpha channel is not part of the picture
        x, have = x[:, : have - 1], have - 1
        if have == channels:
            return x
    if have == 1 and channels == 3:
        return x.expand(-1, 3, -1, -1)
    if have == 3 and channels == 1:
        import torchvision.transforms.v2.functional as F

        return F.rgb_to_grayscale(x)
    raise InputError(f"cannot turn images of {have} channels into the {channels} channels the network expects")


def adapt_stats(values: Sequence[float], channels: int) -> list[float]:
    """Mean/std given for the data's channels, adapted to the network's channel count.

    One gray value is repeated; RGB values for a gray network are luma-weighted like the pixels
    (the mean of the luma is exactly that; its std assumes strongly correlated channels).
    """
    values = [float(v) for v in values]
    if len(values) == channels:
        return values
    if len(values) == 1:
        return values * channels
    if len(values) == 3 and channels == 1:
        # the luma's mean is exact; its std assumes strongly correlated channels, as in photos
        return [sum(w * v for w, v in zip(_LUMA, values))]
    raise InputError(f"mean/std have {len(values)} values but the network takes {channels} channels")


def prepare_batch(
    images: torch.Tensor,
    input_size: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """A uint8 (or [0, 1] float) batch (N, C, H, W) as normalized floats of `input_size` (C, H, W).

    The batch is moved to `device` first, while it is still 4x smaller as uint8. Colour is
    reduced to gray before resizing and gray repeated to 3 channels after, so the resize
    works on as few channels as possible. `mean` and `std` may be given for the network's
    channels or for the data's (a single gray value is repeated; RGB values are combined).
    """
    if images.dim() != 4:
        raise InputError(f"expected a batch of images (N, C, H, W), got shape {tuple(images.shape)}")
    channels, height, width = (int(v) for v in input_size)
    if device is not None:
        images = images.to(device, non_blocking=True)
    x = images.to(dtype).div_(255.0) if images.dtype == torch.uint8 else images.to(dtype)
    if x.shape[1] > channels:
        x = _adapt_channels(x, channels)
    if tuple(x.shape[-2:]) != (height, width):
        import torchvision.transforms.v2.functional as F

        x = F.resize(x, [height, width], interpolation=F.InterpolationMode.BILINEAR, antialias=True)
    if x.shape[1] != channels:
        x = _adapt_channels(x, channels)
    mean_t = torch.tensor(adapt_stats(mean, channels), dtype=dtype, device=x.device).view(1, -1, 1, 1)
    std_t = torch.tensor(adapt_stats(std, channels), dtype=dtype, device=x.device).view(1, -1, 1, 1)
    return (x - mean_t) / std_t


def needs_adaptation(data_shape: Sequence[int], input_size: Sequence[int]) -> str | None:
    """In words, what `prepare_batch` does to data of `data_shape` for a network of `input_size`.

    >>> needs_adaptation((1, 28, 28), (3, 227, 227))
    'resizing 28x28 -> 227x227 and repeating 1 channel to 3'
    """
    c, h, w = (int(v) for v in data_shape)
    nc, nh, nw = (int(v) for v in input_size)
    steps = []
    if (h, w) != (nh, nw):
        steps.append(f"resizing {h}x{w} -> {nh}x{nw}")
    if c != nc:
        if c == 1 and nc == 3:
            steps.append("repeating 1 channel to 3")
        elif c == 3 and nc == 1:
            steps.append("converting colour to gray")
        else:
            steps.append(f"converting {c} channels to {nc}")
    return " and ".join(steps) if steps else None


def _decoder_message(error: Exception) -> str:
    text = str(error)
    if "Unsupported image file" in text:
        return NOT_AN_IMAGE
    match = re.search(r"\.cpp:\d+, (.*)", text)
    return f"cannot decode the image: {(match.group(1) if match else text).strip()}"


_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# The most pixels an image may have (a 100-megapixel photo): a header can claim 60000x60000 in a
# 1 KB file, and the decoders would allocate all of it (11 GB) before finding the data missing.
MAX_IMAGE_PIXELS = 100_000_000


def _check_pixel_count(path: Path, data: bytes) -> None:
    """Refuse an image whose header claims more than MAX_IMAGE_PIXELS, before decoding it."""
    from PIL import Image

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:  # reads the header only
                width, height = image.size
        size = f"{width}x{height} pixels is"
    except Image.DecompressionBombError:  # Pillow's own, higher limit
        width, height, size = MAX_IMAGE_PIXELS + 1, 1, "its size is"
    except Exception:  # noqa: BLE001 - not something Pillow reads: the decoder says what is wrong
        return
    if width * height > MAX_IMAGE_PIXELS:
        raise InputError(f"{path}: {size} more than cnncli decodes ({MAX_IMAGE_PIXELS // 1_000_000} "
                         "megapixels at most); resize it first")


def _torchvision_reads(data: bytes) -> bool:
    """JPEG and WebP go through torchvision's decoders (libjpeg-turbo, libwebp); the rest through
    Pillow (`_decode_pillow`)."""
    return data.startswith(b"\xff\xd8\xff") or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


def _decode_pillow(path: Path, data: bytes) -> torch.Tensor:
    """PNG, GIF, BMP, TIFF, PPM through Pillow (data/formats.py), EXIF orientation applied to
    every format (as torchvision's decode_image(apply_exif_orientation=True) does for PNG and
    JPEG, and the streaming decoder for all). PNG is here because torchvision 0.29's
    decode_png crashes the process (SIGSEGV) on a PNG whose compressed data is corrupt (libpng's
    error jump), where Pillow raises an error."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data)) as image:
                if image.format not in FORMATS:
                    raise InputError(f"{path}: {NOT_AN_IMAGE}")
                image.load()
                image = ImageOps.exif_transpose(image)
                array = pixels(image)
    except InputError:
        raise
    except UnidentifiedImageError:
        if data.startswith(_PNG_SIGNATURE):
            raise InputError(f"{path}: cannot decode the image: not a readable PNG") from None
        raise InputError(f"{path}: {NOT_AN_IMAGE}") from None
    except Exception as e:  # noqa: BLE001 - corrupt data surfaces as OSError, SyntaxError, ValueError, zlib.error...
        reason = " ".join(str(e).split()) or type(e).__name__
        raise InputError(f"{path}: cannot decode the image: {reason}") from None
    if array.size == 0:
        raise InputError(f"{path}: unsupported image layout {array.shape}")
    tensor = torch.from_numpy(array if array.flags.writeable else array.copy())
    return tensor.unsqueeze(0) if tensor.dim() == 2 else tensor.permute(2, 0, 1).contiguous()


def decode_image_file(path: str | Path) -> torch.Tensor:
    """One image file as uint8 (C, H, W) with C 1 (gray) or 3 (colour); InputError naming the file."""
    path = Path(path)
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
    return decode_image_data(data, path)


def decode_image_data(data: bytes, path: str | Path) -> torch.Tensor:
    """`decode_image_file` of bytes already read (a tar shard's member); `path` names them."""
    from torchvision.io import decode_image

    _check_pixel_count(path, data)
    if not _torchvision_reads(data):
        return _decode_pillow(path, data)
    try:
        with warnings.catch_warnings():
            # torchvision 0.29 announces its decoders move to torchcodec; they work, and the
            # notice would only confuse a user of predict
            warnings.simplefilter("ignore", DeprecationWarning)
            image = decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), apply_exif_orientation=True)
    except (RuntimeError, ValueError) as e:
        raise InputError(f"{path}: {_decoder_message(e)}") from None
    if image.dim() == 4:  # an animated image: its first frame
        image = image[0]
    if image.dtype == torch.uint16:  # 16-bit PNG: keep the high byte
        image = (image.to(torch.int32) >> 8).to(torch.uint8)
    if image.shape[0] in (2, 4):
        image = image[: image.shape[0] - 1]
    if image.shape[0] not in (1, 3) or image.shape[1] == 0 or image.shape[2] == 0:
        raise InputError(f"{path}: unsupported image layout {tuple(image.shape)}")
    return image.contiguous()


def load_image_files(paths: Sequence[str | Path]) -> tuple[list[tuple[str, torch.Tensor]], list[tuple[str, str]]]:
    """Decode many files: ([(path, uint8 (C, H, W))], [(path, one-line reason)]) in input order.

    A file that cannot be read or is not an image does not stop the others (predict reports
    it on its own line); the reason already names the file.
    """
    images: list[tuple[str, torch.Tensor]] = []
    errors: list[tuple[str, str]] = []
    for path in paths:
        try:
            images.append((str(path), decode_image_file(path)))
        except InputError as e:
            errors.append((str(path), str(e)))
    return images, errors


def resize_uint8(image: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Antialiased bilinear resize of uint8 images (C, H, W) or (N, C, H, W), staying uint8."""
    if tuple(image.shape[-2:]) == (height, width):
        return image
    import torchvision.transforms.v2.functional as F

    return F.resize(image, [height, width], interpolation=F.InterpolationMode.BILINEAR, antialias=True)


def prepare_images(
    images: Sequence[torch.Tensor],
    input_size: Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Images of different sizes and channel counts (uint8 (C, H, W) each) as one normalized batch.

    Images of one shape are stacked and prepared together (one batched resize, in float, as
    `eval` prepares a dataset's batch), so a folder of same-sized files costs one call, and an
    image comes out the same whatever else is in its batch.
    """
    channels, height, width = (int(v) for v in input_size)
    if not images:
        return torch.zeros((0, channels, height, width), device=device)
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, img in enumerate(images):
        groups.setdefault(tuple(img.shape), []).append(i)
    if len(groups) == 1:
        return prepare_batch(torch.stack(list(images)), input_size, mean, std, device=device)
    out = None
    for members in groups.values():
        batch = prepare_batch(torch.stack([images[i] for i in members]), input_size, mean, std, device=device)
        if out is None:
            out = batch.new_empty((len(images), *batch.shape[1:]))
        out[members] = batch
    return out
