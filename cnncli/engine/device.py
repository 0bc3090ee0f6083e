"""Device choice (`--device auto` is cuda, then mps, then cpu) and CPU thread settings."""

from __future__ import annotations

import torch

from cnncli import output
from cnncli.errors import InputError


def resolve_device(name: str = "auto", local_rank: int | None = None) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            name = "cuda"
        elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
            name = "mps"
        else:
            name = "cpu"
    if name.isdigit():  # a GPU index, as `--device 1` means in the peers' CLIs
        name = f"cuda:{int(name)}"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError(f"--device {name}: no CUDA device is available on this machine "
                             "(use --device cpu, or auto)")
        if name == "cuda" and local_rank is not None:
            name = f"cuda:{local_rank}"
        index = name.partition(":")[2]
        if index.isdigit() and int(index) >= torch.cuda.device_count():
            raise InputError(f"--device {name}: there is no CUDA device {index}; this machine has "
                             f"{torch.cuda.device_count()} (numbered from 0)")
    if name == "mps" and not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
        raise InputError("--device mps asked for, but MPS is not available here")
    return torch.device(name)


def set_threads(threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)


def use_channels_last(model: torch.nn.Module, device: torch.device | str) -> torch.nn.Module:
    """Store the 4-d weights channels-last (NHWC), in place, on CPU and CUDA.

    oneDNN (CPU) and cuDNN choose their NHWC kernels when the weights are NHWC, whatever the
    input's layout, and those are the fast ones: on a 2-core CPU typical_cnn trains ~1.3x and
    infers ~1.4x faster (bench/README.md). The values do not change and checkpoints are saved
    contiguous. MPS is left as it is (its NHWC support is partial).
    """
    if torch.device(device).type in ("cpu", "cuda"):
        model.to(memory_format=torch.channels_last)
    return model


def bf16_is_slow(device: torch.device | str) -> bool:
    """True on a CPU without bf16 instructions (AVX512-BF16 or AMX), where oneDNN emulates
    bf16 and `--amp` made typical_cnn's training step ~10x slower than float32."""
    if torch.device(device).type != "cpu":
        return False
    probes = [getattr(torch.cpu, name, None) for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    if not all(callable(p) for p in probes):  # an older torch: do not second-guess the user
        return False
    return not any(p() for p in probes)


def try_compile(model):
    """torch.compile where it works here; the module as it is (and a warning) where it does not.

    torch compiles lazily, at the first step: that call says what happened, in cnncli's words
    (compiled in N s, or the reason it runs eagerly), instead of torch's own log lines."""
    import logging

    # "No CUDA runtime is found, using CUDA_HOME=..." on a CPU-only machine: not the user's concern
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    try:
        return _FirstCallNote(torch.compile(model), model)
    except Exception as e:  # backend missing (no compiler, unsupported platform)
        output.warn(f"--compile is not available here ({type(e).__name__}: {_first_line(e)}); running eagerly")
        return model


def _first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [""])[0][:160]


class _FirstCallNote:
    """The compiled forward; its first call (where torch compiles) reports the outcome once."""

    def __init__(self, compiled, eager):
        self._forward, self._eager, self._first = compiled, eager, True

    def __call__(self, *args, **kwargs):
        if not self._first:
            return self._forward(*args, **kwargs)
        self._first = False
        import time

        start = time.perf_counter()
        try:
            out = self._forward(*args, **kwargs)
        except Exception as e:  # the backend failed to compile this network: the eager one still runs
            output.warn(f"--compile: torch.compile failed on the first step ({type(e).__name__}: "
                        f"{_first_line(e)}); running eagerly")
            self._forward = self._eager
            return self._eager(*args, **kwargs)
        output.note(f"--compile: the network was compiled by torch.compile in "
                    f"{time.perf_counter() - start:.1f}s (its first step); the steps run the compiled graph")
        return out
