"""Loader for RLVR-World's web-page (WebArena) state-prediction data.

Rows in verl's RL format as in ``thuml/webarena-world-model-cot`` ``train.parquet`` / ``test.parquet``
(``lang_wm/verl/examples/grpo_trainer/run_web_agent_rl.sh``, github.com/thuml/RLVR-World commit
e1b8b6f): ``prompt``, ``reward_model.ground_truth`` (the gold next-state text), and optionally
``answer`` (the SFT response; without it the MLE target is the ground truth), ``data_source``,
``extra_info``. Files: ``.parquet``, ``.jsonl``, ``.json`` (:mod:`._files`). Every field: docs/worlds.md.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from ..rewards import web_page as _reward
from ..task import Example, RewardLimits
from ._files import describe, field, iter_rows, plain, sft_answer
from .text import TextTask

log = logging.getLogger(__name__)

DATA_SOURCE = "web_agent"
_HEADERS = tuple(name + ":" for name in _reward.SECTIONS)


def _prompt(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if not isinstance(value, list) or len(value) != 1 or not isinstance(value[0], Mapping):
        raise ValueError(
            f"{where}: field 'prompt' must be a list with one {{'role': 'user', 'content': ...}} message, "
            f"got {describe(value)}"
        )
    message = value[0]
    if message.get("role") != "user":
        raise ValueError(f"{where}: field 'prompt[0].role' must be 'user', got {message.get('role')!r}")
    content = message.get("content")
    if not isinstance(content, str):
        raise ValueError(f"{where}: field 'prompt[0].content' must be a str, got {describe(content)}")
    return content


def _example(row: Any, where: str) -> Example:
    if not isinstance(row, Mapping):
        raise ValueError(f"{where}: expected an object with prompt, reward_model; got {describe(row)}")
    row = plain(row)
    source = row.get("data_source")
    if source is not None and source != DATA_SOURCE:
        raise ValueError(f"{where}: field 'data_source' is {source!r}, expected {DATA_SOURCE!r} (web pages)")
    prompt = _prompt(field(row, "prompt", where), where)
    field(row, "reward_model", where, Mapping)
    gold = field(row, "reward_model.ground_truth", where, str)
    extra = field(row, "extra_info", where, Mapping, required=False) or {}
    answer = sft_answer(row, where) or gold  # the SFT response if the row has one
    return Example(prompt=prompt, answer=answer, ground_truth=gold, extra=dict(extra), source=where)


def load_web_page(path: str | os.PathLike, *, limit: int | None = None) -> list[Example]:
    """Read RLVR-World web-page rows (fields: docs/worlds.md) from a ``.parquet``, ``.jsonl``
    or ``.json`` file; ``limit`` keeps the first ``limit`` rows.

    Raises ValueError naming ``file:line`` (or row) and the field for a bad row, and for a file with
    no rows. Rows whose ground truth has none of the section headers load, with one warning per file:
    every completion scores 0 on them.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be None or an int >= 0, got {limit!r}")
    path = os.fspath(path)
    rows = iter_rows(path, limit)
    if limit == 0:
        return []
    out: list[Example] = []
    headerless: list[str] = []
    for where, row in rows:
        ex = _example(row, where)
        if not any(line.strip().startswith(_HEADERS) for line in ex.ground_truth.split("\n")):
            headerless.append(ex.source)
        out.append(ex)
    if not out:
        raise ValueError(f"{path}: no rows")
    if headerless:
        log.warning(
            "%d row(s) of %s have a ground truth with none of the headers %s (first: %s); they score 0",
            len(headerless),
            path,
            ", ".join(_HEADERS),
            headerless[0],
        )
    return out


def web_page_task(
    train_path: str | os.PathLike | None,
    test_path: str | os.PathLike,
    *,
    limit: int | None = None,
    reward: str | None = None,
    limits: RewardLimits = RewardLimits(),
) -> TextTask:
    """The web-page task: :func:`load_web_page` on both splits (``limit`` applies to each), eval by
    :func:`rlvr_fast.rewards.web_page.metrics`, reward ``"web_page/f1"`` (or ``reward``), best checkpoint
    by ``f1``. ``train_path`` None: no train split (evaluation only)."""
    return TextTask(
        "web_page",
        [] if train_path is None else load_web_page(train_path, limit=limit),
        load_web_page(test_path, limit=limit),
        metrics=_reward.metrics,
        default_reward="web_page/f1",
        select_metric="f1",
        reward=reward,
        limits=limits,
    )


__all__ = ["DATA_SOURCE", "load_web_page", "web_page_task"]
