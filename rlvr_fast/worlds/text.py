"""Text tasks: examples are :class:`~rlvr_fast.task.Example` s, prompts and answers go through the model's
tokenizer, and the reward is a registered string reward (:mod:`rlvr_fast.rewards`) run in worker processes."""

from __future__ import annotations

import logging
from typing import Any, Callable, Sequence

import torch

from .. import rewards
from ..task import Example, Generated, RewardLimits, Scored, Task

log = logging.getLogger(__name__)

MetricFn = Callable[[str, Example], "dict[str, float]"]


def encode_prompt(tokenizer, text: str, chat_template: bool) -> list[int]:
    """Token ids of a prompt: through the chat template when asked and available, else plain
    ``tokenizer(text)``; a BOS distinct from EOS is prepended when the tokenizer did not add it."""
    if chat_template and getattr(tokenizer, "chat_template", None):
        ids = tokenizer.apply_chat_template(
            [{"role": "user", "content": text}], add_generation_prompt=True, tokenize=True
        )
        if isinstance(ids, dict) or hasattr(ids, "input_ids"):  # transformers 5 may return a BatchEncoding
            ids = ids["input_ids"]
        ids = list(ids)
    else:
        ids = tokenizer(text, add_special_tokens=True)["input_ids"]
    bos = tokenizer.bos_token_id
    if bos is not None and bos != tokenizer.eos_token_id and (not ids or ids[0] != bos):
        ids = [bos, *ids]
    return ids


def encode_answer(tokenizer, text: str) -> list[int]:
    """Token ids of a gold response followed by EOS (the MLE target)."""
    return [*tokenizer(text, add_special_tokens=False)["input_ids"], tokenizer.eos_token_id]


class TextTask(Task):
    """A text world-model task.

    metrics:        ``(completion, example) -> {name: float}``, the per-rollout metrics (held-out means
                    are reported; ``select_metric`` picks the best checkpoint, higher is better).
    default_reward: the world's registered reward name; ``reward``: the one in use (``reward`` given,
                    else the default), resolved by :func:`rlvr_fast.rewards.get_reward`.
    limits:         how the reward calls run (:class:`~rlvr_fast.task.RewardLimits`).
    tokenizer:      a ``transformers`` tokenizer the world ships (built-in worlds), else None (the model's).
    train_pool:     more training examples, drawn per epoch by the trainer (``data.nongold_rows``).
    """

    def __init__(
        self,
        name: str,
        train: list[Example],
        test: list[Example],
        *,
        metrics: MetricFn,
        default_reward: str,
        select_metric: str,
        tokenizer: Any = None,
        reward: str | None = None,
        limits: RewardLimits = RewardLimits(),
        train_pool: Sequence[Example] = (),
    ):
        self.name, self.train, self.test, self.train_pool = name, train, test, list(train_pool)
        self.metrics, self.default_reward, self.select_metric = metrics, default_reward, select_metric
        self.tokenizer = tokenizer
        self.reward = reward or default_reward
        self.limits = limits
        self._reward_fn = rewards.get_reward(self.reward)  # an unknown name fails here, not after the MLE stage

    def encode(self, example: Example, tokenizer: Any, *, chat_template: bool) -> tuple[list[int], list[int]]:
        return encode_prompt(tokenizer, example.prompt, chat_template), encode_answer(tokenizer, example.answer)

    def score(self, rollout: Generated, examples: Sequence[Example], group_size: int) -> Scored:
        """The reward of every completion (a failed call gets ``limits.failure_reward`` and is counted in
        ``stats``) and its metrics; ``group_size`` does not matter to a per-completion reward."""
        lim = self.limits
        raw, stats = rewards.score(
            self._reward_fn,
            rollout.completions,
            examples,
            timeout_s=lim.timeout_s,
            failure_reward=lim.failure_reward,
            workers=lim.workers,
        )
        scores = torch.tensor(raw, dtype=torch.float32, device=rollout.responses.device)
        return Scored(scores, None, self._metrics(rollout.completions, examples), stats)

    def evaluate(self, rollout: Generated, examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        """The metrics alone: held-out evaluation does not run the reward."""
        return self._metrics(rollout.completions, examples)

    def _metrics(self, completions: Sequence[str], examples: Sequence[Example]) -> dict[str, torch.Tensor]:
        """{name: float64 [B] on the CPU}: each metric over the union of the names, 0.0 where a call lacks it
        or raised. They are computed on the host; float64 keeps their exact values (held-out means as before)."""
        rows: list[dict[str, float]] = []
        for text, ex in zip(completions, examples):
            try:
                rows.append({k: float(v) for k, v in self.metrics(text, ex).items()})
            except Exception as e:  # noqa: BLE001 - a metric failure scores 0, like a reward failure
                log.debug("metric failed on %s: %r", ex.source, e)
                rows.append({})
        names = sorted({k for row in rows for k in row})
        return {k: torch.tensor([row.get(k, 0.0) for row in rows], dtype=torch.float64) for k in names}


__all__ = ["MetricFn", "TextTask", "encode_answer", "encode_prompt"]
