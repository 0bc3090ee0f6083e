"""Fuzz every reader of a file a user hands to cnncli.

Each reader gets many mutated (bytes flipped, overwritten, inserted, deleted) and truncated
versions of a valid file, and structured variants with wrong values in the right places. Each
input is either read correctly or refused with `cnncli.errors.CnnError` (the one-line error);
any other exception is a bug. Readers: safetensors checkpoints with cnncli metadata (down to
rebuilding the network), IDX files (plain and gzip), CIFAR-10 batches (restricted unpickler),
recipes, model files, and PNG / JPEG / WebP images.
"""

from __future__ import annotations

import gzip
import io
import json
import pickle
import string
import tempfile
import tomllib
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save as safetensors_save

from cnncli.checkpoint import load_checkpoint, load_model, save_checkpoint
from cnncli.data import transforms
from cnncli.data.cifar import read_batch
from cnncli.data.idx import encode_idx, parse_idx, read_idx, read_idx_images_labels
from cnncli.engine.config import TrainConfig, build_config
from cnncli.errors import CnnError
from cnncli.models.registry import build_model, create_model

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck), print_blob=True)
FAST = settings(FUZZ, max_examples=80)

WORK = Path(tempfile.mkdtemp(prefix="cnncli-fuzz-"))


def scratch(name: str, data: bytes) -> Path:
    path = WORK / name
    path.write_bytes(data)
    return path


def either_reads_or_refuses(read, *args):
    """The property: the reader returns, or raises the product's one-line error; nothing else."""
    try:
        return read(*args)
    except CnnError as e:
        assert str(e).strip(), "an empty error message"  # (the CLI prints it on one line)
        return None


@st.composite
def mutated(draw, base: bytes, hot: int = 0):
    """`base` with 1-4 edits; with `hot`, half of the edits fall in its first `hot` bytes (a header)."""
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 4))):
        span = hot if hot and draw(st.booleans()) else len(data)
        span = max(1, min(span, len(data)))
        at = draw(st.integers(0, span - 1)) if data else 0
        edit = draw(st.sampled_from(["truncate", "flip", "overwrite", "insert", "delete", "number"]))
        if edit == "truncate":
            del data[draw(st.integers(0, len(data))):]
        elif edit == "flip" and data:
            data[at] ^= 1 << draw(st.integers(0, 7))
        elif edit == "overwrite" and data:
            data[at:at + 1] = bytes([draw(st.integers(0, 255))])
        elif edit == "insert":
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
        elif edit == "delete":
            del data[at:at + draw(st.integers(1, 16))]
        elif edit == "number":  # a length, count or size field gets an extreme value
            value = draw(st.sampled_from([0, 1, 255, 2**15, 2**16 - 1, 2**31 - 1, 2**32 - 1]))
            width = draw(st.sampled_from([1, 2, 4, 8]))
            order = draw(st.sampled_from(["little", "big"]))
            data[at:at + width] = (value % 256**width).to_bytes(width, order)
    return bytes(data)


JSON = st.recursive(st.none() | st.booleans() | st.integers(-2**63, 2**64) | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
                    max_leaves=8)


# ------------------------------------------------------------------------------ checkpoints
def _checkpoint_bytes() -> tuple[bytes, dict, dict]:
    model = create_model("lenet5", num_classes=3)
    state = {k: v for k, v in model.state_dict().items()}
    meta = {"kind": "model", "model": {"name": "lenet5", "num_classes": 3, "in_chans": 1, "kwargs": {},
                                       "model_file": None},
            "num_classes": 3, "class_names": ["a", "b", "c"], "input_size": [1, 32, 32], "mean": [0.5],
            "std": [0.25], "dataset": "synthetic", "epoch": 1, "metrics": {}, "seed": 0}
    path = save_checkpoint(WORK / "base.safetensors", state, meta)
    return path.read_bytes(), state, meta


CKPT, CKPT_STATE, CKPT_META = _checkpoint_bytes()
CKPT_HEADER = 8 + int.from_bytes(CKPT[:8], "little")


def test_the_base_checkpoint_loads():
    model, meta = load_model(scratch("good.safetensors", CKPT))
    assert meta["num_classes"] == 3 and all(torch.equal(model.state_dict()[k], v) for k, v in CKPT_STATE.items())


@FUZZ
@given(mutated(CKPT, hot=CKPT_HEADER))
def test_mutated_checkpoints(data):
    path = scratch("mutated.safetensors", data)
    loaded = either_reads_or_refuses(load_checkpoint, path)
    if loaded is not None:
        tensors, meta = loaded
        assert isinstance(meta, Mapping) and all(isinstance(t, torch.Tensor) for t in tensors.values())
    either_reads_or_refuses(load_model, path)


