"""Learned and random augmentation policies, per sample, from torchvision.transforms.v2.

`randaugment` (Cubuk et al. 2020: N random operations at magnitude M), `trivialaugment`
(TrivialAugment Wide: one operation at a random magnitude), `autoaugment` (the policy
learned on imagenet, cifar10 or svhn) and `augmix` (Hendrycks et al. 2020, at a severity).
Each image gets its own operations and magnitudes: torchvision's policies draw one set per
call, so the in-memory path calls them once per sample of a uint8 batch (`apply_policy`),
and the streaming pipeline uses the same transform per sample in its workers
(`policy_transform`). The draws come from torch's generator seeded by the batch's own
generator, so a step's augmentation is a pure function of (seed, epoch, step), as the rest.

Spec forms (inside `--augment`): `randaugment`, `randaugment=M` (magnitude 0..30, default 9),
`randaugment=M:N` (and N operations, 1..14, default 2), `trivialaugment`,
`autoaugment`, `autoaugment=cifar10|imagenet|svhn`, `augmix`, `augmix=S` (severity 1..10).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from cnncli.errors import InputError

POLICIES = ("randaugment", "trivialaugment", "autoaugment", "augmix")
AUTOAUGMENT_POLICIES = ("imagenet", "cifar10", "svhn")
MAX_MAGNITUDE = 30  # torchvision's 31 magnitude bins
MAX_OPS = 14  # RandAugment's operation list


@dataclass(frozen=True)
class Policy:
    """One policy and its parameters (already checked)."""

    name: str
    magnitude: int | None = None
    count: int | None = None
    variant: str | None = None  # autoaugment's policy
    severity: int | None = None  # augmix

    @property
    def arg(self) -> str:
        if self.name == "randaugment" and self.magnitude is not None:
            return f"{self.magnitude}:{self.count}" if self.count is not None else str(self.magnitude)
        if self.name == "autoaugment" and self.variant:
            return self.variant
        if self.name == "augmix" and self.severity is not None:
            return str(self.severity)
        return ""

    def __str__(self) -> str:
        return f"{self.name}={self.arg}" if self.arg else self.name


def _integer(text: str, what: str, low: int, high: int, name: str) -> int:
    try:
        value = float(text)
    except ValueError:
        raise InputError(f"augmentation {name}: '{text}' is not a number ({what})") from None
    if value != int(value) or not low <= value <= high:
        raise InputError(f"augmentation {name}={text}: the {what} must be a whole number in [{low}, {high}]")
    return int(value)


def parse_policy(name: str, raw: str) -> Policy:
    """`name` (one of POLICIES) with its `raw` value ('' for the defaults) as a checked Policy."""
    raw = raw.strip()
    if name == "randaugment":
        if not raw:
            return Policy(name)
        m, _, n = raw.partition(":")
        magnitude = _integer(m, "magnitude", 0, MAX_MAGNITUDE, name)
        count = _integer(n, "number of operations", 1, MAX_OPS, name) if n.strip() else None
        return Policy(name, magnitude=magnitude, count=count)
    if name == "trivialaugment":
        if raw:
            raise InputError(f"augmentation trivialaugment takes no value (it draws its own magnitudes), got '{raw}'")
        return Policy(name)
    if name == "autoaugment":
        if raw and raw.lower() not in AUTOAUGMENT_POLICIES:
            raise InputError(f"augmentation autoaugment={raw}: choose one of {', '.join(AUTOAUGMENT_POLICIES)}")
        return Policy(name, variant=raw.lower() or None)
    if name == "augmix":
        return Policy(name, severity=_integer(raw, "severity", 1, 10, name) if raw else None)
    raise InputError(f"unknown augmentation policy '{name}'; valid: {', '.join(POLICIES)}")


def policy_transform(policy: Policy | str):
    """The torchvision.transforms.v2 transform of a policy, for one image (C, H, W) uint8 at a time."""
    from torchvision.transforms import v2

    if isinstance(policy, str):
        name, _, raw = policy.partition("=")
        policy = parse_policy(name.strip().lower(), raw)
    if policy.name == "randaugment":
        return v2.RandAugment(num_ops=2 if policy.count is None else policy.count,
                              magnitude=9 if policy.magnitude is None else policy.magnitude)
    if policy.name == "trivialaugment":
        return v2.TrivialAugmentWide()
    if policy.name == "autoaugment":
        return v2.AutoAugment(v2.AutoAugmentPolicy(policy.variant or "imagenet"))
    return v2.AugMix(severity=3 if policy.severity is None else policy.severity)


class PolicyAugment:
    """A policy over a batch (N, C, H, W), each sample on its own draws; uint8 in and out."""

    def __init__(self, policy: Policy):
        self.policy = policy
        self.transform = policy_transform(policy)

    def __call__(self, batch: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        if batch.shape[0] == 0:
            return batch
        as_uint8 = batch.dtype == torch.uint8
        x = batch if as_uint8 else (batch.clamp(0, 1) * 255).round().to(torch.uint8)
        device = x.device
        x = x.cpu()
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        with torch.random.fork_rng(devices=[]):  # torchvision draws from the global generator
            torch.manual_seed(seed)
            out = torch.stack([self.transform(image) for image in x])
        out = out.to(device)
        return out if as_uint8 else out.to(batch.dtype) / 255


def apply_policy(batch: torch.Tensor, policy: Policy | str, generator: torch.Generator | None = None) -> torch.Tensor:
    """One policy over a batch, per sample (see PolicyAugment)."""
    if isinstance(policy, str):
        name, _, raw = policy.partition("=")
        policy = parse_policy(name.strip().lower(), raw)
    return PolicyAugment(policy)(batch, generator)
