"""The config schema: every knob of swin-train, its type and its allowed values, each group's
checks beside its schema.

The YAML files in conf/ fill these dataclasses. Because the primary config starts from the
`base_config` schema stored here, Hydra rejects unknown keys and wrong types at start-up;
`validate` then checks ranges and cross-field rules that types cannot express, one group at a time.

    root.py    Config (the root: every group, the top-level keys), eval, log, benchmark; the
               checks of the top-level keys, and of data and logger, whose schemas live with
               their code (swin_cli/data/schema.py, swin_cli/loggers/)
    model.py   ModelConfig          aug.py    AugConfig
    optim.py   OptimizerConfig, SchedulerConfig
    train.py   TrainConfig (with EmaConfig, EarlyStoppingConfig)
    errors.py  ConfigError, and `check`, how every check reports

A new key is a field in its group's dataclass, with its default and a comment that says why it
exists, and its check in the same module. Importing this package does not import torch: the
checks that need it (the model's, the data's) import it when they run.
"""

from __future__ import annotations

from typing import Any, Callable

from hydra.core.config_store import ConfigStore

from swin_cli.choices import choices, plain
from swin_cli.config.aug import (
    RANDAUGMENT_MAX_MAGNITUDE,
    AugConfig,
    AutoAugment,
    AutoAugmentPolicy,
    OpSpaceName,
    check_aug,
)
from swin_cli.config.checkpoint import AverageWeights, CheckpointConfig, check_checkpoint
from swin_cli.config.errors import ConfigError
from swin_cli.config.model import AttnImpl, ModelConfig, Stem, check_model
from swin_cli.config.optim import (
    OptimizerConfig,
    OptimizerName,
    SchedulerConfig,
    SchedulerName,
    check_optimizer,
    check_scheduler,
)
from swin_cli.config.root import (
    TTA,
    BenchmarkConfig,
    Config,
    Device,
    EvalConfig,
    LogConfig,
    Mode,
    PredictBackend,
    check_benchmark,
    check_data,
    check_eval,
    check_log,
    check_log_moved_keys,
    check_logger,
    check_mode,
    check_top_level,
)
from swin_cli.config.train import (
    CompileMode,
    EarlyStoppingConfig,
    EmaConfig,
    Precision,
    TrainConfig,
    check_stopping_and_compile,
    check_train,
)
from swin_cli.data.schema import DataConfig

__all__ = [
    "RANDAUGMENT_MAX_MAGNITUDE", "TTA", "AttnImpl", "AugConfig", "AutoAugment", "AutoAugmentPolicy",
    "AverageWeights", "BenchmarkConfig", "CheckpointConfig", "CompileMode", "Config", "ConfigError", "DataConfig",
    "Device", "EarlyStoppingConfig",
    "EmaConfig", "EvalConfig", "LogConfig", "Mode", "ModelConfig", "OpSpaceName", "OptimizerConfig",
    "OptimizerName", "Precision", "PredictBackend", "SchedulerConfig", "SchedulerName", "Stem", "TrainConfig",
    "CHECKS", "choices", "plain", "register_configs", "validate",
]

# Every group's check, in the order validate has always run them: for a config with several
# problems, the first one reported stays the same.
CHECKS: tuple[Callable[[Any], None], ...] = (
    check_top_level, check_log_moved_keys, check_logger, check_mode, check_model, check_data, check_aug,
    check_optimizer, check_scheduler, check_train, check_log, check_benchmark, check_stopping_and_compile,
    check_checkpoint, check_eval,
)


def register_configs() -> None:
    ConfigStore.instance().store(name="base_config", node=Config)


def validate(cfg: Any) -> None:
    """Range and cross-field checks that the schema's types cannot express: the first problem
    found raises ConfigError, one line naming the key."""
    for check_group in CHECKS:
        check_group(cfg)
