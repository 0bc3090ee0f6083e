"""Activations by name ("relu", "tanh", ...), as the seed's tables and the TOML model files give them."""

from __future__ import annotations

from torch import nn

from cnncli.errors import InputError

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "leaky_relu": nn.LeakyReLU,
    "elu": nn.ELU,
    "selu": nn.SELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "swish": nn.SiLU,
    "softmax": nn.Softmax,
}


def make_activation(name: str | None) -> nn.Module:
    """An activation module by name ("relu", "tanh", "sigmoid", ...); None means identity."""
    if name is None or name in ("none", "linear", "identity"):
        return nn.Identity()
    key = name.lower()
    if key not in ACTIVATIONS:
        raise InputError(f"unknown activation '{name}'; use one of {', '.join(ACTIVATIONS)} or none")
    if key == "softmax":
        return nn.Softmax(dim=1)
    if key in ("relu", "silu", "swish", "elu", "selu", "leaky_relu"):
        return ACTIVATIONS[key](inplace=True)
    return ACTIVATIONS[key]()
