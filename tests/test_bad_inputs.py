"""Bad-input sweep over every public op (issue 14).

Each case feeds one op one class of bad input (another device, wrong dtype, wrong shape, empty, NaN/Inf
under and outside the mask, out-of-range ids, non-contiguous views) and expects exactly one of:
- ``Raises(exc, name)``: ``exc`` (ValueError or TypeError) whose message starts with the argument's name;
- ``Matches(ref)``: a finite result equal to ``ref()``, the reference on the cleaned (or contiguous) input.

"meta" plays the other device (the CPU tier has no GPU): only the device check may look at it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import pytest
import torch

import rlvr_fast as rf
from rlvr_fast.ops.policy_loss_reference import LossOptions, policy_loss_ref
from rlvr_fast.rewards.video import pixel_reward

NAN, INF = float("nan"), float("inf")


@dataclass
class Raises:
    exc: type
    name: str


@dataclass
class Matches:
    ref: Callable


def meta(t: torch.Tensor) -> torch.Tensor:
    return torch.empty_like(t, device="meta")


def strided(t: torch.Tensor) -> torch.Tensor:
    """The same values as a non-contiguous view (every other element of a twice-as-large buffer)."""
    buf = torch.zeros((*t.shape[:-1], 2 * t.shape[-1]), dtype=t.dtype)
    buf[..., ::2] = t
    return buf[..., ::2]


def check(case, expect) -> None:
    if isinstance(expect, Raises):
        with pytest.raises(expect.exc) as info:
            case()
        assert str(info.value).startswith(f"{expect.name}:"), str(info.value)
        return
    got, want = _flatten(case()), _flatten(expect.ref())
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert torch.isfinite(g).all(), g
        torch.testing.assert_close(g.double(), w.double(), rtol=1e-5, atol=1e-6)


def _flatten(out) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out.detach()]
    if isinstance(out, dict):
        return [v.detach() for v in out.values()]
    return [t for o in out for t in _flatten(o)]


# ----------------------------------------------------------------------------------------------
# group_advantages
# ----------------------------------------------------------------------------------------------


def _scores(scale=1.0):
    return torch.tensor([0.0, 1.0, 0.5, 2.0, -1.0, 3.0, 3.0, 0.25]) * scale


def _adv_ref(scores, mask=None, estimator="grpo", eps=1e-6, nan_as_missing=False):
    """float64 reference with contiguous groups of 4, as ``group_advantages(..., group_size=4)``."""
    args = (mask, estimator, eps, True, "zero", nan_as_missing)
    return lambda: rf.group_advantages_ref(scores.double(), None, 4, *args)


def _advantage_cases():
    s, mask = _scores(), torch.rand(8, 5) > 0.3
    ga = rf.group_advantages
    cases = {
        "device-mask": (lambda: ga(s, group_size=4, response_mask=meta(mask)), Raises(ValueError, "response_mask")),
        "device-ids": (
            lambda: ga(s, group_ids=meta(torch.zeros(8, dtype=torch.long))),
            Raises(ValueError, "group_ids"),
        ),
        "dtype-scores": (lambda: ga(s.long(), group_size=4), Raises(TypeError, "scores")),
        "dtype-ids": (lambda: ga(s, group_ids=torch.zeros(8)), Raises(TypeError, "group_ids")),
        "shape-scores": (lambda: ga(s[None], group_size=4), Raises(ValueError, "scores")),
        "shape-mask": (lambda: ga(s, group_size=4, response_mask=mask[:7]), Raises(ValueError, "response_mask")),
        "shape-group-size": (lambda: ga(s, group_size=3), Raises(ValueError, "group_size")),
        "empty": (lambda: ga(s[:0], group_size=4), Matches(lambda: torch.zeros(0))),
        "nan": (lambda: ga(torch.where(s == 3, NAN, s), group_size=4), Raises(ValueError, "scores")),
        "inf": (lambda: ga(torch.where(s == 3, INF, s), group_size=4), Raises(ValueError, "scores")),
        "nan-trl": (
            lambda: ga(torch.where(s == 2, NAN, s), group_size=4, preset="trl"),
            Matches(_adv_ref(torch.where(s == 2, NAN, s), eps=1e-4, nan_as_missing=True)),
        ),
        "strided-scores": (lambda: ga(strided(s), group_size=4, response_mask=mask), Matches(_adv_ref(s, mask))),
        "strided-mask": (
            lambda: ga(s, group_size=4, response_mask=mask.t().contiguous().t()),
            Matches(_adv_ref(s, mask)),
        ),
    }
    for scale in (1e20, 1e38):  # squares overflow float32; the statistics must not
        for est in ("grpo", "rloo", "reinforce_pp_baseline"):
            big = _scores(scale)
            cases[f"scale{scale:.0e}-{est}"] = (
                lambda big=big, est=est: ga(big, group_size=4, estimator=est),
                Matches(_adv_ref(big, None, est)),
            )
    return cases


ADVANTAGE_CASES = _advantage_cases()


@pytest.mark.parametrize("name", list(ADVANTAGE_CASES))
def test_group_advantages(name, backend):
    check(*ADVANTAGE_CASES[name])


# ----------------------------------------------------------------------------------------------
# token_logprobs, policy_loss, policy_loss_from_logits, fused_linear_*
# ----------------------------------------------------------------------------------------------

B, T, V, H = 3, 5, 7, 4


def _batch():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(B, T, V, generator=g)
    ids = torch.randint(0, V, (B, T), generator=g)
    old = torch.randn(B, T, generator=g) * 0.3 - 2
    logp = old + torch.randn(B, T, generator=g) * 0.2
    adv = torch.randn(B, T, generator=g)
    ref = old + torch.randn(B, T, generator=g) * 0.2
    ent = torch.rand(B, T, generator=g)
    mask = torch.rand(B, T, generator=g) > 0.3
    mask[0, 0], mask[0, 1] = False, True
    mask[2] = False  # an all-masked row
    return logits, ids, logp, old, adv, ref, ent, mask


LOSS_KW = dict(kl_type="k3", kl_coef=0.1, entropy_coef=0.01, dual_clip=3.0)


def _loss_and_grads(logp, old, adv, mask, ref, ent):
    """(loss, d logp, d entropy) of rf.policy_loss; only leaves' gradients at unmasked positions compared."""
    lp, e = logp.detach().clone().requires_grad_(), ent.detach().clone().requires_grad_()
    loss, _ = rf.policy_loss(lp, old, adv, mask, ref_logp=ref, entropy=e, **LOSS_KW)
    loss.backward()
    return loss, lp.grad, e.grad


