"""Video worlds for video world models: a built-in sprite world and RLVR-World's RT-1 ``.npz`` episodes.

Both produce :class:`VideoExample` s with the same layout and the same API (``sample(index, split)``,
``examples(split, n)``, ``action_ranges()``), so one discretiser (:func:`discretize_actions`) turns
either world's float actions into iVideoGPT action-bin tokens.

Example layout (both worlds)
----------------------------
A clip of ``C + P`` frames (``C`` context frames, ``P`` predicted frames) and one action per frame:

``context``  float32 [C, 3, H, W] in [0, 1]: frames 0 .. C-1.
``target``   float32 [P, 3, H, W] in [0, 1]: frames C .. C+P-1, what the model predicts.
``actions``  float32 [C + P, D]: ``actions[t]`` is the action taken at frame ``t`` (it produces frame
             ``t + 1``), aligned with the frames exactly as RLVR-World's loaders return a segment's
             actions. The last row leads out of the clip and changes none of its frames.

iVideoGPT's single-step prompt (``SimpleVideoProcessor``: ``actions[:, :context_length]``) uses
``actions[:C]`` (:attr:`VideoExample.context_actions`; ``actions[C-1]`` produces the first target).
The multi-step layout (``ContextMultiStepPredictionProcessor``) follows every frame with its action,
so it also uses :attr:`VideoExample.target_actions` = ``actions[C:]``.

RLVR-World settings (``vid_wm/verl/verl/trainer/config/vgpt_ppo_trainer.yaml``, ``vid_wm/ivideogpt/
train_vgpt.py`` / ``eval_vgpt.py`` defaults): single-step RT-1 uses ``segment_length 5`` and
``context_length 4``, i.e. C = 4, P = 1, at ``resolution [256, 320]`` (RT-1's native frame size, so
their resize is the identity there); multi-step (``run_ctx_msp_vgpt.sh``, ``processor_type ctx_msp``)
uses ``segment_length 8`` plus one extra context frame drawn up to 15 steps before the segment
(``random_ctx_frame``), which is not reproduced here.

Built-in sprite world (:class:`SpriteWorld`, config :class:`SpriteWorldConfig`)
------------------------------------------------------------------------------
A ``height x width`` canvas (64 x 64 default) with a dark background (0.1 grey), a grey (0.5) border
wall ``wall`` px thick and three fixed interior wall blocks (placed in sixteenths of the canvas:
x 4-7 / y 4-5, x 10-11 / y 8-12, x 3-5 / y 11-13). ``n_sprites`` (1-4) square sprites of distinct
colours and sizes:

========  =================  ====  ============================================
sprite    colour (RGB)       size  motion
========  =================  ====  ============================================
0 red     (0.9, 0.2, 0.2)    8     controlled: moved by the action
1 green   (0.2, 0.8, 0.3)    6     constant velocity (+-2, +-2) px / step
2 blue    (0.25, 0.45, 0.95) 4     constant velocity (+-3, +-3) px / step
3 yellow  (0.95, 0.85, 0.2)  5     constant velocity (+-1, +-1) px / step
========  =================  ====  ============================================

Every moving sprite shows a white 2 x 2 "eye" in the corner it is heading for, so one frame holds
the whole state (positions and velocities) and a single context frame suffices in principle.

Actions: ``none / up / down / left / right`` times a speed from ``speeds`` (pixels; default 4), as the
float vector ``(dx, dy)`` in pixels (y grows downwards: up is ``(0, -speed)``), D = 2.
:meth:`SpriteWorld.action_ranges` is ``[[-max_speed, max_speed]] * 2`` in the RT-1 ranges layout, so
with 256 bins ``-4 -> 0``, ``0 -> 128``, ``4 -> 255``.

Dynamics of one step (deterministic): the controlled sprite moves first, x then y, one pixel at a
time, and stops at the first pixel that would overlap a wall, the canvas edge or another sprite.
Then each other sprite in index order does the same with its velocity, except that a blocked axis
flips the sign of that velocity component (a bounce; it does not move further on that axis this
step). No two sprites and no sprite and wall ever overlap.

Each clip is generated from an *episode seed* (derived from ``seed`` and a running candidate number
with blake2b): random non-overlapping start positions, random diagonal velocities, uniformly random
actions. A clip goes to the held-out split iff a blake2b hash of its content key (canvas size,
initial sprite states, action sequence; the episode seed determines all of it) falls in the
``test_fraction`` bucket, so the splits never share a clip (even an identical clip drawn from
another seed lands in the same split). ``sample(i, split)`` is the ``i``-th candidate that belongs to
``split``; it is deterministic and random-access. A default example (2 frames, 64 x 64, 3 sprites)
takes ~0.4 ms to generate on one CPU core (~0.9 ms for 4 sprites and 5 frames), so a trainer can
make fresh examples on the fly.

What a tiny model can learn: the controlled sprite's response to the action and the straight-line
motion of the others are easy and frequent; wall stops, bounces and sprite-sprite contacts are rare
and local, so a model trained for minutes gets the bulk of the pixels right but not the collisions.

RT-1 / Open X-Embodiment episodes (:class:`OXEEpisodes`)
-------------------------------------------------------
Format written by RLVR-World's converter ``vid_wm/oxe_data_converter.py`` (one file per episode,
``<output>/RT-1_processed/<tfds split>_eps_<i:08d>.npz``, ``np.savez_compressed``):

``<display key>`` (``image`` for RT-1 ``fractal20220817_data``; :data:`DISPLAY_KEYS` for others)
    uint8 [T, H, W, 3] RGB frames (RT-1: 256 x 320).
``action``
    [T, D] one action per step: the RLDS action dict's values concatenated in key order (sorted
    names). RT-1: D = 13, float64 (float32 fields concatenated with int32 ``terminate_episode``), dims
    :data:`RT1_ACTION_NAMES`.

iVideoGPT's loader (``vid_wm/ivideogpt/ivideogpt/data/simple_dataloader.py``, identical in
``vid_wm/verl/ivideogpt/data``) reads ``<dataset_path>/fractal20220817_data/*.npz``, divides frames
by 255, resizes them with torchvision to ``image_size`` ([256, 320] in RLVR-World) and casts actions to
float32. Its split: sort the file paths, file ``i`` is held out iff ``i % 100 == 0``
(``split_rule="ivideogpt"``, the default here); ``split_rule="hash"`` uses a blake2b hash of the file
name instead. Their training loader draws random windows (and jitters colours); here every window
``start = 0, stride, 2 * stride, ...`` of ``(C + P - 1) * frame_step + 1`` frames is one example, in
order. An episode shorter than one window gives one example padded by repeating its last frame and
action (as their loader pads).

Action discretisation (:func:`discretize_actions`)
--------------------------------------------------
iVideoGPT's ``_discretize_actions`` (``vid_wm/ivideogpt/ivideogpt/processor.py`` and
``vid_wm/verl/ivideogpt/processor.py``), in float32::

    x = clip((a - min) / (max - min + 1e-8), 0, 1);  bin = clip(floor(x * num_bins), 0, num_bins - 1)

with ``ranges[:, 0] = min`` and ``ranges[:, 1] = max`` from ``configs/vgpt/frac_action_ranges.pth`` (a
float32 tensor [13, 2] that ``vid_wm/verl/ivideogpt/scripts/summarize_action_ranges.py`` computes as the
per-dimension min / max over all RT-1 episodes; embedded here as :data:`RT1_ACTION_RANGES`). Values
outside the range are clamped to the first / last bin (RLVR-World's behaviour, the default);
``out_of_range="error"`` rejects them instead. ``min`` maps to bin 0 and ``max`` to bin
``num_bins - 1``. iVideoGPT offsets the bins by the visual vocabulary size to get token ids.
"""

