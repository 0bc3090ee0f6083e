"""The run document a checkpoint carries: built once, written and read back whole, and every
value a reader relies on checked, so a damaged or hand-edited file is refused in one line."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save as safetensors_save
from typer.testing import CliRunner

from cnncli.checkpoint import (
    RunDocument,
    build_document,
    load_checkpoint,
    load_model,
    read_meta,
    save_checkpoint,
)
from cnncli.cli import app
from cnncli.errors import InputError
from cnncli.models.registry import build_model, create_model


def lenet_document(**changes) -> RunDocument:
    fields = dict(model=build_model("lenet5", num_classes=3).spec, num_classes=3, class_names=["a", "b", "c"], input_size=(1, 32, 32),
                  mean=[0.3], std=[0.2], dataset="synthetic", epoch=2, metrics={"val_top1": 0.5}, seed=7,
                  versions={"torch": torch.__version__}, recipe={"lr": 0.01}, extra={"finetune": {"head": "fc"}})
    fields.update(changes)
    return build_document(**fields)


@pytest.fixture()
def lenet_state():
    torch.manual_seed(0)
    return create_model("lenet5", num_classes=3).state_dict()


def write_raw(path, state, doc: dict):
    """A checkpoint written without save_checkpoint's checks (a damaged or hand-edited file)."""
    path.write_bytes(safetensors_save(state, metadata={"cnncli": json.dumps(doc), "format": "pt"}))
    return path


# ------------------------------------------------------------------------------ round trip
def test_a_document_survives_json_and_a_checkpoint_file(tmp_path, lenet_state):
    doc = lenet_document()
    assert RunDocument.from_json(doc.to_json()) == doc
    path = save_checkpoint(tmp_path / "model.safetensors", lenet_state, doc)
    state, read = load_checkpoint(path)
    assert read == doc and read_meta(path) == doc
    assert all(torch.equal(state[k], v) for k, v in lenet_state.items())
    # typed fields, and the mapping view that callers index like the JSON
    assert read.input_size == (1, 32, 32) and read.model.name == "lenet5" and read.model.num_classes == 3
    assert read["class_names"] == ["a", "b", "c"] and read["model"]["in_chans"] == 1
    assert read.get("finetune") == {"head": "fc"} and "pretrained_source" not in read
    model, _ = load_model(path)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in lenet_state.items())


def test_keys_this_version_does_not_know_are_kept(tmp_path, lenet_state):
    raw = {**lenet_document().to_dict(), "tracking": {"run_id": "abc"}}
    raw["model"] = {**raw["model"], "variant": "b"}
    doc = read_meta(write_raw(tmp_path / "new.safetensors", lenet_state, raw))
    assert doc["tracking"] == {"run_id": "abc"} and doc["model"]["variant"] == "b"
    again = read_meta(save_checkpoint(tmp_path / "again.safetensors", lenet_state, doc))
    assert again.to_dict() == raw


def test_the_mapping_view_hands_out_copies():
    doc = lenet_document()
    doc["metrics"]["val_top1"] = 99.0
    doc["class_names"].append("d")
    assert doc.metrics["val_top1"] == 0.5 and doc["class_names"] == ["a", "b", "c"]


def test_replace_checks_the_changed_document_again():
    doc = lenet_document()
    assert doc.replace(metrics={"test_top1": 0.9}).metrics == {"test_top1": 0.9}
    assert doc.replace(exported_from="run/model.safetensors")["exported_from"] == "run/model.safetensors"
    with pytest.raises(InputError, match="'std' must be one positive finite number per channel"):
        doc.replace(std=[-1.0])


def test_the_builder_writes_a_metric_that_is_not_finite_as_unknown():
    doc = lenet_document(metrics={"val_loss": float("nan"), "val_top1": 0.25})
    assert doc.metrics == {"val_loss": None, "val_top1": 0.25}
    assert "NaN" not in doc.to_json()


def test_the_model_spec_takes_the_run_s_class_and_channel_counts():
    doc = build_document(model={"name": "lenet5", "num_classes": 10, "in_chans": 3, "kwargs": {}},
                         num_classes=4, class_names=list("abcd"), input_size=(1, 28, 28), mean=[0.5], std=[0.5])
    assert (doc.model.num_classes, doc.model.in_chans) == (4, 1)