def _loss_oracle(logp, old, adv, mask, ref, ent):
    """float64 autograd through the reference on inputs cleaned of whatever sits under the mask."""
    valid = mask if adv.dim() == 2 else mask.any(1)
    clean = [torch.where(mask, t, 0.0).double() for t in (logp, old, ref, ent)]
    a = torch.where(valid, adv, 0.0).double()
    lp, e = clean[0].requires_grad_(), clean[3].requires_grad_()
    # LOSS_KW with the public defaults for the rest
    opts = LossOptions(
        clip_low=0.2,
        clip_high=0.2,
        dual_clip=LOSS_KW["dual_clip"],
        kl_type=LOSS_KW["kl_type"],
        kl_coef=LOSS_KW["kl_coef"],
        kl_clamp=10.0,
        log_ratio_clamp=20.0,
        entropy_coef=LOSS_KW["entropy_coef"],
    )
    loss, _, _ = policy_loss_ref(lp, clean[1], a, mask, clean[2], e, opts, "token-mean", None)
    loss.backward()
    return loss, lp.grad, e.grad


def _poisoned(t, mask, value):
    return torch.where(mask, t, torch.full_like(t, value))


def _policy_loss_cases():
    logits, ids, logp, old, adv, ref, ent, mask = _batch()
    args = dict(logp=logp, old_logp=old, advantages=adv, ref_logp=ref, entropy=ent)

    def call(**over):
        a = {**args, **over}
        lp, old_, adv_, mask_ = a["logp"], a["old_logp"], a["advantages"], over.get("response_mask", mask)
        extra = dict(ref_logp=a["ref_logp"], entropy=a["entropy"], **LOSS_KW)
        return rf.policy_loss(lp, old_, adv_, mask_, **extra)[0]

    cases = {
        "dtype-logp": (lambda: call(logp=logp.long()), Raises(TypeError, "logp")),
        "dtype-advantages": (lambda: call(advantages=adv.long()), Raises(TypeError, "advantages")),
        "dtype-mask": (lambda: call(response_mask=torch.zeros(B, T, dtype=torch.complex64)), None),
        "shape-old": (lambda: call(old_logp=old[:, :-1]), Raises(ValueError, "old_logp")),
        "shape-advantages": (lambda: call(advantages=adv[:, :2]), Raises(ValueError, "advantages")),
        "shape-mask": (lambda: call(response_mask=mask[:2]), Raises(ValueError, "response_mask")),
        "empty-T": (
            lambda: call(**{k: v[:, :0] for k, v in args.items()}, response_mask=mask[:, :0]),
            Raises(ValueError, "logp"),
        ),
        "empty-B": (
            lambda: call(**{k: v[:0] for k, v in args.items()}, response_mask=mask[:0]),
            Matches(lambda: torch.zeros(())),
        ),
        "strided": (
            lambda: _loss_and_grads(*(strided(t) for t in (logp, old, adv, mask, ref, ent))),
            Matches(lambda: _loss_oracle(logp, old, adv, mask, ref, ent)),
        ),
        "seq-advantage-nan-on-masked-row": (
            lambda: _loss_and_grads(logp, old, torch.tensor([0.5, -1.0, NAN]), mask, ref, ent),
            Matches(lambda: _loss_oracle(logp, old, torch.tensor([0.5, -1.0, NAN]), mask, ref, ent)),
        ),
    }
    del cases["dtype-mask"]  # any dtype is a valid mask (nonzero = counts)
    for name in args:
        if name != "logp":
            cases[f"device-{name}"] = (lambda n=name: call(**{n: meta(args[n])}), Raises(ValueError, name))
    cases["device-response_mask"] = (
        lambda: call(response_mask=meta(mask)),
        Raises(ValueError, "response_mask"),
    )
    for value in (NAN, INF, -INF):
        for name in args:
            poisoned = {**args, name: _poisoned(args[name], mask, value)}
            order = [poisoned[k] for k in ("logp", "old_logp", "advantages")]
            order += [mask, poisoned["ref_logp"], poisoned["entropy"]]
            cases[f"masked-{value}-{name}"] = (
                lambda o=order: _loss_and_grads(*o),
                Matches(lambda o=order: _loss_oracle(*o)),
            )
            cases[f"unmasked-{value}-{name}"] = (
                lambda n=name, v=value: call(**{n: _poisoned(args[n], ~(mask & (torch.arange(T) == 1)), v)}),
                Raises(ValueError, name),
            )
    return cases


