"""RLVR-World's video reward: the formula (:func:`pixel_reward`) and its batched path on the device.

The formula is ``reward = -(w_mae * MAE + w_lpips * LPIPS - w_ssim * SSIM - w_psnr * PSNR + w_mse * MSE)``
against the real next frame (RLVR-World ``_compute_loss`` in ``vid_wm/verl/verl/workers/fsdp_workers.py``,
github.com/thuml/RLVR-World commit e1b8b6f), plus ``w_objects * objects`` for a world whose objects have
known colours (rlvr_fast's term, :class:`~rlvr_fast.rewards.objects.ObjectReward`: the sprite world);
:class:`VideoReward` runs it from generated tokens to token-level rewards:

    reward = VideoReward.from_tokenizer(layout, tokenizer, lpips=lpips)
    out = reward(responses, response_mask, real_frames, group_size=n)
    out.token_rewards   # float32 [B, R]: each rollout's reward on its last response token (verl's layout)

Steps, all batched over the rollouts (no per-sample loop, no host sync unless value checks are on):

1. :func:`~rlvr_fast.ops.unpack_video_tokens`: the visual slots of every response -> codes, and a
   ``valid`` flag (out-of-vocabulary id, early EOS or truncation makes a rollout invalid). What an
   invalid rollout scores is ``invalid_tokens`` (:data:`INVALID_TOKENS`): ``penalty`` (default) gives
   it the penalty reward; ``clamp`` is RLVR-World's: every id is clamped into the visual range and the
   rollout is scored on the frame that gives (``reward_fn`` / ``msp_reward_fn`` in
   ``vid_wm/verl/verl/trainer/ppo/ray_trainer.py``), ``valid`` still reports well-formedness;
2. :func:`~rlvr_fast.ops.codes_to_latents`: one gather from the tokenizer's code -> latent table;
3. the tokenizer's decoder (channels_last; bf16 autocast on CUDA), over the whole batch or in
   ``decode_chunk`` pieces to cap memory, clamped to [0, 1] as RLVR-World does;
4. :func:`pixel_reward`: ``-(sum w * m)`` against each group's real frames (read in place),
   the penalty for invalid rollouts, per-frame aggregation for multi-step responses;
5. :func:`~rlvr_fast.ops.scatter_sequence_reward`: the token-level reward tensor.

Default weights (RLVR-World ``vid_wm`` reward): MAE 1 + LPIPS 1 when an LPIPS network is given, else
MAE 1 + SSIM 1 (SSIM enters with a minus: higher SSIM, higher reward).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Mapping
from typing import NamedTuple

import torch

from .. import _checks as C
from ..ops import (
    VideoTokenLayout,
    aggregate_frames,
    codes_to_latents,
    pixel_metrics,
    scatter_sequence_reward,
    unpack_video_tokens,
)
from ..ops.pixel_metrics import AGGREGATES, METRIC_NAMES, check_finite_positive, check_frame_pair
from ..ops.video import Quantizer
from .objects import ObjectReward

REWARD_TERMS = ("mse", "mae", "psnr", "ssim", "lpips", "objects")
# What a rollout whose visual slots are not all generated visual ids scores (module docstring, step 1).
INVALID_TOKENS = ("penalty", "clamp")
# The sign each metric's weight enters the loss with (reward = -loss): higher PSNR/SSIM is better.
_LOSS_SIGN = {"mse": 1.0, "mae": 1.0, "lpips": 1.0, "psnr": -1.0, "ssim": -1.0, "objects": -1.0}


def _check_frame_range(name: str, frames: torch.Tensor, data_range: float) -> None:
    """Refuse float frames outside [0, data_range] instead of letting the metrics clamp them (frames in
    [0, 255] would all clamp to 1 and every reward come out near the worst). One host sync; skipped with
    ``RLVR_FAST_CHECK_VALUES=0``."""
    if frames.numel() == 0 or not C.value_checks_enabled(frames):
        return
    lo, hi = torch.stack(torch.aminmax(frames.detach())).tolist()  # the one sync
    if not (0.0 <= lo and hi <= data_range):  # also False for NaN
        hint = " (uint8 frames are scaled by 1/255; divide float frames in [0, 255] by 255)" if hi > 1 else ""
        raise ValueError(
            f"{name}: expected float frames in [0, {data_range}] (data_range), got values in [{lo}, {hi}]{hint}"
        )


def default_weights(lpips: bool) -> dict[str, float]:
    """``{"mae": 1, "lpips": 1}`` with LPIPS (RLVR-World's ``trainer.loss_weight``), else ``{"mae": 1, "ssim": 1}``
    (rlvr_fast's fallback without LPIPS weights; RLVR-World's reward has no SSIM term)."""
    return {"mae": 1.0, "lpips": 1.0} if lpips else {"mae": 1.0, "ssim": 1.0}


def default_invalid_reward(weights: Mapping[str, float], data_range: float = 1.0) -> float:
    """The penalty for an invalid generation when none is given: the worst reward of a valid one.

    Each term's loss contribution ``w * sign * m`` at its worst over the metric's range on clamped
    inputs: MSE in [0, L^2], MAE in [0, L], SSIM in [-1, 1], PSNR in [10 log10(L^2 / (L^2 + 1e-8)),
    10 log10(L^2 / 1e-8)], LPIPS in [0, 1] (unbounded in principle; distances of natural images stay
    below 1), objects in [0, 1].
    """
    l2 = data_range**2
    ranges = {
        "mse": (0.0, l2),
        "mae": (0.0, data_range),
        "ssim": (-1.0, 1.0),
        "lpips": (0.0, 1.0),
        "objects": (0.0, 1.0),
        "psnr": (10 * math.log10(l2 / (l2 + 1e-8)), 10 * math.log10(l2 / 1e-8)),
    }
    worst_loss = 0.0
    for key, w in weights.items():
        c = w * _LOSS_SIGN[key]
        worst_loss += max(c * ranges[key][0], c * ranges[key][1])
    return -worst_loss


def pixel_reward(
    pred: torch.Tensor,
    target: torch.Tensor,
    weights: Mapping[str, float],
    *,
    group_size: int = 1,
    valid: torch.Tensor | None = None,
    invalid_reward: float | None = None,
    lpips: torch.nn.Module | None = None,
    objects: ObjectReward | None = None,
    data_range: float = 1.0,
    aggregate: str = "mean",
    gamma: float = 0.9,
    return_metrics: bool = False,
):
    """Sequence rewards ``-(sum of weighted losses)`` of predicted frames, RLVR-World's video reward.

    Args:
        pred: decoded predictions [B, C, H, W] or [B, T, C, H, W] (float32 / bfloat16 / float16).
        target: real frames [G, ...] with B = G * group_size (read in place, never repeated).
        weights: {term: weight} over ``mse, mae, psnr, ssim, lpips, objects``; loss = sum w * m with SSIM,
            PSNR and objects entering with a minus (RLVR-World ``_compute_loss``; ``objects`` is
            rlvr_fast's). Zero weights cost nothing.
        group_size: predictions per real frame.
        valid: optional bool [B] from :func:`~rlvr_fast.ops.unpack_video_tokens`; invalid samples get
            ``invalid_reward``.
        invalid_reward: the penalty; default :func:`default_invalid_reward` of the weights.
        lpips: an :class:`rlvr_fast.models.lpips.LPIPS` on pred's device, required when
            ``weights["lpips"] != 0``; it computes each real frame's features once per group.
        objects: an :class:`~rlvr_fast.rewards.objects.ObjectReward` (the world's object colours and
            sizes), required when ``weights["objects"] != 0``; frames in [0, 1].
        data_range: L (frames in [0, L]).
        aggregate, gamma: per-frame loss -> sample loss for 5-d inputs (see :func:`~rlvr_fast.ops.aggregate_frames`).
        return_metrics: also return {term: float32 [B]} of the unweighted, frame-aggregated terms.

    Returns:
        float32 [B] rewards (and the metrics dict when ``return_metrics``), without autograd history.
        No host synchronisation.
    """
    if not isinstance(weights, Mapping) or not weights:
        raise ValueError(f"weights: expected a non-empty mapping over {list(REWARD_TERMS)}, got {weights!r}")
    for key, w in weights.items():
        C.check_choice("weights", key, REWARD_TERMS)
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not math.isfinite(w):
            raise ValueError(f"weights[{key!r}]: expected a finite number, got {w!r}")
    if invalid_reward is not None and (
        isinstance(invalid_reward, bool)
        or not isinstance(invalid_reward, (int, float))
        or not math.isfinite(invalid_reward)
    ):
        raise ValueError(f"invalid_reward: expected a finite number, got {invalid_reward!r}")
    check_finite_positive("data_range", data_range)
    frames = check_frame_pair(pred, target, group_size)
    C.check_choice("aggregate", aggregate, AGGREGATES)
    if valid is not None:
        C.check_tensor("valid", valid, dtypes=(torch.bool,), ndim=1)
        C.check_shape("valid", valid, (pred.shape[0],), "one flag per prediction")
        C.check_same_device(pred=pred, valid=valid)
    active = {k: float(w) for k, w in weights.items() if w != 0}
    if "lpips" in active and lpips is None:
        raise ValueError(
            "lpips: weights['lpips'] is non-zero, so an LPIPS network is needed "
            "(rlvr_fast.models.lpips.LPIPS.from_files(vgg16_path, lin_path))"
        )
    if "objects" in active and objects is None:
        raise ValueError(
            "objects: weights['objects'] is non-zero, so an ObjectReward is needed; only a world whose objects "
            "have known colours has one (sprite_video: rlvr_fast.worlds.sprite.sprite_objects)"
        )
    batch = pred.shape[0]
    per_frame: dict[str, torch.Tensor] = {}
    pixel = [m for m in METRIC_NAMES if m in active or (return_metrics and m in weights)]
    if pixel:
        per_frame.update(pixel_metrics(pred, target, group_size=group_size, metrics=pixel, data_range=data_range))
    if "lpips" in active or (return_metrics and "lpips" in weights and lpips is not None):
        per_frame["lpips"] = _lpips_per_frame(lpips, pred, target, group_size, frames, data_range)
    if "objects" in active or (return_metrics and "objects" in weights and objects is not None):
        unit = (pred, target) if data_range == 1.0 else (pred * (1.0 / data_range), target * (1.0 / data_range))
        per_frame["objects"] = objects.scores(*unit, group_size=group_size)
    loss = torch.zeros(batch, frames, device=pred.device, dtype=torch.float32)
    for key, w in active.items():
        loss = loss + (w * _LOSS_SIGN[key]) * per_frame[key].view(batch, frames)
    loss = aggregate_frames(loss, aggregate, gamma) if pred.dim() == 5 else loss[:, 0]
    reward = -loss
    if valid is not None:
        penalty = default_invalid_reward(weights, data_range) if invalid_reward is None else float(invalid_reward)
        reward = torch.where(valid, reward, torch.full_like(reward, penalty))
    if not return_metrics:
        return reward
    metrics = {}
    for key, v in per_frame.items():
        metrics[key] = aggregate_frames(v.view(batch, frames), aggregate, gamma) if pred.dim() == 5 else v
    return reward, metrics


def _lpips_per_frame(lpips, pred, target, group_size, frames, data_range) -> torch.Tensor:
    """LPIPS [B, T] (or [B]) with each real frame's features computed once per group."""
    scale = 1.0 / data_range
    pred, target = pred.detach(), target.detach()
    with torch.no_grad():
        if pred.dim() == 4:
            return lpips(
                pred.clamp(0, data_range) * scale, target.clamp(0, data_range) * scale, group_size=group_size
            ).float()
        # [G*g, T] -> [G, T, g] so the n predictions of one real frame are contiguous
        g = target.shape[0]
        p = pred.view(g, group_size, frames, *pred.shape[2:]).transpose(1, 2).reshape(-1, *pred.shape[2:])
        t = target.reshape(-1, *target.shape[2:])
        d = lpips(p.clamp(0, data_range) * scale, t.clamp(0, data_range) * scale, group_size=group_size).float()
        return d.view(g, frames, group_size).transpose(1, 2).reshape(g * group_size, frames)


class VideoRewardOutput(NamedTuple):
    """What :class:`VideoReward` returns.

    token_rewards: float32 [B, R], the sequence reward on the last valid response token, 0 elsewhere.
    scores:        float32 [B], the sequence rewards (``token_rewards.sum(-1)`` for non-empty rows).
    valid:         bool [B], well-formed rollouts (the others got the penalty, or, with
                   ``invalid_tokens="clamp"``, were scored on their clamped frames).
    metrics:       {term: float32 [B]} unweighted, frame-aggregated MSE / MAE / PSNR / SSIM (and LPIPS
                   when a network is set, ``objects`` when an ObjectReward is); an invalid rollout's values describe its code-0 placeholder
                   frames (``clamp``: its clamped frames), so average them over ``valid`` rollouts only.
    frames:        float32 [B, F, 3, H, W] in [0, data_range], the decoded predictions.
    """

    token_rewards: torch.Tensor
    scores: torch.Tensor
    valid: torch.Tensor
    metrics: dict[str, torch.Tensor]
    frames: torch.Tensor


class VideoReward:
    """The token -> reward path of one tokenizer and layout (module docstring).

    Args:
        layout: where the visual tokens sit in a response (:class:`~rlvr_fast.ops.VideoTokenLayout`).
        quantizer: code -> decoder-input table (``tokenizer.quantizer()``).
        decoder: latents [N, C, h, w] -> frames [N, 3, H, W] (unclamped; the reward clamps to [0, 1]).
        weights: {term: weight} over :data:`REWARD_TERMS`; default :func:`default_weights`.
        lpips: an :class:`~rlvr_fast.models.lpips.LPIPS` network, needed when LPIPS is weighted.
        objects: the world's :class:`~rlvr_fast.rewards.objects.ObjectReward`, needed when ``objects`` is
            weighted; given, the ``objects`` score is measured (and reported) even at weight 0.
        invalid_reward: the penalty of malformed rollouts; default the worst reward a valid one can get.
        invalid_tokens: ``"penalty"`` (malformed rollouts get ``invalid_reward``) or ``"clamp"``
            (RLVR-World: ids clamped into the visual range, every rollout scored on its frame; then
            ``invalid_reward`` must be None). :data:`INVALID_TOKENS`.
        aggregate, gamma: per-frame loss -> rollout loss for multi-step layouts (``mean``, ``last``,
            ``discount``: RLVR-World's ``msp`` weighting ``gamma ** t``).
        decode_chunk: at most this many frames through the decoder at once (None: all in one call).
        data_range: pixel range of the frames (1.0).
        context_decoder: for a tokenizer that decodes future frames from a context (iVideoGPT's compressive
            tokenizer, ``ctx_msp`` layout): context codes [G, h, w] -> the features ``decoder(latents,
            features)`` attends to; computed once per group. :meth:`decode` / ``__call__`` then need ``context``.
    """

    def __init__(
        self,
        layout: VideoTokenLayout,
        quantizer: Quantizer,
        decoder: Callable[[torch.Tensor], torch.Tensor],
        weights: Mapping[str, float] | None = None,
        *,
        lpips: torch.nn.Module | None = None,
        objects: ObjectReward | None = None,
        invalid_reward: float | None = None,
        invalid_tokens: str = "penalty",
        aggregate: str = "mean",
        gamma: float = 0.9,
        decode_chunk: int | None = None,
        data_range: float = 1.0,
        context_decoder: Callable[[torch.Tensor], list] | None = None,
    ):
        if not isinstance(layout, VideoTokenLayout):
            raise TypeError(f"layout: expected a VideoTokenLayout, got {type(layout).__name__}")
        if not isinstance(quantizer, Quantizer):
            raise TypeError(f"quantizer: expected a Quantizer (tokenizer.quantizer()), got {type(quantizer).__name__}")
        if quantizer.num_codes != layout.visual_vocab:
            raise ValueError(
                f"quantizer has {quantizer.num_codes} codes but layout.visual_vocab is {layout.visual_vocab}"
            )
        self.weights = dict(weights) if weights is not None else default_weights(lpips is not None)
        for key in self.weights:
            C.check_choice("weights", key, REWARD_TERMS)
        if self.weights.get("lpips", 0) and lpips is None:
            raise ValueError(
                "weights give LPIPS a non-zero weight: pass lpips= (rlvr_fast.models.lpips.LPIPS.from_files)"
            )
        if self.weights.get("objects", 0) and objects is None:
            raise ValueError(
                "weights give the object term a non-zero weight, but this world has no objects of known colours "
                "(only sprite_video has: rlvr_fast.worlds.sprite.sprite_objects)"
            )
        if objects is not None and not isinstance(objects, ObjectReward):
            raise TypeError(f"objects: expected an ObjectReward, got {type(objects).__name__}")
        C.check_choice("aggregate", aggregate, AGGREGATES)
        if decode_chunk is not None:
            C.check_positive("decode_chunk", decode_chunk)
        if invalid_reward is not None and not math.isfinite(invalid_reward):
            raise ValueError(f"invalid_reward: expected a finite number, got {invalid_reward!r}")
        C.check_choice("invalid_tokens", invalid_tokens, INVALID_TOKENS)
        if invalid_tokens == "clamp" and invalid_reward is not None:
            raise ValueError(
                f"invalid_reward={invalid_reward!r} applies to invalid_tokens='penalty' only: with 'clamp' "
                "every rollout is scored on its clamped frame"
            )
        self.invalid_tokens = invalid_tokens
        self.layout, self.quantizer, self.decoder, self.lpips = layout, quantizer, decoder, lpips
        self.objects = objects
        self.invalid_reward, self.aggregate, self.gamma = invalid_reward, aggregate, gamma
        self.decode_chunk, self.data_range = decode_chunk, data_range
        self.context_decoder = context_decoder

    @classmethod
    def from_tokenizer(cls, layout: VideoTokenLayout, tokenizer, weights=None, **kwargs) -> VideoReward:
        """From a :class:`~rlvr_fast.models.tiny_fsq.TinyFSQTokenizer` or ``CNNFSQTokenizer``: its
        ``quantizer()`` and unclamped ``decode_latents``; from a
        :class:`~rlvr_fast.models.compressive.CompressiveFSQTokenizer` also its ``context_features``."""
        if hasattr(tokenizer, "context_features"):
            return cls(
                layout,
                tokenizer.quantizer(),
                lambda z, feats: tokenizer.decode_latents(z, feats, clamp=False),
                weights,
                context_decoder=lambda c: tokenizer.context_features(c)[1],
                **kwargs,
            )
        return cls(layout, tokenizer.quantizer(), lambda z: tokenizer.decode_latents(z, clamp=False), weights, **kwargs)

    @torch.no_grad()
    def decode(
        self, responses: torch.Tensor, response_mask: torch.Tensor, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Frames of the rollouts: responses int [B, R], response_mask bool/int [B, R] (the tokens present)
        -> (frames float32 [B, F, 3, H, W] in [0, 1], valid bool [B]). Invalid rollouts decode code 0
        (``invalid_tokens="clamp"``: their clamped ids). ``context``: int [G, h, w] context codes of the
        G groups (B = G * n), needed exactly when the reward has a ``context_decoder``."""
        if self.context_decoder is None and context is not None:
            raise ValueError("context: this tokenizer decodes every frame on its own; pass no context")
        clamp = self.invalid_tokens == "clamp"
        codes, valid, _ = unpack_video_tokens(responses, response_mask, self.layout, clamp=clamp)
        B, F = codes.shape[:2]
        cuda = responses.device.type == "cuda"
        # channels_last straight from the gather: the faster layout for the decoder's convolutions on
        # CPU as well as GPU (benchmarks/bench_video.py); the compressive decoder un-patchifies first
        fmt = torch.channels_last if self.context_decoder is None else torch.contiguous_format
        latents = codes_to_latents(
            codes, self.quantizer, dtype=torch.bfloat16 if cuda else torch.float32, memory_format=fmt
        )
        amp = torch.autocast("cuda", dtype=torch.bfloat16) if cuda else contextlib.nullcontext()
        step = self.decode_chunk or latents.shape[0]
        with amp:
            if self.context_decoder is not None:
                frames = self._decode_with_context(latents, context, B * F)
            else:
                frames = torch.cat([self.decoder(latents[i : i + step]) for i in range(0, latents.shape[0], step)])
        frames = frames.float().clamp_(0.0, self.data_range)
        return frames.view(B, F, *frames.shape[1:]), valid

    def _decode_with_context(self, latents: torch.Tensor, context: torch.Tensor | None, rows: int) -> torch.Tensor:
        """Frames of ``rows`` latents grouped by context: each group's context decoded once, whole groups per chunk."""
        if context is None:
            raise ValueError(
                "context: this tokenizer decodes future frames from their context codes; pass context [G, h, w]"
            )
        C.check_tensor("context", context, dtypes=C.INT_DTYPES, ndim=3)
        g = context.shape[0]
        if g == 0 or rows % g:
            raise ValueError(f"context: {rows} decoded frames do not split into {g} groups")
        r = rows // g
        per = max(1, (self.decode_chunk or rows) // r)  # groups per decoder call
        out = []
        for g0 in range(0, g, per):
            feats = self.context_decoder(context[g0 : g0 + per].to(latents.device))
            out.append(self.decoder(latents[g0 * r : (g0 + per) * r], feats))
        return torch.cat(out)

    @torch.no_grad()
    def __call__(
        self,
        responses: torch.Tensor,
        response_mask: torch.Tensor,
        target: torch.Tensor,
        group_size: int = 1,
        context: torch.Tensor | None = None,
    ) -> VideoRewardOutput:
        """Rewards of B = G * group_size rollouts.

        Args:
            responses: int [B, R] generated ids (groups contiguous).
            response_mask: bool or 0/1 int [B, R], the tokens present (up to and including EOS).
            target: real frames float [G, F, 3, H, W] (or [G, 3, H, W] when F = 1) in [0, data_range];
                uint8 frames are scaled by 1/255. Float frames outside [0, data_range] raise ValueError
                (one host sync; ``RLVR_FAST_CHECK_VALUES=0`` skips the check).
            group_size: rollouts per real clip.
            context: int [G, h, w] context codes of each group (a ``ctx_msp`` layout's compressive tokenizer).

        Returns:
            :class:`VideoRewardOutput`.
        """
        frames, valid = self.decode(responses, response_mask, context)
        F = self.layout.frames
        if target.dtype == torch.uint8:
            target = target.float() / 255.0
        if target.dim() == 4 and F == 1:
            target = target[:, None]
        C.check_tensor("target", target, dtypes=C.FLOAT_DTYPES, ndim=5)
        _check_frame_range("target", target, self.data_range)
        if target.shape[1] != F or target.shape[2:] != frames.shape[2:]:
            raise ValueError(
                f"target: expected [G, {F}, {', '.join(map(str, frames.shape[2:]))}] real frames, "
                f"got {tuple(target.shape)}"
            )
        pred = frames if F > 1 else frames[:, 0]
        real = target.to(pred.device, pred.dtype)
        real = real if F > 1 else real[:, 0]
        # zero-weighted terms are still measured in the same pass (evaluation reports all four)
        measured = (*METRIC_NAMES, "objects") if self.objects is not None else METRIC_NAMES
        weights = {**dict.fromkeys(measured, 0.0), **self.weights}
        scores, metrics = pixel_reward(
            pred,
            real,
            weights,
            group_size=group_size,
            valid=valid if self.invalid_tokens == "penalty" else None,
            invalid_reward=self.invalid_reward,
            lpips=self.lpips,
            objects=self.objects,
            data_range=self.data_range,
            aggregate=self.aggregate,
            gamma=self.gamma,
            return_metrics=True,
        )
        token_rewards = scatter_sequence_reward(scores, response_mask)
        return VideoRewardOutput(token_rewards, scores, valid, metrics, frames)
