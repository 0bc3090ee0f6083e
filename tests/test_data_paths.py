"""A dataset named by its path alone (data/paths.py), and --skip-bad-images without --stream.

- `--data photos/` trains, checks and shows as `imagefolder:photos/` does; a folder `datasets pack`
  wrote is its shards, a `.csv` file its CSV; a registered name means the registered dataset even
  when the working directory holds a folder of that name; a path that does not exist is one line,
  exit 2;
- a small folder (loaded in memory) with a file that does not decode: one line naming it and the
  way on (in train and in export's int8 gate); `--skip-bad-images` streams by itself and skips it;
  with `--no-stream` it is a usage error;
- a run on a relative folder records its absolute path too: eval from another folder finds it;
- a folder of BMP, TIFF, GIF and PPM files (data/formats.py) loads, in memory and streamed, and
  predict on a folder lists them.
"""

from __future__ import annotations

import csv

from PIL import Image
from test_stream import make_photos

from cnncli.checkpoint import read_meta
from cnncli.data import load_dataset
from cnncli.data.paths import dataset_name
from cnncli.data.registry import canonical_dataset_name

TRAIN = ["train", "lenet5", "--epochs", "1", "--batch-size", "4", "--img-size", "32", "--val-fraction", "0"]


def test_a_bare_path_names_its_kind(tmp_path, monkeypatch):
    make_photos(tmp_path / "photos", {"": 2})
    (tmp_path / "shards").mkdir()
    (tmp_path / "shards" / "index.json").write_text("{}")
    (tmp_path / "table.csv").write_text("path,label\n")
    (tmp_path / "one.tar").write_bytes(b"")
    monkeypatch.chdir(tmp_path)
    assert dataset_name("photos") == "imagefolder:photos"
    assert dataset_name(str(tmp_path / "photos") + "/") == f"imagefolder:{tmp_path / 'photos'}/"
    assert dataset_name("shards") == "wds:shards"
    assert dataset_name("table.csv") == "csv:table.csv"
    assert dataset_name("one.tar") == "wds:one.tar"
    assert dataset_name("imagefolder:photos") == "imagefolder:photos"  # prefixed: as given
    assert dataset_name("nothing-here") == "nothing-here"
    (tmp_path / "fashion-mnist").mkdir()  # a folder named as a registered dataset
    assert canonical_dataset_name("fashion-mnist") == "fashion-mnist"
    assert canonical_dataset_name("FMNIST") == "FMNIST"  # an alias too


def test_a_folder_path_loads_as_its_imagefolder(tmp_path):
    make_photos(tmp_path / "photos", {"": 4})
    by_path = load_dataset(str(tmp_path / "photos"), val_fraction=0.25)
    prefixed = load_dataset(f"imagefolder:{tmp_path / 'photos'}", val_fraction=0.25)
    assert by_path.class_names == prefixed.class_names == ["cat", "dog", "owl"]
    assert by_path.train.labels.tolist() == prefixed.train.labels.tolist()
    assert (by_path.train.images == prefixed.train.images).all()


