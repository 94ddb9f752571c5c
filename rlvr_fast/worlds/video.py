"""The clip layout every video world shares, and iVideoGPT's action discretisation.

Video worlds (:class:`~rlvr_fast.worlds.sprite.SpriteWorld`, :class:`~rlvr_fast.worlds.rt1.OXEEpisodes`)
give :class:`VideoExample` s through one API (``sample(index, split)``, ``examples(split, n)``,
``action_ranges()``): ``C`` context frames, ``P`` predicted frames and one action per frame,
``actions[t]`` producing frame ``t + 1``. :func:`discretize_actions` turns either world's float actions
into action-bin tokens. Layouts, RLVR-World's settings and the ranges file: docs/worlds.md.

Source: iVideoGPT's ``_discretize_actions`` as RLVR-World ships it
(``vid_wm/ivideogpt/ivideogpt/processor.py``, github.com/thuml/RLVR-World commit e1b8b6f).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

__all__ = ["VideoExample", "collate", "discretize_actions", "load_action_ranges"]

SPLITS = ("train", "test")

# ----------------------------------------------------------------------------- examples


@dataclass(frozen=True, eq=False)
class VideoExample:
    """One video-prediction problem (the clip layout: docs/worlds.md).

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
    return {name: torch.stack([getattr(e, name) for e in examples]) for name in ("context", "actions", "target")}


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


def _check_ranges(ranges: Any, name: str = "ranges") -> torch.Tensor:
    if isinstance(ranges, np.ndarray):
        ranges = torch.from_numpy(ranges)
    if not isinstance(ranges, torch.Tensor):
        raise TypeError(f"{name}: expected a tensor [D, 2] of (min, max) per action dim, got {type(ranges).__name__}")
    if ranges.dim() != 2 or ranges.shape[1] != 2 or ranges.shape[0] < 1:
        raise ValueError(f"{name}: expected shape [D, 2] (column 0 min, column 1 max), got {tuple(ranges.shape)}")
    if not (ranges.is_floating_point() or ranges.dtype in (torch.int64, torch.int32, torch.int16, torch.int8)):
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
        raise ValueError(f"{name}: expected min < max in every action dim, got min == max in action dims {flat}")
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
        raise ValueError(f"{path}: not a torch-saved action ranges tensor ({type(e).__name__}: {e})") from None
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
        ranges: [D, 2] (min, max) per dim (:func:`load_action_ranges`,
            :func:`~rlvr_fast.worlds.rt1.rt1_action_ranges`,
            :meth:`~rlvr_fast.worlds.sprite.SpriteWorld.action_ranges`).
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
            raise ValueError(f"actions: dim {j} has values outside its range [{lo[j].item()}, {hi[j].item()}]")
    x = torch.clip((a - lo) / (hi - lo + 1e-8), 0, 1)
    return torch.floor(x * num_bins).to(torch.int32).clip(0, num_bins - 1).to(torch.int64)
