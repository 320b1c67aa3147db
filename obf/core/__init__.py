"""The bottom layer: settings, the byte vocabulary, errors, storage through fsspec, host facts,
and bits-per-byte arithmetic. Imports no torch; every other layer imports it.
"""

from obf.core.bits import LN2, bits_per_byte, log_probs_of
from obf.core.config import (
    ConfigError,
    EvaluateConfig,
    ExportConfig,
    GenerateSettings,
    IngestConfig,
    ModelConfig,
    TrainConfig,
)
from obf.core.errors import ObfError
from obf.core.params import Params, load_params
from obf.core.system import usable_cpus
from obf.core.vocab import (
    BOS,
    EOS,
    MODALITIES,
    N_BYTES,
    N_SENTINELS,
    PAD,
    PAIRED_TAGS,
    Vocab,
    encoder_input,
    modality_id,
    paired_input,
    paired_room,
    sentinel_id,
    task_id,
)

__all__ = [
    "bits_per_byte",
    "BOS",
    "ConfigError",
    "encoder_input",
    "EOS",
    "EvaluateConfig",
    "ExportConfig",
    "GenerateSettings",
    "IngestConfig",
    "LN2",
    "load_params",
    "log_probs_of",
    "MODALITIES",
    "modality_id",
    "ModelConfig",
    "N_BYTES",
    "N_SENTINELS",
    "ObfError",
    "PAD",
    "paired_input",
    "paired_room",
    "PAIRED_TAGS",
    "Params",
    "sentinel_id",
    "task_id",
    "TrainConfig",
    "usable_cpus",
    "Vocab",
]
