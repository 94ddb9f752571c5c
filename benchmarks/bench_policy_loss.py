"""Clipped policy loss (PPO/GRPO), from log-probs and fused from logits, forward + backward.

Two ops, both timed as forward + backward (the way a trainer uses them):

(a) ``policy_loss`` on [B, T] log-probs: clip 0.2 / 0.2, dual-clip c = 3, k3 KL to a reference with
    coefficient 0.001 (verl's ``kl_loss_coef`` default), token-mean aggregation, metrics included.
    Floor: it reads logp, old_logp, ref_logp, advantages (4 x 4 B) and the int64 mask (8 B) and
    writes d(logp) (4 B): 28 B per token. GPU target shape B=1024, T=4096 (4.2 M tokens): 117 MB ->
    35 us at 3.35 TB/s, so the GPU time is launch / reduction bound; CPU small shape B=256, T=1024.
    Providers: rlvr_fast; torch-ref (``rlvr_fast.ops.policy_loss_ref`` through plain autograd);
    torch-ref-compiled (``torch.compile`` of it); verl (``compute_policy_loss_vanilla`` with an
    OmegaConf actor config ``clip_ratio=0.2, clip_ratio_low=0.2, clip_ratio_high=0.2, clip_ratio_c=3.0,
    global_batch_info={}`` + ``kl_penalty(..., "low_var_kl")`` + ``agg_loss``, as verl's actor
    combines them; its three metrics call ``.item()``).

(b) ``policy_loss_from_logits`` on logits [B, T+1, V] viewed as ``logits[:, :-1]`` (how trainers slice
    them; rlvr_fast reads the view in place): selective log-softmax + the loss of (a) with
    k3 coefficient 0.04 (TRL's classic beta), per-sequence advantages [B].
    Floor: read the logits forward, read them again backward and write d(logits) once: GPU target
    N = 16384 (B=16 x T=1024), V = 151936, bf16: 3 x 4.98 GB = 14.9 GB -> 4.46 ms at 3.35 TB/s
    (docs/DESIGN.md section 8: <= 1.25x the floor, >= 1.2x Liger grpo_loss, no fp32 copy of the logits).
    CPU small shape N = 4096 (B=8 x T=512), V = 32000, fp32: 3 x 524 MB. The ``floor`` pseudo-provider
    measures it on the machine: ``logits.sum()`` + a copy of the logits into a fresh buffer.
    Providers: rlvr_fast; verl-unfused (verl ``logprobs_from_logits_naive`` = log_softmax + gather,
    then the verl loss of (a) on token-level advantages); trl-unfused (``trl`` ``selective_log_softmax``
    then TRL 1.16 ``GRPOTrainer._compute_loss``'s lines for ``loss_type="bnpo"`` with ``beta``: two-sided
    clip, k3 KL, token mean); liger-grpo (``liger_kernel.transformers.grpo_loss.triton_grpo_loss`` on
    the full [B, T+1, V] logits, ``inplace=False`` like rlvr_fast's default; CUDA only, if installed).
    ``LigerFusedLinearGRPOLoss`` (hidden states + lm_head) belongs to the fused-linear target, which
    has no rlvr_fast op yet.

Inputs: ``old_logp`` / ``ref_logp`` are the current log-probs plus N(0, 0.05) noise (ratios near 1,
as after one optimiser step), advantages N(0, 1), masks with response lengths uniform in [T/4, T].
Every provider's loss and gradient are checked against rlvr_fast's before timing (TRL has no dual
clip; with ratios near 1 it never triggers, so the losses agree).

Run: ``python benchmarks/bench_policy_loss.py --shapes small`` (CPU) or ``--shapes target`` (GPU).
"""

from __future__ import annotations

import sys

import common as C
import torch
import torch.nn.functional as F

OP_LOSS, OP_LOGITS = "policy_loss", "policy_loss_from_logits"

SHAPES = {
    "small": dict(loss=[dict(B=256, T=1024)], logits=[dict(B=8, T=512, V=32000, dtype="float32")]),
    "target": dict(loss=[dict(B=1024, T=4096)], logits=[dict(B=16, T=1024, V=151936, dtype="bfloat16")]),
    "smoke": dict(loss=[dict(B=4, T=16)], logits=[dict(B=2, T=8, V=1000, dtype="float32")]),
}
CLIP, DUAL_CLIP = 0.2, 3.0
# the options both rlvr_fast ops are timed with (the baselines are configured to match)
LOSS_OPTIONS = dict(clip_low=CLIP, clip_high=CLIP, dual_clip=DUAL_CLIP, kl_type="k3", agg="token-mean")
KL_COEF_LOSS, KL_COEF_LOGITS = 0.001, 0.04
FLOOR_NOTE = "2 reads + 1 write of the logits"
LOGITS_NOTE = "logits[:, :-1] view; clip 0.2/0.2, dual-clip 3 (not TRL/Liger), k3 KL 0.04, token-mean"


def _verl_config():
    from omegaconf import OmegaConf

    return OmegaConf.create(
        dict(
            clip_ratio=CLIP,
            clip_ratio_low=CLIP,
            clip_ratio_high=CLIP,
            clip_ratio_c=DUAL_CLIP,
            global_batch_info={},
        )
    )