POLICY_LOSS_CASES = _policy_loss_cases()


@pytest.mark.parametrize("name", list(POLICY_LOSS_CASES))
def test_policy_loss(name, backend):
    case, expect = POLICY_LOSS_CASES[name]
    check(case, expect)
    if name.startswith(("masked-", "seq-")):  # gradients at masked positions are exactly zero
        _, g_lp, g_ent = case()
        logits, ids, logp, old, adv, ref, ent, mask = _batch()
        assert (g_lp[~mask] == 0).all() and (g_ent[~mask] == 0).all()


def _from_logits(logits, ids, old, adv, mask, ref, **kw):
    x = logits.detach().clone().requires_grad_()
    loss, _ = rf.policy_loss_from_logits(x, ids, old, adv, mask, ref_logp=ref, **LOSS_KW, **kw)
    loss.backward()
    return loss, x.grad


def _from_logits_cases():
    logits, ids, logp, old, adv, ref, ent, mask = _batch()
    junk = torch.where(mask[..., None], logits, NAN)  # every masked row is all NaN
    oracle = _from_logits(logits.double(), ids, old, adv, mask, ref)
    cases = {
        "device-token_ids": (
            lambda: _from_logits(logits, meta(ids), old, adv, mask, ref),
            Raises(ValueError, "token_ids"),
        ),
        "device-old_logp": (
            lambda: _from_logits(logits, ids, meta(old), adv, mask, ref),
            Raises(ValueError, "old_logp"),
        ),
        "dtype-token_ids": (
            lambda: _from_logits(logits, ids.float(), old, adv, mask, ref),
            Raises(TypeError, "token_ids"),
        ),
        "shape-token_ids": (
            lambda: _from_logits(logits, ids[:, :-1], old, adv, mask, ref),
            Raises(ValueError, "token_ids"),
        ),
        "empty-T": (
            lambda: _from_logits(*(t[:, :0] for t in (logits, ids, old, adv, mask, ref))),
            Raises(ValueError, "logits"),
        ),
        "ids-out-of-range": (
            lambda: _from_logits(logits, ids + V, old, adv, mask, ref),
            Raises(ValueError, "token_ids"),
        ),
        "masked-nan-logits": (lambda: _from_logits(junk, ids, old, adv, mask, ref), Matches(lambda: oracle)),
        "masked-nan-logits-entropy": (
            lambda: _from_logits(junk, ids, old, adv, mask, ref, compute_entropy=True),
            Matches(lambda: _from_logits(logits.double(), ids, old, adv, mask, ref, compute_entropy=True)),
        ),
        "unmasked-nan-logits": (
            lambda: _from_logits(torch.where(mask[..., None], NAN, logits), ids, old, adv, mask, ref),
            Raises(ValueError, "logits"),
        ),
        "view-logits": (  # logits[:, :-1] of a longer sequence, read in place
            lambda: _from_logits(torch.cat([logits, logits[:, :1]], 1)[:, :-1], ids, old, adv, mask, ref),
            Matches(lambda: oracle),
        ),
    }
    return cases