# ------------------------------------------------------------------------------ refused values
BAD_VALUES = {
    "negative classes": ({"num_classes": -3}, "'num_classes' must be a number of classes from 1 to 1,000,000"),
    "too many classes": ({"num_classes": 10**7}, "'num_classes' must be a number of classes"),
    "classes as text": ({"num_classes": "3"}, "'num_classes' must be a number of classes"),
    "model classes": ({"model": {"name": "lenet5", "num_classes": 0}}, "'model.num_classes' must be"),
    "no channels": ({"model": {"name": "lenet5", "in_chans": 0}}, "'model.in_chans' must be a number of channels"),
    "bad kwargs": ({"model": {"name": "lenet5", "kwargs": {"not a name": 1}}}, "'model.kwargs' must be a table"),
    "negative side": ({"input_size": [1, -32, 32]}, "'input_size' must be [C, H, W]"),
    "huge side": ({"input_size": [1, 100_000, 32]}, "'input_size' must be [C, H, W]"),
    "two sides": ({"input_size": [32, 32]}, "'input_size' must be [C, H, W]"),
    "NaN mean": ({"mean": [float("nan")]}, "'mean' must be one finite number per channel (1), got [NaN]"),
    "infinite std": ({"std": [float("inf")]}, "'std' must be one positive finite number per channel"),
    "zero std": ({"std": [0.0]}, "'std' must be one positive finite number per channel (1), got [0.0]"),
    "negative std": ({"std": [-0.2]}, "'std' must be one positive finite number per channel"),
    "mean per RGB for gray": ({"mean": [0.4, 0.4, 0.4]}, "'mean' must be one finite number per channel (1)"),
    "names short": ({"class_names": ["a", "b"]}, "2 class names for 3 classes"),
    "names not text": ({"class_names": [1, 2, 3]}, "'class_names' must be a list of names"),
    "negative epoch": ({"epoch": -1}, "'epoch' must be a number of epochs from 0"),
    "NaN metric": ({"metrics": {"val_top1": float("nan")}}, "'metrics' must be a table of finite numbers"),
    "huge seed": ({"seed": 2**70}, "'seed' must be a seed torch takes"),
    "versions": ({"versions": {"torch": 2}}, "'versions' must be a table of version strings"),
}


@pytest.mark.parametrize("change,message", BAD_VALUES.values(), ids=BAD_VALUES.keys())
def test_each_wrong_value_is_refused_in_one_line_naming_the_file(tmp_path, lenet_state, change, message):
    raw = lenet_document().to_dict()
    for key, value in change.items():
        raw[key] = {**raw[key], **value} if key == "model" else value
    path = write_raw(tmp_path / "bad.safetensors", lenet_state, raw)
    for read in (read_meta, load_checkpoint, load_model):
        with pytest.raises(InputError) as refused:
            read(path)
        text = str(refused.value)
        assert "\n" not in text and text.startswith(f"{path}: corrupt cnncli metadata") and message in text


@pytest.mark.parametrize("change,message", BAD_VALUES.values(), ids=BAD_VALUES.keys())
def test_a_wrong_value_is_never_written(tmp_path, lenet_state, change, message):
    raw = lenet_document().to_dict()
    for key, value in change.items():
        raw[key] = {**raw[key], **value} if key == "model" else value
    target = tmp_path / "model.safetensors"
    target.write_bytes(b"the previous version")
    with pytest.raises(InputError, match="invalid cnncli metadata"):
        save_checkpoint(target, lenet_state, raw)
    assert target.read_bytes() == b"the previous version"


def test_a_newer_format_says_so(tmp_path, lenet_state):
    path = write_raw(tmp_path / "future.safetensors", lenet_state, {**lenet_document().to_dict(), "format": 2})
    with pytest.raises(InputError, match=r"written by a newer cnncli \(format 2; this one reads format 1\)"):
        read_meta(path)


def test_the_cli_refuses_a_corrupt_document_with_exit_2_and_one_line(tmp_path, lenet_state):
    path = write_raw(tmp_path / "bad.safetensors", lenet_state, {**lenet_document().to_dict(), "std": [0.0]})
    result = CliRunner().invoke(app, ["export", str(path), "--format", "safetensors", "--no-verify"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "'std' must be one positive finite number per channel" in lines[0], result.stderr
    assert not (tmp_path / "bad.export.safetensors").exists()