def _verl_loss(logp, old, adv_tok, mask, ref, kl_coef, cfg):
    """verl's actor: pg loss (vanilla, dual clip) + kl_loss_coef * agg_loss(k3 KL)."""
    from verl.trainer.ppo.core_algos import agg_loss, compute_policy_loss_vanilla, kl_penalty

    pg_loss, _metrics = compute_policy_loss_vanilla(old, logp, adv_tok, mask, loss_agg_mode="token-mean", config=cfg)
    kld = kl_penalty(logprob=logp, ref_logprob=ref, kl_penalty="low_var_kl")
    kl_loss = agg_loss(loss_mat=kld, loss_mask=mask, loss_agg_mode="token-mean")
    return pg_loss + kl_loss * kl_coef


# ----------------------------------------------------------------------------------------------
# (a) policy_loss on [B, T]
# ----------------------------------------------------------------------------------------------


def _loss_inputs(B: int, T: int) -> dict:
    mask = C.response_mask(B, T, seed=21)
    logp = (-C.randn((B, T), seed=22).abs() * 2.0).requires_grad_(True)
    old = logp.detach() + C.randn((B, T), seed=23, scale=0.05)
    ref = logp.detach() + C.randn((B, T), seed=24, scale=0.05)
    adv = C.randn((B,), seed=25)[:, None] * mask  # token-level advantages, as verl passes them
    return dict(logp=logp, old=old, ref=ref, adv=adv, mask=mask)


def _ref_args(d):
    from rlvr_fast.ops.policy_loss_reference import LossOptions

    opts = LossOptions(
        clip_low=CLIP,
        clip_high=CLIP,
        dual_clip=DUAL_CLIP,
        kl_type="k3",
        kl_coef=KL_COEF_LOSS,
        kl_clamp=10.0,
        log_ratio_clamp=20.0,
        entropy_coef=0.0,
    )
    return (d["old"], d["adv"], d["mask"], d["ref"], None, opts, "token-mean", None)


def _loss_ours(d):
    import rlvr_fast

    loss, _metrics = rlvr_fast.policy_loss(
        d["logp"], d["old"], d["adv"], d["mask"], ref_logp=d["ref"], kl_coef=KL_COEF_LOSS, **LOSS_OPTIONS
    )
    return loss


def _loss_torch_ref(d):
    from rlvr_fast.ops import policy_loss_ref

    return policy_loss_ref(d["logp"], *_ref_args(d))[0]


_COMPILED = {}


def _loss_torch_ref_compiled(d):
    if "loss" not in _COMPILED:
        from rlvr_fast.ops import policy_loss_ref

        _COMPILED["loss"] = torch.compile(policy_loss_ref, dynamic=False)
    return _COMPILED["loss"](d["logp"], *_ref_args(d))[0]


def _loss_verl(d):
    if "cfg" not in d:
        d["cfg"] = _verl_config()
    return _verl_loss(d["logp"], d["old"], d["adv"], d["mask"], d["ref"], KL_COEF_LOSS, d["cfg"])


LOSS_PROVIDERS = {
    "rlvr_fast": (_loss_ours, lambda: True),
    "torch-ref": (_loss_torch_ref, lambda: True),
    "torch-ref-compiled": (_loss_torch_ref_compiled, lambda: True),
    "verl": (_loss_verl, lambda: C.try_import("verl.trainer.ppo.core_algos") and C.try_import("omegaconf")),
}


def _fwd_bwd(fn, d, x):
    """One timed call: the loss of ``fn(d)`` and its gradient w.r.t. ``x`` (cleared between calls)."""

    def fwd_bwd():
        x.grad = None
        loss = fn(d)
        loss.backward()
        g = x.grad
        x.grad = None
        return loss.detach(), g

    return fwd_bwd


def _make_loss(fn, spec):
    def make():
        d = _loss_inputs(spec["B"], spec["T"])
        return _fwd_bwd(fn, d, d["logp"])

    return make


# ----------------------------------------------------------------------------------------------
# (b) policy_loss_from_logits on [B, T+1, V] viewed as [:, :-1]
# ----------------------------------------------------------------------------------------------


def _logits_inputs(B: int, T: int, V: int, dtype: torch.dtype) -> dict:
    full = C.randn((B, T + 1, V), seed=31, dtype=dtype)
    ids = C.randint(V, (B, T), seed=32)
    mask = C.response_mask(B, T, seed=33)
    with torch.no_grad():
        lp = F.log_softmax(full[:, :-1].float(), dim=-1).gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    old = lp + C.randn((B, T), seed=34, scale=0.05)
    ref = lp + C.randn((B, T), seed=35, scale=0.05)
    del lp
    adv = C.randn((B,), seed=36)
    full.requires_grad_(True)
    return dict(full=full, ids=ids, mask=mask, old=old, ref=ref, adv=adv, adv_tok=adv[:, None] * mask)


