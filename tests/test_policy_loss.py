"""policy_loss and policy_loss_from_logits: float64 autograd oracle, verl peer, aggregation, edge cases."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import rlvr_fast as rf
from rlvr_fast.ops.policy_loss_reference import LossOptions, policy_loss_backward_ref, policy_loss_ref

KL = [None, "k1", "k2", "k3", "abs"]


def make_batch(B=5, T=12, device="cpu", spread=0.4, seed=0):
    g = torch.Generator().manual_seed(seed)
    old = torch.randn(B, T, generator=g) * 0.5 - 2
    logp = old + torch.randn(B, T, generator=g) * spread
    logp[0, :3] = old[0, :3]  # ratio exactly 1
    adv = torch.randn(B, T, generator=g)
    adv[1, 0] = 0.0
    mask = torch.rand(B, T, generator=g) > 0.25
    mask[2] = False  # a fully masked row
    ref = old + torch.randn(B, T, generator=g) * 0.3
    ref[3, 0] = logp[3, 0] + 30  # beyond the log-ratio clamp
    ent = torch.rand(B, T, generator=g) * 3
    return [t.to(device) for t in (logp, old, adv, mask, ref, ent)]


def oracle(logp, old, adv, mask, ref, ent, kw):
    """float64 loss and gradients through the differentiable reference with plain autograd."""
    lp = logp.detach().double().cpu().requires_grad_()
    e = ent.detach().double().cpu().requires_grad_()
    opts = loss_options(**{k: v for k, v in kw.items() if k not in ("agg", "norm_const")})
    loss, metrics, _ = policy_loss_ref(
        lp,
        old.double().cpu(),
        adv.double().cpu(),
        mask.cpu(),
        ref.double().cpu(),
        e,
        opts,
        kw["agg"],
        kw.get("norm_const"),
    )
    loss.backward()
    return loss.detach(), metrics, lp.grad, e.grad


def loss_options(clip_low=0.2, clip_high=0.2, dual_clip=None, kl_type=None, kl_coef=0.0, entropy_coef=0.0):
    """The reference's settings, with the public functions' defaults (kl_clamp 10, log_ratio_clamp 20)."""
    return LossOptions(
        clip_low=clip_low,
        clip_high=clip_high,
        dual_clip=dual_clip,
        kl_type=kl_type or "",
        kl_coef=kl_coef,
        kl_clamp=10.0,
        log_ratio_clamp=20.0,
        entropy_coef=entropy_coef,
    )


def options(agg="token-mean", kl=None, dual=None, **extra):
    return dict(
        clip_low=0.2,
        clip_high=0.28,
        dual_clip=dual,
        kl_type=kl,
        kl_coef=0.1 if kl else 0.0,
        entropy_coef=0.01,
        agg=agg,
        **extra,
    )


@pytest.mark.parametrize("agg", rf.AGG_MODES)
@pytest.mark.parametrize("kl", KL)
@pytest.mark.parametrize("dual", [None, 3.0])
def test_against_float64_autograd(backend, device, agg, kl, dual):
    logp, old, adv, mask, ref, ent = make_batch(device=device)
    kw = options(agg, kl, dual)
    lp, e = logp.clone().requires_grad_(), ent.clone().requires_grad_()
    loss, metrics = rf.policy_loss(lp, old, adv, mask, ref_logp=ref, entropy=e, **kw)
    loss.backward()
    want, want_m, g_lp, g_e = oracle(logp, old, adv, mask, ref, ent, kw)
    assert loss.dtype == torch.float32 and loss.shape == ()
    torch.testing.assert_close(loss.cpu().double(), want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lp.grad.cpu().double(), g_lp, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(e.grad.cpu().double(), g_e, rtol=1e-5, atol=1e-7)
    for i, name in enumerate(rf.METRICS):
        torch.testing.assert_close(metrics[name].cpu().double(), want_m[i], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("kl", KL)
@pytest.mark.parametrize("dual", [None, 2.0])
def test_analytic_backward_matches_autograd_including_ties(kl, dual):
    """The hand-derived backward (torch and Triton alike) equals autograd, ties and clamp edges included."""
    logp, old, adv, mask, ref, ent = make_batch(B=6, T=40, spread=0.3, seed=3)
    old = old.double()
    logp = logp.double()
    logp[4, :10] = old[4, :10] + math.log(1.28)  # at the upper clip boundary (up to rounding)
    logp[5, :10] = old[5, :10] + 25.0  # past the log-ratio clamp
    adv[4, :5] = -adv[4, :5].abs()  # dual-clip region
    kw = options("seq-mean-token-mean", kl, dual)
    _, _, g_lp, _ = oracle(logp, old, adv, mask, ref, ent, kw)
    opts = loss_options(clip_high=0.28, dual_clip=dual, kl_type=kl, kl_coef=kw["kl_coef"], entropy_coef=0.01)
    agg = "seq-mean-token-mean"
    _, _, w = policy_loss_ref(logp, old, adv.double(), mask, ref.double(), ent.double(), opts, agg, None)
    one = torch.tensor(1.0, dtype=torch.float64)
    got, _ = policy_loss_backward_ref(one, w, logp, old, adv.double(), mask, ref.double(), opts)
    torch.testing.assert_close(got, g_lp, rtol=1e-10, atol=1e-12)


def test_norm_const_and_aggregation_semantics(backend, device):
    logp, old, adv, mask, ref, ent = make_batch(device=device)
    loss_tok, m = rf.policy_loss(logp, old, adv, mask, norm_const=100.0)
    base, _ = rf.policy_loss(logp, old, adv, mask)
    n = mask.sum()
    torch.testing.assert_close(loss_tok, base * n / 100.0)
    torch.testing.assert_close(m["n_tokens"], n.float())
    s, _ = rf.policy_loss(logp, old, adv, mask, agg="seq-mean-token-sum")
    s_norm, _ = rf.policy_loss(logp, old, adv, mask, agg="seq-mean-token-sum-norm")
    s_norm_c, _ = rf.policy_loss(logp, old, adv, mask, agg="seq-mean-token-sum-norm", norm_const=4.0)
    T = logp.shape[1]
    torch.testing.assert_close(s_norm, s / T)
    torch.testing.assert_close(s_norm_c, s / 4.0)
    s_global, _ = rf.policy_loss(logp, old, adv, mask, agg="seq-mean-token-sum", norm_const=16.0)
    n_seq = (mask.sum(1) > 0).sum()
    torch.testing.assert_close(s_global, s * n_seq / 16.0)


def test_per_sequence_advantages_broadcast(backend, device):
    logp, old, adv, mask, ref, ent = make_batch(device=device)
    a = adv[:, 0].contiguous()
    l1, m1 = rf.policy_loss(logp, old, a, mask, dual_clip=3.0)
    l2, m2 = rf.policy_loss(logp, old, a[:, None].expand_as(logp).contiguous(), mask, dual_clip=3.0)
    torch.testing.assert_close(l1, l2)
    torch.testing.assert_close(m1["clipfrac"], m2["clipfrac"])


def test_fully_masked_batch_and_empty(backend, device):
    logp, old, adv, mask, ref, ent = make_batch(device=device)
    for agg in rf.AGG_MODES:
        lp = logp.clone().requires_grad_()
        e = ent.clone().requires_grad_()
        loss, m = rf.policy_loss(
            lp,
            old,
            adv,
            torch.zeros_like(mask),
            ref_logp=ref,
            entropy=e,
            kl_type="k3",
            kl_coef=0.1,
            entropy_coef=0.01,
            agg=agg,
        )
        loss.backward()
        assert loss.item() == 0.0 and (lp.grad == 0).all() and (e.grad == 0).all()
        assert all(torch.isfinite(v) and v.item() == 0 for v in m.values())
    empty = torch.zeros(0, 7, device=device, requires_grad=True)
    loss, m = rf.policy_loss(empty, empty.detach(), torch.zeros(0, device=device), torch.zeros(0, 7, device=device))
    loss.backward()
    assert loss.item() == 0 and empty.grad.shape == (0, 7)


def test_low_precision_inputs(monkeypatch):
    monkeypatch.setenv("RLVR_FAST_BACKEND", "torch")
    logp, old, adv, mask, ref, ent = make_batch()
    lp = logp.bfloat16().requires_grad_()
    loss, _ = rf.policy_loss(lp, old.bfloat16(), adv.bfloat16(), mask, clip_high=0.28)
    loss.backward()
    assert loss.dtype == torch.float32 and lp.grad.dtype == torch.bfloat16
    want, _, _, _ = oracle(lp.detach(), old.bfloat16(), adv.bfloat16(), mask, ref, ent, options() | {"entropy_coef": 0})
    torch.testing.assert_close(loss.double(), want, rtol=1e-5, atol=1e-6)


def test_opcheck(backend, device):
    logp, old, adv, mask, ref, ent = make_batch(device=device)
    lp, e = logp.clone().requires_grad_(), ent.clone().requires_grad_()
    opts = loss_options(clip_high=0.28, dual_clip=3.0, kl_type="k3", kl_coef=0.1, entropy_coef=0.01)._asdict()
    agg = dict(agg="seq-mean-token-mean", norm_const=None)
    torch.library.opcheck(torch.ops.rlvr_fast.policy_loss.default, (lp, old, adv, mask, ref, e), opts | agg)
    plain = loss_options()._asdict() | dict(agg="token-mean", norm_const=7.0)
    torch.library.opcheck(
        torch.ops.rlvr_fast.policy_loss.default, (lp, old, adv[:, 0], mask.float(), None, None), plain
    )
    w = torch.rand(logp.shape[0], device=device)
    grads_args = (torch.tensor(1.5, device=device), w, logp, old, adv, mask, ref)
    torch.library.opcheck(torch.ops.rlvr_fast.policy_loss_backward.default, grads_args, opts)


# --- from logits ------------------------------------------------------------------------------------


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-mean"])
@pytest.mark.parametrize("kl,dual,ent_coef", [(None, None, 0.0), ("k3", 3.0, 0.01), ("k2", None, 0.05)])
def test_from_logits_equals_composition(backend, device, agg, kl, dual, ent_coef):
    B, T, V = 3, 6, 301
    full = torch.randn(B, T + 1, V, device=device) * 2
    ids = torch.randint(0, V, (B, T), device=device)
    ids[0, 1] = -100
    logp_now = torch.log_softmax(full[:, :-1].double(), -1).gather(-1, ids.clamp(min=0)[..., None])[..., 0].float()
    old = (logp_now + 0.2 * torch.randn(B, T, device=device)).detach()
    ref = (logp_now + 0.2 * torch.randn(B, T, device=device)).detach()
    adv = torch.randn(B, device=device)
    mask = torch.rand(B, T, device=device) > 0.2
    kw = dict(ref_logp=ref, kl_type=kl, kl_coef=0.1 if kl else 0.0, dual_clip=dual, agg=agg, clip_high=0.28)
    x1 = full.clone().requires_grad_()
    loss, m = rf.policy_loss_from_logits(
        x1[:, :-1], ids, old, adv, mask, temperature=0.9, entropy_coef=ent_coef, compute_entropy=True, **kw
    )
    loss.backward()
    x2 = full.clone().requires_grad_()
    lp, ent = rf.token_logprobs(x2[:, :-1], ids, temperature=0.9, return_entropy=True)
    want, wm = rf.policy_loss(lp, old, adv, mask & (ids != -100), entropy=ent, entropy_coef=ent_coef, **kw)
    want.backward()
    torch.testing.assert_close(loss, want, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(x1.grad, x2.grad, rtol=1e-5, atol=1e-8)
    for k in rf.METRICS:
        torch.testing.assert_close(m[k], wm[k], rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(m["logp"], lp.detach())


def test_from_logits_entropy_only_when_used(backend, device):
    logits = torch.randn(2, 5, 40, device=device)
    ids = torch.randint(0, 40, (2, 5), device=device)
    args = (torch.randn(2, 5, device=device) - 3.7, torch.randn(2, device=device), torch.ones(2, 5, device=device))
    plain, m = rf.policy_loss_from_logits(logits, ids, *args)
    assert "entropy" not in m and "entropy_tokens" not in m
    with_ent, m2 = rf.policy_loss_from_logits(logits, ids, *args, compute_entropy=True)
    torch.testing.assert_close(plain, with_ent)
    assert m2["entropy"] > 0 and m2["entropy_tokens"].shape == (2, 5)
    with pytest.raises(ValueError, match="compute_entropy: must not be False"):
        rf.policy_loss_from_logits(logits, ids, *args, entropy_coef=0.1, compute_entropy=False)


def test_from_logits_float64_oracle_and_inplace(backend, device):
    B, T, V = 2, 5, 97
    logits = torch.randn(B, T, V, device=device)
    ids = torch.randint(0, V, (B, T), device=device)
    old = torch.randn(B, T, device=device) * 0.1 - 4.6
    adv = torch.randn(B, T, device=device)
    mask = torch.ones(B, T, dtype=torch.bool, device=device)
    leaf = logits.clone().requires_grad_()
    buf = leaf * 1.0
    loss, _ = rf.policy_loss_from_logits(buf, ids, old, adv, mask, entropy_coef=0.02, inplace_backward=True)
    loss.backward()
    x64 = logits.double().cpu().requires_grad_()
    logp_all = torch.log_softmax(x64, -1)
    lp64 = logp_all.gather(-1, ids.cpu()[..., None])[..., 0]
    ent64 = -(logp_all.exp() * logp_all).sum(-1)
    opts = loss_options(entropy_coef=0.02)
    old64, adv64 = old.double().cpu(), adv.double().cpu()
    want, _, _ = policy_loss_ref(lp64, old64, adv64, mask.cpu(), None, ent64, opts, "token-mean", None)
    want.backward()
    torch.testing.assert_close(loss.cpu().double(), want.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(leaf.grad.cpu().double(), x64.grad, rtol=1e-4, atol=1e-7)


def test_from_logits_opcheck(backend, device):
    logits = torch.randn(2, 4, 31, device=device, requires_grad=True)
    ids = torch.randint(0, 31, (2, 4), device=device)
    old, adv = torch.randn(2, 4, device=device) - 3, torch.randn(2, device=device)
    args = (logits, ids, old, adv, torch.ones(2, 4, device=device), None)
    kwargs = loss_options(entropy_coef=0.01)._asdict() | dict(agg="token-mean", norm_const=None)
    kwargs |= dict(temperature=1.0, ignore_index=-100, inplace_backward=False, compute_entropy=True)
    torch.library.opcheck(torch.ops.rlvr_fast.policy_loss_from_logits.default, args, kwargs)


# --- peers ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("agg", rf.AGG_MODES)
@pytest.mark.parametrize("kl", KL)
def test_matches_verl(backend, device, agg, kl):
    core = pytest.importorskip("verl.trainer.ppo.core_algos")
    from omegaconf import OmegaConf

    logp, old, adv, mask, ref, ent = make_batch()
    maskf = mask.float()
    cfg = OmegaConf.create(
        dict(clip_ratio=0.2, clip_ratio_low=0.2, clip_ratio_high=0.28, clip_ratio_c=3.0, global_batch_info={})
    )
    lp_v = logp.clone().requires_grad_()
    pg, vm = core.compute_policy_loss_vanilla(old, lp_v, adv, maskf, loss_agg_mode=agg, config=cfg)
    total = pg - 0.01 * core.agg_loss(ent, maskf, agg)
    if kl:
        total = total + 0.1 * core.agg_loss(core.kl_penalty(lp_v, ref, kl), maskf, agg)
    total.backward()
    lp = logp.clone().to(device).requires_grad_()
    loss, m = rf.policy_loss(
        lp,
        old.to(device),
        adv.to(device),
        mask.to(device),
        ref_logp=ref.to(device),
        entropy=ent.to(device),
        **options(agg, kl, 3.0),
    )
    loss.backward()
    torch.testing.assert_close(loss.cpu(), total.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lp.grad.cpu(), lp_v.grad, rtol=1e-5, atol=1e-7)
    assert m["clipfrac"].item() == pytest.approx(vm["actor/pg_clipfrac"], abs=1e-6)
    assert m["approx_kl"].item() == pytest.approx(vm["actor/ppo_kl"], abs=1e-6)
    assert m["clipfrac_lower"].item() == pytest.approx(vm["actor/pg_clipfrac_lower"], abs=1e-6)


def test_from_logits_matches_verl_unfused(backend, device):
    core = pytest.importorskip("verl.trainer.ppo.core_algos")
    vf = pytest.importorskip("verl.utils.torch_functional")
    from omegaconf import OmegaConf

    B, T, V = 3, 7, 211
    logits = torch.randn(B, T, V)
    ids = torch.randint(0, V, (B, T))
    old = vf.logprobs_from_logits_naive(logits, ids).detach() + 0.1 * torch.randn(B, T)
    adv, mask = torch.randn(B, T), (torch.rand(B, T) > 0.2).float()
    cfg = OmegaConf.create(
        dict(clip_ratio=0.2, clip_ratio_low=None, clip_ratio_high=None, clip_ratio_c=3.0, global_batch_info={})
    )
    xv = logits.clone().requires_grad_()
    pg, _ = core.compute_policy_loss_vanilla(old, vf.logprobs_from_logits_naive(xv, ids), adv, mask, config=cfg)
    pg.backward()
    x = logits.to(device).requires_grad_()
    loss, _ = rf.policy_loss_from_logits(
        x, ids.to(device), old.to(device), adv.to(device), mask.to(device), dual_clip=3.0
    )
    loss.backward()
    torch.testing.assert_close(loss.cpu(), pg.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x.grad.cpu(), xv.grad, rtol=1e-4, atol=1e-8)


# --- properties -------------------------------------------------------------------------------------


@settings(max_examples=30, deadline=None)
@given(
    agg=st.sampled_from(rf.AGG_MODES),
    kl=st.sampled_from(KL),
    seed=st.integers(0, 10_000),
    junk=st.floats(-50, 50),
)
def test_masked_tokens_never_matter(agg, kl, seed, junk):
    """Whatever sits under the mask (even huge values) changes neither the loss nor any gradient."""
    logp, old, adv, mask, ref, ent = make_batch(B=4, T=9, seed=seed)
    kw = options(agg, kl, 3.0)
    outs = []
    for poison in (False, True):
        lp, o, a, r, e = (t.clone() for t in (logp, old, adv, ref, ent))
        if poison:
            for t in (lp, o, a, r, e):
                t[~mask] = junk
        lp.requires_grad_()
        e.requires_grad_()
        loss, m = rf.policy_loss(lp, o, a, mask, ref_logp=r, entropy=e, **kw)
        loss.backward()
        assert torch.isfinite(loss) and (lp.grad[~mask] == 0).all()
        outs.append((loss, lp.grad[mask], e.grad[mask], m["clipfrac"], m["kl"]))
    for x, y in zip(*outs):
        torch.testing.assert_close(x, y)


# --- bad input --------------------------------------------------------------------------------------


def test_bad_input(backend, device):
    logp, old, adv, mask, ref, ent = make_batch(device=device)
    with pytest.raises(ValueError, match=r"old_logp: expected shape \(5, 12\) \(like the log-probs\), got \(5, 11\)"):
        rf.policy_loss(logp, old[:, :-1], adv, mask)
    with pytest.raises(ValueError, match=r"advantages: expected shape \(5, 12\) or \(5,\)"):
        rf.policy_loss(logp, old, adv[:, :3], mask)
    with pytest.raises(ValueError, match=r"response_mask: expected shape \(5, 12\)"):
        rf.policy_loss(logp, old, adv, mask[:4])
    with pytest.raises(ValueError, match="ref_logp: required when kl_type='k3'"):
        rf.policy_loss(logp, old, adv, mask, kl_type="k3", kl_coef=0.1)
    with pytest.raises(ValueError, match="entropy: required when entropy_coef=0.01"):
        rf.policy_loss(logp, old, adv, mask, entropy_coef=0.01)
    with pytest.raises(ValueError, match="agg: expected one of"):
        rf.policy_loss(logp, old, adv, mask, agg="mean")
    with pytest.raises(ValueError, match="kl_type: expected one of"):
        rf.policy_loss(logp, old, adv, mask, kl_type="k4")
    with pytest.raises(ValueError, match="dual_clip: expected None or a constant > 1"):
        rf.policy_loss(logp, old, adv, mask, dual_clip=0.5)
    with pytest.raises(ValueError, match="clip_low: expected a value < 1"):
        rf.policy_loss(logp, old, adv, mask, clip_low=1.0)
    with pytest.raises(ValueError, match="norm_const: expected None or a positive number"):
        rf.policy_loss(logp, old, adv, mask, norm_const=0.0)
    with pytest.raises(ValueError, match="logp: expected a 2-d tensor"):
        rf.policy_loss(logp[0], old[0], adv[0], mask[0])
    with pytest.raises(TypeError, match="logp: expected dtype"):
        rf.policy_loss(logp.long(), old, adv, mask)
    logits = torch.randn(5, 12, 9, device=device)
    with pytest.raises(ValueError, match=r"token_ids: expected shape \(5, 12\)"):
        rf.policy_loss_from_logits(logits, torch.zeros(5, 11, dtype=torch.long, device=device), old, adv, mask)
    with pytest.raises(IndexError, match=r"token ids must be in \[0, 9\)"):
        rf.policy_loss_from_logits(logits, torch.full((5, 12), 9, device=device), old, adv, mask)
    with pytest.raises(ValueError, match="logits: expected a 3-d tensor"):
        rf.policy_loss_from_logits(logits[0], torch.zeros(12, dtype=torch.long, device=device), old, adv, mask)


@pytest.mark.parametrize("coef", [0.0, 0.01])
def test_entropy_gradient_written_only_when_weighted(backend, device, coef):
    """entropy_coef == 0: the backward writes no [B, T] d(entropy) (all zeros); autograd gets None."""
    B, T = 4, 33
    logp = (torch.randn(B, T, device=device) - 2).requires_grad_()
    old = logp.detach() + 0.05 * torch.randn(B, T, device=device)
    adv, mask = torch.randn(B, device=device), torch.rand(B, T, device=device) > 0.3
    ent = torch.rand(B, T, device=device).requires_grad_()
    loss, _ = rf.policy_loss(logp, old, adv, mask, entropy=ent, entropy_coef=coef)
    loss.backward()
    w = torch.ones(B, device=device) / mask.sum()  # token-mean weights of the row partials
    gl, ge = torch.ops.rlvr_fast.policy_loss_backward(
        torch.tensor(1.0, device=device),
        w,
        logp.detach(),
        old,
        adv,
        mask,
        None,
        clip_low=0.2,
        clip_high=0.2,
        dual_clip=None,
        kl_type="",
        kl_coef=0.0,
        kl_clamp=10.0,
        log_ratio_clamp=20.0,
        entropy_coef=coef,
    )
    if coef == 0:
        assert ge.numel() == 0 and ent.grad is None
    else:
        assert ge.shape == (B, T)
        torch.testing.assert_close(ent.grad, torch.where(mask, -coef / mask.sum(), 0.0).float())


def test_from_logits_takes_causal_lm_logits(backend, device):
    """[B, T + 1, V] logits with [B, T] ids: the loss and d(logits) of the ``logits[:, :-1]`` view, with
    the gradient written once in the parent's layout (issue 20; tests/test_logprobs.py for the op)."""
    B, T, V = 2, 5, 29
    full = torch.randn(B, T + 1, V, device=device)
    ids = torch.randint(0, V, (B, T), device=device)
    old, adv = torch.randn(B, T, device=device) - 3, torch.randn(B, device=device)
    mask = torch.rand(B, T, device=device) > 0.3
    a, b = full.clone().requires_grad_(), full.clone().requires_grad_()
    loss_a, _ = rf.policy_loss_from_logits(a, ids, old, adv, mask, entropy_coef=0.01, drop_last_position=True)
    loss_b, _ = rf.policy_loss_from_logits(b[:, :-1], ids, old, adv, mask, entropy_coef=0.01)
    loss_a.backward(), loss_b.backward()
    torch.testing.assert_close(loss_a, loss_b, rtol=0, atol=0)
    torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=1e-8)
    assert (a.grad[:, -1] == 0).all()
    with pytest.raises(ValueError, match="token_ids: expected at least one token"):
        rf.policy_loss_from_logits(full[:, :1], ids[:, :0], old[:, :0], adv, mask[:, :0], drop_last_position=True)


