"""Token log-probs (and entropy) from logits: ``rlvr_fast.token_logprobs`` against its peers.

Work: ``logp[i] = x[i, y_i] - logsumexp_j x[i, j]`` (and ``H[i] = lse_i - sum_j p_ij x_ij``) for N rows
of V logits. It is memory-bound: every byte of the logits must be read once, nothing else is big.

Floors
    GPU target shape N = 16384 (B=16 x T=1024), V = 151936, bf16: the logits are
    16384 * 151936 * 2 B = 4.98 GB. Forward floor = one read = 4.98 GB / 3.35 TB/s (H100 SXM HBM3
    peak) = 1.49 ms; fwd+bwd floor = 2 reads + 1 write of the logits (forward read, backward read,
    d(logits) write) = 14.9 GB -> 4.46 ms. docs/DESIGN.md section 8: forward <= 1.15x the floor and >= 1.0x
    the fastest of Liger / flash-attn CE / TRL.
    CPU target shape N = 4096 (B=8 x T=512), V = 32000, fp32: 4096 * 32000 * 4 B = 524 MB per read;
    at this machine's ~25-50 GB/s of read bandwidth (2 cores) one read is ~10-20 ms, but the
    reference is compute-bound on 2 cores (exp per element), so the peer comparison is what counts:
    docs/DESIGN.md section 8 asks >= 1.5x TRL ``selective_log_softmax`` and peak <= 0.3x naive
    log_softmax + gather.
    The ``floor`` pseudo-provider measures the floor on the machine itself: ``logits.sum()`` (one read)
    for fwd, plus a copy into a fresh buffer (one more read + one write) for fwd+bwd.

Providers
    rlvr_fast       the public op (torch backend on CPU: chunked reference; Triton on CUDA)
    torch-naive     ``log_softmax(x).gather(y)`` (+ ``-(p * log p).sum()`` for entropy): verl's
                    ``logprobs_from_logits_naive`` written out
    torch-compiled  ``torch.compile`` of torch-naive
    trl             ``trl.trainer.utils.selective_log_softmax`` (``selective_log_softmax_and_entropy``
                    for entropy); TRL switches to its own Triton kernel on CUDA
    verl            ``verl.utils.torch_functional.logprobs_from_logits_naive`` (+ ``entropy_from_logits``)
    flash-attn-ce   ``flash_attn.ops.triton.cross_entropy.cross_entropy_loss`` (CUDA, if installed;
                    log-probs only; what verl uses when flash-attn is installed)
    liger           ``liger_kernel`` cross entropy with ``reduction="none"`` (CUDA, if installed;
                    log-probs only). Liger writes d(logits) into the logits during its forward when
                    they require grad, so after the first (checked) call its fwd+bwd rows run on a
                    clobbered buffer; the time of this memory-bound kernel does not depend on values.
    floor           see above (not checked against rlvr_fast)

Inputs: logits ``randn`` [B, T, V] (contiguous), ids uniform in [0, V); fwd+bwd back-propagates random
upstream gradients for logp (and entropy). Each provider's outputs (log-probs, entropy, d(logits))
are checked against rlvr_fast's on the same inputs before it is timed.

Run: ``python benchmarks/bench_logprobs.py --shapes small`` (CPU) or ``--shapes target`` (GPU).
"""

from __future__ import annotations

import sys

import common as C
import torch
import torch.nn.functional as F

OP, OP_ENT = "token_logprobs", "token_logprobs+entropy"

SHAPES = {
    "small": [dict(B=8, T=512, V=32000, dtype="float32")],  # docs/DESIGN.md section 8 CPU target
    "target": [dict(B=16, T=1024, V=151936, dtype="bfloat16")],  # docs/DESIGN.md section 8 GPU target
    "smoke": [dict(B=2, T=8, V=1000, dtype="float32")],  # seconds: checks that every provider still runs
}


# ----------------------------------------------------------------------------------------------
# Providers: f(logits, ids, entropy: bool) -> (logp,) or (logp, entropy)
# ----------------------------------------------------------------------------------------------


def _ours(x, ids, ent):
    import rlvr_fast

    out = rlvr_fast.token_logprobs(x, ids, return_entropy=ent)
    return out if ent else (out,)


def _naive(x, ids, ent):
    logp_all = F.log_softmax(x, dim=-1)
    logp = logp_all.gather(-1, ids.unsqueeze(-1)).squeeze(-1)
    if not ent:
        return (logp,)
    return logp, -(logp_all.exp() * logp_all).sum(-1)


def _naive_lp(x, ids):
    return _naive(x, ids, False)


