"""The policy loss straight from hidden states (``fused_linear_policy_loss``), forward + backward.

One op, timed as forward + backward w.r.t. the hidden states and the output projection (how a trainer
uses it): hidden [N, H] (N = B x T response positions), ``lm_head`` weight [V, H], the clipped GRPO loss
of ``bench_policy_loss.py`` (b) (clip 0.2 / 0.2, dual-clip 3, k3 KL 0.04, token-mean), per-sequence
advantages, masks with response lengths uniform in [T/4, T]. Outputs checked: loss, d(hidden), d(weight).

Work: the unavoidable part is three N x H x V matmuls (logits; d(hidden) = d(logits) W; d(W) = d(logits)^T
h): 6 N H V flops. rlvr_fast recomputes the logits tile in the backward (fused_linear.py docstring says
why), so it does 8 N H V. GPU target (docs/DESIGN.md section 8): N = 16384 (B=16 x T=1024), H = 4096,
V = 151936, bf16: 6.1e13 flops for the floor, ~62 ms at a measured ~990 TFLOP/s; target >= 70% of the
measured bf16 matmul rate, <= 1 GiB extra memory (the unfused path holds 5 GB of bf16 logits and their
gradient), faster than Liger's ``LigerFusedLinearGRPOLoss``. CPU small shape: N = 2048 (B=4 x T=512),
H = 512, V = 32000, float32 (logits 262 MB).

Providers (each returns ``(loss, d_hidden, d_weight)``):
    rlvr_fast       ``fused_linear_policy_loss(h, W, ...)``, default chunks
    unfused         ``h @ W.T`` materialised, then rlvr_fast's ``policy_loss_from_logits`` (the fused
                    log-softmax + loss over the logits; already one read forward and one backward)
    torch-compiled  ``torch.compile`` of the plain PyTorch path: matmul, ``log_softmax`` + gather, the
                    clipped loss with k3 KL (``rlvr_fast.ops.policy_loss_ref`` semantics) in one graph
    liger           ``LigerFusedLinearGRPOLoss`` (CUDA only, if installed)
    floor           the three matmuls alone (logits, d(hidden), d(weight)) with a stand-in d(logits)

Peak memory (``peak``): CUDA: the allocator's peak above the inputs; CPU: the resident-set growth of a
fresh process running one call (``benchmarks/README.md``).

Run: ``python benchmarks/bench_fused_linear.py --shapes small`` (CPU) or ``--shapes target`` (GPU).
"""

from __future__ import annotations

import sys

import common as C
import torch
import torch.nn.functional as F

OP = "fused_linear_policy_loss"
SHAPES = {
    "small": [dict(B=4, T=512, H=512, V=32000, dtype="float32")],
    "target": [dict(B=16, T=1024, H=4096, V=151936, dtype="bfloat16")],
    "smoke": [dict(B=2, T=16, H=32, V=1000, dtype="float32")],
}
OPTIONS = dict(clip_low=0.2, clip_high=0.2, dual_clip=3.0, kl_type="k3", kl_coef=0.04, agg="token-mean")
NOTE = "clip 0.2/0.2, dual-clip 3, k3 KL 0.04, token-mean; grads w.r.t. hidden and weight"


def _inputs(B: int, T: int, H: int, V: int, dtype: torch.dtype) -> dict:
    h = C.randn((B * T, H), seed=61, dtype=dtype)
    w = C.randn((V, H), seed=62, dtype=dtype, scale=H**-0.5 * 2)
    ids = C.randint(V, (B, T), seed=63)
    mask = C.response_mask(B, T, seed=64)
    with torch.no_grad():
        lp = torch.cat(
            [
                F.log_softmax((h[i : i + 512] @ w.T).float(), -1).gather(-1, ids.reshape(-1)[i : i + 512, None])
                for i in range(0, B * T, 512)
            ]
        )[:, 0].view(B, T)
    return dict(
        h=h.requires_grad_(True),
        w=w.requires_grad_(True),
        ids=ids,
        mask=mask,
        B=B,
        T=T,
        old=lp + C.randn((B, T), seed=65, scale=0.05),
        ref=lp + C.randn((B, T), seed=66, scale=0.05),
        adv=C.randn((B,), seed=67),
    )


def _ours(d):
    from rlvr_fast.ops import fused_linear_policy_loss

    h = d["h"].view(d["B"], d["T"], -1)
    return fused_linear_policy_loss(h, d["w"], d["ids"], d["old"], d["adv"], d["mask"], ref_logp=d["ref"], **OPTIONS)[0]


