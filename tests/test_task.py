"""The task contract in use: the world registry (``load_task``), a text task's one scoring call, and the
trainer's options for the loaders."""

from __future__ import annotations

import inspect
from typing import NamedTuple

import pytest
import torch

from rlvr_fast import rewards
from rlvr_fast.task import Example, RewardLimits, ScoreStats
from rlvr_fast.trainer import config as C
from rlvr_fast.trainer.tasks import task_options
from rlvr_fast.worlds import WORLDS, load_task, loader
from rlvr_fast.worlds.text import TextTask


class _Generated(NamedTuple):
    completions: list[str]
    responses: torch.Tensor


def _length(completion: str, example: Example) -> float:
    if completion == "boom":
        raise RuntimeError("boom")
    return float(len(completion))


def _metrics(completion: str, example: Example) -> dict[str, float]:
    if completion == "boom":
        raise RuntimeError("no metric")
    out = {"len": len(completion) / 3}
    if completion.startswith("a"):
        out["starts_a"] = 1.0
    return out


def _task(**kwargs) -> TextTask:
    ex = Example(prompt="p", answer="a", ground_truth="g", source="here:1")
    return TextTask(
        "toy", [ex], [ex], metrics=_metrics, default_reward=f"{__name__}:_length", select_metric="len", **kwargs
    )


def test_text_task_scores_with_its_reward_and_reports_every_metric():
    task = _task(limits=RewardLimits(workers=1, failure_reward=-1.0))
    assert task.reward == task.default_reward == f"{__name__}:_length"
    completions = ["ab", "boom", "xyz", "a"]
    rollout = _Generated(completions, torch.zeros(4, 3, dtype=torch.long))
    scored = task.score(rollout, task.test * 4, 2)
    assert scored.scores.dtype == torch.float32 and scored.scores.tolist() == [2.0, -1.0, 3.0, 1.0]
    assert scored.token_rewards is None and scored.stats == ScoreStats(errors=1)
    # the union of the metric names, 0 where a call lacks one or raised: held-out means count every example
    assert sorted(scored.metrics) == ["len", "starts_a"]
    assert scored.metrics["len"].tolist() == [2 / 3, 0.0, 1.0, 1 / 3]  # float64: the metric's own values
    assert scored.metrics["starts_a"].tolist() == [1.0, 0.0, 0.0, 1.0]
    assert {k: v.tolist() for k, v in task.evaluate(rollout, task.test * 4).items()} == {
        k: v.tolist() for k, v in scored.metrics.items()
    }
    rewards.close_pool()


def test_text_task_reward_name_is_resolved_when_built():
    assert _task(reward="text_game/binary").reward == "text_game/binary"
    with pytest.raises(ValueError, match="unknown reward 'nope'"):
        _task(reward="nope")


def test_load_task_passes_the_options_its_loader_names():
    task = load_task("synthetic_text_game", seed=0, n_train=4, n_test=2, uuids="by_name")
    assert (task.name, len(task.train), len(task.test), task.reward) == ("synthetic_text_game", 4, 2, "text_game/task")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['frame_size'\]"):
        load_task("synthetic_text_game", seed=0, n_train=4, n_test=2, frame_size=[8, 8])
    loose = load_task("synthetic_text_game", strict=False, seed=0, n_train=4, n_test=2, frame_size=[8, 8])
    assert len(loose.train) == 4
    with pytest.raises(ValueError, match=r"missing option\(s\) \['test_path'\]"):
        load_task("text_game", train_path=None)
    with pytest.raises(ValueError, match=r"unknown world 'nope'; choose one of \['synthetic_text_game'"):
        load_task("nope")


def test_video_loaders_refuse_a_reward_name():
    cfg = C.load_config(None, ["data.world=sprite_video"])
    options = {**task_options(cfg), "reward": "text_game/task"}
    with pytest.raises(ValueError, match="reward.name='text_game/task' does not apply to sprite_video"):
        load_task("sprite_video", strict=False, **options, frame_tokenizer=None)


def test_every_world_is_a_config_choice_and_the_trainer_gives_its_loader_what_it_needs():
    assert C.DataConfig.__dataclass_fields__["world"].metadata["choices"] == tuple(WORLDS)
    given = set(task_options(C.Config())) | {"device", "frame_tokenizer"}
    for name in WORLDS:
        params = inspect.signature(loader(name)).parameters.values()
        required = {p.name for p in params if p.default is p.empty and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
        assert required <= given, (name, required - given)
