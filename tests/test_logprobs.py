"""token_logprobs: float64 oracle, gradients, awkward shapes and layouts, peers, opcheck, bad input."""

import pytest
import torch

import rlvr_fast as rf
from conftest import HAS_CUDA

IGNORE = -100


def oracle(logits, ids, temperature=1.0, ignore_index=IGNORE):
    """float64 log_softmax + gather and -sum p log p; ignored positions give 0."""
    x = logits.double() / temperature
    logp_all = torch.log_softmax(x, -1)
    keep = ids != ignore_index
    logp = logp_all.gather(-1, torch.where(keep, ids, 0).unsqueeze(-1)).squeeze(-1) * keep
    p = logp_all.exp()
    ent = -torch.where(p > 0, p * logp_all, torch.zeros_like(p)).sum(-1) * keep
    return logp, ent


def make(shape, V, device, dtype=torch.float32, scale=3.0, ignore_frac=0.2):
    logits = (torch.randn(*shape, V, dtype=torch.float64) * scale).to(dtype).to(device)
    ids = torch.randint(0, V, shape)
    ids[torch.rand(shape) < ignore_frac] = IGNORE
    return logits, ids.to(device)


@pytest.mark.parametrize("V", [1, 7, 1000, 50257, 151936])
def test_forward_backward_against_float64(backend, device, V):
    N = 3 if V > 10000 else 9
    logits, ids = make((N,), V, device)
    x = logits.clone().requires_grad_()
    logp, ent = rf.token_logprobs(x, ids, return_entropy=True)
    x64 = logits.detach().double().cpu().requires_grad_()
    want_lp, want_ent = oracle(x64, ids.cpu())
    assert logp.dtype == ent.dtype == torch.float32 and logp.shape == ids.shape
    torch.testing.assert_close(logp.cpu().double(), want_lp.detach(), rtol=1e-5, atol=2e-5)
    torch.testing.assert_close(ent.cpu().double(), want_ent.detach(), rtol=1e-5, atol=2e-5)
    g1, g2 = torch.randn(N, dtype=torch.float64), torch.randn(N, dtype=torch.float64)
    ((logp.cpu().double() * g1).sum() + (ent.cpu().double() * g2).sum()).backward()
    ((want_lp * g1).sum() + (want_ent * g2).sum()).backward()
    torch.testing.assert_close(x.grad.cpu().double(), x64.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("temperature", [0.6, 1.0, 1.7])
def test_temperature(backend, device, temperature):
    logits, ids = make((2, 5), 300, device)
    x = logits.clone().requires_grad_()
    logp = rf.token_logprobs(x, ids, temperature=temperature)
    logp.sum().backward()
    x64 = logits.double().cpu().requires_grad_()
    want, _ = oracle(x64, ids.cpu(), temperature)
    want.sum().backward()
    torch.testing.assert_close(logp.cpu().double(), want.detach(), rtol=1e-5, atol=2e-5)
    torch.testing.assert_close(x.grad.cpu().double(), x64.grad, rtol=1e-4, atol=1e-5)


def test_non_contiguous_shifted_view_is_read_in_place(backend, device):
    """``logits[:, :-1]`` (the usual causal-LM shift) is not collapsible: it must work without a copy."""
    full = torch.randn(3, 8, 257, device=device).requires_grad_()
    view = full[:, :-1]
    assert not view.is_contiguous()
    ids = torch.randint(0, 257, (3, 7), device=device)
    logp, ent = rf.token_logprobs(view, ids, return_entropy=True)
    (logp.sum() + 0.5 * ent.sum()).backward()
    f64 = full.detach().double().cpu().requires_grad_()
    lp64, e64 = oracle(f64[:, :-1], ids.cpu())
    (lp64.sum() + 0.5 * e64.sum()).backward()
    torch.testing.assert_close(logp.cpu().double(), lp64.detach(), rtol=1e-5, atol=2e-5)
    torch.testing.assert_close(full.grad.cpu().double(), f64.grad, rtol=1e-4, atol=1e-5)
    assert (full.grad[:, -1] == 0).all()


def test_other_layouts(backend, device):
    """Transposed leading dims, 4-d tensors (copied once) and a single row all give the oracle's values."""
    base = torch.randn(5, 4, 33, device=device)
    ids = torch.randint(0, 33, (4, 5), device=device)
    t = base.transpose(0, 1)  # leading dims not collapsible, last dim unit-stride
    tol = dict(rtol=1e-5, atol=2e-5)
    torch.testing.assert_close(rf.token_logprobs(t, ids).cpu().double(), oracle(t.cpu(), ids.cpu())[0], **tol)
    x4 = torch.randn(2, 3, 4, 20, device=device)[:, :, :3]  # three non-collapsible leading dims
    ids4 = torch.randint(0, 20, (2, 3, 3), device=device)
    torch.testing.assert_close(rf.token_logprobs(x4, ids4).cpu().double(), oracle(x4.cpu(), ids4.cpu())[0], **tol)
    one = torch.randn(11, device=device)
    torch.testing.assert_close(
        rf.token_logprobs(one, torch.tensor(4, device=device)).cpu().double(),
        oracle(one.cpu(), torch.tensor(4))[0],
        **tol,
    )


def test_strided_and_expanded_token_ids(backend, device):
    """ids that are views (a column of a 2-d tensor, a stride-2 slice, an expand) are read correctly."""
    logits = torch.randn(6, 50, device=device, requires_grad=True)
    table = torch.randint(0, 50, (6, 3), device=device)
    for ids in (table[:, 1], torch.randint(0, 50, (12,), device=device)[::2], torch.tensor(7, device=device).expand(6)):
        assert not ids.is_contiguous()
        logp, ent = rf.token_logprobs(logits, ids, return_entropy=True)
        (logp.sum() + ent.sum()).backward()
        x64 = logits.detach().double().cpu().requires_grad_()
        lp64, e64 = oracle(x64, ids.cpu())
        (lp64.sum() + e64.sum()).backward()
        torch.testing.assert_close(logp.cpu().double(), lp64.detach(), rtol=1e-5, atol=2e-5)
        torch.testing.assert_close(logits.grad.cpu().double(), x64.grad, rtol=1e-4, atol=1e-5)
        logits.grad = None


def test_entropy_of_large_logits_does_not_cancel(backend, device):
    """Entropy is accumulated relative to the running max: no cancellation when logits are ~1e3."""
    logits = torch.randn(4, 3000, dtype=torch.float64) * 2 + 1000.0
    ids = torch.randint(0, 3000, (4,))
    _, ent = rf.token_logprobs(logits.float().to(device), ids.to(device), return_entropy=True)
    _, want = oracle(logits.float().double(), ids)
    torch.testing.assert_close(ent.cpu().double(), want, rtol=2e-6, atol=2e-6)


def test_fully_ignored_rows_and_empty(backend, device):
    logits = torch.randn(2, 4, 50, device=device, requires_grad=True)
    ids = torch.full((2, 4), IGNORE, device=device)
    ids[1, 2] = 3
    logp, ent = rf.token_logprobs(logits, ids, return_entropy=True)
    (logp.sum() + ent.sum()).backward()
    assert (logp[0] == 0).all() and (ent[0] == 0).all()
    assert (logits.grad[0] == 0).all() and torch.isfinite(logits.grad).all()
    assert logits.grad[1, 2].abs().sum() > 0
    empty = torch.randn(0, 7, device=device, requires_grad=True)
    out = rf.token_logprobs(empty, torch.zeros(0, dtype=torch.long, device=device))
    out.sum().backward()
    assert out.shape == (0,) and empty.grad.shape == (0, 7)


def test_masked_vocabulary_entries(backend, device):
    """-inf logits (banned tokens) are legal: finite log-probs and entropy, zero gradient there."""
    logits = torch.randn(4, 64, device=device)
    logits[:, 10:20] = float("-inf")
    logits[1, :32] = float("-inf")  # a whole first block of -inf
    x = logits.clone().requires_grad_()
    ids = torch.tensor([0, 40, 63, 5], device=device)
    logp, ent = rf.token_logprobs(x, ids, return_entropy=True)
    (logp.sum() + ent.sum()).backward()
    want_lp, want_ent = oracle(logits.cpu(), ids.cpu())
    torch.testing.assert_close(logp.cpu().double(), want_lp, rtol=1e-5, atol=2e-5)
    torch.testing.assert_close(ent.cpu().double(), want_ent, rtol=1e-5, atol=2e-5)
    assert torch.isfinite(x.grad).all() and (x.grad[:, 10:20] == 0).all()


def test_inplace_backward_writes_into_logits(backend, device):
    logits, ids = make((4, 6), 129, device)
    leaf = logits.clone().requires_grad_()
    x = leaf * 1.0  # a non-leaf buffer that the backward may overwrite
    rf.token_logprobs(x, ids, inplace_backward=True).sum().backward()
    ref = logits.clone().requires_grad_()
    rf.token_logprobs(ref, ids).sum().backward()
    torch.testing.assert_close(leaf.grad, ref.grad)
    torch.testing.assert_close(x, ref.grad)  # the buffer now holds the gradient


def test_grad_only_through_entropy(backend, device):
    logits, ids = make((5,), 77, device, ignore_frac=0.0)
    x = logits.clone().requires_grad_()
    _, ent = rf.token_logprobs(x, ids, return_entropy=True)
    ent.sum().backward()
    x64 = logits.double().cpu().requires_grad_()
    oracle(x64, ids.cpu())[1].sum().backward()
    torch.testing.assert_close(x.grad.cpu().double(), x64.grad, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_logits(dtype, monkeypatch):
    """bf16/fp16 logits on the torch backend (the interpreter has no bf16 arithmetic; GPU tier covers triton).

    Rule (flash-attn): error(ours) <= 2 * error(PyTorch in the same dtype) + atol, against float64.
    """
    monkeypatch.setenv("RLVR_FAST_BACKEND", "torch")
    logits, ids = make((6, 9), 1000, "cpu", dtype=dtype, ignore_frac=0.0)
    x = logits.clone().requires_grad_()
    logp = rf.token_logprobs(x, ids)
    logp.sum().backward()
    assert x.grad.dtype == dtype
    x64 = logits.double().requires_grad_()
    want, _ = oracle(x64, ids)
    want.sum().backward()
    xl = logits.clone().requires_grad_()
    torch_lp = torch.log_softmax(xl, -1).gather(-1, ids[..., None])[..., 0]
    torch_lp.float().sum().backward()
    err = (logp.double() - want).abs().max()
    torch_err = (torch_lp.double() - want).abs().max()
    assert err <= 2 * torch_err + 1e-5
    gerr = (x.grad.double() - x64.grad).abs().max()
    assert gerr <= 2 * (xl.grad.double() - x64.grad).abs().max() + 1e-3


# --- peers ----------------------------------------------------------------------------------------


def test_matches_trl_selective_log_softmax(backend, device):
    trl_utils = pytest.importorskip("trl.trainer.utils")
    logits = torch.randn(3, 6, 500)
    ids = torch.randint(0, 500, (3, 6))
    want = trl_utils.selective_log_softmax(logits, ids, temperature=0.8)
    got = rf.token_logprobs(logits.to(device), ids.to(device), temperature=0.8)
    torch.testing.assert_close(got.cpu(), want, rtol=1e-5, atol=1e-5)
    want_ent = trl_utils.entropy_from_logits(logits)
    _, got_ent = rf.token_logprobs(logits.to(device), ids.to(device), return_entropy=True)
    torch.testing.assert_close(got_ent.cpu(), want_ent, rtol=1e-5, atol=1e-5)


def test_matches_verl(backend, device):
    verl_f = pytest.importorskip("verl.utils.torch_functional")
    logits = torch.randn(4, 7, 300, requires_grad=True)
    ids = torch.randint(0, 300, (4, 7))
    want = verl_f.logprobs_from_logits_naive(logits, ids)
    want_ent = verl_f.entropy_from_logits(logits)
    (want.sum() + want_ent.sum()).backward()
    x = logits.detach().to(device).requires_grad_()
    got, got_ent = rf.token_logprobs(x, ids.to(device), return_entropy=True)
    (got.sum() + got_ent.sum()).backward()
    torch.testing.assert_close(got.cpu(), want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got_ent.cpu(), want_ent, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(x.grad.cpu(), logits.grad, rtol=1e-4, atol=1e-5)


# --- registration ---------------------------------------------------------------------------------


def test_opcheck(backend, device):
    logits = torch.randn(3, 4, 37, device=device, requires_grad=True)
    ids = torch.randint(0, 37, (3, 4), device=device)
    ids[0, 0] = IGNORE
    torch.library.opcheck(torch.ops.rlvr_fast.token_logprobs.default, (logits, ids, 0.9, True, IGNORE, False))
    torch.library.opcheck(
        torch.ops.rlvr_fast.token_logprobs.default, (logits[:, :-1], ids[:, :-1], 1.0, False, IGNORE, False)
    )
    logp, ent, lse = torch.ops.rlvr_fast.token_logprobs(logits.detach(), ids, 1.0, True, IGNORE, False)
    args = (
        torch.randn(3, 4, device=device),
        torch.randn(3, 4, device=device),
        logits.detach(),
        ids,
        lse,
        ent,
        1.0,
        IGNORE,
    )
    torch.library.opcheck(torch.ops.rlvr_fast.token_logprobs_backward.default, args)


# --- bad input ------------------------------------------------------------------------------------


def test_bad_input(backend, device):
    x = torch.randn(2, 3, 10, device=device)
    ids = torch.randint(0, 10, (2, 3), device=device)
    with pytest.raises(ValueError, match=r"token_ids: expected shape \(2, 3\) \(logits.shape\[:-1\]\), got \(2, 4\)"):
        rf.token_logprobs(x, torch.zeros(2, 4, dtype=torch.long, device=device))
    bad = ids.clone()
    bad[1, 2] = 10
    with pytest.raises(IndexError, match=r"token ids must be in \[0, 10\) or equal ignore_index=-100.*e.g. 10"):
        rf.token_logprobs(x, bad)
    bad[1, 2] = -1
    with pytest.raises(IndexError, match="e.g. -1"):
        rf.token_logprobs(x, bad)
    with pytest.raises(TypeError, match="token_ids: expected dtype"):
        rf.token_logprobs(x, ids.float())
    with pytest.raises(TypeError, match="logits: expected dtype"):
        rf.token_logprobs(x.long(), ids)
    with pytest.raises(ValueError, match="temperature: expected a positive finite number, got 0"):
        rf.token_logprobs(x, ids, temperature=0)
    with pytest.raises(ValueError, match="V >= 1"):
        rf.token_logprobs(torch.randn(2, 0, device=device), torch.zeros(2, dtype=torch.long, device=device))
    if HAS_CUDA:
        with pytest.raises(ValueError, match="token_ids: expected device"):
            rf.token_logprobs(x.cuda(), ids.cpu())


def test_value_checks_can_be_disabled(monkeypatch, backend, device):
    """With RLVR_FAST_CHECK_VALUES=0 an out-of-range id is not checked (no sync) and gives NaN, never garbage."""
    monkeypatch.setenv("RLVR_FAST_CHECK_VALUES", "0")
    x = torch.randn(2, 10, device=device)
    out = rf.token_logprobs(x, torch.tensor([3, 12], device=device))
    assert torch.isnan(out[1]) and torch.isfinite(out[0])


# --- properties -----------------------------------------------------------------------------------

from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402


@settings(max_examples=30, deadline=None)
@given(V=st.integers(1, 300), scale=st.floats(0.01, 30), temperature=st.floats(0.2, 3.0), seed=st.integers(0, 999))
def test_distribution_properties(V, scale, temperature, seed):
    """log p <= 0, probabilities over the vocabulary sum to 1, 0 <= H <= log V, shift invariance."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(1, V, generator=g, dtype=torch.float64) * scale
    every_id = torch.arange(V)
    rows = x.expand(V, V)
    logp, ent = rf.token_logprobs(rows, every_id, temperature=temperature, return_entropy=True)
    assert (logp <= 1e-6).all()
    assert abs(logp.double().exp().sum().item() - 1.0) < 1e-4
    assert -1e-5 <= ent[0].item() <= torch.log(torch.tensor(float(V))).item() + 1e-4
    shifted = rf.token_logprobs(rows + 123.0, every_id, temperature=temperature)
    torch.testing.assert_close(shifted, logp, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("inplace", [False, True])
def test_causal_lm_logits_get_their_gradient_written_once(backend, device, inplace):
    """Logits [B, T + 1, V] with ids [B, T] (issue 20): the same log-probs, entropies and gradients as the
    view ``logits[:, :-1]``, but d(logits) is the op's own output in the parent's layout: the graph has
    no slice backward (which would zero-fill [B, T + 1, V] and copy into it) and the last row is 0."""
    B, T, V = 3, 7, 37
    full = torch.randn(B, T + 1, V, device=device) * 3
    ids = torch.randint(0, V, (B, T), device=device)
    ids[1, 2] = -100
    g, ge = torch.randn(B, T, device=device), torch.randn(B, T, device=device)
    leaf_a, leaf_b = full.clone().requires_grad_(), full.clone().requires_grad_()
    x = leaf_a * 1.0 if inplace else leaf_a  # in place: a buffer the op may overwrite
    lp, ent = rf.token_logprobs(
        x, ids, return_entropy=True, temperature=0.8, inplace_backward=inplace, drop_last_position=True
    )
    assert "Slice" not in type(lp.grad_fn.next_functions[0][0]).__name__
    (lp * g + ent * ge).sum().backward()
    lp2, ent2 = rf.token_logprobs(leaf_b[:, :-1], ids, return_entropy=True, temperature=0.8)
    (lp2 * g + ent2 * ge).sum().backward()
    torch.testing.assert_close(lp, lp2, rtol=0, atol=0)
    torch.testing.assert_close(ent, ent2, rtol=0, atol=0)
    torch.testing.assert_close(leaf_a.grad, leaf_b.grad, rtol=1e-6, atol=1e-7)
    assert (leaf_a.grad[:, -1] == 0).all()
    with pytest.raises(ValueError, match=r"token_ids: expected shape \(3, 7\) \(logits \[..., T \+ 1, V\] with drop"):
        rf.token_logprobs(full, ids[:, :-1], drop_last_position=True)
    with pytest.raises(ValueError, match=r"token_ids: expected shape \(3, 8\)"):  # one short, no flag: an error
        rf.token_logprobs(full, ids)


def test_few_rows_split_the_vocabulary(backend, device):
    """Few rows over a long vocabulary (issue 20): the Triton path splits V into whole tiles, reduces each
    split to partial softmax statistics and merges them (forward), and gives each program its columns
    (backward). Values and gradients against float64, with a split that is all -inf, an ignored row and
    temperature; the plan is a function of the shapes only."""
    from rlvr_fast.kernels import logprobs as K

    assert K.splits_for(3, 10000, 4096) == (3, 4096)  # 3 tiles, 3 splits
    assert K.splits_for(K.SPLIT_PROGRAMS, 10000, 4096) == (1, 12288)  # enough rows: one program per row
    assert K.splits_for(64, 151936, 8192) == (10, 16384)  # 19 tiles, 640 programs
    assert K.splits_for(1, 151936, 8192) == (19, 8192) and K.splits_for(5, 100, 128) == (1, 128)
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(4, 10000, generator=g) * 3).to(device)
    x[1, :5000] = -float("inf")  # its first split has no finite logit
    ids = torch.tensor([5, 7000, -100, 9999], device=device)
    leaf = x.clone().requires_grad_()
    lp, ent = rf.token_logprobs(leaf, ids, return_entropy=True, temperature=0.7)
    w = torch.randn(4, generator=g).to(device)
    (lp * w + 0.3 * ent).sum().backward()
    x64 = x.double().requires_grad_()
    ref = torch.log_softmax(x64 / 0.7, -1)
    keep = ids != -100
    want_lp = ref.gather(-1, ids.clamp(min=0)[:, None])[:, 0] * keep
    p = ref.exp()
    want_ent = -(p * torch.where(p > 0, ref, 0.0)).sum(-1) * keep
    (want_lp * w + 0.3 * want_ent).sum().backward()
    torch.testing.assert_close(lp.double(), want_lp.detach(), rtol=1e-6, atol=2e-6)
    torch.testing.assert_close(ent.double(), want_ent.detach(), rtol=1e-6, atol=2e-6)
    torch.testing.assert_close(leaf.grad.double(), x64.grad, rtol=1e-5, atol=1e-6)
    assert (leaf.grad[2] == 0).all() and (leaf.grad[1, :5000] == 0).all()


def test_autotuning_leaves_the_numerics_to_the_shapes():
    """Issue 20: the log-prob kernels autotune only warps and pipeline depth (never BLOCK_V or the
    splits, which fix the summation order), keyed on V and BLOCK_V (and dtypes), the in-place backward's
    output restored between timing runs; pruning keeps 4..64 tile elements per thread; under the
    interpreter one fixed config (checked in a fresh process without TRITON_INTERPRET, no GPU needed)."""
    import subprocess
    import sys

    from rlvr_fast.kernels import logprobs as K

    assert not K.TUNED and K._launch_settings(8192) == {"STAGES": 3, "num_warps": 16}  # interpreter: fixed
    assert all(set(c.kwargs) == {"STAGES"} for c in K.TUNE_CONFIGS)  # BLOCK_V is never a tuned setting

    def warps(block_v):
        return sorted({c.num_warps for c in K.prune_configs(K.TUNE_CONFIGS, {}, BLOCK_V=block_v)})

    assert warps(8192) == [4, 8, 16] and warps(256) == [4, 8] and warps(16384) == [8, 16]
    assert K.prune_configs(K.TUNE_CONFIGS, {}, BLOCK_V=16) == [K.TUNE_CONFIGS[0]]  # none fits: the smallest
    code = (
        "import os; os.environ.pop('TRITON_INTERPRET', None)\n"
        "from rlvr_fast.kernels import logprobs as K\n"
        "f, b = K._logprobs_fwd_kernel, K._logprobs_bwd_kernel\n"
        "print(K.TUNED, type(f).__name__, f.keys, b.restore_value, K._launch_settings(4096))\n"
    )
    env = {k: v for k, v in __import__("os").environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True).stdout
    assert out.split() == ["True", "Autotuner", "['V',", "'BLOCK_V']", "['dlogits_ptr']", "{}"], out
