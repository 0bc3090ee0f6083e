"""Mixed precision: `--amp auto|bf16|fp16|off`, resolved once per run to what the device does fast.

- bf16 autocast where the hardware has it natively: CUDA GPUs of capability 8 (Ampere) and
  later, CPUs with AVX512-BF16 or AMX (the /proc/cpuinfo flags, and torch's own probes where
  it has them). On a CPU without them oneDNN emulates bf16 and a training step was ~10x
  slower than float32: `auto` never guesses, it detects.
- fp16 autocast with a GradScaler on CUDA GPUs without fast bf16.
- float32 everywhere else (MPS, older CPUs).

The choice is a `Precision`: its name is printed and recorded in the run; `autocast()` is
the context the forward runs in; `scaler` is the GradScaler (fp16 only).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import torch

from cnncli.errors import InputError

MODES = ("auto", "bf16", "fp16", "off")


@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is no such file)."""
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags") and ":" in line:
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_has_native_bf16(flags: frozenset[str] | None = None) -> bool:
    """AVX512-BF16 or AMX-BF16 in the CPU flags, or torch's probes say so."""
    flags = cpu_flags() if flags is None else flags
    if {"avx512_bf16", "amx_bf16"} & flags:
        return True
    for name in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        probe = getattr(torch.cpu, name, None)
        if callable(probe):
            try:
                if probe():
                    return True
            except RuntimeError:
                pass
    return False


def cuda_has_fast_bf16(device: torch.device) -> bool:
    major, _ = torch.cuda.get_device_capability(device)
    return major >= 8


@dataclass(frozen=True)
class Precision:
    """What a run computes in: name ('bf16', 'fp16', 'fp32'), the device type, why."""

    name: str
    device_type: str
    reason: str = ""

    @property
    def dtype(self) -> torch.dtype | None:
        return {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.name)

    @property
    def enabled(self) -> bool:
        return self.dtype is not None

    def autocast(self):
        if not self.enabled:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=self.dtype)

    def make_scaler(self):
        """A GradScaler for fp16 (gradients would underflow without one); None otherwise."""
        if self.name != "fp16":
            return None
        return torch.amp.GradScaler(self.device_type)

    def describe(self) -> str:
        return f"precision: {self.name}" + (f" ({self.reason})" if self.reason else "")


def resolve_precision(mode: str | bool, device: torch.device | str) -> Precision:
    """`--amp MODE` on `device` as a Precision; an impossible request is an InputError (exit 2)."""
    if mode is True:  # recipes of earlier versions: `amp = true` meant bf16 where it is fast
        mode = "auto"
    elif mode is False or mode is None:
        mode = "off"
    mode = str(mode).lower()
    if mode not in MODES:
        raise InputError(f"--amp {mode}: choose one of {', '.join(MODES)}")
    device = torch.device(device)
    kind = device.type
    if mode == "off":
        return Precision("fp32", kind, "--amp off")
    if kind == "cuda":
        fast_bf16 = cuda_has_fast_bf16(device)
        if mode == "bf16" and not fast_bf16:
            raise InputError(f"--amp bf16: this GPU (capability {'.'.join(map(str, torch.cuda.get_device_capability(device)))}) "
                             "has no fast bf16; use --amp fp16 or --amp auto")
        if mode == "bf16" or (mode == "auto" and fast_bf16):
            return Precision("bf16", kind, "GPU capability >= 8")
        return Precision("fp16", kind, "fp16 with a GradScaler" + ("" if mode == "fp16" else ": no fast bf16 on this GPU"))
    if mode == "fp16":
        raise InputError(f"--amp fp16 needs a CUDA GPU; this run is on {kind} (use --amp auto, bf16 or off)")
    if kind == "cpu":
        if cpu_has_native_bf16():
            return Precision("bf16", kind, "the CPU has native bf16 (AVX512-BF16/AMX)")
        if mode == "bf16":
            raise InputError("--amp bf16: this CPU has no native bf16 (no avx512_bf16 or amx_bf16 flag) and "
                             "emulated bf16 is ~10x slower than float32; use --amp auto (float32 here)")
        return Precision("fp32", kind, "no native bf16 on this CPU")
    if mode == "bf16":
        raise InputError(f"--amp bf16 is not supported on {kind}; use --amp auto or off")
    return Precision("fp32", kind, f"no mixed precision on {kind}")
