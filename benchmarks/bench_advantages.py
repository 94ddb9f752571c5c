"""Group-relative (GRPO) advantages broadcast to response tokens: ``rlvr_fast.group_advantages``.

Work: B = G x n scalar scores -> per-group mean / unbiased std -> ``(r - mean) / (std + eps)`` ->
broadcast over T response tokens and zeroed where ``response_mask`` is 0. Memory-bound on the
[B, T] mask read and the [B, T] float32 write; the group statistics are O(B).

Floors
    GPU target (docs/DESIGN.md section 8): 8192 groups x 16 samples, T = 1024, B = 131072: the int64 mask is
    1.07 GB read and the float32 advantages 0.54 GB written -> 1.61 GB / 3.35 TB/s = 0.48 ms on an H100
    (0.20 ms with a bool mask). Targets: one launch, >= 100x the verl loop, >= 3x verl vectorised.
    CPU small shapes: G=256 x 16, T=1024 (mask 33.5 MB + output 16.8 MB) for every provider; G=2048 x 16,
    T=1024 (268 MB + 134 MB) for the vectorised ones (the verl loop is a Python loop over samples).

Providers (GRPO, verl semantics: eps 1e-6, unbiased std; inputs are what each peer is given in its
own trainer)
    rlvr_fast            ``group_advantages(scores, group_size=n, response_mask=mask, preset="verl")``
    torch-ref            ``rlvr_fast.ops.group_advantages_ref`` eagerly (the CPU backend without the op's
                         argument checks)
    torch-ref-compiled   ``torch.compile`` of ``group_advantages_ref``
    verl-loop            ``verl.trainer.ppo.core_algos.compute_grpo_outcome_advantage`` on
                         ``token_level_rewards`` [B, T] (score at the last response token, as verl's
                         reward managers place it), the mask, and ``index`` = the np.ndarray of uid strings
                         verl's trainer builds (``str(uuid4())`` per prompt, repeated n times)
    verl-vectorized      ``compute_grpo_vectorized_outcome_advantage`` on the same inputs
    trl-formula          TRL ``GRPOTrainer._generate_and_score_completions``'s inline lines (TRL 1.16,
                         ``scale_rewards="group"``): ``nanmean`` / ``trl.trainer.utils.nanstd`` over
                         ``rewards.view(-1, n)``, ``repeat_interleave``, ``(r - mean) / (std + 1e-4)``,
                         ``nan_to_num``, then ``advantages.unsqueeze(1) * mask`` as TRL's loss does;
                         checked against ``rlvr_fast`` with ``preset="trl"``
Every provider returns the float32 [B, T] token advantages, checked against rlvr_fast's.

Run: ``python benchmarks/bench_advantages.py --shapes small`` (CPU) or ``--shapes target`` (GPU).
"""

from __future__ import annotations

import random
import sys
import uuid

import common as C
import numpy as np
import torch

OP = "group_advantages"

SHAPES = {
    "small": [
        dict(G=256, n=16, T=1024, providers="all"),
        dict(G=2048, n=16, T=1024, providers="vectorised"),
    ],
    "target": [dict(G=8192, n=16, T=1024, providers="all")],
    "smoke": [dict(G=8, n=4, T=16, providers="all")],  # seconds: checks that every provider still runs
}
ALL = ("rlvr_fast", "torch-ref", "torch-ref-compiled", "verl-loop", "verl-vectorized", "trl-formula")
LOOP_FREE = tuple(p for p in ALL if p != "verl-loop")


def _inputs(G: int, n: int, T: int) -> dict:
    B = G * n
    scores = C.randn((B,), seed=11).sigmoid()  # e.g. item-F1 / exact-match style rewards in (0, 1)
    mask = C.response_mask(B, T, seed=12)  # int64, like verl's attention-mask slice
    last = mask.sum(1) - 1
    token_rewards = torch.zeros((B, T), dtype=torch.float32, device=C.DEVICE)
    token_rewards[torch.arange(B, device=C.DEVICE), last] = scores
    rng = random.Random(13)
    uids = np.array([str(uuid.UUID(int=rng.getrandbits(128), version=4)) for _ in range(G)], dtype=object)
    return dict(scores=scores, mask=mask, token_rewards=token_rewards, index=np.repeat(uids, n), n=n)


def _ours(d, preset="verl"):
    import rlvr_fast

    return rlvr_fast.group_advantages(d["scores"], group_size=d["n"], response_mask=d["mask"], preset=preset)


def _ref_args(d):
    return (d["scores"], None, d["n"], d["mask"], "grpo", 1e-6, True, "verl", False)


def _torch_ref(d):
    from rlvr_fast.ops import group_advantages_ref

    return group_advantages_ref(*_ref_args(d))


