"""The user docs say what the code does: every number docs/concepts.md quotes from `cnncli inspect`
is the number the code prints, and the worked formulas agree with cnncli's layers."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from cnncli.geometry import output_size, same_padding
from cnncli.layers import LocalResponseNorm
from cnncli.summary import summarize

ROOT = Path(__file__).resolve().parents[1]
CONCEPTS = (ROOT / "docs" / "concepts.md").read_text()

# (model, --depth, layer, field, value the docs quote)
QUOTED = [
    ("alexnet", None, "C1", "params", 34_944),
    ("alexnet", None, "C1", "macs", 105_415_200),
    ("alexnet", None, "C1", "size", "55x55"),
    ("alexnet", None, "S2", "size", "27x27"),
    ("alexnet", None, "C3", "size", "27x27"),
    ("alexnet", None, "S4", "size", "13x13"),
    ("alexnet", None, "S8", "size", "6x6"),
    *[("alexnet", None, layer, "receptive_field", [r, r])
      for layer, r in [("C1", 11), ("S2", 19), ("C3", 51), ("S4", 67), ("C5", 99), ("C6", 131), ("C7", 163),
                       ("S8", 195), ("F9", 227)]],
    ("alexnet", None, None, "total_params", 62_378_344),
    ("typical_cnn", None, None, "total_params", 1_413_834),
    ("typical_cnn", None, "fc1", "params", 295_040),
    ("typical_cnn", None, "pool3", "size", "3x3"),
    ("googlenet", None, "conv1", "size", "112x112"),
    ("googlenet", None, "inception3a", "params", 163_696),
    ("googlenet", None, "inception3a", "maps", 256),
    ("googlenet", None, "inception5b", "receptive_field", [715, 715]),
    ("googlenet", None, None, "total_params", 6_998_552),
    ("resnet18", 3, "layer1.0.conv1", "params", 36_992),
    ("resnet18", 3, "layer2.0.downsample", "params", 8_448),
    ("resnet18", 3, "conv1", "size", "112x112"),
    ("se_resnet50", 4, "layer1.0.se.fc1", "params", 4_112),
    ("se_resnet50", 4, "layer1.0.se.fc1", "maps", 16),
    ("se_resnet50", 4, "layer1.0.se.fc2", "params", 4_352),
    ("se_resnet50", 3, "layer1.0.se", "params", 8_464),
    ("xception", 3, "block1.rep.0", "params", 8_768),
]


def _as_written(value) -> str:
    """How the docs write a value: 34,944 for a count, 55 for a 55x55 size or receptive field."""
    if isinstance(value, int):
        return f"{value:,}"
    return str(value[0]) if isinstance(value, list) else value.split("x")[0]


@pytest.fixture(scope="module")
def summaries():
    cache = {}

    def get(model, depth):
        if (model, depth) not in cache:
            cache[model, depth] = summarize(model, depth=depth)
        return cache[model, depth]

    return get


@pytest.mark.parametrize("model, depth, layer, field, value", QUOTED)
def test_every_number_the_docs_quote_is_what_inspect_prints(summaries, model, depth, layer, field, value):
    summary = summaries(model, depth)
    if layer is None:
        got = getattr(summary, field)
    else:
        rows = {row.name: row for row in summary.rows}
        got = getattr(rows[layer], field)
    assert got == value, f"{model} {layer} {field}: inspect prints {got}, docs/concepts.md says {value}"
    assert re.search(rf"(?<!\d)(?<!\d,){re.escape(_as_written(value))}(?!,?\d)", CONCEPTS), (
        f"docs/concepts.md no longer quotes {value} ({model} {layer} {field})")


def test_the_padding_formulas_of_the_docs():
    assert output_size(227, 11, 4) == (227 - 11) // 4 + 1 == 55
    assert [output_size(n, 3, 2) for n in (55, 27, 13)] == [27, 13, 6]
    assert output_size(7, 2, 2) == 3  # typical_cnn's pool3 drops the 7th row
    assert output_size(224, 7, 2, "same") == 112 and same_padding(224, 7, 2) == (2, 3)  # GoogLeNet conv1
    assert same_padding(112, 3, 2) == (0, 1) and same_padding(27, 5, 1) == (2, 2)


def test_lrn_worked_example_and_torch_alpha_scaling():
    x = torch.arange(1.0, 8.0).view(1, 7, 1, 1)
    ours = LocalResponseNorm()(x).flatten()
    torchs = torch.nn.LocalResponseNorm(5, alpha=1e-4 * 5, beta=0.75, k=2.0)(x).flatten()
    assert torch.allclose(ours, torchs)
    quoted = "0.5943, 1.1879, 1.7801, 2.3704, 2.9581, 3.5509, 4.1451"
    assert quoted in CONCEPTS
    assert [f"{v:.4f}" for v in ours.tolist()] == quoted.split(", ")


def test_the_readme_points_users_at_the_docs_not_at_files_they_do_not_have():
    readme = (ROOT / "README.md").read_text()
    assert "../shared" not in readme and "docs/concepts.md" in readme
    assert 'pip install ".[export]"' in readme
    for link in re.findall(r"\]\(((?:docs|bench)/[^)#]+)", readme):
        assert (ROOT / link).exists(), link
