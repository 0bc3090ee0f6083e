"""--skip-bad-images over a whole run: the drops of a run stopped mid-epoch and resumed add up to
those of the run's every epoch, in the state, the checkpoints, the result and the closing line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_stream import _StopAt  # the one SIGTERM-at-a-step callback (tests/ is on sys.path)

from cnncli.checkpoint import read_meta


def make_folder(root: Path) -> Path:
    rng = np.random.default_rng(1)
    for split, n in {"train": 4, "test": 1}.items():
        for c, name in enumerate(("cat", "dog", "owl")):
            folder = root / split / name
            folder.mkdir(parents=True)
            for k in range(n):
                a = (rng.random((40, 48, 3)) * 120).astype("uint8")
                a[..., c] += 120
                Image.fromarray(a).save(folder / f"{k}.jpg")
    bad = root / "train" / "dog" / "broken.jpg"
    bad.write_bytes((root / "train" / "dog" / "0.jpg").read_bytes()[:200])
    return bad


def test_drops_of_an_interrupted_and_resumed_run_add_up(tmp_path, run_cli):
    from cnncli.engine.config import build_config
    from cnncli.engine.console import TrainingInterrupted
    from cnncli.engine.trainer import Trainer

    bad = make_folder(tmp_path / "f")
    out = tmp_path / "run"
    cfg = build_config(None, {"model": "lenet5", "data": f"imagefolder:{tmp_path / 'f'}", "epochs": 2, "batch_size": 2,
                              "img_size": 32, "seed": 3, "threads": 1, "stream": True, "workers": 0,
                              "skip_bad_images": True, "val_fraction": 0, "out": str(out)})
    with pytest.raises(TrainingInterrupted):  # 13 training files: 7 steps an epoch; stopped in epoch 2
        Trainer(cfg, quiet=True, callbacks=[_StopAt(10)]).fit()
    state = read_meta(out / "train_state.safetensors")
    assert state["train_state"]["epoch"] == 1 and state["train_state"]["step"] == 3
    before = state["skipped_images"]
    assert before["by_split"]["train"] in (1, 2) and str(bad) in before["first"][0]  # epoch 1's, and 2's if met
    assert read_meta(out / "last.safetensors")["skipped_images"]["count"] == 1  # after epoch 1

    result = run_cli("train", "--resume", out, "--threads", "1", "--json")
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["skipped_images"] == 2  # once per epoch: none lost, none twice
    record = read_meta(out / "model.safetensors")["skipped_images"]
    assert record == {"count": 2, "by_split": {"train": 2, "val": 0, "test": 0}, "first": record["first"]}
    assert len(record["first"]) == 1 and str(bad) in record["first"][0]
    assert read_meta(out / "train_state.safetensors")["skipped_images"]["count"] == 2
    line = [x for x in result.stderr.splitlines() if x.startswith("skipped ")]
    assert len(line) == 1 and "skipped 2 image(s)" in line[0] and "2 in train" in line[0], result.stderr
    assert "earlier sessions" in line[0] and str(bad) in line[0]
