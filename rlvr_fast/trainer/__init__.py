"""The GRPO trainer for world models: config tree, rollout, the loop, checkpoints and logging.

``train(load_config("x.yaml", ["trainer.lr=1e-5"]))`` or ``rlvr-fast train --config x.yaml ...``.
"""

from .checkpoint import CheckpointError
from .config import Config, ConfigError, describe, load_config
from .grpo import GRPOTrainer, train

__all__ = ["CheckpointError", "Config", "ConfigError", "GRPOTrainer", "describe", "load_config", "train"]
