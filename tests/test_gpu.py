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
    # forward: against float64, and no worse than PyTorch's float32 log_softmax of the same inputs
    want_lp, want_ent = _f64_logprobs(logits, ids)
    torch_lp = torch.log_softmax(logits.float(), -1).gather(-1, ids[..., None])[..., 0].double()
    assert (logp.double() - want_lp).abs().max() <= 2 * (torch_lp - want_lp).abs().max() + 1e-5
    torch.testing.assert_close(ent.double(), want_ent, rtol=1e-5, atol=1e-4)
    # backward on a subset of rows (the float64 autograd oracle of all rows would need ~50 GB)
    rows = slice(0, min(N, 256))
    x64 = logits[rows].double().requires_grad_()
    lp64, e64 = _f64_logprobs(x64, ids[rows])
    (lp64 * g[rows].double() + 0.1 * e64).sum().backward()
    xt = logits[rows].float().requires_grad_()
    lpt = torch.log_softmax(xt, -1).gather(-1, ids[rows, None])[..., 0]
    et = -(torch.softmax(xt, -1) * torch.log_softmax(xt, -1)).sum(-1)
    (lpt * g[rows] + 0.1 * et).sum().backward()
    torch_err = (xt.grad.to(dtype).double() - x64.grad).abs().max()
    assert (x.grad[rows].double() - x64.grad).abs().max() <= 2 * torch_err + 1e-6
    # determinism: the same call twice gives the same bits (a difference is a race)
    again_lp, again_ent = rf.token_logprobs(logits, ids, return_entropy=True)
    assert torch.equal(again_lp, logp.detach()) and torch.equal(again_ent, ent.detach())


def test_token_logprobs_beyond_int32_offsets():
    """16384 x 151936 bf16 holds 2.49e9 elements: the last rows are only reachable with 64-bit offsets."""
    N, V = 16384, 151936
    logits = torch.randn(N, V, device="cuda", dtype=torch.bfloat16)
    ids = torch.randint(0, V, (N,), device="cuda")
    x = logits.requires_grad_()
    logp = rf.token_logprobs(x, ids)
    g = torch.zeros(N, device="cuda")
    g[-8:] = 1.0
    (logp * g).sum().backward()
    tail = logits.detach()[-8:].double().requires_grad_()
    lp64 = torch.log_softmax(tail, -1).gather(-1, ids[-8:, None])[..., 0]
    lp64.sum().backward()
    torch.testing.assert_close(logp[-8:].double(), lp64.detach(), rtol=0, atol=1e-4)
    torch.testing.assert_close(x.grad[-8:].double(), tail.grad, rtol=0, atol=2e-3)
    assert not x.grad[:-8].any()


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
    # tl.exp (ex2.approx) and torch's expf may differ by an ulp; a ratio that sits on a clip boundary
    # then switches between clipped (zero gradient) and not: allow that for a handful of tokens
    differ = ~torch.isclose(lp.grad, lp2.grad, rtol=1e-4, atol=1e-10)
    assert differ.sum() <= 10, f"{int(differ.sum())} of {differ.numel()} token gradients differ"
    assert m.keys() == wm.keys() and "entropy" not in m  # no entropy given: none reported
    for k in m:
        torch.testing.assert_close(m[k], wm[k], rtol=1e-5, atol=1e-3 if "clipfrac" in k else 1e-6)