@FUZZ
@given(st.data())
def test_checkpoints_with_wrong_metadata_values(data):
    """The header is valid; the cnncli document has wrong values in the right places."""
    meta = json.loads(json.dumps(CKPT_META))
    for _ in range(data.draw(st.integers(1, 3))):
        inner = meta["model"] if isinstance(meta["model"], dict) and meta["model"] else None
        target = inner if inner is not None and data.draw(st.booleans()) else meta
        key = data.draw(st.sampled_from(sorted(target)))
        target[key] = data.draw(JSON | st.sampled_from([0, -1, 10**9, "lenet5", "timm/nope", [1, 2], [0, 1, 1]]))
    # written raw: save_checkpoint itself refuses a document it would not read back
    raw = safetensors_save(CKPT_STATE, metadata={"cnncli": json.dumps(meta), "format": "pt"})
    either_reads_or_refuses(load_model, scratch("meta.safetensors", raw))


@FUZZ
@given(st.dictionaries(st.text(max_size=4), JSON, max_size=3), st.binary(max_size=64))
def test_arbitrary_headers(header, tail):
    raw = json.dumps(header).encode()
    path = scratch("header.safetensors", len(raw).to_bytes(8, "little") + raw + tail)
    either_reads_or_refuses(load_checkpoint, path)


# ------------------------------------------------------------------------------ IDX
IDX_IMAGES = encode_idx(np.arange(3 * 4 * 5, dtype=np.uint8).reshape(3, 4, 5))
IDX_LABELS = encode_idx(np.array([0, 1, 2], dtype=np.uint8))


@FAST
@given(mutated(IDX_IMAGES, hot=16))
def test_mutated_idx(data):
    array = either_reads_or_refuses(parse_idx, data, "fuzz")
    if array is not None:
        assert array.size * array.dtype.itemsize <= len(data)


@FUZZ
@given(mutated(gzip.compress(IDX_IMAGES, mtime=0), hot=20), mutated(IDX_LABELS, hot=12))
def test_mutated_gzip_idx_pairs(images, labels):
    images_path = scratch("images-idx3-ubyte.gz", images)
    labels_path = scratch("labels-idx1-ubyte", labels)
    either_reads_or_refuses(read_idx, images_path)
    either_reads_or_refuses(read_idx_images_labels, images_path, labels_path, 10)


# ------------------------------------------------------------------------------ CIFAR batches
def _cifar_pickle(protocol: int) -> bytes:
    rng = np.random.default_rng(0)
    batch = {b"batch_label": b"fuzz", b"labels": [1, 0, 9], b"data": rng.integers(0, 256, (3, 3072), dtype=np.uint8),
             b"filenames": [b"a.png", b"b.png", b"c.png"]}
    return pickle.dumps(batch, protocol=protocol)


@pytest.mark.parametrize("protocol", [2, 5])
def test_the_base_batches_load(protocol):
    images, labels = read_batch(scratch("batch", _cifar_pickle(protocol)))
    assert images.shape == (3, 3, 32, 32) and labels.tolist() == [1, 0, 9]


@FUZZ
@given(st.sampled_from([2, 5]).flatmap(lambda p: mutated(_cifar_pickle(p), hot=200)))
def test_mutated_cifar_batches(data):
    either_reads_or_refuses(read_batch, scratch("batch", data))


PICKLABLE = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.binary(max_size=8)
                         | st.text(max_size=8),
                         lambda inner: st.lists(inner, max_size=4) | st.tuples(inner, inner)
                         | st.dictionaries(st.binary(max_size=6) | st.text(max_size=6), inner, max_size=4),
                         max_leaves=10)


@FUZZ
@given(PICKLABLE, st.sampled_from([0, 2, 4, 5]))
def test_arbitrary_pickled_objects_as_cifar_batches(obj, protocol):
    either_reads_or_refuses(read_batch, scratch("batch", pickle.dumps(obj, protocol=protocol)))


# ------------------------------------------------------------------------------ recipes
RECIPE = ('model = "lenet5"\ndata = "synthetic:n=100"\nepochs = 3\nbatch_size = 32\nlr = 0.01\n'
          'optimizer = "sgd"\nschedule = "cosine"\naugment = ["shift", "flip"]\nseed = 7\n'
          'deterministic = true\nclip_grad = 1.5\n[train]\n')
OPTION_NAMES = sorted(TrainConfig.__dataclass_fields__)


@FAST
@given(mutated(RECIPE.encode()))
def test_mutated_recipes(data):
    path = scratch("recipe.toml", data)
    config = either_reads_or_refuses(build_config, str(path), {})
    assert config is None or isinstance(config, TrainConfig)


TOML_VALUE = st.one_of(st.integers(-10**6, 10**6), st.floats(allow_nan=True), st.booleans(),
                       st.text(string.ascii_letters + ",:=", max_size=12),
                       st.lists(st.text(string.ascii_lowercase, max_size=6), max_size=3), st.lists(st.integers(), max_size=2))


@FAST
@given(st.dictionaries(st.sampled_from(OPTION_NAMES + ["learning_rate", "batch-size", "x"]), TOML_VALUE, max_size=6))
def test_recipes_with_any_values(options):
    from cnncli.engine.config import to_toml

    options.setdefault("model", "lenet5")
    path = scratch("recipe.toml", to_toml(options).encode())
    either_reads_or_refuses(build_config, str(path), {})


