"""fused_linear_logprobs / fused_linear_policy_loss: values and gradients against float64 logits, chunking,
opcheck, bad inputs."""

from __future__ import annotations

import pytest
import torch

import rlvr_fast as rf


def _ref64(h, w, ids, b=None, temperature=1.0, ignore_index=-100):
    """float64 autograd reference through materialised logits."""
    z = (h.double() @ w.double().T + (b.double() if b is not None else 0)) / temperature
    logsm = torch.log_softmax(z, -1)
    keep = ids != ignore_index
    logp = logsm.gather(-1, torch.where(keep, ids, 0).long()[..., None])[..., 0] * keep
    ent = -(logsm.exp() * logsm).sum(-1) * keep
    return logp, ent


def _inputs(N, H, V, dtype=torch.float32, bias=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    h = (torch.randn(N, H, generator=g) * 0.5).to(dtype).requires_grad_()
    w = (torch.randn(V, H, generator=g) / H**0.5 * 3).to(dtype).requires_grad_()
    b = (torch.randn(V, generator=g) * 0.3).to(dtype).requires_grad_() if bias else None
    ids = torch.randint(0, V, (N,), generator=g)
    return h, w, b, ids


def _leaves(h, w, b):
    return [t for t in (h, w, b) if t is not None]


SHAPES = [(5, 8, 1), (6, 8, 7), (9, 64, 1000), (3, 16, 50257), (2, 4096, 33)]


@pytest.mark.parametrize("N,H,V", SHAPES)
@pytest.mark.parametrize("bias", [False, True])
def test_values_and_gradients_against_float64(N, H, V, bias, backend):
    """Both tile backends: torch, and the Triton kernels (under the interpreter on CPU)."""
    h, w, b, ids = _inputs(N, H, V, bias=bias)
    ids[0] = -100  # an ignored position
    logp, ent = rf.fused_linear_logprobs(
        h, w, ids, bias=b, temperature=0.7, return_entropy=True, chunk_tokens=2, chunk_vocab=max(1, V // 3)
    )
    rl, re = _ref64(h, w, ids, b, 0.7)
    torch.testing.assert_close(logp.double(), rl, rtol=1e-5, atol=2e-5)
    torch.testing.assert_close(ent.double(), re, rtol=1e-5, atol=2e-5)
    assert logp[0].item() == 0.0 and ent[0].item() == 0.0
    gl, ge = torch.randn(N, generator=torch.Generator().manual_seed(1)), torch.randn(N)
    got = torch.autograd.grad((logp * gl).sum() + (ent * ge).sum(), _leaves(h, w, b))
    want = torch.autograd.grad((rl * gl.double()).sum() + (re * ge.double()).sum(), _leaves(h, w, b))
    for a, e in zip(got, want):
        torch.testing.assert_close(a.double(), e.double(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("chunks", [(None, None), (1, 1), (4, 3), (100, 10_000)])
def test_chunk_sizes_do_not_change_the_result(chunks, backend):
    h, w, b, ids = _inputs(11, 32, 257, bias=True, seed=3)
    base = rf.fused_linear_logprobs(h, w, ids, bias=b, return_entropy=True, chunk_tokens=11, chunk_vocab=257)
    got = rf.fused_linear_logprobs(
        h, w, ids, bias=b, return_entropy=True, chunk_tokens=chunks[0], chunk_vocab=chunks[1]
    )
    for a, e in zip(got, base):
        torch.testing.assert_close(a, e, rtol=1e-5, atol=1e-5)


def test_logp_only_gradient_and_tied_weights():
    """A tied head (embedding matrix as the projection) accumulates both gradients into one tensor."""
    torch.manual_seed(0)
    emb = torch.nn.Embedding(50, 16)
    ids_in = torch.randint(0, 50, (4, 6))
    hidden = torch.tanh(emb(ids_in))  # the same matrix as input embedding and output projection
    target = torch.randint(0, 50, (4, 6))
    logp = rf.fused_linear_logprobs(hidden, emb.weight, target, chunk_vocab=7)
    (g_fused,) = torch.autograd.grad(logp.sum(), emb.weight)
    hidden = torch.tanh(emb(ids_in))
    ref = torch.log_softmax(hidden @ emb.weight.T, -1).gather(-1, target[..., None])[..., 0]
    (g_ref,) = torch.autograd.grad(ref.sum(), emb.weight)
    torch.testing.assert_close(logp, ref, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(g_fused, g_ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_match_the_unfused_half_path(dtype):
    h, w, _, ids = _inputs(16, 64, 300, dtype=dtype, seed=4)
    logp = rf.fused_linear_logprobs(h, w, ids, chunk_vocab=128)
    assert logp.dtype == torch.float32
    # the unfused path a model runs: half logits from lm_head, then our float32 log-softmax
    ref = rf.token_logprobs(h @ w.T, ids)
    torch.testing.assert_close(logp, ref, rtol=2e-2, atol=2e-2)
    g = torch.autograd.grad(logp.sum(), [h, w])
    g_ref = torch.autograd.grad(rf.token_logprobs(h @ w.T, ids).sum(), [h, w])
    for a, e in zip(g, g_ref):
        assert a.dtype == dtype
        torch.testing.assert_close(a.float(), e.float(), rtol=5e-2, atol=5e-2)


def test_fused_linear_policy_loss_equals_the_logits_path(backend):
    g = torch.Generator().manual_seed(5)
    B, T, H, V = 3, 5, 16, 97
    h = torch.randn(B, T, H, generator=g, requires_grad=True)
    w = torch.randn(V, H, generator=g, requires_grad=True)
    ids = torch.randint(0, V, (B, T), generator=g)
    old = torch.randn(B, T, generator=g) * 0.1 - 4
    ref_lp = torch.randn(B, T, generator=g) * 0.1 - 4
    adv = torch.randn(B, generator=g)
    mask = torch.ones(B, T, dtype=torch.bool)
    mask[1, 3:] = False
    opts = dict(
        ref_logp=ref_lp, kl_type="k3", kl_coef=0.1, entropy_coef=0.01, clip_high=0.28, agg="seq-mean-token-mean"
    )
    loss, m = rf.fused_linear_policy_loss(h, w, ids, old, adv, mask, chunk_vocab=20, temperature=0.9, **opts)
    gh, gw = torch.autograd.grad(loss, [h, w])
    loss2, m2 = rf.policy_loss_from_logits(h @ w.T, ids, old, adv, mask, temperature=0.9, **opts)
    gh2, gw2 = torch.autograd.grad(loss2, [h, w])
    torch.testing.assert_close(loss, loss2, rtol=1e-5, atol=1e-6)
    for k in m2:
        torch.testing.assert_close(m[k], m2[k], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(gh, gh2, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(gw, gw2, rtol=1e-4, atol=1e-6)


def test_opcheck():
    h, w, b, ids = _inputs(6, 8, 13, bias=True)
    for args in [(h, w, b, ids, 1.0, True, -100, 4, 5), (h, w, None, ids, 0.5, False, -100, 6, 13)]:
        torch.library.opcheck(torch.ops.rlvr_fast.fused_linear_logprobs.default, args)


def test_compile_fullgraph():
    h, w, b, ids = _inputs(6, 8, 13, bias=True)

    @torch.compile(fullgraph=True, backend="aot_eager")
    def f(h, w, b, ids):
        return rf.fused_linear_logprobs(h, w, ids, bias=b, chunk_tokens=4, chunk_vocab=5).sum()

    out = f(h, w, b, ids)
    torch.testing.assert_close(out, rf.fused_linear_logprobs(h, w, ids, bias=b).sum(), rtol=1e-5, atol=1e-5)
    out.backward()
    assert h.grad is not None and w.grad is not None and b.grad is not None


def test_bad_inputs():
    h, w, _, ids = _inputs(4, 8, 10)
    with pytest.raises(ValueError, match=r"weight: expected \[V, 8\]"):
        rf.fused_linear_logprobs(h, w[:, :7], ids)
    with pytest.raises(IndexError, match=r"token ids must be in \[0, 10\)"):
        rf.fused_linear_logprobs(h, w, torch.tensor([0, 1, 10, 2]))
    with pytest.raises(ValueError, match="token_ids"):
        rf.fused_linear_logprobs(h, w, ids[:3])
    with pytest.raises(TypeError, match="weight"):
        rf.fused_linear_logprobs(h, w.double(), ids)
    with pytest.raises(ValueError, match="temperature"):
        rf.fused_linear_logprobs(h, w, ids, temperature=0.0)
    with pytest.raises(ValueError, match="bias"):
        rf.fused_linear_logprobs(h, w, ids, bias=torch.zeros(9))
    with pytest.raises(ValueError, match="chunk_vocab"):
        rf.fused_linear_logprobs(h, w, ids, chunk_vocab=-1)


def test_extreme_logits_and_masked_vocabulary(backend):
    """Logits of +-1e4 (a saturated softmax) and a -inf bias column (a masked token): finite results."""
    h, w, _, ids = _inputs(4, 8, 40, seed=7)
    w = (w.detach() * 2000).requires_grad_()
    b = torch.zeros(40)
    b[5] = -float("inf")
    ids = torch.tensor([0, 1, 2, 3])
    logp, ent = rf.fused_linear_logprobs(h, w, ids, bias=b, return_entropy=True, chunk_vocab=16)
    rl, re = _ref64(h, w, ids, b)
    torch.testing.assert_close(logp.double(), rl, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(ent.double(), re.nan_to_num(0.0), rtol=1e-4, atol=1e-4)
    (g,) = torch.autograd.grad(logp.sum() + ent.sum(), [h])
    assert torch.isfinite(g).all()


def test_default_chunks():
    assert rf.default_chunks(10, 7, torch.device("cpu")) == (10, 7)
    ct, cv = rf.default_chunks(16384, 151936, torch.device("cpu"))
    assert ct == 4096 and cv % 256 == 0 and 3 * 4 * ct * cv <= 64 << 20


def test_fully_masked_rows(backend):
    """Every position ignored: zero log-probs and zero gradients; a policy-loss row with no valid
    token contributes nothing (the other rows' gradient is unchanged)."""
    h, w, b, ids = _inputs(5, 8, 30, bias=True, seed=9)
    lp, ent = rf.fused_linear_logprobs(h, w, torch.full_like(ids, -100), bias=b, return_entropy=True)
    assert torch.equal(lp, torch.zeros(5)) and torch.equal(ent, torch.zeros(5))
    grads = torch.autograd.grad(lp.sum() + ent.sum(), [h, w, b])
    assert all(torch.equal(g, torch.zeros_like(g)) for g in grads)
    hid = h.detach().view(1, 5, 8).repeat(2, 1, 1).requires_grad_()
    tok = ids.view(1, 5).repeat(2, 1)
    mask = torch.tensor([[True] * 5, [False] * 5])
    old = torch.full((2, 5), -3.0)
    loss, _ = rf.fused_linear_policy_loss(hid, w.detach(), tok, old, torch.tensor([1.0, 5.0]), mask)
    (g,) = torch.autograd.grad(loss, [hid])
    assert torch.equal(g[1], torch.zeros_like(g[1])) and g[0].abs().sum() > 0


def test_default_chunks_depend_on_shapes_only(monkeypatch):
    """The tiles (and so the summation order) never depend on the memory free at the time of the call."""

    def no_query(*args, **kwargs):
        raise AssertionError("default_chunks must not query the free memory")

    monkeypatch.setattr(torch.cuda, "mem_get_info", no_query)
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert rf.default_chunks(8192, 151936, cuda) == (4096, 21760)  # 3 float32 tiles in 1 GiB
    assert rf.default_chunks(8192, 151936, cpu) == (4096, 1280)  # ... in 64 MiB
    assert rf.default_chunks(100, 1000, cuda) == (100, 1000)  # V smaller than the budget allows
    assert rf.default_chunks(1, 7, "cuda") == (1, 7)


def test_backward_accumulates_products_in_place_in_float32(monkeypatch):
    """The backward's ``acc += a @ b`` (issue 20): float32 operands accumulate in the GEMM (addmm_, no
    product temporary); bf16 operands on a device without a float32-output GEMM (CPU) go through a copy,
    and where that GEMM is refused a warning is given once and the copy path used from then on."""
    from rlvr_fast.ops import fused_linear_ops as F

    g = torch.Generator().manual_seed(0)
    a, b, acc = torch.randn(5, 7, generator=g), torch.randn(7, 3, generator=g), torch.randn(5, 3, generator=g)
    want = acc.double() + a.double() @ b.double()
    ptr = acc.data_ptr()
    F._acc_mm(acc, a, b)
    assert acc.data_ptr() == ptr
    torch.testing.assert_close(acc.double(), want, rtol=1e-6, atol=1e-6)
    acc16 = torch.zeros(5, 3)
    F._acc_mm(acc16, a.bfloat16(), b.bfloat16())
    torch.testing.assert_close(acc16, (a.bfloat16() @ b.bfloat16()).float())
    monkeypatch.setattr(F, "_FLOAT32_OUT_GEMM", {"cpu": True})  # pretend the device offers it: CPU refuses
    with pytest.warns(UserWarning, match="float32-output GEMM unavailable on cpu"):
        F._acc_mm(torch.zeros(5, 3), a.bfloat16(), b.bfloat16())
    assert F._FLOAT32_OUT_GEMM == {"cpu": False}