FROM_LOGITS_CASES = _from_logits_cases()


@pytest.mark.parametrize("name", list(FROM_LOGITS_CASES))
def test_policy_loss_from_logits(name, backend):
    case, expect = FROM_LOGITS_CASES[name]
    check(case, expect)
    if name.startswith("masked-"):
        mask = _batch()[-1]
        assert (case()[1][~mask] == 0).all()


def _logprob_cases():
    logits, ids, *_ = _batch()
    tl = rf.token_logprobs
    ignored = ids.clone()
    ignored[1, 2] = -100
    junk = logits.clone()
    junk[1, 2] = NAN

    def with_grad(x, i):
        x = x.detach().clone().requires_grad_()
        lp, ent = tl(x, i, return_entropy=True)
        (lp.sum() + ent.sum()).backward()
        return lp, ent, x.grad

    return {
        "device-token_ids": (lambda: tl(logits, meta(ids)), Raises(ValueError, "token_ids")),
        "dtype-logits": (lambda: tl(logits.long(), ids), Raises(TypeError, "logits")),
        "dtype-token_ids": (lambda: tl(logits, ids.float()), Raises(TypeError, "token_ids")),
        "shape-token_ids": (lambda: tl(logits, ids[:, 1:]), Raises(ValueError, "token_ids")),
        "empty": (lambda: tl(logits[:0], ids[:0]), Matches(lambda: torch.zeros(0, T))),
        "ids-out-of-range": (lambda: tl(logits, ids - V), Raises(ValueError, "token_ids")),
        "ignored-nan-row": (lambda: with_grad(junk, ignored), Matches(lambda: with_grad(logits.double(), ignored))),
        "view-logits": (
            lambda: tl(torch.cat([logits, logits[:, :1]], 1)[:, :-1], ids),
            Matches(lambda: tl(logits.double(), ids)),
        ),
    }


LOGPROB_CASES = _logprob_cases()


@pytest.mark.parametrize("name", list(LOGPROB_CASES))
def test_token_logprobs(name, backend):
    check(*LOGPROB_CASES[name])
    if name == "ignored-nan-row":
        assert (LOGPROB_CASES[name][0]()[2][1, 2] == 0).all()


def exact_logp(h, w, b, ids):
    logits = h.double() @ w.double().T + b.double()
    return torch.log_softmax(logits, -1).gather(-1, ids[..., None])[..., 0]


