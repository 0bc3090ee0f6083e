"""The shipped recipes: every TOML recipe is valid, and the CI shell recipe runs end to end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cnncli.engine.config import build_config

RECIPES = Path(__file__).resolve().parent.parent / "recipes"


@pytest.mark.parametrize("recipe", sorted(RECIPES.glob("*.toml")), ids=lambda p: p.name)
def test_every_training_recipe_resolves(recipe):
    cfg = build_config(str(recipe), {})
    assert cfg.model and cfg.epochs > 0
    if cfg.model.endswith(".toml"):
        assert Path(cfg.model).is_file(), cfg.model


@pytest.mark.slow
def test_ci_pipeline_trains_evaluates_exports_and_predicts(tmp_path):
    """recipes/ci_pipeline.sh through the installed `cnncli` entry point, checking each JSON."""
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""), "PYTHON": sys.executable}
    done = subprocess.run(["bash", str(RECIPES / "ci_pipeline.sh"), str(tmp_path / "work")], env=env,
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "pipeline ok" in done.stderr
    for name in ("train.json", "eval.json", "export.json", "predict.jsonl", "model.onnx"):
        assert (tmp_path / "work" / name).exists(), name