from __future__ import annotations

import glob
import hashlib
import os
import zipfile
import zlib
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

__all__ = [
    "DISPLAY_KEYS",
    "RT1_ACTION_NAMES",
    "RT1_ACTION_RANGES",
    "OXEEpisodes",
    "Sprite",
    "SpriteWorld",
    "SpriteWorldConfig",
    "VideoExample",
    "collate",
    "compute_action_ranges",
    "discretize_actions",
    "load_action_ranges",
    "rt1_action_ranges",
    "sprite_accuracy",
]

SPLITS = ("train", "test")

# ----------------------------------------------------------------------------- examples


@dataclass(frozen=True, eq=False)
class VideoExample:
    """One video-prediction problem (layout: module docstring).

    context: float32 [C, 3, H, W] in [0, 1], the conditioning frames.
    actions: float32 [C + P, D], ``actions[t]`` taken at frame ``t`` (produces frame ``t + 1``).
    target:  float32 [P, 3, H, W] in [0, 1], the frames to predict.
    source:  where it came from (``sprite_world:<split>:<i>`` or ``<file>.npz:<start>``), for errors.
    extra:   world-specific details (sprite world: ``episode_seed``, ``states``; episodes: ``file``,
             ``start``, ``frame_indices``).
    """

    context: torch.Tensor
    actions: torch.Tensor
    target: torch.Tensor
    source: str = ""
    extra: Mapping[str, Any] = field(default_factory=dict)

    @property
    def frames(self) -> torch.Tensor:
        """float32 [C + P, 3, H, W]: context then target frames."""
        return torch.cat([self.context, self.target], dim=0)

    @property
    def context_actions(self) -> torch.Tensor:
        """float32 [C, D]: the actions of the single-step prompt (iVideoGPT ``actions[:, :context_length]``)."""
        return self.actions[: self.context.shape[0]]

    @property
    def target_actions(self) -> torch.Tensor:
        """float32 [P, D]: the actions after each target frame (the multi-step response layout)."""
        return self.actions[self.context.shape[0] :]


def collate(examples: Sequence[VideoExample]) -> dict[str, torch.Tensor]:
    """Stack examples into a batch: ``context`` [B, C, 3, H, W], ``actions`` [B, C + P, D], ``target``
    [B, P, 3, H, W] (float32). Raises ValueError naming the first example whose shapes differ."""
    if not examples:
        raise ValueError("collate: expected at least one example, got none")
    first = examples[0]
    for ex in examples[1:]:
        for name in ("context", "actions", "target"):
            a, b = getattr(first, name), getattr(ex, name)
            if a.shape != b.shape:
                raise ValueError(
                    f"collate: {name} of {ex.source or 'an example'} has shape {tuple(b.shape)}, "
                    f"the first example's has {tuple(a.shape)}"
                )
    return {
        name: torch.stack([getattr(e, name) for e in examples]) for name in ("context", "actions", "target")
    }


def _check_split(split: str) -> None:
    if split not in SPLITS:
        raise ValueError(f"split: expected 'train' or 'test', got {split!r}")


def _check_index(index: int) -> None:
    if not isinstance(index, (int, np.integer)) or isinstance(index, bool) or index < 0:
        raise IndexError(f"index: expected an int >= 0, got {index!r}")


def _hash_unit(key: bytes) -> float:
    """A fixed hash of ``key`` mapped to [0, 1) (blake2b, 8 bytes): what both splits use."""
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "big") / 2.0**64


# ----------------------------------------------------------------------------- action discretisation

RT1_ACTION_NAMES: tuple[str, ...] = (
    "base_displacement_vector[0]", "base_displacement_vector[1]", "base_displacement_vertical_rotation",
    "gripper_closedness_action", "rotation_delta[0]", "rotation_delta[1]", "rotation_delta[2]",
    "terminate_episode[0]", "terminate_episode[1]", "terminate_episode[2]",
    "world_vector[0]", "world_vector[1]", "world_vector[2]",
)  # fmt: skip
"""The 13 RT-1 action dims in the converter's order (the RLDS action dict's sorted keys; the ranges
below confirm it: terminate_episode is the one-hot triple in [0, 1])."""

RT1_ACTION_RANGES: tuple[tuple[float, float], ...] = (
    (-0.39600884914398193, 0.39600181579589844),
    (-0.009631033055484295, 0.003676734399050474),
    (-0.4000452756881714, 0.39991137385368347),
    (-1.0, 1.0),
    (-1.569917917251587, 1.570636510848999),
    (-1.569892168045044, 1.5321086645126343),
    (-1.570419430732727, 1.5691522359848022),
    (0.0, 1.0),
    (0.0, 1.0),
    (0.0, 1.0),
    (-2.0204520225524902, 2.9984593391418457),
    (-5.497899532318115, 22.09052848815918),
    (-2.031663417816162, 2.7507524490356445),
)
"""(min, max) per RT-1 action dim: RLVR-World's ``vid_wm/ivideogpt/configs/vgpt/frac_action_ranges.pth``
(identical to ``vid_wm/verl/ivideogpt/configs/frac_action_ranges.pth``), exact float32 values."""


def rt1_action_ranges() -> torch.Tensor:
    """float32 [13, 2] RT-1 action ranges (column 0 min, column 1 max): :data:`RT1_ACTION_RANGES`."""
    return torch.tensor(RT1_ACTION_RANGES, dtype=torch.float32)


