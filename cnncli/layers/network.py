"""The interface every hand-built network offers (timm-like), and torchvision's initialisation."""

from __future__ import annotations

import torch
from torch import nn


class Network(nn.Module):
    """Base of the hand-built networks: the small timm-like API that finetune and the
    "backbone + head" model files rely on.

    Subclasses implement `forward_features` (feature maps before the head), `forward_head`
    (which ends with the classifier named by `classifier_name`, honouring pre_logits) and
    `stages` (natural blocks, input to output, without the classifier), and set
    `num_features` and `num_classes`.
    """

    classifier_name = "fc"
    num_features: int
    num_classes: int

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def get_classifier(self) -> nn.Module:
        """The final layer (nn.Linear; nn.Identity after reset_classifier(0))."""
        return getattr(self, self.classifier_name)

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the final layer by a fresh one with `num_classes` outputs (0: identity, the
        network then returns its pre-logits features, as in timm)."""
        old = self.get_classifier()
        in_features = old.in_features if isinstance(old, nn.Linear) else self._classifier_in_features
        self._classifier_in_features = in_features
        ref = next(self.parameters())
        new = (nn.Linear(in_features, num_classes, device=ref.device, dtype=ref.dtype)
               if num_classes > 0 else nn.Identity())
        new.train(self.training)
        setattr(self, self.classifier_name, new)
        self.num_classes = num_classes

    def stages(self) -> list[tuple[str, nn.Module]]:
        raise NotImplementedError

    def _group(self, *names: str) -> nn.Module:
        """One stage made of several attributes (shares their parameters, adds none)."""
        if len(names) == 1:
            return getattr(self, names[0])
        return nn.Sequential(*(getattr(self, n) for n in names))


def init_conv_relu(module: nn.Module) -> None:
    """torchvision's initialisation for ReLU networks without pretrained weights: He normal
    (fan_out) convolutions, N(0, 0.01) linear layers, zero biases, unit batch norms.

    Skipped on the meta device: there is nothing to fill, and torch's random fills on meta
    tensors import torch._dynamo (seconds), which `cnncli inspect` must not pay."""
    if any(p.is_meta for p in module.parameters()):
        return
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)


def dirac_init(conv: nn.Conv2d) -> None:
    """Identity ("dirac") initialisation of a convolution's first min(out, in) filters, the
    rest left as they are (Jordan 2024, airbench): the layer starts by passing its input on,
    so a deep plain stack trains like a residual one at first. Grouped convolutions: per group."""
    if conv.weight.is_meta:
        return
    with torch.no_grad():
        per_group_in = conv.weight.shape[1]
        out_per_group = conv.out_channels // conv.groups
        for g in range(conv.groups):
            w = conv.weight[g * out_per_group:(g + 1) * out_per_group]
            nn.init.dirac_(w[:min(out_per_group, per_group_in)])
