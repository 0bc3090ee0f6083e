"""`cnncli export`: each format round-trips through the runtime that will run it, metadata included."""

from __future__ import annotations

import io
import json
import sys

import pytest
import torch

from cnncli import export as ex
from cnncli.checkpoint import load_model, read_header, read_meta, save_checkpoint
from cnncli.models.registry import build_model

CLASSES = [f"class {i}" for i in range(4)]


def make_checkpoint(path, name, input_size, dataset="fashion-mnist-mini", seed=0):
    """A checkpoint as `cnncli train` writes it (random weights, but real metadata)."""
    torch.manual_seed(seed)
    built = build_model(name, num_classes=len(CLASSES), in_chans=input_size[0])
    model = built.module
    mean, std = ([0.5], [0.25]) if input_size[0] == 1 else ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
    meta = {"kind": "model", "model": built.spec, "num_classes": len(CLASSES),
            "class_names": CLASSES, "input_size": list(input_size), "mean": mean, "std": std,
            "dataset": dataset}
    save_checkpoint(path, model.state_dict(), meta)
    return path


@pytest.fixture(scope="module")
def hand_ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("lenet") / "model.safetensors", "lenet5", (1, 32, 32))


@pytest.fixture(scope="module")
def timm_ckpt(tmp_path_factory):
    # timm's smallest ResNet at a small input: the same code paths as resnet18, in a fraction of the time
    return make_checkpoint(tmp_path_factory.mktemp("timm") / "model.safetensors", "timm/test_resnet",
                           (3, 32, 32), dataset="synthetic")


def reference_logits(ckpt, x):
    model, _ = load_model(ckpt)
    with torch.inference_mode():
        return model(x)


def check_onnx_file(path, ckpt):
    """The checker passes, the metadata is there, the batch axis is dynamic, the numbers agree."""
    import onnx

    proto = onnx.load(str(path))
    onnx.checker.check_model(proto)
    props = {p.key: p.value for p in proto.metadata_props}
    meta = read_meta(ckpt)
    assert json.loads(props["class_names"]) == CLASSES
    assert json.loads(props["input_size"]) == meta["input_size"]
    assert json.loads(props["mean"]) == meta["mean"] and json.loads(props["std"]) == meta["std"]
    assert props["model"] == meta["model"]["name"]
    assert ex.read_onnx_meta(path)["class_names"] == CLASSES
    session = ex.onnx_session(str(path))
    assert [i.name for i in session.get_inputs()] == ["input"]
    assert [o.name for o in session.get_outputs()] == ["logits"]
    for batch in (1, 5):  # neither is the batch of 2 the graph was exported with
        x = torch.randn(batch, *meta["input_size"])
        got = session.run(None, {"input": x.numpy()})[0]
        assert got.shape == (batch, len(CLASSES))
        assert torch.allclose(torch.from_numpy(got), reference_logits(ckpt, x), atol=1e-4)


# ---------------------------------------------------------------------------- ONNX