def _unfused(d):
    from rlvr_fast.ops import policy_loss_from_logits

    logits = (d["h"] @ d["w"].T).view(d["B"], d["T"], -1)
    return policy_loss_from_logits(logits, d["ids"], d["old"], d["adv"], d["mask"], ref_logp=d["ref"], **OPTIONS)[0]


def _plain(h, w, ids, old, adv, mask, ref, B: int, T: int):
    """The textbook path in plain PyTorch (what torch.compile gets): logits, log_softmax, the loss."""
    logits = (h @ w.T).float().view(B, T, -1)
    logp = torch.log_softmax(logits, -1).gather(-1, ids[..., None])[..., 0]
    m = mask.float()
    a = adv[:, None]
    ratio = torch.exp((logp - old).clamp(-20, 20))
    pg = torch.maximum(-a * ratio, -a * ratio.clamp(0.8, 1.2))
    pg = torch.where(a < 0, torch.minimum(pg, -a * 3.0), pg)
    kl = (torch.exp((ref - logp).clamp(-20, 20)) - (ref - logp) - 1).clamp(-10, 10)
    return ((pg + 0.04 * kl) * m).sum() / m.sum().clamp(min=1)


_compiled = None


def _torch_compiled(d):
    global _compiled
    if _compiled is None:
        _compiled = torch.compile(_plain, dynamic=False)
    return _compiled(d["h"], d["w"], d["ids"], d["old"], d["adv"], d["mask"], d["ref"], d["B"], d["T"])


def _liger(d):
    from liger_kernel.chunked_loss import LigerFusedLinearGRPOLoss

    if "liger" not in d:
        d["liger"] = LigerFusedLinearGRPOLoss(beta=0.04, epsilon_low=0.2, epsilon_high=0.2, loss_type="dapo")
    h = d["h"].view(d["B"], d["T"], -1)
    return d["liger"](
        h, d["w"], d["ids"], d["mask"].long(), d["adv"], ref_per_token_logps=d["ref"], old_per_token_logps=d["old"]
    )[0]


PROVIDERS = {
    "rlvr_fast": (_ours, lambda: True),
    "unfused": (_unfused, lambda: True),
    "torch-compiled": (_torch_compiled, lambda: True),
    "liger": (_liger, lambda: C.HAS_CUDA and C.try_import("liger_kernel.chunked_loss")),
}


def _make(provider: str, spec: dict):
    def make():
        d = _inputs(spec["B"], spec["T"], spec["H"], spec["V"], C.DTYPES[spec["dtype"]])
        h, w = d["h"], d["w"]
        if provider == "floor":
            h.requires_grad_(False)
            w.requires_grad_(False)
            g = torch.ones(h.shape[0], w.shape[0], dtype=h.dtype, device=h.device)  # stand-in d(logits)

            def floor():  # the three matmuls every path must do
                return h @ w.T, g @ w, g.T @ h

            return floor
        fn = PROVIDERS[provider][0]

        def fwd_bwd():
            h.grad = w.grad = None
            loss = fn(d)
            loss.backward()
            out = (loss.detach(), h.grad, w.grad)
            h.grad = w.grad = None
            return out

        return fwd_bwd

    return make


def cases(shapes: str, only: str | None = None) -> list[C.Case]:
    out = []
    for spec in SHAPES[shapes]:
        N = spec["B"] * spec["T"]
        shape = dict(B=spec["B"], T=spec["T"], N=N, H=spec["H"], V=spec["V"])
        name = C.shape_name(N=N, H=spec["H"], V=spec["V"])
        for provider in [*PROVIDERS, "floor"]:
            if only and provider != only:
                continue
            if provider != "floor" and not PROVIDERS[provider][1]():
                continue
            out.append(
                C.Case(
                    op=OP,
                    provider=provider,
                    mode=C.FWD_BWD,
                    shape=shape,
                    dtype=spec["dtype"],
                    make=_make(provider, spec),
                    shape_name=name,
                    check=provider != "floor",
                    tol=(2e-3, 2e-4) if spec["dtype"] == "float32" else None,
                    note="the three matmuls alone (6 N H V flops)" if provider == "floor" else NOTE,
                )
            )
    return out


def main(argv=None) -> int:
    return C.main(__doc__, cases, __file__, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