def _naive_lp_ent(x, ids):
    return _naive(x, ids, True)


_COMPILED = {}


def _compiled(x, ids, ent):
    if ent not in _COMPILED:
        _COMPILED[ent] = torch.compile(_naive_lp_ent if ent else _naive_lp, dynamic=False)
    return _COMPILED[ent](x, ids)


def _trl(x, ids, ent):
    from trl.trainer.utils import selective_log_softmax, selective_log_softmax_and_entropy

    return selective_log_softmax_and_entropy(x, ids) if ent else (selective_log_softmax(x, ids),)


def _verl(x, ids, ent):
    from verl.utils.torch_functional import entropy_from_logits, logprobs_from_logits_naive

    logp = logprobs_from_logits_naive(x, ids)
    return (logp, entropy_from_logits(x)) if ent else (logp,)


def _flash_ce(x, ids, ent):
    from flash_attn.ops.triton.cross_entropy import cross_entropy_loss

    V = x.shape[-1]
    losses, _ = cross_entropy_loss(x.reshape(-1, V), ids.reshape(-1), inplace_backward=False)
    return (-losses.view(ids.shape),)


def _liger(x, ids, ent):
    from liger_kernel.transformers.functional import liger_cross_entropy

    V = x.shape[-1]
    loss = liger_cross_entropy(x.reshape(-1, V), ids.reshape(-1), reduction="none")
    return (-loss.view(ids.shape),)


def _floor(x, ids, ent, mode):
    s = x.sum()
    if mode == C.FWD:
        return (s,)
    y = torch.empty_like(x)
    y.copy_(x)
    return s, y


PROVIDERS = {
    # name: (fn, supports entropy, available?)
    "rlvr_fast": (_ours, True, lambda: True),
    "torch-naive": (_naive, True, lambda: True),
    "torch-compiled": (_compiled, True, lambda: True),
    "trl": (_trl, True, lambda: C.try_import("trl.trainer.utils")),
    "verl": (_verl, True, lambda: C.try_import("verl.utils.torch_functional")),
    "flash-attn-ce": (
        _flash_ce,
        False,
        lambda: C.HAS_CUDA and C.try_import("flash_attn.ops.triton.cross_entropy"),
    ),
    "liger": (_liger, False, lambda: C.HAS_CUDA and C.try_import("liger_kernel.transformers.functional")),
}


def _make(provider: str, spec: dict, ent: bool, mode: str):
    def make():
        B, T, V, dtype = spec["B"], spec["T"], spec["V"], C.DTYPES[spec["dtype"]]
        x = C.randn((B, T, V), seed=1, dtype=dtype)
        ids = C.randint(V, (B, T), seed=2)
        if provider == "floor":
            return lambda: _floor(x, ids, ent, mode)
        fn = PROVIDERS[provider][0]
        if mode == C.FWD:
            return lambda: fn(x, ids, ent)
        x.requires_grad_(True)
        grads = (C.randn((B, T), seed=3), C.randn((B, T), seed=4))

        def fwd_bwd():
            x.grad = None
            outs = fn(x, ids, ent)
            torch.autograd.backward(outs, grads[: len(outs)])
            gx = x.grad
            x.grad = None
            return (*[o.detach() for o in outs], gx)

        return fwd_bwd

    return make


def cases(shapes: str, only: str | None = None) -> list[C.Case]:
    """All cases for ``shapes``; ``only``: build just this provider's (no availability probes of others)."""
    out = []
    available = [p for p, (_, _, ok) in PROVIDERS.items() if (not only or p == only) and ok()]
    for spec in SHAPES[shapes]:
        shape = dict(B=spec["B"], T=spec["T"], N=spec["B"] * spec["T"], V=spec["V"])
        name = C.shape_name(N=shape["N"], V=shape["V"])
        for ent in (False, True):
            for mode in (C.FWD, C.FWD_BWD):
                for provider in available + ([] if ent or (only and only != "floor") else ["floor"]):
                    if provider != "floor" and ent and not PROVIDERS[provider][1]:
                        continue
                    out.append(
                        C.Case(
                            op=OP_ENT if ent else OP,
                            provider=provider,
                            mode=mode,
                            shape=shape,
                            dtype=spec["dtype"],
                            make=_make(provider, spec, ent, mode),
                            shape_name=name,
                            check=provider != "floor",
                            note="1 read (fwd) / 2 reads + 1 write (fwd+bwd) of the logits"
                            if provider == "floor"
                            else "",
                        )
                    )
    return out


def main(argv=None) -> int:
    return C.main(__doc__, cases, __file__, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
