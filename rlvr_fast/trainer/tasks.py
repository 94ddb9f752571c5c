"""The trainer's task: the registered world named by ``data.world``, built from the configuration."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Callable

from ..task import RewardLimits, Task
from ..worlds import load_task
from .config import Config
from .frame_tokenizer import frame_tokenizer_source


def task_options(cfg: Config) -> dict[str, Any]:
    """Every setting a world's loader may take, by its parameter name: the ``data`` and ``video`` sections
    but ``data.world`` (``data.synthetic_uuids`` as ``uuids``), ``seed`` (``trainer.seed``), ``reward``
    (``reward.name``) and ``limits`` (the rest of the ``reward`` section)."""
    options = {**dataclasses.asdict(cfg.video), **dataclasses.asdict(cfg.data)}
    del options["world"]  # the name load_task looks up, not an option
    options["uuids"] = options.pop("synthetic_uuids")
    r = cfg.reward
    options.update(
        seed=cfg.trainer.seed,
        reward=r.name,
        limits=RewardLimits(timeout_s=r.timeout_s, failure_reward=r.failure_reward, workers=r.workers),
    )
    return options


def build_task(
    cfg: Config,
    device,
    *,
    cache_dir: str | Path | None = None,
    main: bool = True,
    sync: Callable[[], Any] = lambda: None,
) -> Task:
    """``load_task(cfg.data.world, ...)`` with :func:`task_options` and, for video worlds, the run's frame
    tokenizer (:func:`~rlvr_fast.trainer.frame_tokenizer.frame_tokenizer_source`: ``cache_dir`` caches a
    trained one, rank ``main`` trains it, ``sync()`` is a barrier, ``model.path`` may hold one)."""
    tokenizer = frame_tokenizer_source(
        cfg.video,
        device=device,
        seed=cfg.trainer.seed,
        cache_dir=cache_dir,
        main=main,
        sync=sync,
        checkpoint=cfg.model.path,
        cpu_threads=cfg.trainer.cpu_threads,
        progress=cfg.trainer.progress,
    )
    return load_task(cfg.data.world, strict=False, **task_options(cfg), device=device, frame_tokenizer=tokenizer)


def check_positions(task: Task, module, cfg: Config, prompt: int) -> None:
    """A task of fixed-length responses (the video layouts) must fit the model's positions: the longest
    kept prompt (``prompt`` tokens) + the response <= ``module.config.max_position_embeddings``; checked
    before any rollout engine starts, so a too-short tiny model fails at once, naming the key."""
    limit = getattr(module.config, "max_position_embeddings", None)
    if task.response_length is None or not limit:
        return
    need = prompt + task.response_length
    if need > limit:
        fix = (
            f"the model at model.path {cfg.model.path!r} has {limit} positions"
            if cfg.model.path
            else f"set model.max_position_embeddings >= {need} (now {limit})"
        )
        raise ValueError(
            f"{task.name}: sequences are {need} tokens ({prompt} prompt + {task.response_length} response), "
            f"more than the model's {limit} positions: {fix}"
        )


__all__ = ["build_task", "check_positions", "task_options"]
