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
TokenScoreFn = Callable[..., "tuple[Any, dict[str, Any]]"]


@dataclass
class Task:
    """A world-model task: data splits, the eval metric function, and the default reward name.

    Text tasks: examples are :class:`Example` s; ``metrics(completion, example) -> {name: float}``; the
    reward is the registry's ``default_reward`` (or ``reward.name``), applied to completion strings.
    The trainer averages each metric over the held-out split and selects the best checkpoint by
    ``select_metric`` (higher is better). ``tokenizer`` is set by built-in worlds that ship their own
    (a ``transformers.PreTrainedTokenizerFast``); loaded tasks use the model's.

    Token tasks (video worlds, :mod:`rlvr_fast.worlds.video_task`) set the hooks instead, and their
    examples are whatever the hooks understand:

    - ``encode(example) -> (prompt ids, answer ids)`` replaces the text encoding;
    - ``score_tokens(responses int [B, R], present bool [B, R], examples, group_size) ->
      (token_rewards float32 [B, R], {metric: float32 [B]})`` is the reward (the trainer sums the
      token-level rewards into outcome scores, as verl does) and the held-out metrics (greedy, group 1);
    - ``response_length``: every response has exactly this many tokens (sets ``rollout.max_new_tokens``);
    - ``forced_slots``: bool per response position, True where the token is an input the generation is
      forced to (the answer's token there) and the losses skip;
    - ``preview(path, {stage: (examples, responses, present)}) -> path``: a picture of held-out
      predictions after MLE and after GRPO, ``preview_count`` examples;
    - ``save_assets(dir)``: files a checkpoint needs besides the model (the frame tokenizer).
    """

    name: str
    train: list[Any]
    test: list[Any]
    metrics: MetricFn | None
    default_reward: str
    select_metric: str
    tokenizer: Any = None
    encode: Callable[[Any], "tuple[list[int], list[int]]"] | None = None
    score_tokens: TokenScoreFn | None = None
    response_length: int | None = None
    forced_slots: list[bool] | None = None
    preview: Callable[..., Any] | None = None
    preview_count: int = 0
    save_assets: Callable[[Any], Any] | None = None


WORLDS = ("synthetic_text_game", "text_game", "web_page", "sprite_video", "rt1_video")
VIDEO_WORLDS = ("sprite_video", "rt1_video")


def load_task(cfg, seed: int = 0, *, video=None, **video_kwargs) -> Task:
    """The task named by ``cfg.world`` (:class:`rlvr_fast.trainer.config.DataConfig`).

    ``synthetic_text_game``: generated from ``seed`` (``n_train`` / ``n_test`` transitions).
    ``text_game`` / ``web_page``: RLVR-World's files from ``train_path`` and ``test_path``.
    ``sprite_video`` / ``rt1_video``: :func:`rlvr_fast.worlds.video_task.video_task` with ``video`` (the
    :class:`~rlvr_fast.trainer.config.VideoConfig`) and ``video_kwargs`` (device, cache_dir, main, sync,
    checkpoint); text worlds ignore both.
    """
    if cfg.world in VIDEO_WORLDS:
        from .video_task import video_task

        if video is None:
            from ..trainer.config import VideoConfig

            video = VideoConfig()
        return video_task(cfg, video, seed=seed, **video_kwargs)
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
