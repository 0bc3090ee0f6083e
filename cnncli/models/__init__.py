"""Networks: the registry (`build_model`, `create_model`, `list_models`) over three sources (the
hand-built families, one file each; timm; TOML model files), and `info` (what describes them)."""

from cnncli.models.info import BuiltModel, ModelInfo, count_params  # noqa: F401
from cnncli.models.registry import (  # noqa: F401
    HAND_BUILT,
    build_model,
    create_model,
    get_model_info,
    list_models,
)