def _fused_cases():
    logits, ids, logp, old, adv, ref, ent, mask = _batch()
    g = torch.Generator().manual_seed(2)
    h, w, b = torch.randn(B, T, H, generator=g), torch.randn(V, H, generator=g), torch.randn(V, generator=g)
    fl = rf.fused_linear_logprobs

    def loss_and_grads(hidden, **kw):
        x, wt = hidden.detach().clone().requires_grad_(), w.clone().requires_grad_()
        opts = dict(chunk_tokens=4, chunk_vocab=3, ref_logp=ref, **{**LOSS_KW, **kw})
        loss, _ = rf.fused_linear_policy_loss(x, wt, ids, old, adv, mask, **opts)
        loss.backward()
        return loss, x.grad, wt.grad

    junk = torch.where(mask[..., None], h, NAN)
    return {
        "device-weight": (lambda: fl(h, meta(w), ids), Raises(ValueError, "weight")),
        "device-token_ids": (lambda: fl(h, w, meta(ids)), Raises(ValueError, "token_ids")),
        "device-bias": (lambda: fl(h, w, ids, bias=meta(b)), Raises(ValueError, "bias")),
        "dtype-weight": (lambda: fl(h, w.double(), ids), Raises(TypeError, "weight")),
        "dtype-token_ids": (lambda: fl(h, w, ids.float()), Raises(TypeError, "token_ids")),
        "shape-weight": (lambda: fl(h, w[:, :-1], ids), Raises(ValueError, "weight")),
        "shape-bias": (lambda: fl(h, w, ids, bias=b[:-1]), Raises(ValueError, "bias")),
        "empty": (lambda: fl(h[:0], w, ids[:0]), Matches(lambda: torch.zeros(0, T))),
        "ids-out-of-range": (lambda: fl(h, w, ids + V), Raises(ValueError, "token_ids")),
        "strided-hidden": (lambda: fl(strided(h), w, ids, bias=b), Matches(lambda: exact_logp(h, w, b, ids))),
        "masked-nan-hidden": (
            lambda: loss_and_grads(junk, entropy_coef=0.0),
            Matches(lambda: loss_and_grads(h, entropy_coef=0.0)),
        ),
        "masked-nan-hidden-entropy": (lambda: loss_and_grads(junk), Matches(lambda: loss_and_grads(h))),
        "unmasked-nan-hidden": (
            lambda: loss_and_grads(torch.where(mask[..., None], NAN, h)),
            Raises(ValueError, "hidden"),
        ),
    }


FUSED_CASES = _fused_cases()


@pytest.mark.parametrize("name", list(FUSED_CASES))
def test_fused_linear(name, backend):
    check(*FUSED_CASES[name])


# ----------------------------------------------------------------------------------------------
# video ops (extension kernels: cpp on CPU, no backend fixture)
# ----------------------------------------------------------------------------------------------

LAYOUT = rf.VideoTokenLayout(
    frame_shape=(2, 2), visual_vocab=10, action_offset=10, action_bins=4, action_tokens_per_frame=0
)


