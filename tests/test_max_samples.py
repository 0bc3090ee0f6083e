"""`--max-samples N`: a cap that would take a class away is one line (exit 2), a small one a note."""

from __future__ import annotations

import pytest
import torch

from cnncli.engine.sample_cap import check_capped_split
from cnncli.errors import InputError

DATA = "synthetic:n=64,n_test=16,classes=4,size=28"


def one_error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2, result.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return lines[0]


@pytest.mark.parametrize("command", ["train", "finetune"])
def test_a_cap_below_the_number_of_classes_is_refused_before_any_folder(run_cli, tiny_run, tmp_path, command):
    model = "lenet5" if command == "train" else tiny_run
    out = tmp_path / "run"
    line = one_error_line(run_cli(command, model, "--data", DATA, "--max-samples", 3, "--out", out))
    assert "--max-samples 3 leaves no training image of 1 of the 4 classes" in line
    assert "give at least 4, one per class" in line
    assert not out.exists()


def test_a_small_cap_that_keeps_every_class_trains_with_a_note(run_cli, tmp_path):
    result = run_cli("train", "lenet5", "--data", DATA, "--max-samples", 8, "--epochs", 1,
                     "--threads", 1, "--out", tmp_path / "run")
    assert result.exit_code == 0, result.stderr
    assert "--max-samples 8: 8 training images, as few as 2 in a class" in result.stderr


def test_eval_refuses_a_cap_that_leaves_classes_out_and_notes_a_small_one(run_cli, tiny_run):
    line = one_error_line(run_cli("eval", tiny_run, "--max-samples", 1))  # the run has 2 classes
    assert "--max-samples 1 leaves no test image of 1 of the 2 classes" in line
    result = run_cli("eval", tiny_run, "--max-samples", 4, "--json")
    assert result.exit_code == 0, result.stderr
    assert "--max-samples 4: 4 test images, as few as 2 in a class" in result.stderr


def test_only_the_cap_is_blamed_for_a_missing_class():
    names = ["a", "b", "c"]
    # the split never had class c: two images cover the two classes it has
    check_capped_split(torch.tensor([0, 1]), names, 2, "test", before=torch.tensor([0, 0, 1, 1]), note=False)
    with pytest.raises(InputError, match="no test image of 1 of the 2 classes \\(b\\)"):
        check_capped_split(torch.tensor([0]), names, 1, "test", before=torch.tensor([0, 1]), note=False)
    with pytest.raises(InputError, match="leaves the training split empty"):
        check_capped_split(torch.tensor([], dtype=torch.int64), names, 5, "training")
    check_capped_split(torch.tensor([0, 1]), names, None, "training")  # no cap, nothing to say


def test_compare_holds_its_cap_to_the_same_rule(run_cli, tiny_run, tiny_run_copy):
    line = one_error_line(run_cli("compare", tiny_run, tiny_run_copy, "--max-samples", 1))
    assert "--max-samples 1 leaves no test image of 1 of the 2 classes" in line
