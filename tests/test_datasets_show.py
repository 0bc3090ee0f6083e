"""`cnncli datasets show`: a labelled grid PNG of the expected size, and exported samples that
`cnncli predict` reads."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from cnncli.checkpoint import save_checkpoint
from cnncli.cli import app
from cnncli.data import FASHION_CLASSES, load_dataset
from cnncli.data.show import class_slug, grid_size
from cnncli.data.transforms import decode_image_file
from cnncli.models.registry import build_model

runner = CliRunner()
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_grid_is_a_png_of_the_expected_size(tmp_path):
    out = tmp_path / "grid.png"
    result = runner.invoke(app, ["datasets", "show", "fashion-mnist-mini", "--per-class", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(out)  # stdout: the path written, nothing else
    assert out.read_bytes().startswith(PNG_SIGNATURE)
    with Image.open(out) as image:
        # 10 rows of 84 px cells (28 px enlarged 3x) with 4 px around; a 120 px label column
        assert image.size == (120 + 3 * (84 + 4) + 4, 10 * (84 + 4) + 4) == grid_size(10, 3, 84)
        grid = np.asarray(image.convert("L"))
    # the first cell holds an enlarged training image: 3x3 blocks of equal pixels, not blank
    cell = grid[4:88, 120:204]
    assert cell.std() > 10 and (cell[::3, ::3] == cell[1::3, 1::3]).all()


def test_export_writes_k_images_per_class_that_predict_reads(tmp_path):
    folder = tmp_path / "samples"
    result = runner.invoke(app, ["datasets", "show", "fashion-mnist-mini", "-k", "2", "--split", "test",
                                 "--export", str(folder)])
    assert result.exit_code == 0, result.output
    files = sorted(folder.iterdir())
    assert len(files) == 20 and {f.name for f in files} >= {"shirt-1.png", "shirt-2.png", "t-shirt-top-1.png",
                                                             "ankle-boot-2.png"}
    assert result.stdout.split() == [str(folder / f"{class_slug(c)}-{k}.png") for c in FASHION_CLASSES
                                     for k in (1, 2)]
    # each file is a real test image of its class, as stored (28x28 gray)
    test = load_dataset("fashion-mnist-mini").test
    for cls_index, cls in enumerate(FASHION_CLASSES):
        of_class = test.images[test.labels == cls_index]
        for k in (1, 2):
            image = decode_image_file(folder / f"{class_slug(cls)}-{k}.png")
            assert image.shape == (1, 28, 28)
            assert (of_class == image).flatten(1).all(1).any()

    # and `cnncli predict` reads every one of them
    torch.manual_seed(0)
    built = build_model("lenet5", num_classes=10)
    model = built.module
    meta = {"kind": "model", "model": built.spec, "num_classes": 10, "class_names": FASHION_CLASSES,
            "input_size": [1, 32, 32], "mean": [0.29], "std": [0.35], "dataset": "fashion-mnist-mini"}
    ckpt = save_checkpoint(tmp_path / "run" / "model.safetensors", model.state_dict(), meta)
    predicted = runner.invoke(app, ["predict", str(ckpt), str(folder), "--json", "--top-k", "1"])
    assert predicted.exit_code == 0, predicted.output
    lines = [json.loads(line) for line in predicted.stdout.splitlines()]
    assert sorted(d["path"] for d in lines) == sorted(str(f) for f in files)
    assert all(d["top"][0]["class"] in FASHION_CLASSES for d in lines)


def test_same_seed_same_samples_and_imagefolder_grid(tmp_path):
    g = torch.Generator().manual_seed(0)
    for cls in ("a", "b", "c"):
        for k in range(3):
            array = torch.randint(0, 256, (40, 64, 3), dtype=torch.uint8, generator=g).numpy()
            (tmp_path / "data" / cls).mkdir(parents=True, exist_ok=True)
            Image.fromarray(array).save(tmp_path / "data" / cls / f"{k}.png")
    name = f"imagefolder:{tmp_path / 'data'}"
    for out in ("one.png", "two.png"):
        result = runner.invoke(app, ["datasets", "show", name, "-k", "2", "--out", str(tmp_path / out)])
        assert result.exit_code == 0, result.output
    assert (tmp_path / "one.png").read_bytes() == (tmp_path / "two.png").read_bytes()
    with Image.open(tmp_path / "one.png") as image:
        assert image.size == grid_size(3, 2, 64)  # 64 px wide images: cells of 64 px, not enlarged


@pytest.mark.parametrize(
    "args, message",
    [
        (["fashion-mnist-mini", "--per-class", "0"], "--per-class must be between 1 and 100"),
        (["fashion-mnist-mini", "--out", "grid.jpg"], "--out must be a .png file"),
        (["imagefolder:/no/such/folder"], "does not exist"),
        (["fashon-mnist"], "unknown dataset 'fashon-mnist'"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["datasets", "show", *args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0]
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_a_split_the_folder_lacks_and_a_folder_in_the_way_are_refused(tmp_path):
    (tmp_path / "data" / "a").mkdir(parents=True)
    Image.new("L", (8, 8), 3).save(tmp_path / "data" / "a" / "x.png")
    result = runner.invoke(app, ["datasets", "show", f"imagefolder:{tmp_path / 'data'}", "--split", "test",
                                 "--out", str(tmp_path / "g.png")])
    assert result.exit_code == 2 and "has no test split (it has: train)" in result.stderr
    (tmp_path / "taken.png").mkdir()
    result = runner.invoke(app, ["datasets", "show", f"imagefolder:{tmp_path / 'data'}",
                                 "--out", str(tmp_path / "taken.png")])
    assert result.exit_code == 2 and "exists and is not a file" in result.stderr


def _photo_box(grid: np.ndarray, row: int, col: int, cell: int = 96) -> tuple[int, int]:
    """(height, width) of the non-white part of one grid cell."""
    top, left = 4 + row * (cell + 4), 120 + col * (cell + 4)
    patch = grid[top:top + cell, left:left + cell]
    ys, xs = np.nonzero((patch < 240).any(axis=2))
    return int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)


def test_photos_are_shown_whole_as_thumbnails_for_folders_and_shards(tmp_path, run_cli):
    """A photo folder (which trains through the streaming path) and its wds shards show the photos
    themselves, shrunk with their aspect ratio kept, not the network's 224 px center crops; an
    exported photo is the full-size image."""
    for cls, size, colour in (("landscape", (300, 200), (200, 30, 30)), ("portrait", (150, 400), (30, 30, 200))):
        (tmp_path / "photos" / cls).mkdir(parents=True)
        for k in range(3):  # pack holds one out for its test split
            Image.new("RGB", size, colour).save(tmp_path / "photos" / cls / f"{k}.jpg", quality=95)
    folder = f"imagefolder:{tmp_path / 'photos'}"
    assert run_cli("datasets", "pack", folder, tmp_path / "shards").exit_code == 0
    for name, out in ((folder, "folder.png"), (f"wds:{tmp_path / 'shards'}", "shards.png")):
        result = run_cli("datasets", "show", name, "-k", "1", "--out", tmp_path / out, "--export", tmp_path / out[:-4])
        assert result.exit_code == 0, result.stderr
        assert "the photos themselves" in result.stderr and "aspect ratio kept" in result.stderr
        with Image.open(tmp_path / out) as image:
            assert image.size == grid_size(2, 1, 96)
            grid = np.asarray(image.convert("RGB"))
        assert _photo_box(grid, 0, 0) == (64, 96)  # 300 x 200 -> 96 x 64
        assert _photo_box(grid, 1, 0) == (96, 36)  # 150 x 400 -> 36 x 96
        exported = decode_image_file(tmp_path / out[:-4] / "landscape-1.png")
        assert exported.shape == (3, 200, 300)  # in full, as stored