def _check_ranges(ranges: Any, name: str = "ranges") -> torch.Tensor:
    if isinstance(ranges, np.ndarray):
        ranges = torch.from_numpy(ranges)
    if not isinstance(ranges, torch.Tensor):
        raise TypeError(
            f"{name}: expected a tensor [D, 2] of (min, max) per action dim, got {type(ranges).__name__}"
        )
    if ranges.dim() != 2 or ranges.shape[1] != 2 or ranges.shape[0] < 1:
        raise ValueError(
            f"{name}: expected shape [D, 2] (column 0 min, column 1 max), got {tuple(ranges.shape)}"
        )
    if not (
        ranges.is_floating_point() or ranges.dtype in (torch.int64, torch.int32, torch.int16, torch.int8)
    ):
        raise TypeError(f"{name}: expected a float or int tensor, got {ranges.dtype}")
    ranges = ranges.to(torch.float32)
    if not bool(torch.isfinite(ranges).all()):
        raise ValueError(f"{name}: expected finite values, got {ranges.tolist()}")
    bad = (ranges[:, 0] > ranges[:, 1]).nonzero().flatten().tolist()
    if bad:
        raise ValueError(f"{name}: min > max in action dims {bad}")
    flat = (ranges[:, 0] == ranges[:, 1]).nonzero().flatten().tolist()
    if flat:
        # no width to divide into bins: the value itself would map to bin 0 and anything above to the last
        raise ValueError(
            f"{name}: expected min < max in every action dim, got min == max in action dims {flat}"
        )
    return ranges


