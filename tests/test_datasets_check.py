"""`cnncli datasets check`: the index of image files, the pHash search, and the report on a folder
with planted duplicates, a leak and a label conflict."""

from __future__ import annotations

import io
import json
import shutil
from itertools import combinations

import numpy as np
import pytest
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from cnncli.cli import app
from cnncli.data.check import check_dataset
from cnncli.data.index import index_csv, index_image_folder, index_source
from cnncli.data.phash import close_pairs, hamming, phash_thumbnails
from cnncli.errors import InputError

runner = CliRunner()
CLASSES = ["bird", "cat", "dog"]
SIDE = 128  # a pixel is 0.8% of the width: a one-pixel shift stays a near duplicate


def random_picture(rng: np.random.Generator) -> Image.Image:
    """A picture unlike any other: a random two-colour gradient and five random shapes."""
    a, b = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = np.linspace(0, 1, SIDE)[None, :, None] if rng.random() < 0.5 else np.linspace(0, 1, SIDE)[:, None, None]
    background = (a * (1 - t) + b * t) * np.ones((SIDE, SIDE, 1))
    image = Image.fromarray(background.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(5):
        x0, y0 = rng.integers(0, SIDE - SIDE // 4, 2)
        x1, y1 = x0 + rng.integers(SIDE // 5, SIDE * 2 // 3), y0 + rng.integers(SIDE // 5, SIDE * 2 // 3)
        fill = tuple(int(v) for v in rng.integers(0, 256, 3))
        kind = rng.integers(0, 3)
        if kind == 0:
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        elif kind == 1:
            draw.rectangle((x0, y0, x1, y1), fill=fill)
        else:
            draw.polygon([tuple(int(v) for v in rng.integers(0, SIDE, 2)) for _ in range(3)], fill=fill)
    return image


def save(image: Image.Image, path, fmt="PNG", **kw):
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format=fmt, **kw)
    return path


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    """train/ and test/ folders of distinct pictures, with planted findings (see `expected`)."""
    root = tmp_path_factory.mktemp("planted")
    rng = np.random.default_rng(7)
    originals = {}
    for split, per_class in (("train", 8), ("test", 3)):
        for cls in CLASSES:
            for k in range(per_class):
                image = random_picture(rng)
                originals[f"{split}/{cls}/{k}.png"] = image
                save(image, root / split / cls / f"{k}.png")
    t = root / "train"
    shutil.copy(t / "cat/0.png", t / "cat/0-copy.png")  # exact duplicate
    noisy = np.asarray(originals["train/dog/1.png"]).astype(float) + rng.normal(0, 4, (SIDE, SIDE, 3))
    save(Image.fromarray(noisy.clip(0, 255).astype(np.uint8)), t / "dog/1-noise.png")  # noise
    save(originals["train/bird/2.png"], t / "bird/2-reencoded.jpg", "JPEG", quality=80)  # JPEG
    shifted = np.asarray(originals["train/cat/3.png"])
    shifted = np.concatenate([shifted[:, :1], shifted[:, :-1]], axis=1)  # one pixel to the right
    save(Image.fromarray(shifted), t / "cat/3-shifted.png")
    shutil.copy(t / "dog/4.png", root / "test/dog/4-leaked.png")  # a training image in test
    shutil.copy(t / "cat/5.png", t / "bird/5-mislabelled.png")  # the same picture, another class
    data = (t / "cat/6.png").read_bytes()
    (t / "cat/6-truncated.png").write_bytes(data[: len(data) // 2])  # unreadable
    (t / "cat/notes.txt").write_text("not an image")
    return root


EXPECTED = {  # (a, b): (kind, cross-split leak, label conflict)
    ("train/cat/0-copy.png", "train/cat/0.png"): ("exact", False, False),
    ("train/dog/1-noise.png", "train/dog/1.png"): ("near", False, False),
    ("train/bird/2-reencoded.jpg", "train/bird/2.png"): ("near", False, False),
    ("train/cat/3-shifted.png", "train/cat/3.png"): ("near", False, False),
    ("test/dog/4-leaked.png", "train/dog/4.png"): ("exact", True, False),
    ("train/bird/5-mislabelled.png", "train/cat/5.png"): ("exact", False, True),
}


def found_pairs(report):
    return {tuple(sorted((p["a"]["item"], p["b"]["item"]))): (p["kind"], p["leak"], p["label_conflict"])
            for p in report["pairs"]}


# ----------------------------------------------------------------------------- the index
def test_index_of_a_split_folder_lists_files_without_opening_them(planted, tmp_path):
    index = index_image_folder(planted)
    assert index.class_names == CLASSES and index.split_names() == ["train", "test"]
    assert len(index) == 3 * 8 + 6 + 3 * 3 + 1  # the planted files, the truncated one included
    assert index.other_files == [str(planted / "train/cat/notes.txt")]
    counts = index.class_counts()
    assert counts["test"] == [3, 3, 4] and counts["train"] == [10, 11, 9]
    # a flat folder: every image is in train; a .png that is not a PNG is still indexed (not opened)
    (tmp_path / "b").mkdir()
    (tmp_path / "a").mkdir()
    (tmp_path / "b" / "x.png").write_bytes(b"not decoded")
    (tmp_path / "a" / "y.jpg").write_bytes(b"")
    flat = index_source(f"imagefolder:{tmp_path}")
    assert flat.class_names == ["a", "b"] and flat.splits == ["train", "train"] and flat.labels == [0, 1]


def test_index_of_a_csv_file_sorts_numeric_labels_and_resolves_relative_paths(tmp_path):
    (tmp_path / "rows.csv").write_text("path,label,split\nx.png,10,test\ny.png,2,\n/abs/z.png,2,val\n")
    index = index_csv(tmp_path / "rows.csv")
    assert index.class_names == ["2", "10"]  # numerically, not "10" < "2"
    assert index.splits == ["train", "val", "test"]
    assert index.paths == [str(tmp_path / "y.png"), "/abs/z.png", str(tmp_path / "x.png")]
    assert index.labels == [0, 0, 1]
    (tmp_path / "bad.csv").write_text("path,label,split\nx.png,a,holdout\n")
    with pytest.raises(InputError, match="line 2: split 'holdout'"):
        index_csv(tmp_path / "bad.csv")
    (tmp_path / "nohead.csv").write_text("x.png,a\n")
    with pytest.raises(InputError, match="header row must name the columns path and label"):
        index_csv(tmp_path / "nohead.csv")


# ----------------------------------------------------------------------------- the hash search
def brute_force(hashes, threshold):
    return {(i, j) for i, j in combinations(range(len(hashes)), 2)
            if int(hamming(hashes[i:i + 1], hashes[j:j + 1])[0]) <= threshold}


def test_close_pairs_equal_the_brute_force_search_each_pair_once():
    rng = np.random.default_rng(0)
    base = rng.integers(0, 2**63, 150, dtype=np.int64).view(np.uint64)
    flips = [base[k] ^ np.uint64(sum(1 << int(b) for b in rng.choice(64, rng.integers(0, 7), replace=False)))
             for k in range(40)]
    hashes = np.concatenate([base, np.array(flips, dtype=np.uint64), base[:10]])  # close ones and copies
    for threshold in (0, 3, 4, 6):
        found = [(int(i), int(j), int(d)) for blk in close_pairs(hashes, threshold, block=64)
                 for i, j, d in zip(blk.i, blk.j, blk.distance)]
        assert len(found) == len(set((i, j) for i, j, _ in found))  # each pair once
        assert {(i, j) for i, j, _ in found} == brute_force(hashes, threshold)
        assert all(d == int(hamming(hashes[i:i + 1], hashes[j:j + 1])[0]) for i, j, d in found)


def test_many_copies_of_one_hash_come_in_bounded_blocks():
    hashes = np.full(300, 12345, dtype=np.uint64)
    blocks = list(close_pairs(hashes, 4, block=1000))
    assert sum(len(b.i) for b in blocks) == 300 * 299 // 2
    assert max(len(b.i) for b in blocks) <= 1000 + 300


def test_phash_is_stable_under_noise_and_far_between_different_pictures():
    rng = np.random.default_rng(1)
    pictures = [np.asarray(random_picture(rng).convert("L").resize((32, 32)), dtype=np.float32) for _ in range(30)]
    hashes = phash_thumbnails(np.stack(pictures))
    noisy = phash_thumbnails(np.stack(pictures) + rng.normal(0, 3, (30, 32, 32)).astype(np.float32))
    assert (hamming(hashes, noisy) <= 4).mean() >= 0.9
    far = [int(hamming(hashes[i:i + 1], hashes[j:j + 1])[0]) for i, j in combinations(range(30), 2)]
    assert min(far) > 8 and 24 <= np.median(far) <= 40  # about half the bits of 64


def test_in_memory_thumbnails_equal_pillows_resize_of_a_file():
    """A named dataset's images and an image folder's files are hashed from the same thumbnails."""
    from cnncli.data.phash import thumbnails_from_tensor

    rng = np.random.default_rng(2)
    for height, width in ((28, 28), (64, 48), (200, 120)):
        rgb = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        ours = thumbnails_from_tensor(rgb.transpose(2, 0, 1)[None])[0]
        pillow = np.asarray(Image.fromarray(rgb).convert("L").resize((32, 32), Image.Resampling.BILINEAR))
        assert np.abs(ours - pillow).max() <= 1.5  # Pillow rounds to whole gray levels, twice


# ----------------------------------------------------------------------------- the report
def test_check_finds_every_planted_pair_and_no_other(planted):
    report = check_dataset(f"imagefolder:{planted}")
    assert found_pairs(report) == EXPECTED
    assert [u["path"] for u in report["unreadable"]] == [str(planted / "train/cat/6-truncated.png")]
    assert report["unreadable"][0]["reason"].startswith("cannot decode")
    assert report["not_images"] == [str(planted / "train/cat/notes.txt")]
    assert report["exact_duplicates"] == {"groups": 3, "images": 6, "pairs": 3}
    assert report["near_duplicates"] == {"pairs": 3}
    assert report["leaks"] == {"pairs": 1, "held_out_images": 1} and report["leak"] is True
    assert report["label_conflicts"] == 1 and report["cross_split_pairs"] == 1
    assert report["splits"]["test"]["class_counts"] == {"bird": 3, "cat": 3, "dog": 4}
    assert report["image_sizes"] == {"128x128": 39} and report["channels"] == {"3": 39}  # the readable ones
    # the leak is listed first
    assert report["pairs"][0]["leak"] and report["pairs"][0]["b"]["split"] == "test"


def test_strict_exits_1_on_a_leak_and_0_without(planted, tmp_path):
    leaky = runner.invoke(app, ["datasets", "check", f"imagefolder:{planted}", "--strict"])
    assert leaky.exit_code == 1, leaky.output
    assert "held-out image(s) also appear in train" in leaky.stderr
    assert "train/dog/4.png" in leaky.stdout and "leak" in leaky.stdout
    plain = runner.invoke(app, ["datasets", "check", f"imagefolder:{planted}"])
    assert plain.exit_code == 0  # findings are listed, not failed on
    # the same files through a CSV index, without the leaked one: no leak, exit 0 under --strict
    rows = ["path,label,split"]
    for path in sorted(planted.rglob("*.png")):
        rel = path.relative_to(planted)
        if "leaked" not in rel.name:
            rows.append(f"{path},{rel.parts[1]},{rel.parts[0]}")
    (tmp_path / "files.csv").write_text("\n".join(rows) + "\n")
    clean = runner.invoke(app, ["datasets", "check", f"csv:{tmp_path / 'files.csv'}", "--strict", "--json"])
    assert clean.exit_code == 0, clean.output
    doc = json.loads(clean.stdout)
    assert doc["leak"] is False and doc["leaks"]["held_out_images"] == 0
    assert doc["exact_duplicates"]["pairs"] == 2 and doc["label_conflicts"] == 1


def test_json_report_shape(planted):
    result = runner.invoke(app, ["datasets", "check", f"imagefolder:{planted}", "--json", "--max-pairs", "2"])
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert {"dataset", "source", "classes", "images", "splits", "image_sizes", "channels", "unreadable",
            "not_images", "exact_duplicates", "near_duplicates", "cross_split_pairs", "leaks",
            "label_conflicts", "leak", "pairs_listed", "pairs", "settings", "seconds"} <= set(doc)
    assert doc["pairs_listed"] == len(doc["pairs"]) == 2  # listed: at most --max-pairs; counted: all
    assert doc["exact_duplicates"]["pairs"] + doc["near_duplicates"]["pairs"] == 6
    pair = doc["pairs"][0]
    assert set(pair) == {"kind", "distance", "similarity", "a", "b", "cross_split", "leak", "label_conflict"}
    assert set(pair["a"]) == {"item", "split", "label"}
    assert doc["images"] == sum(s["images"] for s in doc["splits"].values())


def test_named_dataset_is_checked_from_memory():
    report = check_dataset("synthetic:n=200,n_test=50,classes=4")
    assert report["images"] == 250 and set(report["splits"]) == {"train", "test"}
    assert report["image_sizes"] == {"28x28": 250} and report["unreadable"] == []
    assert report["pairs"] == [] or all(p["a"]["item"].split("[")[0] in ("train", "test") for p in report["pairs"])


def test_checking_files_imports_no_torch_and_prices_pixels_as_decoding_does(tmp_path):
    import subprocess
    import sys

    from cnncli.data import check, transforms

    assert check.MAX_IMAGE_PIXELS == transforms.MAX_IMAGE_PIXELS
    save(random_picture(np.random.default_rng(5)), tmp_path / "a" / "x.png")
    code = ("import sys; from cnncli.data.check import check_dataset; "
            f"r = check_dataset('imagefolder:{tmp_path}'); print(r['images'], 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["1", "False"]
    # a header that claims 20000x20000 pixels is refused before anything is decoded
    import struct
    import zlib

    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 12000, 9000, 8, 0, 0, 0, 0))  # 108 megapixels, gray
    (tmp_path / "a" / "huge.png").write_bytes(b"\x89PNG\r\n\x1a\n" + header + chunk(b"IEND", b""))
    report = check_dataset(f"imagefolder:{tmp_path}")
    assert report["unreadable"] == [{"path": str(tmp_path / "a" / "huge.png"), "split": "train",
                                     "reason": "12000x9000 pixels is more than cnncli decodes"}]


def test_a_jpeg_is_hashed_from_its_downscaled_decode(tmp_path):
    """A large JPEG and its PNG twin are near duplicates although the JPEG is decoded at 1/8 scale."""
    picture = random_picture(np.random.default_rng(3)).resize((512, 512), Image.Resampling.BICUBIC)
    save(picture, tmp_path / "a" / "big.jpg", "JPEG", quality=90)
    save(picture, tmp_path / "a" / "big.png")
    save(random_picture(np.random.default_rng(4)), tmp_path / "b" / "other.png")
    report = check_dataset(f"imagefolder:{tmp_path}")
    assert found_pairs(report) == {("a/big.jpg", "a/big.png"): ("near", False, False)}
    assert report["image_sizes"] == {"512x512": 2, "128x128": 1}


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    "args, message",
    [
        (["check", "imagefolder:/no/such/folder"], "does not exist"),
        (["check", "fashon-mnist"], "unknown dataset 'fashon-mnist'"),
        (["check", "csv:/no/such.csv"], "file not found"),
        (["check", "synthetic", "--threshold", "40"], "--threshold must be between 0 and 16"),
        (["check", "synthetic", "--min-similarity", "1.5"], "--min-similarity must be in (0, 1]"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message):
    from cnncli.cli import main  # noqa: F401  (the real entry point's error contract: through app's main)

    result = runner.invoke(app, ["datasets", *args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0] and "Traceback" not in result.output


def test_bare_datasets_still_lists():
    result = runner.invoke(app, ["datasets", "--json"])
    assert result.exit_code == 0
    assert "fashion-mnist-mini" in [d["name"] for d in json.loads(result.stdout)["datasets"]]
    assert io.StringIO(runner.invoke(app, ["datasets"]).stdout).read().count("synthetic") == 1


def test_class_balance_names_the_extremes_the_small_classes_and_what_a_split_lacks(tmp_path):
    rng = np.random.default_rng(11)
    for split, counts in (("train", {"cat": 30, "owl": 3}), ("test", {"cat": 5})):
        for cls, n in counts.items():
            for k in range(n):
                save(random_picture(rng), tmp_path / split / cls / f"{k}.png")
    result = runner.invoke(app, ["datasets", "check", str(tmp_path), "--json"])
    assert result.exit_code == 0, result.output
    balance = json.loads(result.stdout)["balance"]
    assert balance == {"largest": {"class": "cat", "images": 35}, "smallest": {"class": "owl", "images": 3},
                       "ratio": 11.67, "few": ["owl"], "absent": {"test": ["owl"]}}
    table = runner.invoke(app, ["datasets", "check", str(tmp_path)])
    assert "class balance: largest cat 35, smallest owl 3 (11.67x); fewer than 10 images: owl; none in test: owl" \
        in " ".join(table.stdout.split())
    # train says so once, and says how to even it out; not when that is asked for
    run = runner.invoke(app, ["train", "lenet5", "--data", str(tmp_path), "--epochs", "1", "--threads", "1",
                              "--img-size", "32", "--out", str(tmp_path / "run")])
    assert run.exit_code == 0, run.stderr
    assert run.stderr.count("the classes are imbalanced: cat has 27 training images, owl 2 (13.5x); "
                            "--class-weights auto or --sampler balanced") == 1
    evened = runner.invoke(app, ["train", "lenet5", "--data", str(tmp_path), "--epochs", "1", "--threads", "1",
                                 "--img-size", "32", "--class-weights", "auto", "--out", str(tmp_path / "r2")])
    assert evened.exit_code == 0 and "imbalanced" not in evened.stderr