def _video_cases():
    g = torch.Generator().manual_seed(3)
    n = LAYOUT.response_length
    resp = torch.randint(0, LAYOUT.visual_vocab, (4, n), generator=g) + LAYOUT.visual_offset
    resp[:, -1] = LAYOUT.eos_id
    rmask = torch.ones_like(resp, dtype=torch.bool)
    unpack = rf.unpack_video_tokens
    codes = torch.randint(0, 12, (2, 3, 3), generator=g)
    quant = rf.Quantizer.fsq([3, 4])
    table = quant.table("cpu")
    pred, target = torch.rand(4, 3, 12, 12, generator=g), torch.rand(2, 3, 12, 12, generator=g)
    pm = rf.pixel_metrics
    reward = torch.randn(4, generator=g)
    smask = torch.rand(4, 6, generator=g) > 0.4
    ssr = rf.scatter_sequence_reward
    bad = resp.clone()
    bad[0, 1] = 10_000  # out-of-range id: that rollout is invalid, the others are not

    return {
        "unpack-device-mask": (lambda: unpack(resp, meta(rmask), LAYOUT), Raises(ValueError, "response_mask")),
        "unpack-dtype": (lambda: unpack(resp.float(), rmask, LAYOUT), Raises(TypeError, "responses")),
        "unpack-shape": (lambda: unpack(resp, rmask[:, 1:], LAYOUT), Raises(ValueError, "response_mask")),
        "unpack-empty": (lambda: unpack(resp[:0], rmask[:0], LAYOUT)[1].float(), Matches(lambda: torch.zeros(0))),
        "unpack-out-of-range": (
            lambda: unpack(bad, rmask, LAYOUT)[1].float(),
            Matches(lambda: torch.tensor([0.0, 1.0, 1.0, 1.0])),
        ),
        "unpack-strided": (
            lambda: unpack(strided(resp), strided(rmask), LAYOUT)[0],
            Matches(lambda: unpack(resp, rmask, LAYOUT)[0]),
        ),
        "codes-device-table": (lambda: rf.codes_to_latents(codes, meta(table)), Raises(ValueError, "quantizer")),
        "codes-dtype": (lambda: rf.codes_to_latents(codes.float(), quant), Raises(TypeError, "codes")),
        "codes-shape": (lambda: rf.codes_to_latents(codes[0, 0], quant), Raises(ValueError, "codes")),
        "codes-empty-grid": (lambda: rf.codes_to_latents(codes[:, :0], quant), Raises(ValueError, "codes")),
        "codes-out-of-range": (lambda: rf.codes_to_latents(codes + 12, quant), Raises(ValueError, "codes")),
        "codes-strided": (
            lambda: rf.codes_to_latents(strided(codes), quant),
            Matches(lambda: table[codes].permute(0, 3, 1, 2)),
        ),
        "fsq-too-many-codes": (lambda: rf.Quantizer.fsq([2**20, 2**20]), Raises(ValueError, "levels")),
        "pixel-device": (lambda: pm(pred, meta(target), group_size=2), Raises(ValueError, "target")),
        "pixel-dtype": (lambda: pm(pred.long(), target, group_size=2), Raises(TypeError, "pred")),
        "pixel-shape": (lambda: pm(pred, target[:1], group_size=2), Raises(ValueError, "pred")),
        "pixel-empty-frames": (lambda: pm(pred[..., :0], target[..., :0], group_size=2), Raises(ValueError, "pred")),
        "pixel-k1-nan": (lambda: pm(pred, target, group_size=2, k1=NAN), Raises(ValueError, "k1")),
        "pixel-k2-negative": (lambda: pm(pred, target, group_size=2, k2=-1), Raises(ValueError, "k2")),
        "pixel-strided": (
            lambda: pm(pred.transpose(-1, -2), target.transpose(-1, -2), group_size=2),
            Matches(
                lambda: pm(pred.transpose(-1, -2).contiguous(), target.transpose(-1, -2).contiguous(), group_size=2)
            ),
        ),
        "reward-device-valid": (
            lambda: pixel_reward(pred, target, {"mse": 1.0}, group_size=2, valid=meta(torch.ones(4, dtype=torch.bool))),
            Raises(ValueError, "valid"),
        ),
        "reward-weights-nan": (
            lambda: pixel_reward(pred, target, {"mse": NAN}, group_size=2),
            Raises(ValueError, "weights['mse']"),
        ),
        "scatter-device": (lambda: ssr(reward, meta(smask)), Raises(ValueError, "response_mask")),
        "scatter-dtype": (lambda: ssr(reward.long(), smask), Raises(TypeError, "reward")),
        "scatter-shape": (lambda: ssr(reward, smask[:3]), Raises(ValueError, "response_mask")),
        "scatter-empty": (lambda: ssr(reward, smask[:, :0]), Matches(lambda: torch.zeros(4, 0))),
        "scatter-nan": (lambda: ssr(torch.where(reward > 0, NAN, reward), smask), Raises(ValueError, "reward")),
        "scatter-strided": (
            lambda: ssr(strided(reward), strided(smask)),
            Matches(lambda: rf.scatter_sequence_reward_ref(reward, smask)),
        ),
    }


