"""`obf.config`: the settings dataclasses under their public name (DESIGN.md's public API,
`from obf.config import ModelConfig`). They live in `obf.core.config`; library code imports them
from there."""

from obf.core.config import (
    ConfigError,
    EvaluateConfig,
    ExportConfig,
    GenerateSettings,
    IngestConfig,
    ModelConfig,
    TrainConfig,
)
from obf.core.params import Params, load_params

__all__ = [
    "ConfigError",
    "EvaluateConfig",
    "ExportConfig",
    "GenerateSettings",
    "IngestConfig",
    "ModelConfig",
    "Params",
    "TrainConfig",
    "load_params",
]