def test_opcheck_on_gpu():
    logits = torch.randn(4, 8, 1000, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    ids = torch.randint(0, 1000, (4, 8), device="cuda")
    torch.library.opcheck(torch.ops.rlvr_fast.token_logprobs.default, (logits, ids, 1.0, True, -100, False))
    old, adv = torch.randn(4, 8, device="cuda") - 7, torch.randn(4, device="cuda")
    settings = dict(clip_low=0.2, clip_high=0.2, dual_clip=3.0, kl_type="", kl_coef=0.0, kl_clamp=10.0)
    settings |= dict(log_ratio_clamp=20.0, entropy_coef=0.01, agg="token-mean", norm_const=None)
    settings |= dict(temperature=1.0, ignore_index=-100, inplace_backward=False, compute_entropy=True)
    args = (logits, ids, old, adv, torch.ones(4, 8, device="cuda"), None)
    torch.library.opcheck(torch.ops.rlvr_fast.policy_loss_from_logits.default, args, settings)


# ------------------------------------------------------------------------------------------------
# Video ops: the extension's CUDA kernels against its C++ kernels and the float64 reference
# ------------------------------------------------------------------------------------------------


@pytest.fixture
def _cuda_ext(monkeypatch):
    from rlvr_fast import _dispatch

    module, why = _dispatch._load_extension()
    if module is None or not module.with_cuda():
        pytest.fail(f"the GPU tier needs rlvr_fast._C built with CUDA: {why or 'built without CUDA'}")
    monkeypatch.setenv("RLVR_FAST_BACKEND", "cuda")


def test_video_tokens_cuda_match_cpu(_cuda_ext, monkeypatch):
    layout = rf.VideoTokenLayout()
    resp = torch.randint(-3, 4700, (2048, 321))
    mask = torch.rand(2048, 321) > 0.001
    got = [t.cpu() for t in rf.unpack_video_tokens(resp.cuda(), mask.cuda(), layout)]
    q = rf.Quantizer.fsq([7, 5, 5, 5, 5], [torch.nn.Linear(5, 64)])
    lat = {}
    for dtype in (torch.float32, torch.bfloat16):
        for fmt in (torch.contiguous_format, torch.channels_last):
            lat[dtype, fmt] = rf.codes_to_latents(got[0].cuda(), q, dtype=dtype, memory_format=fmt)
    monkeypatch.setenv("RLVR_FAST_BACKEND", "cpp")
    want = rf.unpack_video_tokens(resp, mask, layout)
    for a, b in zip(got, want):
        assert torch.equal(a, b)
    for (dtype, fmt), out in lat.items():
        ref = rf.codes_to_latents(want[0], q, dtype=dtype, memory_format=fmt)
        assert out.is_contiguous(memory_format=fmt) and torch.equal(out.cpu(), ref)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    "shape,groups,group_size", [((3, 256, 320), 16, 16), ((1, 11, 11), 3, 4), ((3, 17, 45), 5, 1), ((3, 64, 64), 8, 16)]
)
def test_pixel_metrics_cuda(_cuda_ext, dtype, shape, groups, group_size):
    target = torch.rand(groups, *shape, device="cuda")
    pred = target.repeat_interleave(group_size, 0) + 0.2 * torch.randn(groups * group_size, *shape, device="cuda")
    pred = pred.to(dtype)
    got = rf.pixel_metrics(pred, target, group_size=group_size)
    from rlvr_fast.ops.pixel_metrics import pixel_metrics_ref

    want = pixel_metrics_ref(pred, target, 1, group_size, 1.0, 0.01, 0.03, True, 11, 1.5, dtype=torch.float64)
    for i, name in enumerate(("mse", "mae", "psnr", "ssim")):
        torch.testing.assert_close(got[name].double(), want[i].double(), rtol=5e-5, atol=5e-5, msg=name)
    again = rf.pixel_metrics(pred, target, group_size=group_size)
    assert all(torch.equal(again[k], got[k]) for k in got), "pixel_metrics differs between runs: a race"


@pytest.mark.parametrize("window", [13, 15, 17, 19, 21, 23, 25, 31])
def test_ssim_window_buckets_cuda(_cuda_ext, window):
    """Windows past 15 run the 19, 23 or 31 kernel with zero-padded weights (issue 20): the same values as
    the float64 reference at the exact window."""
    from rlvr_fast.ops.pixel_metrics import pixel_metrics_ref

    target = torch.rand(4, 3, 70, 90, device="cuda")
    pred = (target + 0.2 * torch.randn_like(target)).clamp(0, 1)
    got = rf.pixel_metrics(pred, target, window_size=window, sigma=window / 7)
    want = pixel_metrics_ref(pred, target, 1, 1, 1.0, 0.01, 0.03, True, window, window / 7, dtype=torch.float64)
    torch.testing.assert_close(got["ssim"].double(), want[3].double(), rtol=5e-5, atol=5e-5)


