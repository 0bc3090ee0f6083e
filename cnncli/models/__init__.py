"""Networks: the registry (`create_model`, `list_models`) and one file per hand-built family."""

from cnncli.models.registry import (  # noqa: F401
    HAND_BUILT,
    ModelInfo,
    count_params,
    create_model,
    get_model_info,
    list_models,
)