def load_action_ranges(path: str | os.PathLike) -> torch.Tensor:
    """Load an action-ranges file: float32 [D, 2], column 0 min, column 1 max per action dim.

    Format: ``torch.save`` of a float32 tensor [D, 2] (RLVR-World's ``frac_action_ranges.pth``, written
    by ``vid_wm/verl/ivideogpt/scripts/summarize_action_ranges.py``; D = 13 for RT-1). A numpy array
    in a ``.npy`` file is accepted too. Errors name the file.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"action ranges file {path!r} does not exist")
    try:
        if path.endswith(".npy"):
            value: Any = np.load(path, allow_pickle=False)
        else:
            value = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any unreadable file gets the same message
        raise ValueError(
            f"{path}: not a torch-saved action ranges tensor ({type(e).__name__}: {e})"
        ) from None
    try:
        return _check_ranges(value, name=path)
    except (TypeError, ValueError) as e:
        raise ValueError(str(e)) from None


def discretize_actions(
    actions: torch.Tensor | np.ndarray,
    ranges: torch.Tensor | np.ndarray,
    num_bins: int = 256,
    *,
    out_of_range: str = "clamp",
) -> torch.Tensor:
    """Float actions -> integer bins in ``[0, num_bins)``, exactly as iVideoGPT / RLVR-World.

    Args:
        actions: float [..., D] (torch or numpy; computed in float32 like RLVR-World, which casts
            actions with ``torch.Tensor``).
        ranges: [D, 2] (min, max) per dim (:func:`load_action_ranges`, :func:`rt1_action_ranges`,
            :meth:`SpriteWorld.action_ranges`).
        num_bins: bins per dim (RLVR-World: 256).
        out_of_range: ``"clamp"`` (RLVR-World: values below min go to bin 0, above max to the last
            bin) or ``"error"`` (ValueError naming the first offending dim).

    Returns:
        int64 [..., D] (RLVR-World computes int32 and casts the token ids to int64).

    Formula (``_discretize_actions`` in ``vid_wm/ivideogpt/ivideogpt/processor.py``):
    ``clip(floor(clip((a - min) / (max - min + 1e-8), 0, 1) * num_bins), 0, num_bins - 1)``.
    """
    if isinstance(actions, np.ndarray):
        actions = torch.from_numpy(np.asarray(actions))
    if not isinstance(actions, torch.Tensor):
        raise TypeError(f"actions: expected a tensor or numpy array [..., D], got {type(actions).__name__}")
    if actions.dtype == torch.bool or actions.is_complex():
        raise TypeError(f"actions: expected a float tensor, got {actions.dtype}")
    ranges = _check_ranges(ranges).to(actions.device)
    if isinstance(num_bins, bool) or not isinstance(num_bins, int) or num_bins < 1:
        raise ValueError(f"num_bins: expected an int >= 1, got {num_bins!r}")
    if out_of_range not in ("clamp", "error"):
        raise ValueError(f"out_of_range: expected 'clamp' or 'error', got {out_of_range!r}")
    d = ranges.shape[0]
    if actions.dim() < 1 or actions.shape[-1] != d:
        raise ValueError(
            f"actions: expected shape [..., {d}] (the ranges have {d} action dims), got {tuple(actions.shape)}"
        )
    a = actions.to(torch.float32)
    if not bool(torch.isfinite(a).all()):
        raise ValueError("actions: expected finite values, got NaN or inf")
    lo, hi = ranges[:, 0], ranges[:, 1]
    if out_of_range == "error":
        outside = ((a < lo) | (a > hi)).reshape(-1, d).any(dim=0).nonzero().flatten().tolist()
        if outside:
            j = outside[0]
            raise ValueError(
                f"actions: dim {j} has values outside its range [{lo[j].item()}, {hi[j].item()}]"
            )
    x = torch.clip((a - lo) / (hi - lo + 1e-8), 0, 1)
    return torch.floor(x * num_bins).to(torch.int32).clip(0, num_bins - 1).to(torch.int64)


# ----------------------------------------------------------------------------- the sprite world

ACTION_NAMES = ("none", "up", "down", "left", "right")
_DIRECTIONS = ((0, 0), (0, -1), (0, 1), (-1, 0), (1, 0))
# (name, colour, size px, speed px per step per axis; 0 = controlled)
_SPRITES = (
    ("red", (0.9, 0.2, 0.2), 8, 0),
    ("green", (0.2, 0.8, 0.3), 6, 2),
    ("blue", (0.25, 0.45, 0.95), 4, 3),
    ("yellow", (0.95, 0.85, 0.2), 5, 1),
)
_BACKGROUND = 0.1
_WALL = 0.5
_EYE = 1.0
_INTERIOR_BLOCKS = ((4, 4, 7, 5), (10, 8, 11, 12), (3, 11, 5, 13))  # (x0, y0, x1, y1) in 1/16 of the canvas


@dataclass(frozen=True)
class Sprite:
    """One sprite: top-left corner ``(x, y)`` in pixels, velocity ``(vx, vy)`` in px / step.

    ``kind`` indexes the sprite table (module docstring): 0 is the controlled sprite (velocity 0; it
    moves by the action), 1-3 move with constant velocity and bounce.
    """

    kind: int
    x: int
    y: int
    vx: int = 0
    vy: int = 0

    @property
    def size(self) -> int:
        return _SPRITES[self.kind][2]

    @property
    def color(self) -> tuple[float, float, float]:
        return _SPRITES[self.kind][1]


State = tuple[Sprite, ...]


@dataclass(frozen=True)
class SpriteWorldConfig:
    """Configuration of :class:`SpriteWorld` (defaults: 64 x 64, 3 sprites, single-step).

    height, width:   canvas size in pixels (>= 32 each).
    n_sprites:       1-4; sprite 0 is controlled, the others move on their own.
    context_frames:  C, frames the model conditions on (default 1).
    predict_frames:  P, frames it predicts (default 1; > 1 is multi-step).
    seed:            seed of the episode stream; same config -> same examples.
    speeds:          the controlled sprite's step sizes in pixels (an action is a direction and one
                     of these); the action vector is ``(dx, dy)`` in pixels.
    wall:            border wall thickness in pixels.
    interior_walls:  whether to add the three fixed interior wall blocks.
    test_fraction:   share of the clip hash space held out.
    """

    height: int = 64
    width: int = 64
    n_sprites: int = 3
    context_frames: int = 1
    predict_frames: int = 1
    seed: int = 0
    speeds: tuple[int, ...] = (4,)
    wall: int = 2
    interior_walls: bool = True
    test_fraction: float = 0.1

    def __post_init__(self) -> None:
        for name in ("height", "width", "n_sprites", "context_frames", "predict_frames", "wall", "seed"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise TypeError(f"SpriteWorldConfig.{name}: expected an int, got {value!r}")
        if self.height < 32 or self.width < 32:
            raise ValueError(
                f"SpriteWorldConfig: height and width must be >= 32, got {self.height} x {self.width}"
            )
        if not 1 <= self.n_sprites <= len(_SPRITES):
            raise ValueError(
                f"SpriteWorldConfig.n_sprites: expected 1..{len(_SPRITES)}, got {self.n_sprites}"
            )
        if self.context_frames < 1 or self.predict_frames < 1:
            raise ValueError(
                "SpriteWorldConfig: context_frames and predict_frames must be >= 1, "
                f"got {self.context_frames}, {self.predict_frames}"
            )
        if not 1 <= self.wall <= min(self.height, self.width) // 8:
            raise ValueError(
                f"SpriteWorldConfig.wall: expected 1..{min(self.height, self.width) // 8}, got {self.wall}"
            )
        speeds = tuple(self.speeds)
        if not speeds or any(
            isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1 for s in speeds
        ):
            raise ValueError(f"SpriteWorldConfig.speeds: expected positive ints, got {self.speeds!r}")
        object.__setattr__(self, "speeds", tuple(int(s) for s in speeds))
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(
                f"SpriteWorldConfig.test_fraction: expected a value in (0, 1), got {self.test_fraction}"
            )


class SpriteWorld:
    """Seeded generator of sprite-world clips (rules, format and split: module docstring).

    ``SpriteWorld(config)`` or ``SpriteWorld(**fields)`` (the :class:`SpriteWorldConfig` fields).
    Frames are float32 [3, H, W] in [0, 1]; actions float32 ``(dx, dy)`` in pixels (D = 2).
    """

    action_dim = 2

    def __init__(self, config: SpriteWorldConfig | None = None, **overrides: Any) -> None:
        if config is None:
            config = SpriteWorldConfig(**overrides)
        elif overrides:
            config = replace(config, **overrides)
        self.config = config
        h, w, t = config.height, config.width, config.wall
        mask = np.zeros((h, w), dtype=bool)
        mask[:t, :] = mask[-t:, :] = mask[:, :t] = mask[:, -t:] = True
        if config.interior_walls:
            for x0, y0, x1, y1 in _INTERIOR_BLOCKS:
                mask[round(y0 * h / 16) : round(y1 * h / 16), round(x0 * w / 16) : round(x1 * w / 16)] = True
        self.wall_mask = mask
        """bool [H, W]: True on wall pixels (border and interior blocks)."""
        # Per-split candidate numbers, grown lazily: _members[split][i] is the i-th candidate of split.
        self._members: dict[str, list[int]] = {s: [] for s in SPLITS}
        self._next_candidate = 0

    # -- actions

    @property
    def max_speed(self) -> int:
        return max(self.config.speeds)

    def action_vector(self, direction: str | int, speed: int | None = None) -> torch.Tensor:
        """float32 [2] ``(dx, dy)`` in pixels for ``direction`` (a name in ``none up down left right`` or
        its index) and ``speed`` (default: the first of ``config.speeds``)."""
        if isinstance(direction, str):
            if direction not in ACTION_NAMES:
                raise ValueError(f"direction: expected one of {list(ACTION_NAMES)}, got {direction!r}")
            direction = ACTION_NAMES.index(direction)
        if not 0 <= direction < len(ACTION_NAMES):
            raise ValueError(f"direction: expected an index in 0..{len(ACTION_NAMES) - 1}, got {direction}")
        speed = self.config.speeds[0] if speed is None else speed
        dx, dy = _DIRECTIONS[direction]
        return torch.tensor([dx * speed, dy * speed], dtype=torch.float32)

    def action_ranges(self) -> torch.Tensor:
        """float32 [2, 2] ``[[-max_speed, max_speed]] * 2``: the (min, max) per action dim, in the
        layout of RLVR-World's ``frac_action_ranges.pth`` (feed it to :func:`discretize_actions`)."""
        s = float(self.max_speed)
        return torch.tensor([[-s, s], [-s, s]], dtype=torch.float32)

    # -- dynamics

    def _blocked(self, state: list[Sprite], i: int, x: int, y: int) -> bool:
        s = state[i].size
        h, w = self.wall_mask.shape
        if x < 0 or y < 0 or x + s > w or y + s > h:
            return True
        if self.wall_mask[y : y + s, x : x + s].any():
            return True
        for j, o in enumerate(state):
            if j != i and x < o.x + o.size and o.x < x + s and y < o.y + o.size and o.y < y + s:
                return True
        return False

    def _move(self, state: list[Sprite], i: int, dx: int, dy: int, bounce: bool) -> None:
        sp = state[i]
        for axis, d in ((0, dx), (1, dy)):
            sign = 1 if d > 0 else -1
            for _ in range(abs(d)):
                nx, ny = (sp.x + sign, sp.y) if axis == 0 else (sp.x, sp.y + sign)
                if self._blocked(state, i, nx, ny):
                    if bounce:
                        sp = replace(sp, vx=-sp.vx) if axis == 0 else replace(sp, vy=-sp.vy)
                    break
                sp = replace(sp, x=nx, y=ny)
                state[i] = sp
            state[i] = sp

    def step(self, state: State, action: torch.Tensor | Sequence[float]) -> State:
        """The state after one step with ``action`` = ``(dx, dy)`` pixels for the controlled sprite
        (rounded to ints; any vector works, the generator uses the five directions). Rules: module doc."""
        a = torch.as_tensor(action, dtype=torch.float32).flatten()
        if a.numel() != 2 or not bool(torch.isfinite(a).all()):
            raise ValueError(f"action: expected 2 finite values (dx, dy), got {a.tolist()}")
        dx, dy = (round(v) for v in a.tolist())
        out = list(state)
        for i, sp in enumerate(out):
            if sp.kind == 0:
                self._move(out, i, dx, dy, bounce=False)
        for i, sp in enumerate(out):
            if sp.kind != 0:
                self._move(out, i, sp.vx, sp.vy, bounce=True)
        return tuple(out)

    def render(self, state: State) -> torch.Tensor:
        """float32 [3, H, W] in [0, 1]: background, walls, sprites, and each mover's heading eye."""
        h, w = self.wall_mask.shape
        img = np.full((3, h, w), _BACKGROUND, dtype=np.float32)
        img[:, self.wall_mask] = _WALL
        for sp in state:
            s = sp.size
            img[:, sp.y : sp.y + s, sp.x : sp.x + s] = np.asarray(sp.color, dtype=np.float32)[:, None, None]
            if sp.kind != 0:
                ex = sp.x + s - 2 if sp.vx > 0 else sp.x
                ey = sp.y + s - 2 if sp.vy > 0 else sp.y
                img[:, ey : ey + 2, ex : ex + 2] = _EYE
        return torch.from_numpy(img)

    def initial_state(self, rng: np.random.Generator) -> State:
        """Random non-overlapping placement of ``n_sprites`` sprites, movers with diagonal velocities."""
        state: list[Sprite] = []
        h, w = self.wall_mask.shape
        for kind in range(self.config.n_sprites):
            size, speed = _SPRITES[kind][2], _SPRITES[kind][3]
            for _ in range(10_000):
                x, y = int(rng.integers(0, w - size + 1)), int(rng.integers(0, h - size + 1))
                vx, vy = (int(v) * speed for v in rng.choice((-1, 1), size=2))
                state.append(Sprite(kind, x, y, vx, vy))
                if not self._blocked(state, len(state) - 1, x, y):
                    break
                state.pop()
            else:  # pragma: no cover - the canvas always has room for 4 small sprites
                raise RuntimeError(f"could not place sprite {kind} on a {h} x {w} canvas")
        return tuple(state)

    # -- episodes and splits

    def episode_seed(self, candidate: int) -> int:
        """The episode seed of candidate ``candidate`` (blake2b of ``"<seed>:<candidate>"``, 63 bits)."""
        digest = hashlib.blake2b(f"{self.config.seed}:{candidate}".encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") >> 1

    def episode(self, episode_seed: int) -> tuple[State, torch.Tensor]:
        """(initial state, actions float32 [C + P, 2]) of the clip generated from ``episode_seed``."""
        rng = np.random.default_rng(episode_seed)
        state = self.initial_state(rng)
        n = self.config.context_frames + self.config.predict_frames
        dirs = rng.integers(0, len(ACTION_NAMES), size=n)
        speeds = rng.choice(np.asarray(self.config.speeds), size=n)
        acts = np.asarray([_DIRECTIONS[d] for d in dirs], dtype=np.float32) * speeds[:, None].astype(
            np.float32
        )
        return state, torch.from_numpy(acts)

    def key(self, state: State, actions: torch.Tensor) -> bytes:
        """Canonical content key of a clip: canvas, initial sprites, action sequence (split hashes it)."""
        sprites = ";".join(f"{s.kind},{s.x},{s.y},{s.vx},{s.vy}" for s in state)
        acts = ";".join(f"{int(a)},{int(b)}" for a, b in actions.tolist())
        return f"{self.config.height}x{self.config.width}|{sprites}|{acts}".encode()

    def split_of(self, state: State, actions: torch.Tensor) -> str:
        """``"test"`` iff the clip's key hashes into the ``test_fraction`` bucket, else ``"train"``."""
        return "test" if _hash_unit(self.key(state, actions)) < self.config.test_fraction else "train"

    def _candidate(self, index: int, split: str) -> int:
        members = self._members[split]
        while len(members) <= index:
            k = self._next_candidate
            self._next_candidate += 1
            state, actions = self.episode(self.episode_seed(k))
            self._members[self.split_of(state, actions)].append(k)
        return members[index]

    def sample(self, index: int, split: str = "train") -> VideoExample:
        """The ``index``-th example of ``split`` (deterministic, random access; any index >= 0).

        Returns a :class:`VideoExample` with context [C, 3, H, W], actions [C + P, 2], target
        [P, 3, H, W]; ``extra`` = ``{"episode_seed": int, "states": tuple of C + P states}``.
        """
        _check_split(split)
        _check_index(index)
        seed = self.episode_seed(self._candidate(int(index), split))
        state, actions = self.episode(seed)
        c, p = self.config.context_frames, self.config.predict_frames
        states = [state]
        for t in range(c + p - 1):
            states.append(self.step(states[-1], actions[t]))
        frames = torch.stack([self.render(s) for s in states])
        return VideoExample(
            context=frames[:c],
            actions=actions,
            target=frames[c:],
            source=f"sprite_world:{split}:{index}",
            extra={"episode_seed": seed, "states": tuple(states)},
        )

    def examples(self, split: str = "train", n: int | None = None) -> Iterator[VideoExample]:
        """``sample(0, split), sample(1, split), ...``: ``n`` of them, or endlessly when ``n`` is None."""
        _check_split(split)
        i = 0
        while n is None or i < n:
            yield self.sample(i, split)
            i += 1

    def splits(self, n_train: int, n_test: int) -> tuple[list[VideoExample], list[VideoExample]]:
        """The first ``n_train`` train and ``n_test`` held-out examples (no clip is in both)."""
        if n_train < 0 or n_test < 0:
            raise ValueError(f"n_train and n_test must be >= 0, got {n_train}, {n_test}")
        return list(self.examples("train", n_train)), list(self.examples("test", n_test))


def sprite_accuracy(
    pred: torch.Tensor, real: torch.Tensor, n_sprites: int = 3, *, group_size: int = 1, min_iou: float = 0.5
) -> torch.Tensor:
    """Object-level accuracy of predicted sprite-world frames: the share of sprites put in the right place.

    Every pixel gets the nearest colour of the world's palette (background, wall, eye, the sprite
    colours; Euclidean in RGB, so a decoder's blur and small colour shifts do not matter). Sprite k is
    *in place* when its pixel set in the prediction and in the real frame overlap with IoU >=
    ``min_iou``. Pixel metrics cannot see this: an empty background has a lower MAE than a sprite drawn
    a few pixels off, so a policy optimised on MAE alone can learn to erase the sprites (this metric
    then drops while MAE improves).

    Args:
        pred: float [B, ..., 3, H, W] in [0, 1] (decoded predictions, any leading frame dims).
        real: float [G, ..., 3, H, W] real frames, B = G * group_size.
        n_sprites: sprites in the world (the first ``n_sprites`` colours).
        group_size: predictions per real clip.
        min_iou: overlap needed to count a sprite as in place.

    Returns:
        float32 [B]: per prediction, the mean over frames and sprites of the in-place indicator.
    """
    if pred.shape[0] != real.shape[0] * group_size or pred.shape[1:] != real.shape[1:]:
        raise ValueError(f"pred {tuple(pred.shape)} and real {tuple(real.shape)} do not match with group_size={group_size}")
    palette = [(_BACKGROUND,) * 3, (_WALL,) * 3, (_EYE,) * 3, *(c for _, c, _, _ in _SPRITES[:n_sprites])]
    colours = torch.tensor(palette, dtype=torch.float32, device=pred.device)  # [K, 3]

    def labels(x: torch.Tensor) -> torch.Tensor:
        x = x.float().reshape(-1, 3, *x.shape[-2:])
        dist = ((x[:, None] - colours[None, :, :, None, None]) ** 2).sum(2)  # [N, K, H, W]
        lab = dist.argmin(1)  # [N, H, W]
        return torch.stack([lab == 3 + k for k in range(n_sprites)], 1)  # [N, S, H, W]

    p = labels(pred)
    r = labels(real)
    r = r.view(real.shape[0], -1, *r.shape[1:]).repeat_interleave(group_size, 0).flatten(0, 1)
    inter = (p & r).flatten(2).sum(-1).float()
    union = (p | r).flatten(2).sum(-1).float()
    # a sprite absent from both (never in this world: sprites do not overlap) counts as in place
    ok = torch.where(union > 0, inter / union.clamp(min=1) >= min_iou, torch.ones_like(union, dtype=torch.bool))
    return ok.float().view(pred.shape[0], -1).mean(1)


# ----------------------------------------------------------------------------- RT-1 / OXE episodes

DISPLAY_KEYS: dict[str, str] = {
    "taco_play": "rgb_static",
    "roboturk": "front_rgb",
    "viola": "agentview_rgb",
    "berkeley_autolab_ur5": "hand_image",
    "language_table": "rgb",
    "berkeley_mvp_converted_externally_to_rlds": "hand_image",
    "berkeley_rpt_converted_externally_to_rlds": "hand_image",
    "stanford_robocook_converted_externally_to_rlds1": "image_1",
    "stanford_robocook_converted_externally_to_rlds2": "image_2",
    "stanford_robocook_converted_externally_to_rlds3": "image_3",
    "stanford_robocook_converted_externally_to_rlds4": "image_4",
    "uiuc_d3field1": "image_1",
    "uiuc_d3field2": "image_2",
    "uiuc_d3field3": "image_3",
    "uiuc_d3field4": "image_4",
    "bair_robot_pushing": "aux1_image",
}
"""Frame key per OXE dataset (iVideoGPT ``get_display_key``); every other dataset, RT-1 included, uses
``"image"``."""

_FORMAT_HINT = (
    "RLVR-World's vid_wm/oxe_data_converter.py writes '<image key>': uint8 [T, H, W, 3] and "
    "'action': [T, D] per episode"
)


def _npz_files(root: str) -> list[str]:
    if not os.path.isdir(root):
        raise FileNotFoundError(f"episode directory {root!r} does not exist")
    files = sorted(glob.glob(os.path.join(root, "*.npz")))
    if not files:
        sub = os.path.join(root, "fractal20220817_data")
        if os.path.isdir(sub):
            files = sorted(glob.glob(os.path.join(sub, "*.npz")))
    if not files:
        raise FileNotFoundError(
            f"no .npz episode files in {root!r} (nor in its fractal20220817_data/); {_FORMAT_HINT}"
        )
    return files


def _read_npz(path: str, keys: Sequence[str]) -> dict[str, np.ndarray]:
    """The arrays ``keys`` of an npz file; ValueError naming the file (and the key) when it cannot."""
    z = None
    try:
        z = np.load(path, allow_pickle=False)
        if isinstance(z, np.lib.npyio.NpzFile):
            present = sorted(z.files)
            missing = [k for k in keys if k not in present]
            if not missing:
                return {k: z[k] for k in keys}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as e:
        raise ValueError(
            f"{path}: not a readable .npz archive ({type(e).__name__}: {e}); {_FORMAT_HINT}"
        ) from None
    finally:
        if isinstance(z, np.lib.npyio.NpzFile):
            z.close()
    if not isinstance(z, np.lib.npyio.NpzFile):  # a bad file is a bad value: ValueError, like the rest
        what = type(z).__name__
        raise ValueError(f"{path}: holds a single {what}, not an .npz archive; {_FORMAT_HINT}")  # noqa: TRY004
    raise ValueError(f"{path}: missing key {missing[0]!r} (keys: {present}); {_FORMAT_HINT}")


def _npy_header(zf: zipfile.ZipFile, path: str, key: str) -> tuple[tuple[int, ...], np.dtype]:
    """(shape, dtype) of array ``key`` in an npz archive, read from its header without loading it."""
    try:
        member = zf.open(key + ".npy")
    except KeyError:
        keys = sorted(n[:-4] for n in zf.namelist() if n.endswith(".npy"))
        raise ValueError(f"{path}: missing key {key!r} (keys: {keys}); {_FORMAT_HINT}") from None
    try:
        with member as f:
            version = np.lib.format.read_magic(f)
            if version == (1, 0):
                shape, _, dtype = np.lib.format.read_array_header_1_0(f)
            else:
                shape, _, dtype = np.lib.format.read_array_header_2_0(f)
    except (ValueError, OSError, EOFError, zlib.error, zipfile.BadZipFile) as e:
        raise ValueError(
            f"{path}: key {key!r} is not a readable .npy array ({type(e).__name__}: {e})"
        ) from None
    return tuple(shape), dtype


def _check_episode_arrays(
    path: str,
    image_key: str,
    fshape: tuple[int, ...],
    fdtype: np.dtype,
    ashape: tuple[int, ...],
    adtype: np.dtype,
) -> None:
    if fdtype != np.uint8 or len(fshape) != 4 or fshape[-1] != 3:
        raise ValueError(
            f"{path}: key {image_key!r} must be uint8 [T, H, W, 3] frames, got {fdtype} {list(fshape)}"
        )
    if len(ashape) != 2 or not (np.issubdtype(adtype, np.floating) or np.issubdtype(adtype, np.integer)):
        raise ValueError(f"{path}: key 'action' must be a numeric [T, D] array, got {adtype} {list(ashape)}")
    if fshape[0] < 1 or ashape[0] != fshape[0]:
        raise ValueError(
            f"{path}: expected one action per frame and at least one frame, got {fshape[0]} frames "
            f"({image_key!r}) and {ashape[0]} actions ('action')"
        )


class OXEEpisodes:
    """RT-1 / Open X-Embodiment episodes from RLVR-World's ``.npz`` files, as :class:`VideoExample` s.

    Args:
        root: a directory of ``*.npz`` episodes (or one holding ``fractal20220817_data/*.npz``, the layout
            iVideoGPT's loader reads). File format, split rules and windows: module docstring.
        context_frames: C (RLVR-World single-step: 4).
        predict_frames: P (RLVR-World single-step: 1).
        image_key: the frames' key (``"image"`` for RT-1; :data:`DISPLAY_KEYS` for other datasets).
        frame_step: take every ``frame_step``-th frame and its action (iVideoGPT ``stepsize``; RLVR-World
            uses 1 for RT-1).
        stride: start of consecutive windows apart, in frames.
        resize: ``(H, W)`` to resize frames to (torch bilinear interpolation with antialiasing, what
            torchvision's ``F.resize`` does to tensors; RLVR-World uses (256, 320), RT-1's native size),
            or None to keep the stored size.
        split_rule: ``"ivideogpt"`` (sorted file ``i`` is held out iff ``i % 100 == 0``) or ``"hash"``
            (blake2b of the file name in the ``test_fraction`` bucket).
        test_fraction: held-out share for ``split_rule="hash"``.
        max_episodes: keep only the first ``max_episodes`` files of each split.
        action_ranges: [D, 2] ranges or a path to a ranges file, returned by :meth:`action_ranges` and
            checked against the episodes' D (default: :data:`RT1_ACTION_RANGES` when D = 13, else the
            min / max of the episodes, :func:`compute_action_ranges`).

    Frames come back float32 [T, 3, H, W] in [0, 1] (uint8 / 255), actions float32 [T, D]. The file
    list is read at construction; each split's index (frame counts from the npz headers, without
    decompressing frames) on first use. Errors name the file and the key.
    """

    def __init__(
        self,
        root: str | os.PathLike,
        context_frames: int = 4,
        predict_frames: int = 1,
        *,
        image_key: str = "image",
        frame_step: int = 1,
        stride: int = 1,
        resize: tuple[int, int] | None = None,
        split_rule: str = "ivideogpt",
        test_fraction: float = 0.01,
        max_episodes: int | None = None,
        action_ranges: torch.Tensor | np.ndarray | str | os.PathLike | None = None,
    ) -> None:
        for name, value in (("context_frames", context_frames), ("predict_frames", predict_frames),
                            ("frame_step", frame_step), ("stride", stride)):  # fmt: skip
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: expected an int >= 1, got {value!r}")
        if split_rule not in ("ivideogpt", "hash"):
            raise ValueError(f"split_rule: expected 'ivideogpt' or 'hash', got {split_rule!r}")
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"test_fraction: expected a value in (0, 1), got {test_fraction}")
        if resize is not None:
            if len(resize) != 2 or any(
                isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in resize
            ):
                raise ValueError(f"resize: expected (H, W) positive ints or None, got {resize!r}")
            resize = (int(resize[0]), int(resize[1]))
        if max_episodes is not None and max_episodes < 0:
            raise ValueError(f"max_episodes: expected >= 0 or None, got {max_episodes}")
        self.root = os.fspath(root)
        self.context_frames = context_frames
        self.predict_frames = predict_frames
        self.image_key = image_key
        self.frame_step = frame_step
        self.stride = stride
        self.resize = resize
        self.split_rule = split_rule
        self.test_fraction = test_fraction
        self.max_episodes = max_episodes
        self.all_files = _npz_files(self.root)
        """Every ``*.npz`` path, sorted (the order the ``ivideogpt`` split rule counts in)."""
        self._split_files: dict[str, list[str]] = {s: [] for s in SPLITS}
        for i, path in enumerate(self.all_files):
            self._split_files[self.split_of(i, path)].append(path)
        if max_episodes is not None:
            self._split_files = {s: f[:max_episodes] for s, f in self._split_files.items()}
        self._windows: dict[str, list[tuple[str, int, int]]] = {}
        self._action_dim: int | None = None
        self._ranges_arg = action_ranges
        self._ranges: torch.Tensor | None = None
        self._cache: tuple[str, np.ndarray, np.ndarray] | None = None

    # -- files and splits

    def split_of(self, index: int, path: str) -> str:
        """The split of sorted file ``index`` at ``path`` under :attr:`split_rule`."""
        if self.split_rule == "ivideogpt":
            return "test" if index % 100 == 0 else "train"
        return "test" if _hash_unit(os.path.basename(path).encode()) < self.test_fraction else "train"

    def files(self, split: str = "train") -> list[str]:
        """The episode files of ``split`` (sorted; at most ``max_episodes``)."""
        _check_split(split)
        return list(self._split_files[split])

    def _header(self, path: str) -> tuple[int, int]:
        """(frames T, action dim D) of an episode, from the npz headers; validates keys and shapes."""
        if not os.path.isfile(path):
            raise FileNotFoundError(f"episode file {path!r} does not exist")
        try:
            with zipfile.ZipFile(path) as zf:
                fshape, fdtype = _npy_header(zf, path, self.image_key)
                ashape, adtype = _npy_header(zf, path, "action")
        except (zipfile.BadZipFile, OSError) as e:
            raise ValueError(
                f"{path}: not an .npz archive ({type(e).__name__}: {e}); {_FORMAT_HINT}"
            ) from None
        _check_episode_arrays(path, self.image_key, fshape, fdtype, ashape, adtype)
        return fshape[0], ashape[1]

    def _note_dim(self, path: str, d: int) -> None:
        if self._action_dim is None:
            self._action_dim = d
        elif d != self._action_dim:
            raise ValueError(f"{path}: 'action' has {d} dims, earlier episodes have {self._action_dim}")

    @property
    def span(self) -> int:
        """Frames one window covers in the episode: ``(C + P - 1) * frame_step + 1``."""
        return (self.context_frames + self.predict_frames - 1) * self.frame_step + 1

    def _index(self, split: str) -> list[tuple[str, int, int]]:
        if split not in self._windows:
            windows = []
            for path in self._split_files[split]:
                t, d = self._header(path)
                self._note_dim(path, d)
                starts = range(0, t - self.span + 1, self.stride) if t >= self.span else range(1)
                windows += [(path, s, t) for s in starts]
            self._windows[split] = windows
        return self._windows[split]

    def num_examples(self, split: str = "train") -> int:
        """How many examples (windows) ``split`` has."""
        _check_split(split)
        return len(self._index(split))

    @property
    def action_dim(self) -> int:
        """D, the action vector size (read from the first episode's header)."""
        if self._action_dim is None:
            path = self.all_files[0]
            self._note_dim(path, self._header(path)[1])
        assert self._action_dim is not None
        return self._action_dim

    def action_ranges(self) -> torch.Tensor:
        """float32 [D, 2] (min, max) per action dim for :func:`discretize_actions` (see ``__init__``)."""
        if self._ranges is None:
            arg = self._ranges_arg
            if arg is None:
                ranges = (
                    rt1_action_ranges() if self.action_dim == 13 else compute_action_ranges(self.all_files)
                )
            elif isinstance(arg, (str, os.PathLike)):
                ranges = load_action_ranges(arg)
            else:
                ranges = _check_ranges(arg, "action_ranges")
            if ranges.shape[0] != self.action_dim:
                raise ValueError(
                    f"action_ranges: {ranges.shape[0]} dims, but the episodes in {self.root!r} have "
                    f"{self.action_dim}-dim actions"
                )
            self._ranges = ranges
        return self._ranges

    # -- loading

    def load_episode(self, path: str | os.PathLike) -> tuple[torch.Tensor, torch.Tensor]:
        """One whole episode: frames float32 [T, 3, H, W] in [0, 1] (resized if asked), actions float32 [T, D]."""
        frames, actions = self._arrays(os.fspath(path))
        return self._frames(frames), torch.from_numpy(actions.astype(np.float32))

    def _arrays(self, path: str) -> tuple[np.ndarray, np.ndarray]:
        if self._cache is not None and self._cache[0] == path:
            return self._cache[1], self._cache[2]
        if not os.path.isfile(path):
            raise FileNotFoundError(f"episode file {path!r} does not exist")
        arrays = _read_npz(path, (self.image_key, "action"))
        frames, actions = arrays[self.image_key], arrays["action"]
        _check_episode_arrays(path, self.image_key, frames.shape, frames.dtype, actions.shape, actions.dtype)
        self._note_dim(path, actions.shape[1])
        if not np.isfinite(actions).all():
            raise ValueError(f"{path}: key 'action' holds NaN or inf")
        self._cache = (path, frames, actions)
        return frames, actions

    def _frames(self, frames: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(frames)).permute(0, 3, 1, 2).to(torch.float32) / 255.0
        if self.resize is not None and tuple(x.shape[-2:]) != self.resize:
            x = torch.nn.functional.interpolate(x, size=self.resize, mode="bilinear", align_corners=False,
                                                antialias=True).clamp_(0.0, 1.0)  # fmt: skip
        return x.contiguous()

    def sample(self, index: int, split: str = "train") -> VideoExample:
        """Example ``index`` of ``split``: windows in file order, then start order (module docstring).

        context [C, 3, H, W], actions [C + P, D], target [P, 3, H, W], float32; ``source`` is
        ``"<file>:<start>"``; ``extra`` = ``{"file", "start", "frame_indices"}``.
        """
        _check_split(split)
        _check_index(index)
        windows = self._index(split)
        if index >= len(windows):
            raise IndexError(f"index: {split} has {len(windows)} examples, got index {index}")
        path, start, _ = windows[int(index)]
        frames, actions = self._arrays(path)
        n = self.context_frames + self.predict_frames
        idx = [min(start + j * self.frame_step, frames.shape[0] - 1) for j in range(n)]
        clip = self._frames(frames[idx])
        return VideoExample(
            context=clip[: self.context_frames],
            actions=torch.from_numpy(actions[idx].astype(np.float32)),
            target=clip[self.context_frames :],
            source=f"{path}:{start}",
            extra={"file": path, "start": start, "frame_indices": idx},
        )

    def examples(self, split: str = "train", n: int | None = None) -> Iterator[VideoExample]:
        """The examples of ``split`` in order (the first ``n``, or all when ``n`` is None)."""
        total = self.num_examples(split)
        for i in range(total if n is None else min(n, total)):
            yield self.sample(i, split)

    def __len__(self) -> int:
        """Train examples (``num_examples("train")``)."""
        return self.num_examples("train")


