"""Datasets for world-model RLVR: built-in synthetic worlds and loaders for RLVR-World's formats.

:data:`WORLDS` maps each world's name to its loader (imported on first use, like the reward registry's
built-ins) and to what a configuration needs for it; :func:`load_task` is the one entry point. Every
loader returns a :class:`~rlvr_fast.task.Task`: :class:`~rlvr_fast.worlds.text.TextTask` for the text
worlds, :class:`~rlvr_fast.worlds.video_task.VideoTask` for the video ones.
"""

from __future__ import annotations

import importlib
import inspect
from dataclasses import dataclass
from typing import Any

from ..task import Task


@dataclass(frozen=True)
class World:
    """One registered world.

    loader:      ``"module:function"``, the function building its :class:`~rlvr_fast.task.Task` from keyword
                 options (:func:`load_task`).
    files:       it reads local data files: the held-out ``test_path`` and, to train, ``train_path``.
    episodes:    it reads a local directory of episodes, ``train_path`` (the held-out split inside it).
    needs_model: it ships no tokenizer: a pretrained model (with its tokenizer) is required.
    own_reward:  why a registered reward name does not apply to it (it computes its reward itself), or
                 empty: it takes ``reward`` by name (:func:`check_reward_name`).
    """

    loader: str
    files: bool = False
    episodes: bool = False
    needs_model: bool = False
    own_reward: str = ""


FRAME_REWARD = "its reward is computed on the frame tokens (configure it with video.reward_weights)"

WORLDS: dict[str, World] = {
    "synthetic_text_game": World("rlvr_fast.worlds.synthetic:synthetic_text_game_task"),
    "text_game": World("rlvr_fast.worlds.text_game:text_game_task", files=True, needs_model=True),
    "web_page": World("rlvr_fast.worlds.web_page:web_page_task", files=True, needs_model=True),
    "sprite_video": World("rlvr_fast.worlds.video_task:sprite_video", own_reward=FRAME_REWARD),
    "rt1_video": World("rlvr_fast.worlds.video_task:rt1_video", episodes=True, own_reward=FRAME_REWARD),
}


def loader(world: str):
    """The loader function of ``world``; ValueError listing the names if it is not registered."""
    if world not in WORLDS:
        raise ValueError(f"data.world: unknown world {world!r}; choose one of {list(WORLDS)}")
    module, _, attr = WORLDS[world].loader.partition(":")
    return getattr(importlib.import_module(module), attr)


def check_reward_name(world: str, reward: str | None) -> None:
    """ValueError when a reward name is given for a world that computes its own reward (the config check
    and the world's loader both ask here)."""
    why = WORLDS[world].own_reward
    if reward and why:
        raise ValueError(f"reward.name={reward!r} does not apply to {world}: {why}")


def load_task(world: str, *, strict: bool = True, **options: Any) -> Task:
    """The task of the registered ``world``, from the ``options`` its loader's signature names (e.g.
    ``text_game``: ``train_path``, ``test_path``, ``limit``, ``reward``, ``limits``).

    strict: an option that no parameter of the loader takes raises ValueError naming it; False: such
    options are left out (a caller holding every setting passes them all). A required parameter with no
    option raises ValueError naming it either way.
    """
    fn = loader(world)
    params = {
        name: p
        for name, p in inspect.signature(fn).parameters.items()
        if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
    }
    unknown = sorted(set(options) - set(params))
    if strict and unknown:
        raise ValueError(f"load_task({world!r}): unknown option(s) {unknown}; {world} takes {sorted(params)}")
    missing = [name for name, p in params.items() if p.default is p.empty and name not in options]
    if missing:
        raise ValueError(f"load_task({world!r}): missing option(s) {missing}")
    return fn(**{k: v for k, v in options.items() if k in params})


__all__ = ["WORLDS", "World", "check_reward_name", "load_task", "loader"]
