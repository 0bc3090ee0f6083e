"""cnncli.summary's parts on their own: the flop counter and the private torch API it patches,
the receptive-field mode, and the per-row figures an explanation reuses."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from torch import nn

from cnncli.summary import flops, summarize
from cnncli.summary.receptive_field import ReceptiveFieldMode


def test_the_torch_internals_the_flop_patch_relies_on_are_still_there():
    # If this fails, torch changed what cnncli.summary.flops patches: counting still works but
    # every `inspect` imports torch._dynamo again (seconds). Update flops.py for the new torch.
    problem = flops.private_api_problem()
    assert problem is None, (
        f"torch {torch.__version__} changed a private API that cnncli.summary.flops patches "
        f"({flops.PRIVATE_API}): {problem}")
    from torch.utils import flop_counter

    wrapper = vars(flop_counter._FlopCounterMode)["__torch_dispatch__"]
    assert callable(getattr(wrapper, "__wrapped__", None)), (
        "torch.utils.flop_counter._FlopCounterMode.__torch_dispatch__ has no __wrapped__: "
        "torch._disable_dynamo no longer wraps dispatch modes with functools.wraps")


def test_the_check_notices_a_torch_without_the_wrapper(monkeypatch):
    from torch.utils import flop_counter

    def plain(self, func, types, args=(), kwargs=None):  # a dispatch method no wrapper caches
        return func(*args, **(kwargs or {}))

    monkeypatch.setattr(flop_counter._FlopCounterMode, "__torch_dispatch__", plain)
    assert "no longer a wrapper" in flops.private_api_problem()
    assert flops._skip_dynamo_import() is False  # the patch leaves such a torch alone
    monkeypatch.delattr(flop_counter, "_FlopCounterMode")
    assert "_FlopCounterMode is gone" in flops.private_api_problem()


def test_counting_multiply_adds_does_not_import_torch_dynamo():
    code = (
        "import sys, torch\n"
        "from cnncli.summary.flops import flop_counter, total_macs\n"
        "counter = flop_counter()\n"
        "with counter:\n"
        "    torch.nn.functional.conv2d(torch.zeros(1, 3, 8, 8), torch.zeros(4, 3, 3, 3))\n"
        "print(total_macs(counter), 'torch._dynamo' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == [str(6 * 6 * 4 * 3 * 3 * 3), "False"], out.stderr


@pytest.fixture(scope="module")
def alexnet_rows():
    return {r.name: r for r in summarize("alexnet").rows}


def test_alexnet_c1_multiply_adds_equal_the_hand_count(alexnet_rows):
    # 55x55 outputs x 96 maps, each an 11x11 window over 3 input channels
    assert alexnet_rows["C1"].macs == 55 * 55 * 96 * 11 * 11 * 3 == 105_415_200


def test_each_row_carries_the_figures_behind_its_columns(alexnet_rows):
    c1, s2, f9 = alexnet_rows["C1"], alexnet_rows["S2"], alexnet_rows["F9"]
    assert c1.figures() == {
        "input_shape": [3, 227, 227], "output_shape": [96, 55, 55],
        "params": 96 * 11 * 11 * 3 + 96, "macs": 55 * 55 * 96 * 11 * 11 * 3,
        "receptive_field": [11, 11], "jump": [4, 4],
        "input_receptive_field": [1, 1], "input_jump": [1, 1]}
    # r_out = r_in + (k - 1) * j_in and j_out = j_in * s, from the row's own figures
    assert s2.input_receptive_field == [11, 11] and s2.input_jump == [4, 4]
    assert s2.receptive_field == [11 + (3 - 1) * 4] * 2 and s2.jump == [4 * 2] * 2
    assert f9.input_shape == [9216] and f9.jump == [227, 227]  # a dense layer sees everything
    # the JSON document keeps its columns: the figures are data, not new keys
    assert list(c1.to_dict()) == ["name", "type", "maps", "size", "kernel", "stride", "padding",
                                  "activation", "output_shape", "params", "macs",
                                  "receptive_field", "depth"]


def test_a_fractional_jump_stays_exact():
    # adaptive pooling 5 -> 3 strides by 5/3 input pixels
    row = summarize(nn.Sequential(nn.AdaptiveAvgPool2d(3)), (1, 5, 5)).rows[0]
    assert row.jump == [pytest.approx(5 / 3)] * 2 and row.input_jump == [1, 1]


def test_receptive_field_mode_follows_the_operations_it_sees():
    mode = ReceptiveFieldMode((16, 16))
    x = torch.zeros(1, 1, 16, 16)
    mode.mark(x, (1.0, 1.0, 1.0, 1.0))
    with mode:
        y = nn.functional.conv2d(x, torch.zeros(1, 1, 3, 3), stride=2)
        z = nn.functional.max_pool2d(y, 2)
        w = z.mean(dim=(2, 3))
    assert mode.get(y) == (3, 3, 2, 2)
    assert mode.get(z) == (3 + 1 * 2, 3 + 1 * 2, 4, 4)
    assert mode.get(w) == (16, 16, 16, 16)  # global pooling: the whole image
    assert mode.get(torch.zeros(1)) is None  # not derived from the image
