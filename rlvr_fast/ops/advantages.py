"""Group-relative advantages for outcome rewards (GRPO, Dr. GRPO, RLOO, REINFORCE++-baseline).

Top to bottom: the public function, the pure-PyTorch reference (CPU fallback and test oracle), and
the ``rlvr_fast::group_advantages`` custom op that dispatches to the Triton kernels in
``rlvr_fast.kernels.advantages``. Advantages are functions of rewards only, so the op has no
autograd formula: its output never requires grad.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .. import _checks as C
from .._dispatch import use_triton
from .._kernel_spec import Baseline


class Estimator(NamedTuple):
    """What an advantage estimator does with the scores (formulas: :func:`group_advantages`)."""

    baseline: Baseline  # how its group's statistics make a sample's advantage (the kernel's mode)
    whiten: bool  # then whitened over the batch's valid response tokens (needs the response mask)


# Every estimator, by name: adding one is a row here (and a Baseline mode if its group formula is new).
ESTIMATOR_SPECS = {
    "grpo": Estimator(Baseline.MEAN_STD, whiten=False),
    "drgrpo": Estimator(Baseline.MEAN, whiten=False),
    "rloo": Estimator(Baseline.LEAVE_ONE_OUT, whiten=False),
    "reinforce_pp_baseline": Estimator(Baseline.MEAN, whiten=True),
}
ESTIMATORS = tuple(ESTIMATOR_SPECS)
# Estimators whose advantage comes from the sample's group alone: they need two or more samples a group.
GROUP_ESTIMATORS = tuple(name for name, spec in ESTIMATOR_SPECS.items() if not spec.whiten)
# Estimators whitened over the batch: the token counts of the response mask weigh their statistics.
WHITENED_ESTIMATORS = tuple(name for name, spec in ESTIMATOR_SPECS.items() if spec.whiten)


class _Settings(NamedTuple):
    """What a preset fixes (the custom op's scalar arguments of the same names)."""

    eps: float
    unbiased_std: bool
    # "zero" gives a group of one valid sample advantage 0 (it has no baseline); "verl" uses verl's
    # mean 0 / std 1 for such groups
    singleton: str
    # TRL marks unscorable completions with NaN rewards, leaves them out of the group statistics and
    # gives them advantage 0
    nan_as_missing: bool


_PRESET_SETTINGS = {
    None: _Settings(eps=1e-6, unbiased_std=True, singleton="zero", nan_as_missing=False),
    "verl": _Settings(eps=1e-6, unbiased_std=True, singleton="verl", nan_as_missing=False),
    "trl": _Settings(eps=1e-4, unbiased_std=True, singleton="zero", nan_as_missing=True),
}
PRESETS = tuple(_PRESET_SETTINGS)
# verl's masked_whiten: (x - mean) * rsqrt(var + 1e-8), unbiased var over the valid tokens.
WHITEN_EPS = 1e-8


def group_advantages(
    scores: torch.Tensor,
    *,
    group_size: int | None = None,
    group_ids: torch.Tensor | None = None,
    estimator: str = "grpo",
    eps: float | None = None,
    unbiased_std: bool | None = None,
    response_mask: torch.Tensor | None = None,
    preset: str | None = None,
) -> torch.Tensor:
    """Group-relative advantages of outcome scores, optionally broadcast to the response tokens.

    Samples are grouped either contiguously (``group_size``: rows ``[k*n, (k+1)*n)`` share a prompt,
    TRL's layout) or by arbitrary integer ``group_ids`` in any order (verl's ``uid`` case). With
    ``n`` valid samples in a group, mean ``m`` and standard deviation ``s`` (unbiased by default):

    ================================  ====================================================  ==========
    estimator                         advantage of sample i                                 source
    ================================  ====================================================  ==========
    ``grpo``                          ``(r_i - m) / (s + eps)``                             DeepSeekMath (GRPO)
    ``drgrpo``                        ``r_i - m``                                           Dr. GRPO, arXiv 2503.20783
    ``rloo``                          ``r_i - mean_{j != i} r_j = (r_i - m) * n / (n-1)``   arXiv 2402.14740
    ``reinforce_pp_baseline``         ``r_i - m``, then whitened over the batch             arXiv 2501.03262
    ================================  ====================================================  ==========

    The whitening of ``reinforce_pp_baseline`` follows verl's ``masked_whiten``: mean and unbiased
    variance over all valid response tokens (over samples when no ``response_mask`` is given),
    ``(a - mean) * rsqrt(var + 1e-8)``.

    Presets reproduce a peer exactly (tests check against the real packages):
    - ``None``: eps 1e-6, unbiased std, a group with one sample gets advantage 0, NaN scores raise.
    - ``"verl"``: eps 1e-6, unbiased std, singleton groups use mean 0 / std 1 (verl's
      ``compute_*_outcome_advantage``), NaN scores raise. verl's ``compute_rloo_vectorized_*`` gives a
      singleton 0 instead of its reward, unlike its loop version: that matches ``preset=None``.
    - ``"trl"``: eps 1e-4, unbiased std, NaN scores mark unscorable samples: they are left out of the
      group statistics and, like any other NaN advantage, become 0 (TRL ``GRPOTrainer``).
    ``eps`` and ``unbiased_std`` override the preset when given.

    Args:
        scores: float tensor [B] (fp32/bf16/fp16/fp64), one scalar reward per sample.
        group_size: samples per prompt for contiguous groups; must divide B.
        group_ids: int tensor [B] of group labels, any values, any order (exclusive with group_size).
        estimator: one of ``grpo | drgrpo | rloo | reinforce_pp_baseline``.
        eps: added to the group std (``grpo``).
        unbiased_std: Bessel-corrected std (and whitening variance).
        response_mask: optional [B, T] mask (bool/int/float, nonzero = valid token). When given the
            result is broadcast to tokens and zeroed at masked positions, in the same launch.
        preset: ``None | "verl" | "trl"``.

    Returns:
        float32 [B], or float32 [B, T] when ``response_mask`` is given. Never requires grad.

    Backends: contiguous groups of up to 256 samples run as one Triton launch (two plus a tiny
    reduction for ``reinforce_pp_baseline``, whose whitening needs batch statistics). ``group_ids``
    and larger groups compute the group statistics with a stable sort and float64 prefix sums
    (deterministic, no atomics, no host sync) and broadcast with the Triton kernel.
    """
    C.check_choice("preset", preset, PRESETS)
    C.check_choice("estimator", estimator, ESTIMATORS)
    settings = _PRESET_SETTINGS[preset]
    if eps is not None:
        settings = settings._replace(eps=float(eps))
    if unbiased_std is not None:
        settings = settings._replace(unbiased_std=bool(unbiased_std))
    C.check_positive("eps", settings.eps, allow_zero=True)

    C.check_tensor("scores", scores, dtypes=C.FLOAT_DTYPES, ndim=1)
    batch = scores.shape[0]
    if (group_size is None) == (group_ids is None):
        raise ValueError("group_advantages: pass exactly one of group_size (contiguous groups) or group_ids")
    if group_size is not None:
        if isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1:
            raise ValueError(f"group_size: expected a positive int, got {group_size!r}")
        if batch % group_size != 0:
            raise ValueError(f"group_size: must divide the batch size {batch}, got {group_size}")
    else:
        C.check_tensor("group_ids", group_ids, dtypes=C.INT_DTYPES, ndim=1)
        C.check_shape("group_ids", group_ids, (batch,), "one label per score")
    if response_mask is not None:
        C.check_tensor("response_mask", response_mask, ndim=2)
        if response_mask.shape[0] != batch:
            raise ValueError(
                f"response_mask: expected shape ({batch}, T) to match scores, got {tuple(response_mask.shape)}"
            )
    C.check_same_device(scores=scores, group_ids=group_ids, response_mask=response_mask)

    return torch.ops.rlvr_fast.group_advantages(
        scores.detach(),  # rewards are constants of the policy gradient
        group_ids,
        group_size or 0,
        response_mask,
        estimator,
        **settings._asdict(),
    )


# ----------------------------------------------------------------------------------------------
# Reference
# ----------------------------------------------------------------------------------------------


def _segment_bounds(batch: int, group_ids: torch.Tensor | None, group_size: int, device):
    """Sort order and, per sorted position, its group's [start, end) in that order.

    Contiguous groups need no sort (``perm`` is None). Arbitrary ids are stably sorted; segment
    bounds come from cummax/cummin scans. No host sync, no atomics.
    """
    idx = torch.arange(batch, device=device)
    if group_ids is None:
        start = idx // group_size * group_size
        return None, start, start + group_size
    sorted_ids, perm = torch.sort(group_ids.to(torch.int64), stable=True)
    is_start = torch.ones(batch, dtype=torch.bool, device=device)
    is_start[1:] = sorted_ids[1:] != sorted_ids[:-1]
    is_end = torch.ones_like(is_start)
    is_end[:-1] = is_start[1:]
    start = torch.cummax(torch.where(is_start, idx, 0), 0).values
    last = torch.where(is_end, idx, batch - 1).flip(0).cummin(0).values.flip(0)
    return perm, start, last + 1


def _segment_sum(values: torch.Tensor, start: torch.Tensor, end: torch.Tensor) -> torch.Tensor:
    """Each position's sum over its segment, from float64 prefix sums: deterministic (no atomics)."""
    prefix = torch.zeros(values.shape[0] + 1, dtype=torch.float64, device=values.device)
    prefix[1:] = torch.cumsum(values.to(torch.float64), 0)
    return (prefix[end] - prefix[start]).to(values.dtype)


def power_of_two_scale(a: torch.Tensor) -> torch.Tensor:
    """The largest power of two <= ``a`` (float32/float64, ``a`` >= 0) elementwise; 1 where ``a`` is 0 or
    subnormal. Dividing by it is exact, so statistics of ``x / s`` are those of ``x``, scaled, bit for bit.
    """
    if a.dtype == torch.float64:
        s = (a.view(torch.int64) & 0x7FF0000000000000).view(torch.float64)
    else:
        s = (a.float().view(torch.int32) & 0x7F800000).view(torch.float32).to(a.dtype)
    return torch.where(s > 0, s, torch.ones_like(s))


def group_centered(
    scores: torch.Tensor,
    group_ids: torch.Tensor | None,
    group_size: int,
    estimator: str,
    eps: float,
    unbiased_std: bool,
    singleton: str,
    nan_as_missing: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample advantage before any batch whitening, and the validity mask.

    Groups are contiguous runs of ``group_size`` or given by ``group_ids`` [B] (any labels, any
    order). Computes in ``promote(scores.dtype, float32)``. Returns (advantage [B], valid bool [B]);
    invalid (NaN, when ``nan_as_missing``) samples get 0. A whitened estimator's value before whitening.
    """
    baseline = ESTIMATOR_SPECS[estimator].baseline
    dtype = torch.promote_types(scores.dtype, torch.float32)
    batch = scores.shape[0]
    perm, start, end = _segment_bounds(batch, group_ids, group_size, scores.device)
    r = scores.to(dtype) if perm is None else scores.to(dtype)[perm]
    valid = ~torch.isnan(r) if nan_as_missing else torch.ones_like(r, dtype=torch.bool)
    r0 = torch.where(valid, r, 0.0)
    vf = valid.to(dtype)
    n = _segment_sum(vf, start, end)
    # statistics of x = r / s with s the group's power-of-two scale: exact, so results are unchanged where
    # nothing overflows, and squares of scores near 1e20..3e38 no longer overflow float32 (s is per group,
    # the segment start is its key)
    gmax = torch.zeros_like(r0).scatter_reduce_(0, start, r0.abs(), "amax")
    scale = power_of_two_scale(gmax)[start]
    x = r0 / scale
    mean = _segment_sum(x, start, end) / n.clamp_min(1.0)
    dev = torch.where(valid, x - mean, 0.0)
    var = _segment_sum(dev * dev, start, end) / ((n - 1.0) if unbiased_std else n).clamp_min(1.0)
    if baseline == Baseline.MEAN_STD:
        adv = dev / (var.sqrt() + eps / scale)
    elif baseline == Baseline.LEAVE_ONE_OUT:
        adv = dev * n / (n - 1.0).clamp_min(1.0) * scale  # scale last: no overflow on the way
    else:  # Baseline.MEAN
        adv = dev * scale
    if singleton == "verl":  # verl: mean 0, std 1 for a group of one -> r / (1 + eps) or r
        lone = r0 / (1.0 + eps) if baseline == Baseline.MEAN_STD else r0
        adv = torch.where(n == 1, lone, adv)
    else:
        adv = torch.where(n <= 1, 0.0, adv)
    adv = torch.where(valid, adv, 0.0)
    if perm is not None:  # back to the caller's order (a permutation: no write collisions)
        adv = torch.empty_like(adv).index_put_((perm,), adv)
        valid = torch.empty_like(valid).index_put_((perm,), valid)
    return adv, valid


def whiten(
    adv: torch.Tensor, valid: torch.Tensor, response_mask: torch.Tensor | None, unbiased_std: bool
) -> torch.Tensor:
    """verl's ``masked_whiten`` of per-sample values [B]: ``(a - mean) * rsqrt(var + 1e-8)``.

    Statistics are over valid response tokens (each sample counts once per valid token), or over
    valid samples without a mask; with fewer than two entries the variance is taken as 0. Invalid
    samples stay 0.
    """
    weight = valid.to(adv.dtype)
    if response_mask is not None:
        weight = weight * (response_mask != 0).sum(1)
    total = weight.sum()
    # batch statistics of adv / s (s: a power of two, exact) so that squares cannot overflow
    peak = torch.where(valid, adv, 0.0).abs().amax() if adv.numel() else adv.new_zeros(())
    scale = power_of_two_scale(peak)
    x = adv / scale
    mean = (weight * x).sum() / total.clamp_min(1.0)
    m2 = (weight * (x - mean) ** 2).sum()
    denom = (total - 1.0) if unbiased_std else total
    var = torch.where(total > 1, m2 / denom.clamp_min(1.0), torch.zeros_like(m2))
    return torch.where(valid, (x - mean) * torch.rsqrt(var + WHITEN_EPS / (scale * scale)), 0.0)


def group_advantages_ref(
    scores: torch.Tensor,
    group_ids: torch.Tensor | None,
    group_size: int,
    response_mask: torch.Tensor | None,
    estimator: str,
    eps: float,
    unbiased_std: bool,
    singleton: str,
    nan_as_missing: bool,
) -> torch.Tensor:
    """Pure-PyTorch reference of :func:`group_advantages` (same arguments as the custom op).

    Vectorised and free of host syncs. Computes in ``promote(scores.dtype, float32)``, so float64
    inputs give the float64 oracle used by the tests.
    """
    adv, valid = group_centered(scores, group_ids, group_size, estimator, eps, unbiased_std, singleton, nan_as_missing)
    if ESTIMATOR_SPECS[estimator].whiten:
        adv = whiten(adv, valid, response_mask, unbiased_std)
    if response_mask is None:
        return adv
    return torch.where(response_mask != 0, adv[:, None], 0.0)


# ----------------------------------------------------------------------------------------------
# Custom op
# ----------------------------------------------------------------------------------------------


@torch.library.custom_op("rlvr_fast::group_advantages", mutates_args=())
def _group_advantages_op(
    scores: torch.Tensor,
    group_ids: torch.Tensor | None,
    group_size: int,
    response_mask: torch.Tensor | None,
    estimator: str,
    eps: float,
    unbiased_std: bool,
    singleton: str,
    nan_as_missing: bool,
) -> torch.Tensor:
    if nan_as_missing:
        C.check_finite(
            "scores", torch.where(torch.isnan(scores), 0.0, scores), " (NaN marks a missing score; Inf is an error)"
        )
    else:
        C.check_finite("scores", scores, "; use preset='trl' to treat NaN as an unscorable sample")
    args = (scores, group_ids, group_size, response_mask, estimator, eps, unbiased_std, singleton, nan_as_missing)
    if not use_triton("group_advantages", scores):
        return group_advantages_ref(*args).float()
    from ..kernels import advantages as K

    spec = ESTIMATOR_SPECS[estimator]
    if group_ids is None and group_size <= K.MAX_GROUP:
        adv, tok = K.contiguous_group_advantages(
            scores,
            group_size,
            None if spec.whiten else response_mask,
            spec.baseline,
            eps,
            unbiased_std,
            singleton,
            nan_as_missing,
        )
        if not spec.whiten:
            return adv if tok is None else tok
        valid = ~torch.isnan(scores) if nan_as_missing else torch.ones_like(adv, dtype=torch.bool)
    else:
        adv, valid = group_centered(
            scores.float(), group_ids, group_size, estimator, eps, unbiased_std, singleton, nan_as_missing
        )
    if spec.whiten:  # batch whitening needs global statistics: a few [B]-sized torch ops between launches
        adv = whiten(adv, valid, response_mask, unbiased_std)
    return adv if response_mask is None else K.broadcast_to_tokens(adv, response_mask)


@_group_advantages_op.register_fake
def _(scores, group_ids, group_size, response_mask, estimator, eps, unbiased_std, singleton, nan_as_missing):
    shape = scores.shape if response_mask is None else response_mask.shape
    return scores.new_empty(shape, dtype=torch.float32)
