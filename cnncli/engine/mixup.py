"""mixup and cutmix on the training batch, with soft targets (torchvision.transforms.v2).

`--mixup A` blends two images and their labels with a Beta(A, A) weight (Zhang et al. 2018);
`--cutmix A` pastes a box of one image into another, labels in proportion to the area (Yun et
al. 2019); both given: one of them per batch, half the time each (timm's switch). The targets
become class probabilities, which F.cross_entropy takes as they are (label smoothing
included): the soft-target loss. `--mixup-off-epoch N` trains the epochs from N on (0-based
count of epochs finished) on clean images, as timm's `mixup_off_epoch`: the last epochs fit
the real distribution. The draws come from torch's generator, which the trainer seeds per
step, so a resumed run mixes exactly as an uninterrupted one.
"""

from __future__ import annotations

import torch

from cnncli.errors import InputError


def check_alpha(name: str, alpha: float | None) -> None:
    if alpha is not None and not alpha > 0:
        raise InputError(f"--{name} alpha must be positive (Beta(alpha, alpha); 0.2-1.0 is usual), got {alpha}")


class BatchMixer:
    """(x, y) -> (mixed x, soft targets) for a batch of normalized floats and class indices."""

    def __init__(self, num_classes: int, mixup: float | None = None, cutmix: float | None = None,
                 off_epoch: int | None = None):
        check_alpha("mixup", mixup)
        check_alpha("cutmix", cutmix)
        if not mixup and not cutmix:
            raise InputError("a mixer needs --mixup or --cutmix")
        from torchvision.transforms import v2

        chosen = []
        if mixup:
            chosen.append(v2.MixUp(alpha=float(mixup), num_classes=num_classes))
        if cutmix:
            chosen.append(v2.CutMix(alpha=float(cutmix), num_classes=num_classes))
        self.transform = chosen[0] if len(chosen) == 1 else v2.RandomChoice(chosen)
        self.off_epoch = off_epoch

    def active(self, epoch: int) -> bool:
        """Whether the epoch numbered `epoch` (0-based, all phases together) is mixed."""
        return self.off_epoch is None or epoch < self.off_epoch

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if len(y) < 2:
            return x, y
        mixed, soft = self.transform(x, y)
        return mixed, soft


def build_mixer(cfg, num_classes: int) -> BatchMixer | None:
    """The run's mixer from its options (None when neither mixup nor cutmix is asked for)."""
    if cfg.mixup is None and cfg.cutmix is None:
        return None
    return BatchMixer(num_classes, cfg.mixup, cfg.cutmix, cfg.mixup_off_epoch)