def compute_action_ranges(files: str | os.PathLike | Sequence[str | os.PathLike]) -> torch.Tensor:
    """float32 [D, 2] per-dim (min, max) of ``action`` over episode files (or a directory of them), as
    RLVR-World's ``vid_wm/verl/ivideogpt/scripts/summarize_action_ranges.py`` computes
    ``frac_action_ranges.pth`` (which covers every episode, held-out ones included)."""
    if isinstance(files, (str, os.PathLike)):
        files = _npz_files(os.fspath(files))
    lo = hi = None
    for f in files:
        path = os.fspath(f)
        a = _read_npz(path, ("action",))["action"]
        if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
            raise ValueError(f"{path}: key 'action' must be numeric, got {a.dtype}")
        a = a.astype(np.float32)
        if a.ndim != 2 or a.shape[0] == 0:
            raise ValueError(
                f"{path}: key 'action' must be a non-empty [T, D] array, got shape {list(a.shape)}"
            )
        if lo is not None and a.shape[1] != lo.shape[0]:
            raise ValueError(f"{path}: 'action' has {a.shape[1]} dims, earlier episodes have {lo.shape[0]}")
        lo = a.min(0) if lo is None else np.minimum(lo, a.min(0))
        hi = a.max(0) if hi is None else np.maximum(hi, a.max(0))
    if lo is None:
        raise ValueError("compute_action_ranges: no episode files given")
    return torch.from_numpy(np.stack([lo, hi], axis=1).astype(np.float32))