# ------------------------------------------------------------------------------ model files
MODEL_FILE = """[model]
name = "fuzz"
input = [1, 28, 28]
num_classes = 10

[[layers]]
type = "conv"
filters = 8
kernel = 5
padding = "same"
batch_norm = true

[[layers]]
type = "maxpool"
kernel = 2

[[layers]]
type = "residual"
filters = 8

[[layers]]
type = "flatten"

[[layers]]
type = "dense"
units = 32
activation = "relu"
dropout = 0.25

[[layers]]
type = "dense"
units = "num_classes"
"""


def test_the_base_model_file_builds():
    built = build_model(str(scratch("fuzz.toml", MODEL_FILE.encode())), device="meta")
    assert built.info.input_size == (1, 28, 28)


@FUZZ
@given(mutated(MODEL_FILE.encode()))
def test_mutated_model_files(data):
    either_reads_or_refuses(create_model, str(scratch("fuzz.toml", data)), None, None, False, "meta")


def _keys(doc: dict) -> dict:
    """The shape of a TOML document: its tables and keys, without the values."""
    return {k: [sorted(t) for t in v] if isinstance(v, list) else sorted(v) for k, v in doc.items()}


@FUZZ
@given(st.data())
def test_model_files_with_wrong_values(data):
    lines = MODEL_FILE.splitlines()
    for _ in range(data.draw(st.integers(1, 3))):
        i = data.draw(st.sampled_from([n for n, line in enumerate(lines) if " = " in line]))
        key = lines[i].split(" = ")[0]
        value = data.draw(st.sampled_from(['0', '-1', '1e9', '99999', '"same"', '"valid"', '"x"', 'true', '[]',
                                           '[0, 0, 0]', '[3, 1, 1]', '"num_classes"', '{a = 1}', '0.5', '"relu"']))
        lines[i] = f"{key} = {value}"
    text = "\n".join(lines) + "\n"
    # still TOML with the base file's tables and keys: only values changed, so what is exercised is
    # the model file's checks of values, not the TOML parser
    assert _keys(tomllib.loads(text)) == _keys(tomllib.loads(MODEL_FILE))
    either_reads_or_refuses(create_model, str(scratch("fuzz.toml", text.encode())), None, None, False, "meta")


# ------------------------------------------------------------------------------ images
@pytest.fixture(scope="module", autouse=True)
def small_pixel_limit():
    """Mutated headers may claim large sizes: a lower limit keeps each example fast (same code path)."""
    saved = transforms.MAX_IMAGE_PIXELS
    transforms.MAX_IMAGE_PIXELS = 1 << 20
    yield
    transforms.MAX_IMAGE_PIXELS = saved


def _image_bytes(fmt: str, mode: str) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (12, 10, 3), dtype=np.uint8)
    image = Image.fromarray(pixels).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


IMAGES = {f"{fmt}-{mode}": _image_bytes(fmt, mode)
          for fmt, modes in {"PNG": ["RGB", "L", "P", "RGBA"], "JPEG": ["RGB", "L"], "WEBP": ["RGB"]}.items()
          for mode in modes}


@pytest.mark.parametrize("name", sorted(IMAGES))
def test_the_base_images_decode(name):
    image = transforms.decode_image_file(scratch("base.img", IMAGES[name]))
    assert image.dtype == torch.uint8 and image.shape[1:] == (12, 10) and image.shape[0] in (1, 3)


def test_png_decodes_like_torchvision_where_torchvision_is_right():
    """PNGs go through Pillow (torchvision 0.29 crashes on corrupt ones): the same pixels for valid files."""
    from torchvision.io import decode_image

    for name in ("PNG-RGB", "PNG-L", "PNG-RGBA"):
        ours = transforms.decode_image_file(scratch("x.png", IMAGES[name]))
        theirs = decode_image(torch.frombuffer(bytearray(IMAGES[name]), dtype=torch.uint8))
        assert torch.equal(ours, theirs[:3] if theirs.shape[0] == 4 else theirs), name


@settings(FUZZ, max_examples=60)
@given(st.sampled_from(sorted(IMAGES)).flatmap(lambda name: mutated(IMAGES[name], hot=64)))
def test_mutated_images(data):
    image = either_reads_or_refuses(transforms.decode_image_file, scratch("fuzz.img", data))
    if image is not None:
        assert image.dtype == torch.uint8 and image.dim() == 3 and image.shape[0] in (1, 3)
        assert image.shape[1] * image.shape[2] <= transforms.MAX_IMAGE_PIXELS


def test_a_header_claiming_a_huge_image_is_refused_before_decoding():
    """1 KB of JPEG that claims 60000x60000 pixels: refused at once, not 11 GB later."""
    data = bytearray(IMAGES["JPEG-RGB"])
    sof = data.find(b"\xff\xc0")
    data[sof + 5:sof + 9] = (60000).to_bytes(2, "big") * 2
    with pytest.raises(CnnError, match="more than cnncli decodes"):
        transforms.decode_image_file(scratch("huge.jpg", bytes(data)))