@pytest.mark.parametrize("B,T", [(4, 1500), (5, 257), (4, 4096)])
def test_long_rows_are_chunked_and_match_the_reference(backend, device, B, T):
    """The forward cuts long rows into chunks of whole tiles (issue 20: more programs for small batches,
    fewer live accumulators); the [B, chunks] partials, min/max included, give the reference's loss and
    metrics under every aggregation."""
    from rlvr_fast.kernels.policy_loss import forward_plan

    block_t, chunks, cols = forward_plan(B, T)
    assert block_t <= 256 and chunks > 1 and (chunks - 1) * cols < T <= chunks * cols
    logp, old, adv, mask, ref, ent = make_batch(B=B, T=T, device=device, seed=T)
    for agg in ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum"):
        kw = options(agg=agg, kl="k3", dual=3.0)  # entropy_coef 0.01
        loss, m = rf.policy_loss(logp, old, adv, mask, ref_logp=ref, entropy=ent, **kw)
        want, wm, _, _ = oracle(logp, old, adv, mask, ref, ent, kw)
        torch.testing.assert_close(loss.double().cpu(), want, rtol=1e-5, atol=1e-6)
        for i, k in enumerate(rf.METRICS):  # the oracle's metrics: a vector in METRICS order
            torch.testing.assert_close(m[k].double().cpu(), wm[i].double(), rtol=1e-5, atol=1e-6, msg=k)
