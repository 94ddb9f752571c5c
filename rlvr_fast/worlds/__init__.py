"""Datasets for world-model RLVR: built-in synthetic worlds and loaders for RLVR-World's formats.

Every task is a :class:`Task`: train and held-out lists of :class:`Example` plus the metric function
used for evaluation. ``load_task`` is the one entry point the trainer and the CLI use.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping


@dataclass(frozen=True)
class Example:
    """One state-prediction problem.

    prompt:       the text the model is conditioned on (current state + action, task instructions).
    answer:       the gold response text, the MLE target (e.g. the gold state diff as JSON).
    ground_truth: what the verifiable reward compares against (e.g. the gold next state as JSON,
                  RLVR-World's ``reward_model.ground_truth``).
    extra:        task-specific fields the reward needs (text game: ``data_state``, ``data_action``).
    source:       where it came from, ``file:line`` for loaded data (used in error messages).
    """

    prompt: str
    answer: str
    ground_truth: str
    extra: Mapping[str, Any] = field(default_factory=dict)
    source: str = ""


MetricFn = Callable[[str, Example], "dict[str, float]"]


@dataclass
class Task:
    """A world-model task: data splits, the eval metric function, and the default reward name.

    metrics(completion, example) -> {name: float}; the trainer averages each over the held-out split
    and selects the best checkpoint by ``select_metric``. ``tokenizer`` is set by built-in worlds that
    ship their own (a ``transformers.PreTrainedTokenizerFast``); loaded tasks use the model's.
    """

    name: str
    train: list[Example]
    test: list[Example]
    metrics: MetricFn
    default_reward: str
    select_metric: str
    tokenizer: Any = None


WORLDS = ("synthetic_text_game", "text_game", "web_page")


def load_task(cfg, seed: int = 0) -> Task:
    """The task named by ``cfg.world`` (:class:`rlvr_fast.trainer.config.DataConfig`).

    ``synthetic_text_game``: generated from ``seed`` (``n_train`` / ``n_test`` transitions).
    ``text_game`` / ``web_page``: RLVR-World's files from ``train_path`` and ``test_path``.
    """
    if cfg.world == "synthetic_text_game":
        from .synthetic import synthetic_text_game_task

        return synthetic_text_game_task(seed=seed, n_train=cfg.n_train, n_test=cfg.n_test, uuids=cfg.synthetic_uuids)
    if cfg.world == "text_game":
        from .text_game import text_game_task

        return text_game_task(cfg.train_path, cfg.test_path, limit=cfg.limit)
    if cfg.world == "web_page":
        from .web_page import web_page_task

        return web_page_task(cfg.train_path, cfg.test_path, limit=cfg.limit)
    raise ValueError(f"data.world: unknown world {cfg.world!r}; choose one of {list(WORLDS)}")
