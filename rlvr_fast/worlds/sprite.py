"""The built-in sprite world: a seeded simulator and renderer of coloured sprites on a walled canvas.

:class:`SpriteWorld` (config :class:`SpriteWorldConfig`) generates clips as
:class:`~rlvr_fast.worlds.video.VideoExample` s, deterministic and random-access, split by a hash of
each clip's content; :func:`sprite_accuracy` scores predicted frames by where they put the sprites.
The canvas, the sprite table, actions, dynamics, splits and what a tiny model learns: docs/worlds.md.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import torch

from ..rewards.objects import ObjectReward
from .video import SPLITS, VideoExample, _check_index, _check_split, _hash_unit

__all__ = ["Sprite", "SpriteWorld", "SpriteWorldConfig", "sprite_accuracy", "sprite_objects"]

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

    ``kind`` indexes the sprite table (``_SPRITES``; docs/worlds.md): 0 is the controlled sprite
    (velocity 0; it moves by the action), 1-3 move with constant velocity and bounce.
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
            raise ValueError(f"SpriteWorldConfig: height and width must be >= 32, got {self.height} x {self.width}")
        if not 1 <= self.n_sprites <= len(_SPRITES):
            raise ValueError(f"SpriteWorldConfig.n_sprites: expected 1..{len(_SPRITES)}, got {self.n_sprites}")
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
        if not speeds or any(isinstance(s, bool) or not isinstance(s, (int, np.integer)) or s < 1 for s in speeds):
            raise ValueError(f"SpriteWorldConfig.speeds: expected positive ints, got {self.speeds!r}")
        object.__setattr__(self, "speeds", tuple(int(s) for s in speeds))
        if not 0.0 < self.test_fraction < 1.0:
            raise ValueError(f"SpriteWorldConfig.test_fraction: expected a value in (0, 1), got {self.test_fraction}")


class SpriteWorld:
    """Seeded generator of sprite-world clips (rules, format and split: docs/worlds.md).

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
        (rounded to ints; any vector works, the generator uses the five directions).
        Rules: docs/worlds.md."""
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
        acts = np.asarray([_DIRECTIONS[d] for d in dirs], dtype=np.float32) * speeds[:, None].astype(np.float32)
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


def sprite_objects(n_sprites: int = 3, *, min_iou: float = 0.5) -> ObjectReward:
    """The sprite world's :class:`~rlvr_fast.rewards.objects.ObjectReward`: background, wall and eye
    colours as the background, the first ``n_sprites`` sprite colours and sides as the objects. Its
    ``scores`` is the reward term ``objects`` (``video.reward_weights``), its ``in_place`` the held-out
    metric ``sprites`` (:func:`sprite_accuracy`)."""
    if not 1 <= n_sprites <= len(_SPRITES):
        raise ValueError(f"n_sprites: expected 1..{len(_SPRITES)}, got {n_sprites}")
    return ObjectReward(
        [(_BACKGROUND,) * 3, (_WALL,) * 3, (_EYE,) * 3],
        [c for _, c, _, _ in _SPRITES[:n_sprites]],
        [s for _, _, s, _ in _SPRITES[:n_sprites]],
        min_iou=min_iou,
    )


def sprite_accuracy(
    pred: torch.Tensor, real: torch.Tensor, n_sprites: int = 3, *, group_size: int = 1, min_iou: float = 0.5
) -> torch.Tensor:
    """Object-level accuracy of predicted sprite-world frames: the share of sprites put in the right place.

    Every pixel gets the nearest colour of the world's palette (background, wall, eye, the sprite
    colours; Euclidean in RGB, so a decoder's blur and small colour shifts do not matter). Sprite k is
    *in place* when its pixel set in the prediction and in the real frame overlap with IoU >=
    ``min_iou`` (:meth:`~rlvr_fast.rewards.objects.ObjectReward.in_place` of :func:`sprite_objects`).
    Pixel metrics cannot see this: an empty background has a lower MAE than a sprite drawn a few pixels
    off, so a policy optimised on MAE alone can learn to erase the sprites (this metric then drops
    while MAE improves).

    Args:
        pred: float [B, 3, H, W] or [B, T, 3, H, W] in [0, 1] (decoded predictions).
        real: float [G, ...] real frames like pred, B = G * group_size.
        n_sprites: sprites in the world (the first ``n_sprites`` colours).
        group_size: predictions per real clip.
        min_iou: overlap needed to count a sprite as in place.

    Returns:
        float32 [B]: per prediction, the mean over frames and sprites of the in-place indicator.
    """
    ok = sprite_objects(n_sprites, min_iou=min_iou).in_place(pred, real, group_size=group_size)
    return ok.mean(1) if ok.dim() == 2 else ok