def test_pixel_reward_and_scatter_cuda(_cuda_ext, monkeypatch):
    from rlvr_fast.rewards.video import pixel_reward

    pred, target = torch.rand(64, 2, 3, 32, 40, device="cuda"), torch.rand(4, 2, 3, 32, 40, device="cuda")
    valid = torch.rand(64, device="cuda") > 0.2
    r = pixel_reward(pred, target, {"mae": 1.0, "ssim": 1.0}, group_size=16, valid=valid, aggregate="discount")
    mask = torch.arange(700, device="cuda")[None] < torch.randint(0, 700, (64, 1), device="cuda")
    tok = rf.scatter_sequence_reward(r, mask)
    assert torch.equal(tok.cpu(), rf.ops.scatter_sequence_reward_ref(r.cpu(), mask.cpu()))
    monkeypatch.setenv("RLVR_FAST_BACKEND", "cpp")
    cpu_r = pixel_reward(
        pred.cpu(), target.cpu(), {"mae": 1.0, "ssim": 1.0}, group_size=16, valid=valid.cpu(), aggregate="discount"
    )
    torch.testing.assert_close(r.cpu(), cpu_r, rtol=1e-5, atol=1e-5)


def test_video_reward_path_cuda_matches_cpu(_cuda_ext, monkeypatch):
    """The trainer's reward path on CUDA (bf16 channels_last latents, decoder under bf16 autocast)
    against the same path on the CPU in float32: bf16 rounding only."""
    from rlvr_fast.models.tiny_fsq import TinyFSQConfig, TinyFSQTokenizer
    from rlvr_fast.rewards.video import VideoReward

    torch.manual_seed(0)
    tok = TinyFSQTokenizer(TinyFSQConfig()).eval()
    layout = rf.VideoTokenLayout(
        frame_shape=(8, 8), visual_vocab=1000, action_offset=1000, action_dims=2, bos_id=1256, eos_id=1257, pad_id=1257
    )
    codes = torch.randint(0, 1000, (256, 1, 8, 8))
    responses = layout.response_ids(codes)
    responses[3, 7] = 1100  # an action id in a frame slot: invalid
    present = torch.ones_like(responses, dtype=torch.bool)
    real = torch.rand(16, 3, 64, 64)
    monkeypatch.setenv("RLVR_FAST_BACKEND", "cpp")  # the CPU side of the comparison
    cpu = VideoReward.from_tokenizer(layout, tok)(responses, present, real, group_size=16)
    monkeypatch.setenv("RLVR_FAST_BACKEND", "cuda")
    tok.cuda()
    gpu = VideoReward.from_tokenizer(layout, tok)(responses.cuda(), present.cuda(), real.cuda(), group_size=16)
    assert torch.equal(gpu.valid.cpu(), cpu.valid) and not bool(cpu.valid[3])
    torch.testing.assert_close(gpu.scores.cpu(), cpu.scores, rtol=0, atol=2e-2)
    assert torch.equal(gpu.token_rewards.cpu() != 0, cpu.token_rewards != 0)


