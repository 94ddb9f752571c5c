"""Verifiable rewards: one registry for every reward the trainer can use.

A reward is ``fn(completion: str, example: Example) -> float``. Built-in names resolve lazily (their
modules import only when used); ``"package.module:function"`` names a user's own function.
:func:`score` applies one to a batch with a per-call time limit and a failure value, so a reward
that raises or hangs never kills a run.
"""

from __future__ import annotations

import concurrent.futures as cf
import importlib
import logging
import math
import time
from dataclasses import dataclass
from typing import Callable, Sequence

from ..worlds import Example

log = logging.getLogger(__name__)

RewardFn = Callable[[str, Example], float]

# name -> (module, attribute); imported on first use so `import rlvr_fast.rewards` stays light.
_BUILTIN: dict[str, tuple[str, str]] = {
    "text_game/binary": ("rlvr_fast.rewards.text_game", "binary_reward"),
    "text_game/task": ("rlvr_fast.rewards.text_game", "task_reward"),
    "web_page/f1": ("rlvr_fast.rewards.web_page", "f1_reward"),
}
_USER: dict[str, RewardFn] = {}


def register_reward(name: str, fn: RewardFn | None = None):
    """Register ``fn`` under ``name`` (usable as a decorator). Names must be new."""

    def add(f: RewardFn) -> RewardFn:
        if name in _BUILTIN or name in _USER:
            raise ValueError(f"reward {name!r} is already registered")
        _USER[name] = f
        return f

    return add(fn) if fn is not None else add


def reward_names() -> list[str]:
    """All registered reward names (built-in and user-registered)."""
    return sorted([*_BUILTIN, *_USER])


def get_reward(name: str) -> RewardFn:
    """Resolve a registered name or a ``"module:function"`` path to the reward function."""
    if name in _USER:
        return _USER[name]
    if name in _BUILTIN:
        module, attr = _BUILTIN[name]
        return getattr(importlib.import_module(module), attr)
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            fn = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"reward {name!r}: cannot import {attr!r} from {module!r} ({e})") from e
        if not callable(fn):
            raise ValueError(f"reward {name!r} is not callable")
        return fn
    raise ValueError(f"unknown reward {name!r}; choose one of {reward_names()} or give 'module:function'")


@dataclass
class ScoreStats:
    """Failures counted while scoring one batch."""

    errors: int = 0
    timeouts: int = 0
    non_finite: int = 0


def score(
    fn: RewardFn,
    completions: Sequence[str],
    examples: Sequence[Example],
    *,
    timeout_s: float = 10.0,
    failure_reward: float = 0.0,
    workers: int = 4,
) -> tuple[list[float], ScoreStats]:
    """Score each completion; a call that raises, returns a non-number or NaN, or runs longer than
    ``timeout_s`` (measured from its own start) gets ``failure_reward`` and is counted in the
    returned :class:`ScoreStats`. Results keep the input order.

    Calls run on a thread pool. Python cannot kill a thread, so a call that times out is abandoned
    with its worker; once every worker of the pool is stuck, the calls not yet started move to a
    fresh pool. The run always goes on.
    """
    if len(completions) != len(examples):
        raise ValueError(f"completions ({len(completions)}) and examples ({len(examples)}) differ in length")
    workers = max(1, workers)
    stats = ScoreStats()
    out = [float(failure_reward)] * len(completions)
    started: dict[int, float] = {}

    def call(i: int):
        started[i] = time.monotonic()
        return fn(completions[i], examples[i])

    pool = cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="reward")
    live = {pool.submit(call, i): i for i in range(len(completions))}
    stuck = 0
    try:
        while live:
            done, _ = cf.wait(live, timeout=min(0.05, timeout_s), return_when=cf.FIRST_COMPLETED)
            for fut in done:
                i = live.pop(fut)
                out[i] = _checked(fut, stats, out[i], examples[i], fn)
            now = time.monotonic()
            for fut, i in list(live.items()):
                if i in started and now - started[i] > timeout_s:
                    del live[fut]
                    stats.timeouts += 1
                    stuck += 1
            if stuck >= workers and live:  # every worker is stuck: move what has not started
                pool.shutdown(wait=False, cancel_futures=True)
                pool = cf.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="reward")
                stuck = 0
                # calls already running keep their futures; the rest are resubmitted
                live = {f: i for f, i in live.items() if i in started} | {
                    pool.submit(call, i): i for i in live.values() if i not in started}
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
    if stats.timeouts:
        log.warning("%d reward call(s) ran past %.1f s and got the failure reward", stats.timeouts, timeout_s)
    return out, stats


def _checked(fut: cf.Future, stats: ScoreStats, failure: float, example: Example, fn) -> float:
    try:
        value = float(fut.result())
    except Exception as e:  # noqa: BLE001 - a user's reward may raise anything
        stats.errors += 1
        log.debug("reward %s failed with %r on %s", getattr(fn, "__name__", fn), e, example.source or "an example")
        return failure
    if not math.isfinite(value):
        stats.non_finite += 1
        return failure
    return value


__all__ = ["RewardFn", "ScoreStats", "get_reward", "register_reward", "reward_names", "score"]
