"""GPU tier (``pytest -m gpu``): bf16/fp16 and full-size shapes through the compiled Triton kernels.

Skipped without CUDA. The bf16 rule (flash-attn): error(kernel) <= 2 * error(PyTorch in the same
dtype) + atol, both measured against a float64 reference. A result that changes between two runs on
the same inputs is a race and fails.
"""

import pytest
import torch

import rlvr_fast as rf

pytestmark = pytest.mark.gpu

DTYPES = [torch.float32, torch.bfloat16, torch.float16]


@pytest.fixture(autouse=True)
def _triton(monkeypatch):
    monkeypatch.setenv("RLVR_FAST_BACKEND", "triton")


def _f64_logprobs(logits, ids):
    lp = torch.log_softmax(logits.double(), -1)
    return lp.gather(-1, ids[..., None])[..., 0], -(lp.exp() * lp).sum(-1)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("N,V", [(4096, 151936), (16384, 32000), (777, 50257), (64, 7), (9, 1)])
def test_token_logprobs_full_size(dtype, N, V):
    logits = (torch.randn(N, V, device="cuda") * 4).to(dtype)
    ids = torch.randint(0, V, (N,), device="cuda")
    x = logits.clone().requires_grad_()
    logp, ent = rf.token_logprobs(x, ids, return_entropy=True)
    g = torch.randn(N, device="cuda")
    (logp * g + 0.1 * ent).sum().backward()
    want_lp, want_ent = _f64_logprobs(logits, ids)
    naive = torch.log_softmax(logits, -1).gather(-1, ids[..., None])[..., 0].double()
    atol = 1e-5 if dtype == torch.float32 else 1e-3
    assert (logp.double() - want_lp).abs().max() <= 2 * (naive - want_lp).abs().max() + atol
    torch.testing.assert_close(ent.double(), want_ent, rtol=1e-4, atol=max(atol, 1e-4))
    x64 = logits.double().requires_grad_()
    lp64, e64 = _f64_logprobs(x64, ids)
    (lp64 * g.double() + 0.1 * e64).sum().backward()
    xt = logits.clone().requires_grad_()
    lpt = torch.log_softmax(xt.float(), -1).gather(-1, ids[..., None])[..., 0]
    et = -(torch.softmax(xt.float(), -1) * torch.log_softmax(xt.float(), -1)).sum(-1)
    (lpt * g + 0.1 * et).sum().backward()
    err = (x.grad.double() - x64.grad).abs().max()
    assert err <= 2 * (xt.grad.double() - x64.grad).abs().max() + atol
    # determinism: same inputs, same bits
    again = rf.token_logprobs(logits, ids)
    assert torch.equal(again, logp.detach())


@pytest.mark.parametrize("dtype", DTYPES)
def test_shifted_view_bf16_no_copy(dtype):
    full = torch.randn(8, 513, 32000, device="cuda", dtype=dtype)
    ids = torch.randint(0, 32000, (8, 512), device="cuda")
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    logp = rf.token_logprobs(full[:, :-1], ids)
    extra = torch.cuda.max_memory_allocated() - before
    assert extra < full.numel() * full.element_size() // 10, "the view was copied"
    want, _ = _f64_logprobs(full[:, :-1], ids)
    torch.testing.assert_close(logp.double(), want, rtol=0, atol=5e-2 if dtype != torch.float32 else 1e-4)


@pytest.mark.parametrize("dtype", DTYPES)
def test_policy_loss_from_logits_gpu(dtype):
    B, T, V = 16, 256, 151936
    logits = (torch.randn(B, T, V, device="cuda") * 2).to(dtype)
    ids = torch.randint(0, V, (B, T), device="cuda")
    with torch.no_grad():
        lp0, _ = _f64_logprobs(logits, ids)
    old = (lp0 + 0.1 * torch.randn_like(lp0)).float()
    ref = (lp0 + 0.1 * torch.randn_like(lp0)).float()
    adv = torch.randn(B, device="cuda")
    mask = torch.rand(B, T, device="cuda") > 0.1
    kw = dict(ref_logp=ref, kl_type="k3", kl_coef=0.05, entropy_coef=0.01, dual_clip=3.0)
    x = logits.clone().requires_grad_()
    loss, m = rf.policy_loss_from_logits(x, ids, old, adv, mask, **kw)
    loss.backward()
    x2 = logits.clone().requires_grad_()
    with torch.autocast("cuda", enabled=False):
        lp, ent = rf.token_logprobs(x2, ids, return_entropy=True)
        want, _ = rf.policy_loss(lp, old, adv, mask, entropy=ent, **kw)
    want.backward()
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(x.grad.float(), x2.grad.float(), rtol=1e-2, atol=1e-6)
    assert x.grad.dtype == dtype


def test_group_advantages_target_shape_matches_reference():
    G, n, T = 8192, 16, 1024
    scores = torch.randn(G * n, device="cuda")
    mask = torch.rand(G * n, T, device="cuda") > 0.3
    got = rf.group_advantages(scores, group_size=n, response_mask=mask)
    want = rf.ops.group_advantages_ref(scores.double(), None, n, mask, "grpo", 1e-6, True, "zero", False)
    torch.testing.assert_close(got.double(), want, rtol=1e-5, atol=1e-5)


def test_policy_loss_matches_torch_backend(monkeypatch):
    B, T = 512, 2048
    old = torch.randn(B, T, device="cuda") - 3
    lp = (old + 0.3 * torch.randn_like(old)).requires_grad_()
    adv, mask, ref = torch.randn(B, device="cuda"), torch.rand(B, T, device="cuda") > 0.2, old + 0.1
    kw = dict(ref_logp=ref, kl_type="k3", kl_coef=0.1, dual_clip=3.0, agg="seq-mean-token-mean")
    loss, m = rf.policy_loss(lp, old, adv, mask, **kw)
    loss.backward()
    monkeypatch.setenv("RLVR_FAST_BACKEND", "torch")
    lp2 = lp.detach().clone().requires_grad_()
    want, wm = rf.policy_loss(lp2, old, adv, mask, **kw)
    want.backward()
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lp.grad, lp2.grad, rtol=1e-5, atol=1e-9)
    for k in rf.METRICS:
        torch.testing.assert_close(m[k], wm[k], rtol=1e-5, atol=1e-6)


def test_opcheck_on_gpu():
    logits = torch.randn(4, 8, 1000, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    ids = torch.randint(0, 1000, (4, 8), device="cuda")
    torch.library.opcheck(torch.ops.rlvr_fast.token_logprobs.default, (logits, ids, 1.0, True, -100, False))
    args = (logits, ids, torch.randn(4, 8, device="cuda") - 7, torch.randn(4, device="cuda"),
            torch.ones(4, 8, device="cuda"), None, 0.2, 0.2, 3.0, "", 0.0, 10.0, 20.0, 0.01, "token-mean", None, 1.0,
            -100, False, True)  # fmt: skip
    torch.library.opcheck(torch.ops.rlvr_fast.policy_loss_from_logits.default, args)
