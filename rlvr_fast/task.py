"""The task contract: what every world gives the trainer, and the one way the trainer scores rollouts.

This module is the ground floor above the ops: rewards, worlds and the trainer import it; it imports
nothing from the package. A task is a :class:`Task` subclass:

- ``encode(example, tokenizer, chat_template) -> (prompt ids, answer ids)``;
- ``score(rollout, examples, group_size) -> Scored``: the reward of every rollout and its metrics
  (training: groups of ``group_size``); ``evaluate(rollout, examples)``: the metrics of greedy held-out
  rollouts, by default those of ``score`` with groups of 1 (a text task skips its reward there);
- optional: ``tokenizer`` (a task that ships its own), ``response_length`` / ``forced_slots`` (fixed
  response layouts), ``preview`` (a picture of held-out predictions), ``save_assets`` (files a model
  checkpoint needs besides the model).

Text worlds use :class:`rlvr_fast.worlds.text.TextTask` (a registered string reward run in worker
processes); video worlds :class:`rlvr_fast.worlds.video_task.VideoTask` (the pixel reward on the device).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, NamedTuple, Protocol, Sequence

import torch


@dataclass(frozen=True)
class Example:
    """One state-prediction problem of a text world.

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


@dataclass
class ScoreStats:
    """Reward calls that failed while scoring one batch (each got the failure reward)."""

    errors: int = 0
    timeouts: int = 0
    non_finite: int = 0

    @property
    def failures(self) -> int:
        return self.errors + self.timeouts + self.non_finite


class Scored(NamedTuple):
    """What :meth:`Task.score` returns for B rollouts.

    scores:        float32 [B] on the rollouts' device, the outcome reward of each rollout.
    token_rewards: float32 [B, R] token-level rewards whose row sums are ``scores`` (verl's layout:
                   the reward on the last response token), or None for outcome-only tasks.
    metrics:       {name: [B]} per-rollout metrics (float32 on the device; a text task's host-side metrics
                   float64 on the CPU, their exact values).
    stats:         failed reward calls (:class:`ScoreStats`).
    """

    scores: torch.Tensor
    token_rewards: torch.Tensor | None
    metrics: dict[str, torch.Tensor]
    stats: ScoreStats


class Generated(Protocol):
    """The rollout batch a task scores (the trainer's ``Rollout``)."""

    completions: list[str]  # decoded responses (text tasks)

    @property
    def responses(self) -> torch.Tensor: ...  # int64 [B, R] response token ids

    @property
    def present(self) -> torch.Tensor: ...  # bool [B, R] tokens that exist (generated or forced, incl. EOS)


@dataclass(frozen=True)
class RewardLimits:
    """How a host-side (string) reward runs: per-call time limit, the value a failed call gets, and the
    number of worker processes (:func:`rlvr_fast.rewards.score`)."""

    timeout_s: float = 10.0
    failure_reward: float = 0.0
    workers: int = 4


class Task:
    """Base class of a world-model task (module docstring). Subclasses set the attributes below in
    ``__init__`` and implement :meth:`encode` and :meth:`score`.

    name: the world's registry name. train / test: the examples of each split (any objects the task's
    methods understand). select_metric: the held-out metric (higher is better) that picks the best
    checkpoint. train_pool: more training examples of which the trainer draws ``data.nongold_rows`` at
    random with replacement every epoch (RLVR-World's non-gold text-game rows); empty for most tasks.
    """

    name: str
    train: list[Any]
    train_pool: Sequence[Any] = ()
    test: list[Any]
    select_metric: str
    tokenizer: Any = None  # a transformers tokenizer the task ships (built-in worlds), else the model's
    response_length: int | None = None  # every response has exactly this many tokens
    forced_slots: list[bool] | None = None  # per response position: an input forced during generation
    ignore_eos: bool = False  # generation runs to response_length whatever it samples (no EOS in the layout)
    preview_count: int = 0  # held-out examples drawn by preview()

    def encode(self, example: Any, tokenizer: Any, *, chat_template: bool) -> tuple[list[int], list[int]]:
        """(prompt ids, answer ids) of one example: the prompt the policy continues and the MLE target."""
        raise NotImplementedError

    def score(self, rollout: Generated, examples: Sequence[Any], group_size: int) -> Scored:
        """Rewards and metrics of B = len(examples) rollouts (groups of ``group_size`` contiguous)."""
        raise NotImplementedError

    def evaluate(self, rollout: Generated, examples: Sequence[Any]) -> dict[str, torch.Tensor]:
        """Metrics {name: [B]} of B greedy held-out rollouts, one per example: the trainer reports their means
        and selects checkpoints by ``select_metric``. By default :meth:`score`'s with groups of 1; a task
        whose reward is work its metrics do not need (text tasks: worker processes) leaves it out."""
        return self.score(rollout, examples, 1).metrics

    def preview(self, path: Path, stages: dict[str, tuple[list[Any], torch.Tensor, torch.Tensor]]) -> Path | None:
        """Draw held-out predictions (``stages``: {"mle" | "rlvr": (examples, responses, present)}) to
        ``path``; None when the task has no picture."""
        return None

    def save_assets(self, directory: Path) -> None:
        """Write what a model checkpoint in ``directory`` needs besides the model (nothing by default)."""


__all__ = ["Example", "Generated", "RewardLimits", "ScoreStats", "Scored", "Task"]