VIDEO_CASES = _video_cases()


@pytest.mark.parametrize("name", list(VIDEO_CASES))
def test_video_ops(name):
    check(*VIDEO_CASES[name])


def test_every_public_op_is_swept():
    """A new public op must join the sweep."""
    swept = set(
        "group_advantages token_logprobs policy_loss policy_loss_from_logits fused_linear_logprobs "
        "fused_linear_policy_loss unpack_video_tokens codes_to_latents pixel_metrics "
        "scatter_sequence_reward".split()
    )
    helpers = set(
        "default_chunks aggregate_frames fsq_codebook Quantizer VideoTokenLayout AGG_MODES KL_TYPES METRICS".split()
    )
    public = {n for n in rf.ops.__all__ if not n.endswith(("_ref", "_backward_ref"))}
    assert public - helpers == swept


# ------------------------------------------------------------------ value checks without a host sync
def test_value_check_modes(monkeypatch):
    """RLVR_FAST_CHECK_VALUES: 1 = the full check on CPU, a device-side assert on CUDA; sync / async force
    one kind everywhere; 0 = off; anything else is refused, naming the variable."""
    from types import SimpleNamespace

    from rlvr_fast._checks import value_check_mode

    cpu, cuda = torch.zeros(1), SimpleNamespace(is_cuda=True)  # only .is_cuda is read (no GPU here)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: False)
    for value, want_cpu, want_cuda in (("1", "sync", "async"), ("sync", "sync", "sync"), ("async", "async", "async")):
        monkeypatch.setenv("RLVR_FAST_CHECK_VALUES", value)
        assert (value_check_mode(cpu), value_check_mode(cuda)) == (want_cpu, want_cuda)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", lambda: True)
    assert (value_check_mode(cpu), value_check_mode(cuda)) == ("async", "off")  # no check inside a graph capture
    monkeypatch.setenv("RLVR_FAST_CHECK_VALUES", "0")
    assert value_check_mode(cpu) == value_check_mode(cuda) == "off"
    monkeypatch.setenv("RLVR_FAST_CHECK_VALUES", "yes")
    with pytest.raises(ValueError, match="RLVR_FAST_CHECK_VALUES='yes'"):
        rf.token_logprobs(torch.randn(2, 3, 5), torch.zeros(2, 3, dtype=torch.long))


def test_device_side_asserts_carry_the_checks_message(monkeypatch):
    """The async path (the CUDA default) asserts on the device with the same check: forced on CPU, where
    torch._assert_async raises at once, each op named in issue 20 reports the argument; good inputs pass."""
    monkeypatch.setenv("RLVR_FAST_CHECK_VALUES", "async")
    logits, ids = torch.randn(2, 3, 5), torch.tensor([[0, 4, -100], [1, 2, 3]])
    assert torch.isfinite(rf.token_logprobs(logits, ids)).all()
    with pytest.raises(RuntimeError, match=r"token_ids: token ids must be in \[0, 5\).*RLVR_FAST_CHECK_VALUES=sync"):
        rf.token_logprobs(logits, torch.tensor([[0, 5, 1], [1, 2, 3]]))
    hidden, weight = torch.randn(6, 4), torch.randn(5, 4)
    with pytest.raises(RuntimeError, match=r"token_ids: token ids must be in \[0, 5\)"):
        rf.fused_linear_logprobs(hidden, weight, torch.tensor([0, 1, 2, 3, 4, 7]))
    scores = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert torch.isfinite(rf.group_advantages(scores, group_size=2)).all()
    with pytest.raises(RuntimeError, match="scores: expected finite values"):
        rf.group_advantages(torch.tensor([1.0, INF, 3.0, 4.0]), group_size=2)
    monkeypatch.setenv("RLVR_FAST_CHECK_VALUES", "sync")  # the host-read check: count and first value
    with pytest.raises(IndexError, match=r"got 1 out-of-range id\(s\), e.g. 5"):
        rf.token_logprobs(logits, torch.tensor([[0, 5, 1], [1, 2, 3]]))
