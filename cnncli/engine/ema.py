"""An exponential moving average of the weights (`--ema DECAY`), through timm's ModelEmaV3.

The average starts as a copy of the network and follows it after every optimizer step with
a warm-up (timm's: the decay grows as 1 - (1 + step)^-2/3 up to DECAY), so an early average
is not dominated by the random initial weights. Validation and test run on the averaged
weights too (both figures reported); its tensors are saved in the run's checkpoint (when it
validates better) and in the resumable state (`ema.*`), and a resumed run continues it
exactly: its update is a deterministic lerp over the same tensors.
"""

from __future__ import annotations

import torch

from cnncli.errors import InputError

PREFIX = "ema."


def check_decay(decay: float | None) -> None:
    if decay is not None and not 0.0 < decay < 1.0:
        raise InputError(f"--ema must be a decay in (0, 1), e.g. 0.999; got {decay}")


class WeightAverage:
    """timm's ModelEmaV3 with warm-up over `model`; `module` is the averaged network."""

    def __init__(self, model: torch.nn.Module, decay: float, warmup: bool = True):
        check_decay(decay)
        from timm.utils.model_ema import ModelEmaV3

        self.decay = float(decay)
        self._ema = ModelEmaV3(model, decay=self.decay, use_warmup=warmup)
        self._ema.module.requires_grad_(False)

    @property
    def module(self) -> torch.nn.Module:
        return self._ema.module

    def update(self, model: torch.nn.Module, step: int) -> None:
        """After the optimizer step number `step` (0-based, counted over the whole run)."""
        self._ema.update(model, step=step + 1)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        return {PREFIX + k: v for k, v in self.module.state_dict().items()}

    def load_tensors(self, tensors: dict[str, torch.Tensor], source) -> None:
        """The `ema.*` tensors of a resumable state into the average, in place (layouts kept)."""
        state = {k[len(PREFIX):]: v for k, v in tensors.items() if k.startswith(PREFIX)}
        own = self.module.state_dict()
        if set(state) != set(own):
            raise InputError(f"{source}: the run was trained with --ema but its state holds no matching "
                             "average of the weights; start a new run (without --resume)")
        with torch.no_grad():
            for key, value in own.items():
                if value.shape != state[key].shape:
                    raise InputError(f"{source}: corrupt training state (ema tensor {key})")
                value.copy_(state[key])