def _logits_ours(d):
    import rlvr_fast

    loss, _metrics = rlvr_fast.policy_loss_from_logits(
        d["full"][:, :-1],
        d["ids"],
        d["old"],
        d["adv"],
        d["mask"],
        ref_logp=d["ref"],
        kl_coef=KL_COEF_LOGITS,
        **LOSS_OPTIONS,
    )
    return loss


def _logits_verl(d):
    from verl.utils.torch_functional import logprobs_from_logits_naive

    if "cfg" not in d:
        d["cfg"] = _verl_config()
    logp = logprobs_from_logits_naive(d["full"][:, :-1], d["ids"])
    return _verl_loss(logp, d["old"], d["adv_tok"], d["mask"], d["ref"], KL_COEF_LOGITS, d["cfg"])


def _logits_trl(d):
    from trl.trainer.utils import selective_log_softmax

    per_token_logps = selective_log_softmax(d["full"][:, :-1], d["ids"])
    # TRL 1.16 GRPOTrainer._compute_loss, importance_sampling_level="token", loss_type="bnpo", beta != 0
    advantages = d["adv"].unsqueeze(1)
    old_per_token_logps, ref_per_token_logps, mask = d["old"], d["ref"], d["mask"]
    coef_1 = torch.exp(per_token_logps - old_per_token_logps)
    per_token_kl = torch.exp(ref_per_token_logps - per_token_logps) - (ref_per_token_logps - per_token_logps) - 1
    coef_2 = torch.clamp(coef_1, 1 - CLIP, 1 + CLIP)
    per_token_loss1 = coef_1 * advantages
    per_token_loss2 = coef_2 * advantages
    per_token_loss = -torch.min(per_token_loss1, per_token_loss2)
    per_token_loss = per_token_loss + KL_COEF_LOGITS * per_token_kl
    return (per_token_loss * mask).sum() / mask.sum().clamp(min=1.0)


def _logits_liger(d):
    from liger_kernel.transformers.grpo_loss import triton_grpo_loss

    out = triton_grpo_loss(
        d["full"],
        d["old"],
        d["ref"],
        d["ids"],
        d["adv"],
        d["mask"],
        temperature=1.0,
        beta=KL_COEF_LOGITS,
        eps_low=CLIP,
        eps_high=CLIP,
        inplace=False,
    )
    per_token_loss = out[0]
    mask = d["mask"].to(per_token_loss.dtype)
    return (per_token_loss * mask).sum() / mask.sum().clamp(min=1.0)


LOGITS_PROVIDERS = {
    "rlvr_fast": (_logits_ours, lambda: True),
    "verl-unfused": (
        _logits_verl,
        lambda: C.try_import("verl.utils.torch_functional") and C.try_import("omegaconf"),
    ),
    "trl-unfused": (_logits_trl, lambda: C.try_import("trl.trainer.utils")),
    "liger-grpo": (_logits_liger, lambda: C.HAS_CUDA and C.try_import("liger_kernel.transformers.grpo_loss")),
}


def _make_logits(provider, spec):
    def make():
        d = _logits_inputs(spec["B"], spec["T"], spec["V"], C.DTYPES[spec["dtype"]])
        x = d["full"]
        if provider == "floor":
            x.requires_grad_(False)

            def floor():  # 2 reads + 1 write of the logits
                s = x.sum()
                y = torch.empty_like(x)
                y.copy_(x)
                return s, y

            return floor
        return _fwd_bwd(LOGITS_PROVIDERS[provider][0], d, x)

    return make


def cases(shapes: str, only: str | None = None) -> list[C.Case]:
    """All cases for ``shapes``; ``only``: build just this provider's (no availability probes of others)."""
    out = []
    for spec in SHAPES[shapes]["loss"]:
        shape = dict(B=spec["B"], T=spec["T"], N=spec["B"] * spec["T"])
        name = C.shape_name(B=spec["B"], T=spec["T"])
        for provider, (fn, ok) in LOSS_PROVIDERS.items():
            if (only and provider != only) or not ok():
                continue
            out.append(
                C.Case(
                    op=OP_LOSS,
                    provider=provider,
                    mode=C.FWD_BWD,
                    shape=shape,
                    dtype="float32",
                    make=_make_loss(fn, spec),
                    shape_name=name,
                    note="clip 0.2/0.2, dual-clip 3, k3 KL coef 0.001, token-mean, mask int64",
                )
            )
    for spec in SHAPES[shapes]["logits"]:
        shape = dict(B=spec["B"], T=spec["T"], N=spec["B"] * spec["T"], V=spec["V"])
        name = C.shape_name(N=shape["N"], V=spec["V"])
        for provider in [*LOGITS_PROVIDERS, "floor"]:
            if only and provider != only:
                continue
            if provider != "floor" and not LOGITS_PROVIDERS[provider][1]():
                continue
            out.append(
                C.Case(
                    op=OP_LOGITS,
                    provider=provider,
                    mode=C.FWD_BWD,
                    shape=shape,
                    dtype=spec["dtype"],
                    make=_make_logits(provider, spec),
                    shape_name=name,
                    check=provider != "floor",
                    note=FLOOR_NOTE if provider == "floor" else LOGITS_NOTE,
                )
            )
    return out


def main(argv=None) -> int:
    return C.main(__doc__, cases, __file__, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
