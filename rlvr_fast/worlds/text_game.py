"""Loader for RLVR-World's text-game (ByteSized32 / GPT-simulator) state-prediction data.

Rows in verl's RL format, one state transition each, as RLVR-World writes them
(``lang_wm/data_process/text_game/process_jsonl.py``, github.com/thuml/RLVR-World commit e1b8b6f):
``prompt``, ``reward_model.ground_truth`` (the next state), ``extra_info.data_state`` /
``extra_info.data_action``, and optionally ``answer`` (the SFT response; without it the MLE target is
the gold state diff). Files: ``.parquet``, ``.jsonl``, ``.json`` (:mod:`._files`). Every field, the
SFT data and validation: docs/worlds.md.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from ..rewards import text_game as _reward
from ..task import Example, RewardLimits
from ._files import describe, field, iter_rows, sft_answer
from .text import TextTask

DATA_SOURCE = "llm_simulator"


def load_text_game(path: str | os.PathLike, *, split: str | None = None, limit: int | None = None) -> list[Example]:
    """Read RLVR-World text-game rows (fields: docs/worlds.md) from a local file.

    Args:
        path: a ``.parquet``, ``.jsonl`` or ``.json`` file.
        split: keep only rows whose ``extra_info.split`` equals it (None: all rows).
        limit: keep at most this many examples (after the split filter).
    Returns:
        list of :class:`Example`, in file order.
    Raises:
        ValueError: unknown extension; a row with a missing or invalid field (message
            ``"<path>:<n>: ..."`` naming the field); a file with no matching rows.
    """
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 0):
        raise ValueError(f"limit must be None or an int >= 0, got {limit!r}")
    if split is not None and not isinstance(split, str):
        raise ValueError(f"split must be None or a str, got {type(split).__name__}")
    path = os.fspath(path)
    rows = iter_rows(path, limit if split is None else None)  # with a split, limit counts kept rows
    if limit == 0:
        return []
    out: list[Example] = []
    for where, row in rows:
        example = _example(row, where, split)
        if example is None:
            continue
        out.append(example)
        if limit is not None and len(out) >= limit:
            break
    if not out:
        raise ValueError(f"{path}: no rows" + (f" with extra_info.split == {split!r}" if split else ""))
    return out


def text_game_task(
    train_path: str | os.PathLike | None,
    test_path: str | os.PathLike,
    *,
    train_split: str | None = None,
    test_split: str | None = None,
    limit: int | None = None,
    nongold_path: str | os.PathLike | None = None,
    reward: str | None = None,
    limits: RewardLimits = RewardLimits(),
) -> TextTask:
    """The text-game task: :func:`load_text_game` on both files (``limit`` applies to each), eval by
    :func:`rlvr_fast.rewards.text_game.metrics`, reward ``"text_game/task"`` (or ``reward``), best
    checkpoint by ``exact``. ``train_path`` None: no train split (evaluation only).

    nongold_path: a second training file in the same format (``train_split`` and ``limit`` apply), the
    task's ``train_pool``: RLVR-World's ``train_state_difference_non_gold.parquet``, from which the trainer
    draws ``data.nongold_rows`` rows per epoch (``+data.sample_no_gold_data_file`` in
    ``lang_wm/verl/examples/grpo_trainer/run_text_game_rl.sh``, thuml/RLVR-World e1b8b6f). Not read
    without ``train_path``."""
    pool = []
    if train_path is not None and nongold_path is not None:
        pool = load_text_game(nongold_path, split=train_split, limit=limit)
    return TextTask(
        "text_game",
        [] if train_path is None else load_text_game(train_path, split=train_split, limit=limit),
        load_text_game(test_path, split=test_split, limit=limit),
        train_pool=pool,
        metrics=_reward.metrics,
        default_reward="text_game/task",
        select_metric="exact",
        reward=reward,
        limits=limits,
    )


# ---------------------------------------------------------------------------------------------------


def _prompt(value: Any, where: str) -> str:
    if isinstance(value, str):
        return value
    if hasattr(value, "tolist"):  # a numpy array, as pandas hands list columns over
        value = value.tolist()
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where}: field 'prompt' must be a str or a non-empty list of messages")
    parts = []
    for i, message in enumerate(value):
        content = message.get("content") if isinstance(message, Mapping) else None
        if not isinstance(content, str):
            raise ValueError(f"{where}: field 'prompt[{i}].content' must be a str, got {describe(content)}")
        parts.append(content)
    return "\n".join(parts)


def _state_text(value: Any, name: str, where: str) -> str:
    if isinstance(value, Mapping):  # a state stored as an object: keep the reward's str contract
        return json.dumps(value)
    if not isinstance(value, str):
        raise ValueError(f"{where}: field {name!r} must be a JSON string, got {describe(value)}")
    return value


def _example(row: Any, where: str, split: str | None) -> Example | None:
    if not isinstance(row, Mapping):
        raise ValueError(f"{where}: expected an object with prompt, reward_model, extra_info; got {describe(row)}")
    source = row.get("data_source")
    if source is not None and source != DATA_SOURCE:
        raise ValueError(f"{where}: field 'data_source' is {source!r}, expected {DATA_SOURCE!r} (text game)")
    field(row, "extra_info", where, Mapping)
    if split is not None and field(row, "extra_info.split", where) != split:
        return None
    prompt = _prompt(field(row, "prompt", where), where)
    field(row, "reward_model", where, Mapping)
    gold = _state_text(field(row, "reward_model.ground_truth", where), "reward_model.ground_truth", where)
    state = _state_text(field(row, "extra_info.data_state", where), "extra_info.data_state", where)
    action = field(row, "extra_info.data_action", where)
    answer = sft_answer(row, where)  # the SFT response if the row has one
    try:
        curr, nxt = json.loads(state), json.loads(gold)
    except (ValueError, RecursionError) as e:  # RecursionError: nested too deep to parse
        raise ValueError(f"{where}: extra_info.data_state or reward_model.ground_truth is not JSON ({e})") from None
    try:
        diff = _reward.state_diff(curr, nxt)
    except ValueError as e:
        names = {"curr_state": "extra_info.data_state", "next_state": "reward_model.ground_truth"}
        message = str(e)
        for old, new in names.items():
            message = message.replace(old, new)
        raise ValueError(f"{where}: {message}") from None
    return Example(
        prompt=prompt,
        answer=answer or json.dumps(diff),
        ground_truth=gold,
        extra={"data_state": state, "data_action": action},
        source=where,
    )


__all__ = ["DATA_SOURCE", "load_text_game", "text_game_task"]
