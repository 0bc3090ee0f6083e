"""Commands beside train/eval/predict on a streaming dataset (photo folders generated here):

- export --int8 calibrates and gates on a bounded sample read through the streaming split's
  eval batches (the run's own crop), not on a whole split decoded in memory; benchmark too;
- eval --stream on a corrupt file: exit 1, one line; --skip-bad-images counts it in the JSON;
- lr-find, compare and tune read a streamed folder through worker batches at the network's size.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_stream import TRAIN, make_photos

pytest.importorskip("onnxruntime")


def _stream_run(tmp_path, run_cli, per_class=8):
    make_photos(tmp_path / "f", {"": per_class})
    data = f"imagefolder:{tmp_path / 'f'}"
    out = tmp_path / "run"
    result = run_cli(*TRAIN[:2], "--data", data, "--stream", "--workers", "0", "--epochs", "1",
                     "--batch-size", "4", "--img-size", "32", "--out", out)
    assert result.exit_code == 0, result.stderr
    return out, data


def test_export_int8_of_a_streamed_run_reads_a_bounded_sample(tmp_path, run_cli, monkeypatch):
    from cnncli.data.stream import StreamSplit

    out, _ = _stream_run(tmp_path, run_cli)
    read = []
    original = StreamSplit.eval_batches

    def counted(self, batch_size, index=None):
        for positions, x in original(self, batch_size, index):
            read.append(tuple(x.shape[1:]))
            yield positions, x

    monkeypatch.setattr(StreamSplit, "eval_batches", counted)
    _no_whole_split(monkeypatch)
    from cnncli.deploy import int8

    monkeypatch.setattr(int8, "measure_latency", lambda kind, batch, run: 0.001 if kind == "int8" else 0.002)
    onnx_out = tmp_path / "m.int8.onnx"
    result = run_cli("export", out, "--format", "onnx", "--int8", "--max-drop", "100",
                     "--calib-images", 5, "--gate-images", 4, "--out", onnx_out, "--json")
    assert result.exit_code == 0, result.stderr
    gate = json.loads(result.stdout)["int8"]
    assert gate["calib_images"] == 5 and gate["test_images"] == 4  # 18 train / 6 test images exist
    assert onnx_out.exists() and read and set(read) == {(1, 32, 32)}  # lenet5: gray at its 32 px
    read.clear()
    bench = run_cli("benchmark", out, "--formats", "onnx", "--batch", "1", "--images", 5, "--threads", 1, "--json")
    assert bench.exit_code == 0, bench.stderr
    doc = json.loads(bench.stdout)
    assert "5 " in doc["inputs"] and "test images" in doc["inputs"] and set(read) == {(1, 32, 32)}
    assert all(r["error"] is None and 0 <= r["top1"] <= 1 for r in doc["rows"])


def test_eval_on_a_folder_with_a_corrupt_file_stops_in_one_line_or_counts_it(tmp_path, run_cli):
    out, data = _stream_run(tmp_path, run_cli, per_class=4)
    bad = sorted((tmp_path / "f" / "dog").glob("*.jpg"))[0]
    bad.write_bytes(bad.read_bytes()[:200])  # the header reads, the data does not
    args = ("eval", out, "--data", data, "--split", "all", "--workers", "0", "--json")
    stopped = run_cli(*args, "--stream")
    assert stopped.exit_code == 1
    lines = [ln for ln in stopped.stderr.splitlines() if ln.startswith("error")]
    assert len(lines) == 1 and str(bad) in lines[0] and "--skip-bad-images" in lines[0], stopped.stderr
    skipped = run_cli(*args, "--skip-bad-images")  # streams by itself: only that path can skip
    assert skipped.exit_code == 0, skipped.stderr
    doc = json.loads(skipped.stdout)
    assert doc["n"] == 11 and doc["skipped_images"]["count"] == 1  # 12 images, one corrupt
    assert str(bad) in doc["skipped_images"]["first"][0] and "skipped 1 image" in skipped.stderr


def _count_eval_batches(monkeypatch) -> list:
    from cnncli.data.stream import StreamSplit

    shapes = []
    original = StreamSplit.eval_batches

    def counted(self, batch_size, index=None):
        for positions, x in original(self, batch_size, index):
            shapes.append(tuple(x.shape[1:]))
            yield positions, x

    monkeypatch.setattr(StreamSplit, "eval_batches", counted)
    return shapes


def _no_whole_split(monkeypatch):
    from cnncli.data.stream import LazyImages

    def refused(self, sel):
        pytest.fail("images decoded one by one in this process")

    monkeypatch.setattr(LazyImages, "__getitem__", refused)


def test_lr_find_streams_a_folder_through_worker_batches(tmp_path, run_cli, monkeypatch):
    from cnncli.data.stream import StreamSplit

    make_photos(tmp_path / "f", {"": 6})
    steps = []
    original = StreamSplit.epoch_batches

    def counted(self, *args, **kwargs):
        for item in original(self, *args, **kwargs):
            steps.append(tuple(item[2].shape))
            yield item

    monkeypatch.setattr(StreamSplit, "epoch_batches", counted)
    _no_whole_split(monkeypatch)
    result = run_cli("lr-find", "lenet5", "--data", f"imagefolder:{tmp_path / 'f'}", "--stream", "--workers", "0",
                     "--img-size", "32", "--batch-size", "4", "--steps", "10", "--threads", "1", "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert 0 < doc["steps_run"] == len(steps) <= 10 and set(steps) == {(4, 1, 32, 32)}


def test_compare_two_runs_on_a_streamed_folder(tmp_path, run_cli, monkeypatch):
    import shutil

    from cnncli.data import folders

    out, data = _stream_run(tmp_path, run_cli, per_class=4)
    other = Path(shutil.copytree(out, tmp_path / "copy"))
    monkeypatch.setattr(folders, "MEMORY_BUDGET", 1_000)  # this folder streams by size, as a big one does
    _no_whole_split(monkeypatch)
    shapes = _count_eval_batches(monkeypatch)
    result = run_cli("compare", out, other, "--data", data, "--split", "all", "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    top1 = {m["metric"]: m for m in doc["metrics"]}["top1"]
    assert top1["a"] == top1["b"] and top1["delta"] == 0 and 0 < top1["a"] <= 1
    assert shapes and set(shapes) == {(1, 32, 32)}  # each side's own eval crop, not a 224 px default


def test_tune_trials_stream_a_folder(tmp_path, run_cli, monkeypatch):
    make_photos(tmp_path / "f", {"": 4})
    _no_whole_split(monkeypatch)
    shapes = _count_eval_batches(monkeypatch)  # each trial's validation, in batches at lenet5's size
    result = run_cli("tune", "lenet5", "--data", f"imagefolder:{tmp_path / 'f'}", "--stream", "--workers", "0",
                     "--trials", "1", "--epochs", "1", "--threads", "1", "--out", tmp_path / "study", "--json")
    assert result.exit_code == 0, result.stderr
    assert shapes and set(shapes) == {(1, 32, 32)}


def _framed_photos(folder: Path) -> list[Path]:
    """Wide, tall and square photos whose centre differs from their borders (a squash and a centre
    crop see different images), JPEG large enough for a DCT-scaled decode, gray, and EXIF-turned."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(5)
    made = []
    for name, (h, w) in {"wide.jpg": (250, 400), "tall.png": (300, 120), "square.jpg": (97, 97),
                         "gray.jpg": (333, 500), "turned.png": (90, 150)}.items():
        a = (rng.random((h, w, 3)) * 60).astype(np.uint8)
        a[h // 4: 3 * h // 4, w // 4: 3 * w // 4, 0] += 180  # a red centre
        a[:, : w // 5, 2] += 180  # blue borders
        a[:, -w // 5:, 1] += 180
        image = Image.fromarray(a).convert("L") if name.startswith("gray") else Image.fromarray(a)
        exif = Image.Exif()
        exif[0x0112] = 6 if name.startswith("turned") else 1
        image.save(folder / name, quality=90, exif=exif.tobytes())
        made.append(folder / name)
    return made


@pytest.mark.parametrize("input_size, crop_pct, interpolation", [
    ((3, 24, 24), 0.875, "bilinear"), ((1, 32, 32), 0.875, "bilinear"), ((3, 64, 64), 1.0, "bilinear"),
    ((3, 64, 64), 0.95, "bicubic"), ((1, 32, 32), 0.875, "bicubic")])
def test_the_numpy_mirror_of_the_streaming_eval_transform_agrees_pixel_for_pixel(tmp_path, input_size, crop_pct,
                                                                                 interpolation):
    from cnncli.data.stream import DEFAULT_CROP_PCT, photo_for_network
    from cnncli.deploy import preprocess as pp

    assert pp.DEFAULT_CROP_PCT == DEFAULT_CROP_PCT
    for path in _framed_photos(tmp_path):
        want = photo_for_network(path, input_size, crop_pct, interpolation).numpy()
        got = pp.photo_array_for_network(path, input_size, crop_pct, interpolation)
        assert got.shape == want.shape == (input_size[0], input_size[1], input_size[1]) and got.dtype == np.uint8
        diff = np.abs(got.astype(int) - want.astype(int))
        # Pillow's and torch's fixed-point rounding (bicubic's overshoot at sharp edges: a little more)
        assert diff.max() <= (1 if interpolation == "bilinear" else 3) and (diff > 0).mean() < 0.25, path.name


def test_a_streamed_run_predicts_the_same_from_its_onnx_file(tmp_path, run_cli):
    """The ONNX file carries the run's pipeline: its torch-free predict crops as the run does."""
    from cnncli import export as ex

    out, _ = _stream_run(tmp_path, run_cli)
    onnx_file = ex.export_checkpoint(out, "onnx", out=tmp_path / "m.onnx", exporter="torchscript").path
    photos = _framed_photos(tmp_path / "framed")
    runs = [run_cli("predict", where, *photos, "--json", "-k", 3) for where in (out, onnx_file)]
    assert all(r.exit_code == 0 for r in runs), [r.stderr for r in runs]
    want, got = ([json.loads(line) for line in r.stdout.splitlines()] for r in runs)
    for a, b in zip(want, got):
        pa = {e["index"]: e["prob"] for e in a["top"]}
        pb = {e["index"]: e["prob"] for e in b["top"]}
        assert max(abs(pa[i] - pb[i]) for i in pa) < 2e-3, a["path"]


def test_every_network_is_scored_with_its_own_eval_transform_whatever_the_folder_size(tmp_path, run_cli):
    """A streamed run on a small folder still gets its centre crop (as predict gives it), a run
    trained in memory on a streamed folder still gets the whole image (as predict gives it), and
    compare scores each side as eval does."""
    import csv

    streamed, _ = _stream_run(tmp_path, run_cli)
    in_memory = tmp_path / "in-memory"
    trained = run_cli(*TRAIN[:2], "--data", f"imagefolder:{tmp_path / 'f'}", "--no-stream", "--epochs", "1",
                      "--batch-size", "4", "--img-size", "32", "--out", in_memory)
    assert trained.exit_code == 0, trained.stderr
    for name in ("cat", "dog", "owl"):  # wide and tall photos whose centre is not their border
        _framed_photos(tmp_path / "other" / name)
    other = f"imagefolder:{tmp_path / 'other'}"

    def scored(run, *extra):
        result = run_cli("eval", run, "--data", other, "--split", "all", "--json",
                         "--predictions", tmp_path / "p.csv", *extra)
        assert result.exit_code == 0, result.stderr
        with open(tmp_path / "p.csv", newline="") as f:
            rows = {r["id"]: float(r["prob_predicted"]) for r in csv.DictReader(f)}
        return json.loads(result.stdout), rows, result.stderr

    by_default, rows, said = scored(streamed)
    assert "streamed from its files" in said  # 15 small photos, streamed: the run's own crop
    assert by_default["loss"] == pytest.approx(scored(streamed, "--stream")[0]["loss"], abs=1e-6)
    for run, extra in ((streamed, ()), (in_memory, ("--stream",))):
        _, rows, _ = scored(run, *extra)
        predicted = run_cli("predict", run, *rows, "--json", "-k", 1)
        assert predicted.exit_code == 0, predicted.stderr
        for line in predicted.stdout.splitlines():
            doc = json.loads(line)
            # (uint8 gray and resize on the streaming path, float in predict: within 0.005)
            assert doc["top"][0]["prob"] == pytest.approx(rows[doc["path"]], abs=5e-3), (run, doc["path"])
    compared = run_cli("compare", in_memory, streamed, "--data", other, "--split", "all", "--json")
    assert compared.exit_code == 0, compared.stderr
    loss = {m["metric"]: m for m in json.loads(compared.stdout)["metrics"]}["loss"]
    assert loss["b"] == pytest.approx(by_default["loss"], abs=1e-5)
    assert loss["a"] == pytest.approx(scored(in_memory, "--stream")[0]["loss"], abs=1e-5)