@pytest.mark.slow
def test_onnx_cli_round_trip_hand_built(run_cli, hand_ckpt, tmp_path):
    out = tmp_path / "lenet.onnx"
    result = run_cli("export", hand_ckpt, "--format", "onnx", "--out", out, "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["path"] == str(out) and doc["format"] == "onnx" and doc["verified"] is True
    assert doc["bytes"] == out.stat().st_size
    assert 0 <= doc["max_abs_diff"] <= 1e-4
    assert doc["exporter"] == "dynamo" and doc["opset"] == ex.DEFAULT_OPSET
    assert "fashion-mnist-mini images" in doc["inputs"]  # real images: the dataset is embedded
    assert "max abs diff" in result.stderr  # the figure is printed for a person too
    check_onnx_file(out, hand_ckpt)


@pytest.mark.slow
def test_onnx_round_trip_timm_with_the_default_exporter(timm_ckpt, tmp_path):
    result = ex.export_checkpoint(timm_ckpt, "onnx", out=tmp_path / "t.onnx")
    assert result.verified and result.exporter == "dynamo" and result.max_abs_diff <= 1e-4
    check_onnx_file(tmp_path / "t.onnx", timm_ckpt)


def test_an_older_opset_is_honoured(run_cli, timm_ckpt, tmp_path):
    import onnx

    result = run_cli("export", timm_ckpt, "-o", tmp_path / "t.onnx", "--opset", 13, "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["opset"] == 13 and doc["verified"]
    assert ex._default_opset(onnx.load(str(tmp_path / "t.onnx"))) == 13


@pytest.mark.parametrize("which", ["hand", "timm"])
def test_onnx_round_trip_with_the_torchscript_exporter(which, hand_ckpt, timm_ckpt, tmp_path):
    ckpt = hand_ckpt if which == "hand" else timm_ckpt
    result = ex.export_checkpoint(ckpt, "onnx", out=tmp_path / "m.onnx", exporter="torchscript")
    assert result.verified and result.exporter == "torchscript"
    assert result.max_abs_diff <= ex.FP32_TOLERANCE
    check_onnx_file(tmp_path / "m.onnx", ckpt)


# ---------------------------------------------------------------------------- TorchScript

@pytest.mark.parametrize("which", ["hand", "timm"])
def test_torchscript_round_trip(run_cli, which, hand_ckpt, timm_ckpt, tmp_path):
    ckpt = hand_ckpt if which == "hand" else timm_ckpt
    out = tmp_path / "m.pt"
    result = run_cli("export", ckpt, "-f", "torchscript", "-o", out, "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["verified"] and doc["max_abs_diff"] <= 1e-4 and doc["bytes"] == out.stat().st_size
    assert ex.read_torchscript_meta(out)["class_names"] == CLASSES
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        module = torch.jit.load(str(out))
    x = torch.randn(3, *read_meta(ckpt)["input_size"])
    with torch.no_grad():
        assert torch.allclose(module(x), reference_logits(ckpt, x), atol=1e-5)


# ---------------------------------------------------------------------------- safetensors

def test_half_alone_writes_half_precision_safetensors(run_cli, hand_ckpt):
    """`export run --half` (no --format, no --out): half precision exists only as safetensors."""
    result = run_cli("export", hand_ckpt, "--half", "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["path"] == str(ex.default_output_path(hand_ckpt, "safetensors", "float16"))
    assert read_meta(ex.default_output_path(hand_ckpt, "safetensors", "float16"))["dtype"] == "float16"


@pytest.mark.parametrize("which", ["hand", "timm"])
@pytest.mark.parametrize("flag,dtype,st_dtype", [(None, "float32", "F32"), ("--half", "float16", "F16"),
                                                 ("--bf16", "bfloat16", "BF16")])
def test_safetensors_export_is_a_checkpoint_again(run_cli, which, flag, dtype, st_dtype, hand_ckpt, timm_ckpt):
    ckpt = hand_ckpt if which == "hand" else timm_ckpt
    args = ["export", ckpt, "--format", "safetensors", "--json"] + ([flag] if flag else [])
    result = run_cli(*args)
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    expected_path = ex.default_output_path(ckpt, "safetensors", dtype)
    assert doc["path"] == str(expected_path) and expected_path.exists()
    assert expected_path != ckpt and expected_path.parent == ckpt.parent
    tensors, _ = read_header(expected_path)
    assert {t["dtype"] for n, t in tensors.items() if "num_batches" not in n} == {st_dtype}
    meta = read_meta(expected_path)
    assert meta["dtype"] == dtype and meta["class_names"] == CLASSES
    # eval and predict open it like any checkpoint; rounding changed the numbers, within the bound
    model, _ = load_model(expected_path)
    x = torch.randn(4, *meta["input_size"])
    with torch.inference_mode():
        diff = (model(x) - reference_logits(ckpt, x)).abs().max().item()
    if dtype == "float32":
        assert diff == 0.0 and doc["tolerance"] == ex.FP32_TOLERANCE
    else:
        assert 0 < doc["max_abs_diff"] <= doc["tolerance"]
        assert doc["bytes"] < 0.6 * ckpt.stat().st_size


# ---------------------------------------------------------------------------- failures

def test_a_disagreeing_export_fails_with_exit_1_and_writes_nothing(run_cli, hand_ckpt, tmp_path, monkeypatch):
    real = ex.run_exported

    def off_by_a_little(fmt, data, batches, meta):
        return [o + 1e-3 for o in real(fmt, data, batches, meta)]

    monkeypatch.setattr(ex, "run_exported", off_by_a_little)
    out = tmp_path / "m.pt"
    result = run_cli("export", hand_ckpt, "-f", "torchscript", "-o", out)
    assert result.exit_code == 1
    assert "verification failed: max abs diff 0.001" in result.stderr
    assert not out.exists() and not list(tmp_path.iterdir())
    # --no-verify writes it anyway and says it is not verified
    result = run_cli("export", hand_ckpt, "-f", "torchscript", "-o", out, "--no-verify", "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["verified"] is False and doc["max_abs_diff"] is None and out.exists()


def test_missing_onnx_says_how_to_install(run_cli, hand_ckpt, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # import onnx now raises ImportError
    result = run_cli("export", hand_ckpt, "-o", tmp_path / "m.onnx")
    assert result.exit_code == 2
    assert "pip install 'cnncli[export]'" in result.stderr


def test_missing_onnxruntime_exports_unverified_unless_verify_is_asked(run_cli, hand_ckpt, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    result = run_cli("export", hand_ckpt, "-o", tmp_path / "m.onnx", "--verify")
    assert result.exit_code == 2 and "pip install 'cnncli[export]'" in result.stderr
    assert not (tmp_path / "m.onnx").exists()
    doc = ex.export_checkpoint(hand_ckpt, "onnx", out=tmp_path / "m.onnx", exporter="torchscript")
    assert doc.verified is False and (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("args,message", [
    (["-f", "onnx", "--half"], "--half and --bf16 apply to --format safetensors only"),
    (["-f", "safetensors", "--half", "--bf16"], "not both"),
    (["-f", "torchscript", "--opset", "17"], "--opset applies to --format onnx only"),
    (["-f", "onnx", "--opset", "7"], "--opset 7 is outside"),
])
def test_bad_options_are_usage_errors(run_cli, args, message, hand_ckpt):
    result = run_cli("export", hand_ckpt, *args)
    assert result.exit_code == 2
    assert message in result.stderr


def test_refuses_to_overwrite_the_checkpoint_and_unknown_files(run_cli, hand_ckpt, tmp_path):
    result = run_cli("export", hand_ckpt, "-f", "safetensors", "-o", hand_ckpt)
    assert result.exit_code == 2 and "the checkpoint itself" in result.stderr
    result = run_cli("export", tmp_path / "nope.safetensors")
    assert result.exit_code == 2 and "not found" in result.stderr


def test_default_paths_sit_next_to_the_checkpoint(tmp_path):
    run = tmp_path / "run" / "model.safetensors"
    assert ex.default_output_path(run, "onnx") == tmp_path / "run" / "model.onnx"
    assert ex.default_output_path(run, "torchscript") == tmp_path / "run" / "model.pt"
    assert ex.default_output_path(run, "safetensors", "float16") == tmp_path / "run" / "model.fp16.safetensors"
    assert ex.default_output_path(run, "safetensors") != run


def test_synthetic_images_are_structured_not_noise():
    images = ex.synthetic_images(4, 3, 32, 32)
    assert images.dtype == torch.uint8 and images.shape == (4, 3, 32, 32)
    assert images.amin() == 0 and images.amax() == 255  # full range per image
    # neighbouring pixels are correlated, unlike uniform noise
    x = images.float()
    assert (x[..., 1:] - x[..., :-1]).abs().mean() < 0.5 * (x - x.mean()).abs().mean()


def test_torchscript_metadata_survives_in_bytes(hand_ckpt):
    model, meta = load_model(hand_ckpt)
    data = ex.torchscript_bytes(model, torch.randn(2, 1, 32, 32), meta)
    assert ex.read_torchscript_meta(data)["input_size"] == [1, 32, 32]
    assert io.BytesIO(data).read(2) == b"PK"  # a zip archive, as torch.jit.save writes


def test_an_unknown_out_suffix_is_refused_unless_the_format_is_given(run_cli, hand_ckpt, tmp_path):
    out = tmp_path / "o.xyz"
    result = run_cli("export", hand_ckpt, "--out", out)
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
    for known in (".onnx (onnx)", ".pt (torchscript)", ".safetensors (safetensors)", ".xml (openvino)", "--format"):
        assert known in result.stderr
    assert not list(tmp_path.iterdir())
    # named explicitly, the format is written under any name
    result = run_cli("export", hand_ckpt, "-f", "torchscript", "--out", out, "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["format"] == "torchscript"
    assert ex.read_torchscript_meta(out)["class_names"] == CLASSES


def test_a_known_out_suffix_chooses_the_format(run_cli, hand_ckpt, tmp_path):
    out = tmp_path / "m.pt"  # TorchScript, not ONNX under a .pt name
    result = run_cli("export", hand_ckpt, "--out", out, "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["format"] == "torchscript"
    assert ex.read_torchscript_meta(out)["class_names"] == CLASSES
    assert [ex.resolve_format(None, name) for name in ("a.ONNX", "b.safetensors", "c.xml", None)] == [
        "onnx", "safetensors", "openvino", "onnx"]
    assert ex.resolve_format("onnx", "d.pt") == "onnx"