# ------------------------------------------------------------------------------------------------
# Fused linear log-probs: the Triton tile kernels with cuBLAS tiles against the unfused bf16 path
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_fused_linear_cuda_matches_unfused(dtype):
    g = torch.Generator(device="cuda").manual_seed(0)
    N, H, V = 4096, 1024, 50257
    h = (torch.randn(N, H, device="cuda", generator=g) * 0.5).to(dtype).requires_grad_()
    w = (torch.randn(V, H, device="cuda", generator=g) * H**-0.5 * 3).to(dtype).requires_grad_()
    ids = torch.randint(0, V, (N,), device="cuda", generator=g)
    lp, ent = rf.fused_linear_logprobs(h, w, ids, return_entropy=True, chunk_tokens=1024, chunk_vocab=8192)
    gh, gw = torch.autograd.grad(lp.sum() + 0.1 * ent.sum(), [h, w])
    ref_lp, ref_ent = rf.token_logprobs(h @ w.T, ids, return_entropy=True)
    rh, rw = torch.autograd.grad(ref_lp.sum() + 0.1 * ref_ent.sum(), [h, w])
    tol = dict(rtol=2e-2, atol=2e-2) if dtype == torch.bfloat16 else dict(rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(lp, ref_lp, **tol)
    torch.testing.assert_close(ent, ref_ent, **tol)
    torch.testing.assert_close(gh.float(), rh.float(), **tol)
    torch.testing.assert_close(gw.float(), rw.float(), **tol)


def test_float32_accumulating_gemm_on_cuda():
    """The fused-linear backward's ``acc += a @ b`` accumulates bf16 products in float32 inside the GEMM
    (``addmm(out_dtype=float32, out=acc)``): equal to float64 within bf16 operand rounding, and the
    float32-output GEMM ran (no fallback through a copy was recorded)."""
    from rlvr_fast.ops import fused_linear_ops as F

    g = torch.Generator(device="cuda").manual_seed(0)
    a = torch.randn(512, 1024, device="cuda", generator=g).bfloat16()
    b = torch.randn(1024, 768, device="cuda", generator=g).bfloat16()
    acc = torch.randn(512, 768, device="cuda", generator=g)
    want = acc.double() + a.double() @ b.double()
    F._acc_mm(acc, a, b)
    assert F._FLOAT32_OUT_GEMM.get("cuda", True)
    torch.testing.assert_close(acc.double(), want, rtol=1e-4, atol=1e-3)


def test_value_checks_do_not_sync_on_cuda(monkeypatch):
    """Issue 20: by default the value checks of token_logprobs, fused_linear_logprobs and group_advantages
    are device-side asserts on CUDA: with sync debug mode "error", good inputs run without a host sync."""
    monkeypatch.delenv("RLVR_FAST_CHECK_VALUES", raising=False)
    logits = torch.randn(64, 1000, device="cuda")
    ids = torch.randint(0, 1000, (64,), device="cuda")
    h, w = torch.randn(64, 128, device="cuda"), torch.randn(1000, 128, device="cuda")
    scores = torch.randn(64, device="cuda")
    rf.token_logprobs(logits, ids), rf.fused_linear_logprobs(h, w, ids), rf.group_advantages(scores, group_size=8)
    torch.cuda.synchronize()  # compiled and warm: the calls below measure only the checks' behaviour
    torch.cuda.set_sync_debug_mode("error")
    try:
        rf.token_logprobs(logits, ids)
        rf.fused_linear_logprobs(h, w, ids)
        rf.group_advantages(scores, group_size=8)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()


def test_autotuned_logprobs_give_the_same_bits_before_and_after_tuning():
    """The first call at a new (V, dtype) times the pruned configs (warps, pipeline depth); the choice
    cannot change the numerics: the tuning call, a cached call and the in-place backward (restored
    between timing runs) all give identical bits."""
    V = 49999  # a V no other test uses: this call tunes
    logits = (torch.randn(300, V, device="cuda") * 3).bfloat16()
    ids = torch.randint(0, V, (300,), device="cuda")
    first = rf.token_logprobs(logits, ids, return_entropy=True)
    again = rf.token_logprobs(logits, ids, return_entropy=True)
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    grads = []
    for inplace in (False, True):
        x = logits.clone().requires_grad_() if not inplace else (logits.float().requires_grad_() * 1).bfloat16()
        lp = rf.token_logprobs(x, ids, inplace_backward=inplace)
        (g,) = torch.autograd.grad(lp.sum(), x)
        grads.append(g)
    assert torch.equal(grads[0], grads[1])