_COMPILED = {}
# torch 2.13's inductor CPU backend asserted in its vectorised codegen of the index_add_ scatters an
# earlier reference used (``assert isinstance(index, CppCSEVariable) and index.is_vec`` in
# codegen/cpp.py). If compiling fails, the reference is compiled again with scalar CPU codegen
# (``cpp.simdlen=0``) and the record says so.
SIMDLEN0_NOTE = "inductor vectorised CPU codegen fails on index_add_ (torch bug); compiled with cpp.simdlen=0"


def _torch_ref_compiled(d, case=None):
    from rlvr_fast.ops import group_advantages_ref

    if "fn" not in _COMPILED:
        _COMPILED["fn"] = torch.compile(group_advantages_ref, dynamic=False)
    try:
        return _COMPILED["fn"](*_ref_args(d))
    except Exception as exc:
        if C.HAS_CUDA or "simdlen0" in _COMPILED:
            raise
        print(f"  torch-ref-compiled: {type(exc).__name__}; retrying with cpp.simdlen=0", flush=True)
        _COMPILED["simdlen0"] = True
        _COMPILED["fn"] = torch.compile(group_advantages_ref, dynamic=False, options={"cpp.simdlen": 0})
        if case is not None:
            case.note = f"{case.note}; {SIMDLEN0_NOTE}"
        return _COMPILED["fn"](*_ref_args(d))


def _verl_loop(d):
    from verl.trainer.ppo.core_algos import compute_grpo_outcome_advantage

    adv, _ = compute_grpo_outcome_advantage(d["token_rewards"], d["mask"], d["index"])
    return adv


def _verl_vectorized(d):
    from verl.trainer.ppo.core_algos import compute_grpo_vectorized_outcome_advantage

    adv, _ = compute_grpo_vectorized_outcome_advantage(d["token_rewards"], d["mask"], d["index"])
    return adv


def _trl_formula(d):
    # TRL 1.16 GRPOTrainer._generate_and_score_completions, sum_then_normalize + scale_rewards="group"
    # (one reward function, so the weighted nansum over functions is the score itself).
    from trl.trainer.utils import nanstd

    rewards, num_generations = d["scores"], d["n"]
    mean_grouped_rewards = torch.nanmean(rewards.view(-1, num_generations), dim=1)
    mean_grouped_rewards = mean_grouped_rewards.repeat_interleave(num_generations, dim=0)
    std_rewards = nanstd(rewards.view(-1, num_generations), dim=1)
    std_rewards = std_rewards.repeat_interleave(num_generations, dim=0)
    advantages = rewards - mean_grouped_rewards
    advantages = advantages / (std_rewards + 1e-4)
    advantages = torch.nan_to_num(advantages, nan=0.0)
    # GRPOTrainer._compute_loss: advantages.unsqueeze(1), used under completion_mask
    return advantages.unsqueeze(1) * d["mask"]


PROVIDERS = {
    "rlvr_fast": (_ours, lambda: True),
    "torch-ref": (_torch_ref, lambda: True),
    "torch-ref-compiled": (_torch_ref_compiled, lambda: True),
    "verl-loop": (_verl_loop, lambda: C.try_import("verl.trainer.ppo.core_algos")),
    "verl-vectorized": (_verl_vectorized, lambda: C.try_import("verl.trainer.ppo.core_algos")),
    "trl-formula": (_trl_formula, lambda: C.try_import("trl.trainer.utils")),
}


def _make(fn, spec):
    def make():
        d = _inputs(spec["G"], spec["n"], spec["T"])
        return lambda: fn(d)

    return make


def cases(shapes: str, only: str | None = None) -> list[C.Case]:
    """All cases for ``shapes``; ``only``: build just this provider's (no availability probes of others)."""
    out = []
    for spec in SHAPES[shapes]:
        B = spec["G"] * spec["n"]
        shape = dict(G=spec["G"], n=spec["n"], B=B, T=spec["T"])
        name = C.shape_name(G=spec["G"], n=spec["n"], T=spec["T"])
        for provider in ALL if spec["providers"] == "all" else LOOP_FREE:
            fn, ok = PROVIDERS[provider]
            if (only and provider != only) or not ok():
                continue
            trl = provider == "trl-formula"
            case = C.Case(
                op=OP,
                provider=provider,
                mode=C.FWD,
                shape=shape,
                dtype="float32",
                make=_make(fn, spec),
                shape_name=name,
                ref_make=_make(lambda d: _ours(d, "trl"), spec) if trl else None,
                ref_key="trl" if trl else "",
                note="mask int64; GRPO estimator broadcast to tokens",
            )
            if provider == "torch-ref-compiled":
                case.make = _make(lambda d, case=case: _torch_ref_compiled(d, case), spec)
            out.append(case)
    return out


def main(argv=None) -> int:
    return C.main(__doc__, cases, __file__, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
