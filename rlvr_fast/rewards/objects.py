"""Object-level scores of predicted frames for worlds whose objects have known colours and sizes.

Pixel metrics cannot see objects: an empty floor has a lower MAE than a sprite drawn a few pixels
off, so a policy optimised on MAE (+ SSIM) alone can learn to erase the objects it is unsure of.
:class:`ObjectReward` scores where the objects are instead, from the decoded frame, batched over every
rollout on the frames' device (no host loop, no sync):

1. every pixel gets the nearest colour of the world's palette (Euclidean in RGB, so a decoder's blur
   and small colour shifts do not matter): object k's pixel set ``P_k`` in the prediction, ``R_k``
   in the real frame;
2. per object, ``presence = min(|P_k|, |R_k|) / max(|P_k|, |R_k|)`` (1 when the areas agree, 0 when
   the object is missing, lower when pixels of its colour are missing or extra) and the distance
   ``d`` between the centroids of ``P_k`` and ``R_k`` in pixels;
3. ``score_k = presence * exp(-d / size_k)`` with ``size_k`` the object's side in pixels (1 when the
   object is drawn where it is, ``e^-1`` at one object side away); 1 when the object is absent from
   both frames, 0 when it is absent from exactly one;
4. the frame's object reward is the mean of ``score_k`` over the objects, in [0, 1].

:meth:`ObjectReward.in_place` is the evaluation metric next to it: the share of objects whose pixel sets
overlap with IoU >= ``min_iou``. The reward term ``objects`` of :func:`rlvr_fast.rewards.video.pixel_reward`
(``video.reward_weights``) weights :meth:`ObjectReward.scores` with the pixel terms; the sprite world
builds its instance (:func:`rlvr_fast.worlds.sprite.sprite_objects`). The formula is
rlvr_fast's (RLVR-World's RT-1 reward has no object term; it adds LPIPS for the same reason).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .. import _checks as C
from ..ops.pixel_metrics import check_frame_pair

__all__ = ["ObjectReward"]


class ObjectReward:
    """Object presence and position in predicted frames against the real ones (module docstring).

    Args:
        background: RGB colours in [0, 1] of what is not an object (floor, walls, markings).
        objects: RGB colours in [0, 1] of the objects, one each (an object is the pixels of its colour).
        sizes: each object's side in pixels, the position scale of step 3.
        min_iou: overlap that counts an object as in place for :meth:`in_place`.
    """

    def __init__(
        self,
        background: Sequence[Sequence[float]],
        objects: Sequence[Sequence[float]],
        sizes: Sequence[float],
        *,
        min_iou: float = 0.5,
    ):
        palette = [tuple(float(v) for v in c) for c in (*background, *objects)]
        if not objects or any(len(c) != 3 or not all(0.0 <= v <= 1.0 for v in c) for c in palette):
            raise ValueError(f"background / objects: expected RGB triples in [0, 1] and >= 1 object, got {palette}")
        if len(set(palette)) != len(palette):
            raise ValueError(f"background / objects: colours must differ, got {palette}")
        if len(sizes) != len(objects) or not all(isinstance(s, (int, float)) and 0 < s < math.inf for s in sizes):
            raise ValueError(f"sizes: expected one positive size per object ({len(objects)}), got {list(sizes)}")
        if not 0.0 < min_iou <= 1.0:
            raise ValueError(f"min_iou: expected a value in (0, 1], got {min_iou}")
        self.palette = torch.tensor(palette, dtype=torch.float32)  # [K, 3]
        self.n_background, self.n_objects = len(background), len(objects)
        self.sizes = torch.tensor([float(s) for s in sizes], dtype=torch.float32)  # [S]
        self.min_iou = float(min_iou)
        self._device_tensors: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def _on(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(palette, sizes) on ``device``, copied there once: a per-call copy from pageable host memory
        would wait for the device's queued work (a hidden sync on the reward path)."""
        if device not in self._device_tensors:
            self._device_tensors[device] = (self.palette.to(device), self.sizes.to(device))
        return self._device_tensors[device]

    def masks(self, frames: torch.Tensor) -> torch.Tensor:
        """bool [N, S, H, W]: each object's pixels in frames float [N, 3, H, W] (nearest palette colour)."""
        x = frames.detach().float()
        colours = self._on(x.device)[0]
        # a running argmin over the K colours: no [N, K, H, W] distance tensor; strict < keeps the
        # first nearest colour on a tie, as argmin does
        best = label = None
        for k in range(colours.shape[0]):
            dist = ((x - colours[k].view(3, 1, 1)) ** 2).sum(1)  # [N, H, W]
            if best is None:
                best, label = dist, torch.zeros_like(dist, dtype=torch.long)
            else:
                closer = dist < best
                best, label = torch.where(closer, dist, best), label.masked_fill(closer, k)
        ids = torch.arange(self.n_background, len(colours), device=x.device)
        return label[:, None] == ids[None, :, None, None]

    def _pairs(self, pred: torch.Tensor, real: torch.Tensor, group_size: int):
        """Masks of every predicted frame and of its real frame (each real frame labelled once)."""
        frames = check_frame_pair(pred, real, group_size)
        p = self.masks(pred.reshape(-1, *pred.shape[-3:]))
        r = self.masks(real.reshape(-1, *real.shape[-3:]))
        i = torch.arange(p.shape[0], device=p.device)
        j = ((i // frames) // group_size) * frames + i % frames  # the real frame of prediction frame i
        return p, r.index_select(0, j), frames

    def _shape(self, values: torch.Tensor, pred: torch.Tensor, frames: int) -> torch.Tensor:
        return values.view(pred.shape[0], frames) if pred.dim() == 5 else values

    @torch.no_grad()
    def scores(self, pred: torch.Tensor, real: torch.Tensor, *, group_size: int = 1) -> torch.Tensor:
        """The object reward per predicted frame (module docstring, steps 1-4).

        Args:
            pred: float [B, 3, H, W] or [B, T, 3, H, W] in [0, 1], the decoded predictions.
            real: float [G, ...] real frames like pred, B = G * group_size (labelled once, not repeated).
            group_size: predictions per real clip.

        Returns:
            float32 [B] (or [B, T]) in [0, 1]; no autograd history, no host synchronisation.
        """
        C.check_positive("group_size", group_size)
        p, r, frames = self._pairs(pred, real, group_size)
        h, w = p.shape[-2:]
        ys = torch.arange(h, device=p.device, dtype=torch.float32)
        xs = torch.arange(w, device=p.device, dtype=torch.float32)

        def stats(m):
            m = m.float()
            area = m.sum((2, 3))  # [N, S]
            cy = (m.sum(3) * ys).sum(2) / area.clamp(min=1)
            cx = (m.sum(2) * xs).sum(2) / area.clamp(min=1)
            return area, cy, cx

        ap, yp, xp = stats(p)
        ar, yr, xr = stats(r)
        presence = torch.minimum(ap, ar) / torch.maximum(ap, ar).clamp(min=1)
        dist = torch.sqrt((yp - yr) ** 2 + (xp - xr) ** 2)
        score = presence * torch.exp(-dist / self._on(p.device)[1])
        score = torch.where((ap == 0) & (ar == 0), torch.ones_like(score), score)
        return self._shape(score.mean(1), pred, frames)

    @torch.no_grad()
    def in_place(self, pred: torch.Tensor, real: torch.Tensor, *, group_size: int = 1) -> torch.Tensor:
        """The share of objects in place (pixel sets with IoU >= ``min_iou``; an object absent from both
        frames counts as in place), per predicted frame: float32 [B] (or [B, T]); arguments as :meth:`scores`."""
        C.check_positive("group_size", group_size)
        p, r, frames = self._pairs(pred, real, group_size)
        inter = (p & r).flatten(2).sum(-1).float()
        union = (p | r).flatten(2).sum(-1).float()
        ok = torch.where(
            union > 0, inter / union.clamp(min=1) >= self.min_iou, torch.ones_like(union, dtype=torch.bool)
        )
        return self._shape(ok.float().mean(1), pred, frames)
