"""The gap between the rollout engine's log-probs and the trainer's, and its truncated-importance-sampling
correction (``algo.tis_cap``).

An inference engine samples with its own kernels (and, on GPU, often another dtype), so the probability
it gave a sampled token differs from the one the trainer computes for the same weights. PPO's ratio uses
the trainer's log-probs as "old", so the samples come from a slightly different policy than the loss
assumes. The per-token truncated importance weight ``w = min(exp(logp_trainer - logp_engine), cap)``
on the policy-gradient term corrects for it (Yao et al., "Your efficient RL framework secretly brings
you off-policy RL training", 2025; verl's ``compute_rollout_correction_weights`` with
``rollout_is="token"``, which clamps the log-ratio to +-20 before ``exp`` and zeroes padding).

Scaling the advantage by ``w >= 0`` is exactly weighting the clipped surrogate by ``w``: the
surrogate is ``max(-A r, -A clip(r))`` (and its dual-clip ``min`` with ``-c A``), and a non-negative
factor on ``A`` moves through ``max`` and ``min``. The KL and entropy terms are not weighted, as in verl.
"""

from __future__ import annotations

import torch

# verl's SAFETY_BOUND: the log-ratio is clamped to [-20, 20] before exp
LOG_RATIO_BOUND = 20.0


def logp_gap(train_logp: torch.Tensor, engine_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """float32 [3]: (sum of |train - engine|, token count, max |train - engine|) over ``mask``.

    train_logp, engine_logp: float [B, R] log-probs of the sampled tokens; mask: bool [B, R] (the loss
    mask: forced tokens and padding excluded). Sums rather than means, so parts combine exactly.
    """
    diff = (train_logp.float() - engine_logp.float()).abs() * mask
    return torch.stack([diff.sum(), mask.sum().float(), diff.max() if diff.numel() else diff.new_zeros(())])


def combine_gaps(parts: list[torch.Tensor]) -> dict[str, float]:
    """``logp_gap_mean`` and ``logp_gap_max`` of the parts :func:`logp_gap` returned (one host sync)."""
    g = torch.stack(parts)
    mean, top = (g[:, 0].sum() / g[:, 1].sum().clamp(min=1)), g[:, 2].max()
    mean, top = torch.stack([mean, top]).tolist()
    return {"logp_gap_mean": mean, "logp_gap_max": top}


def tis_weights(train_logp: torch.Tensor, engine_logp: torch.Tensor, mask: torch.Tensor, cap: float) -> torch.Tensor:
    """float32 [B, R]: ``min(exp(clamp(train - engine, -20, 20)), cap)`` on ``mask``, 0 elsewhere (detached).

    The formula of verl's ``compute_rollout_correction_weights(rollout_is="token", rollout_is_threshold=cap)``.
    """
    log_ratio = (train_logp.float() - engine_logp.float()).clamp(-LOG_RATIO_BOUND, LOG_RATIO_BOUND)
    return (torch.exp(log_ratio) * mask).clamp(max=cap).detach()


class Mismatch:
    """One GRPO step's engine/trainer gap and correction: :meth:`observe` each part of the rollout batch
    once with the trainer's "old" log-probs, :meth:`advantages` for each loss part, :meth:`metrics` at
    the end. Without engine log-probs (the hf engine) it does nothing. cap: ``algo.tis_cap`` or None."""

    def __init__(self, cap: float | None):
        self.cap, self.gaps, self.weights = cap, [], []

    def observe(self, train_logp: torch.Tensor, batch) -> None:
        if batch.engine_logp is not None:
            self.gaps.append(logp_gap(train_logp, batch.engine_logp, batch.response_mask))

    def advantages(self, adv: torch.Tensor, train_logp: torch.Tensor, batch) -> torch.Tensor:
        """``adv`` ([B] or [B, R]) times the TIS weights ([B, R]) when ``cap`` is set, else ``adv``."""
        if self.cap is None or batch.engine_logp is None:
            return adv
        w = tis_weights(train_logp, batch.engine_logp, batch.response_mask, self.cap)
        self.weights.append(w.sum() / batch.response_mask.sum().clamp(min=1))
        return (adv[:, None] if adv.ndim == 1 else adv) * w

    def metrics(self) -> dict[str, float]:
        """``logp_gap_mean``, ``logp_gap_max`` and (with a cap) ``tis_weight``, the mean weight."""
        out = combine_gaps(self.gaps) if self.gaps else {}
        if self.weights:
            out["tis_weight"] = torch.stack(self.weights).mean().item()
        return out