def test_train_and_check_take_a_folder_path_and_a_csv_path(tmp_path, run_cli, monkeypatch):
    files = make_photos(tmp_path / "photos", {"": 4})
    monkeypatch.chdir(tmp_path)
    result = run_cli(*TRAIN, "--data", "photos", "--out", tmp_path / "run")
    assert result.exit_code == 0, result.stderr
    assert "data imagefolder:photos: 9 train" in result.stderr
    assert read_meta(tmp_path / "run" / "model.safetensors")["class_names"] == ["cat", "dog", "owl"]

    checked = run_cli("datasets", "check", "photos/", "--json")
    assert checked.exit_code == 0, checked.stderr

    with open(tmp_path / "table.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        w.writerows([p.relative_to(tmp_path).as_posix(), p.parent.name] for p in files)
    result = run_cli(*TRAIN, "--data", "table.csv", "--out", tmp_path / "csv-run")
    assert result.exit_code == 0, result.stderr
    assert "data csv:table.csv: 9 train" in result.stderr


def test_a_path_that_does_not_exist_is_one_line(tmp_path, run_cli):
    result = run_cli(*TRAIN, "--data", tmp_path / "nope", "--out", tmp_path / "run")
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines() == [
        f"error: dataset {tmp_path / 'nope'}: no such folder or file (a folder of <class>/ image folders, "
        "a .csv file or a folder of shards)"]
    assert not (tmp_path / "run").exists()
    unknown = run_cli(*TRAIN, "--data", "fashion-mnits", "--out", tmp_path / "run")  # a typo of a name
    assert unknown.exit_code == 2 and "unknown dataset 'fashion-mnits'" in unknown.stderr


def test_skip_bad_images_on_a_small_folder_streams_by_itself(tmp_path, run_cli):
    make_photos(tmp_path / "photos", {"": 4})
    bad = tmp_path / "photos" / "dog" / "empty.jpg"
    bad.write_bytes(b"")
    data = ["--data", tmp_path / "photos"]

    stopped = run_cli(*TRAIN, *data, "--out", tmp_path / "stopped")  # in memory: decoded up front
    assert stopped.exit_code == 2
    lines = stopped.stderr.strip().splitlines()
    assert lines[-1].startswith(f"error: {bad}: empty file") and "--skip-bad-images" in lines[-1]
    assert "datasets check" in lines[-1] and "Traceback" not in stopped.stderr

    skipped = run_cli(*TRAIN, *data, "--skip-bad-images", "--out", tmp_path / "skipped")
    assert skipped.exit_code == 0, skipped.stderr
    assert "streamed from its files" in skipped.stderr
    record = read_meta(tmp_path / "skipped" / "model.safetensors")["skipped_images"]
    assert record["count"] == 1 and str(bad) in record["first"][0]

    refused = run_cli(*TRAIN, *data, "--skip-bad-images", "--no-stream", "--out", tmp_path / "refused")
    assert refused.exit_code == 2
    assert refused.stderr.strip() == "error: --skip-bad-images skips files on the streaming path: drop --no-stream"
    assert not (tmp_path / "refused").exists()

    evaluated = run_cli("eval", tmp_path / "skipped", "--skip-bad-images", "--json")
    assert evaluated.exit_code == 0, evaluated.stderr

    # the int8 gate streams the folder as the run did: the file is named as the error, not "no test
    # images", and export is not told to use an option it does not have
    gated = run_cli("export", tmp_path / "skipped", "--format", "onnx", "--int8", *data)
    assert gated.exit_code == 1
    last = gated.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: {bad}: empty file") and "no test images" not in last, gated.stderr
    assert "--skip-bad-images" not in last and "datasets check" in last
    # a run trained in memory reads it in memory: the decoder's own line, exit 2
    clean = tmp_path / "clean"
    make_photos(clean, {"": 4})
    trained = run_cli(*TRAIN, "--data", clean, "--out", tmp_path / "in-memory")
    assert trained.exit_code == 0, trained.stderr
    (clean / "dog" / "empty.jpg").write_bytes(b"")
    gated = run_cli("export", tmp_path / "in-memory", "--format", "onnx", "--int8", "--data", clean)
    last = gated.stderr.strip().splitlines()[-1]
    assert gated.exit_code == 2 and last.startswith(f"error: {clean / 'dog' / 'empty.jpg'}: empty file"), gated.stderr
    assert not (tmp_path / "skipped" / "model.int8.onnx").exists()


def test_a_folder_of_bmp_tiff_gif_and_ppm_files_trains_both_ways(tmp_path, run_cli):
    import numpy as np

    rng = np.random.default_rng(0)
    for c, name in enumerate(("cat", "dog", "owl")):
        (tmp_path / "photos" / name).mkdir(parents=True)
        for k, ext in enumerate(("bmp", "tif", "tiff", "gif", "ppm", "pgm")):
            a = (rng.random((24 + k, 30, 3)) * 120).astype("uint8")
            a[..., c] += 120
            image = Image.fromarray(a)
            (image.convert("L") if ext == "pgm" else image).save(tmp_path / "photos" / name / f"{k}.{ext}")
    in_memory = load_dataset(str(tmp_path / "photos"), val_fraction=0.0, stream=False)
    streamed = load_dataset(str(tmp_path / "photos"), val_fraction=0.0, stream=True)
    assert len(in_memory.train) + len(in_memory.test) == 18
    assert in_memory.train.labels.tolist() == streamed.train.labels.tolist()
    result = run_cli(*TRAIN, "--data", tmp_path / "photos", "--out", tmp_path / "run")
    assert result.exit_code == 0, result.stderr
    listed = run_cli("predict", tmp_path / "run", tmp_path / "photos" / "cat", "--json")
    assert listed.exit_code == 0, listed.stderr
    assert len(listed.stdout.strip().splitlines()) == 6


def test_a_png_path_is_not_a_dataset(tmp_path, run_cli):
    Image.new("RGB", (8, 8)).save(tmp_path / "one.png")
    result = run_cli(*TRAIN, "--data", tmp_path / "one.png", "--out", tmp_path / "run")
    assert result.exit_code == 2 and f"dataset {tmp_path / 'one.png'}: not a dataset (" in result.stderr


def test_a_run_on_a_relative_folder_evaluates_from_another_folder(tmp_path, run_cli, monkeypatch):
    """The run records the name as given and the absolute path beside it; eval, compare and
    export's gates take the absolute one when the name as given does not exist from where they run."""
    import json

    from cnncli.data.paths import recorded_dataset

    make_photos(tmp_path / "work" / "photos", {"": 4})
    monkeypatch.chdir(tmp_path / "work")
    trained = run_cli(*TRAIN, "--data", "photos", "--out", tmp_path / "run")
    assert trained.exit_code == 0, trained.stderr
    meta = read_meta(tmp_path / "run" / "model.safetensors")
    assert meta["dataset"] == "photos"
    assert meta["data_source"]["absolute"] == f"imagefolder:{(tmp_path / 'work' / 'photos').resolve()}"
    assert recorded_dataset(meta) == "photos"  # it exists from here: as given
    here = json.loads(run_cli("eval", tmp_path / "run", "--json").stdout)

    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert recorded_dataset(meta) == meta["data_source"]["absolute"]
    there = run_cli("eval", tmp_path / "run", "--json")
    assert there.exit_code == 0, there.stderr
    assert json.loads(there.stdout)["top1"] == here["top1"]


def test_default_run_and_study_names_carry_the_folders_name(tmp_path, run_cli, monkeypatch):
    from cnncli.data.paths import dataset_label
    from cnncli.tune import study_name

    make_photos(tmp_path / "my photos", {"": 4})
    (tmp_path / "labels.csv").write_text("path,label\n")
    monkeypatch.chdir(tmp_path)
    assert dataset_label("my photos") == dataset_label(f"imagefolder:{tmp_path / 'my photos'}/") == "my photos"
    assert dataset_label("labels.csv") == "labels" and dataset_label("synthetic:size=32") == "synthetic"
    assert dataset_label("wds:shards/train-{000000..000009}.tar") == "wds"  # a pattern: its kind
    assert study_name("timm/resnet18", "my photos") == "tune-timm_resnet18-my_photos"
    result = run_cli(*TRAIN, "--data", "my photos")  # no --out: runs/<model>-<folder>
    assert result.exit_code == 0, result.stderr
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["lenet5-my_photos"]
