"""group_advantages: float64 hand maths, verl / TRL peers, properties, bad input."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import rlvr_fast as rf
from rlvr_fast.ops.advantages import ESTIMATORS


def hand_advantages(scores, groups, estimator, eps, unbiased, singleton, nan_missing=False, token_counts=None):
    """Loop-by-loop float64 oracle, written from the formulas, independent of the library."""
    r = [float(s) for s in scores]
    out = [0.0] * len(r)
    for g in set(groups):
        idx = [i for i, gi in enumerate(groups) if gi == g and not (nan_missing and math.isnan(r[i]))]
        n = len(idx)
        vals = [r[i] for i in idx]
        mean = sum(vals) / n if n else 0.0
        m2 = sum((v - mean) ** 2 for v in vals)
        std = math.sqrt(m2 / ((n - 1) if unbiased else n)) if n > 1 else 0.0
        for i in idx:
            if n == 1:
                if singleton == "verl":
                    out[i] = r[i] / (1 + eps) if estimator == "grpo" else r[i]
                continue
            if estimator == "grpo":
                out[i] = (r[i] - mean) / (std + eps)
            elif estimator == "rloo":
                out[i] = r[i] - sum(r[j] for j in idx if j != i) / (n - 1)
            else:
                out[i] = r[i] - mean
    if estimator == "reinforce_pp_baseline":
        valid = [not (nan_missing and math.isnan(v)) for v in r]
        w = [float(c) if ok else 0.0 for c, ok in zip(token_counts or [1] * len(r), valid)]
        N = sum(w)
        mu = sum(wi * a for wi, a in zip(w, out)) / max(N, 1)
        var = sum(wi * (a - mu) ** 2 for wi, a in zip(w, out)) / max((N - 1) if unbiased else N, 1) if N > 1 else 0
        out = [(a - mu) / math.sqrt(var + 1e-8) if ok else 0.0 for a, ok in zip(out, valid)]
    return torch.tensor(out, dtype=torch.float64)


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("group_size", [1, 2, 5, 16])
def test_contiguous_against_hand_maths(backend, device, estimator, group_size):
    scores = torch.randn(group_size * 6, dtype=torch.float64)
    scores[:group_size] = 0.5  # a group with zero variance
    got = rf.group_advantages(scores.float().to(device), group_size=group_size, estimator=estimator)
    groups = [i // group_size for i in range(len(scores))]
    want = hand_advantages(scores, groups, estimator, 1e-6, True, "zero")
    assert got.dtype == torch.float32 and got.shape == scores.shape
    torch.testing.assert_close(got.cpu().double(), want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("estimator", ESTIMATORS)
@pytest.mark.parametrize("preset", [None, "verl", "trl"])
def test_group_ids_any_order_with_token_broadcast(backend, device, estimator, preset):
    sizes = [3, 1, 4, 2, 6]  # ragged groups, one singleton
    labels = np.concatenate([np.full(n, 1000 + 7 * k) for k, n in enumerate(sizes)])
    perm = np.random.default_rng(0).permutation(len(labels))
    labels = labels[perm]
    B, T = len(labels), 11
    scores = torch.randn(B, dtype=torch.float64)
    mask = torch.rand(B, T) > 0.3
    mask[0] = False  # a fully masked row
    got = rf.group_advantages(
        scores.float().to(device),
        group_ids=torch.from_numpy(labels).to(device),
        estimator=estimator,
        response_mask=mask.to(device),
        preset=preset,
    )
    eps = 1e-4 if preset == "trl" else 1e-6
    singleton = "verl" if preset == "verl" else "zero"
    want = hand_advantages(scores, list(labels), estimator, eps, True, singleton, token_counts=mask.sum(1).tolist())
    assert got.shape == (B, T)
    torch.testing.assert_close(got.cpu().double(), want[:, None] * mask, rtol=1e-5, atol=1e-5)
    assert (got[~mask.to(device)] == 0).all()


def test_biased_std_and_custom_eps(backend, device):
    scores = torch.randn(12, dtype=torch.float64)
    got = rf.group_advantages(scores.float().to(device), group_size=4, unbiased_std=False, eps=0.1)
    want = hand_advantages(scores, [i // 4 for i in range(12)], "grpo", 0.1, False, "zero")
    torch.testing.assert_close(got.cpu().double(), want, rtol=1e-5, atol=1e-5)


def test_trl_preset_nan_scores_are_missing(backend, device):
    scores = torch.randn(12, dtype=torch.float64)
    scores[1] = float("nan")  # one unscorable completion
    scores[4:8] = float("nan")  # a whole unscorable group
    scores[9:12] = float("nan")  # leaves a single valid sample in the last group
    got = rf.group_advantages(scores.float().to(device), group_size=4, preset="trl")
    want = hand_advantages(scores, [i // 4 for i in range(12)], "grpo", 1e-4, True, "zero", nan_missing=True)
    torch.testing.assert_close(got.cpu().double(), want, rtol=1e-5, atol=1e-5)
    assert torch.isfinite(got).all()


def test_bf16_and_fp64_scores(backend, device):
    scores = torch.randn(16, dtype=torch.float64)
    want = hand_advantages(scores, [i // 4 for i in range(16)], "grpo", 1e-6, True, "zero")
    for dtype in (torch.float64,) + ((torch.bfloat16,) if backend == "torch" or device == "cuda" else ()):
        s = scores.to(dtype)
        got = rf.group_advantages(s.to(device), group_size=4)
        exact = hand_advantages(s.double(), [i // 4 for i in range(16)], "grpo", 1e-6, True, "zero")
        torch.testing.assert_close(got.cpu().double(), exact, rtol=1e-5, atol=1e-5)
    assert want.shape == got.shape


def test_large_group_takes_generic_path(backend, device):
    scores = torch.randn(2 * 9000, dtype=torch.float64)
    got = rf.group_advantages(scores.float().to(device), group_size=9000, estimator="rloo")
    g = scores.view(2, -1)
    want = ((g - g.mean(1, keepdim=True)) * 9000 / 8999).flatten()
    torch.testing.assert_close(got.cpu().double(), want, rtol=1e-4, atol=1e-4)


def test_strided_scores_and_ids(backend, device):
    """scores and group ids that are views (columns of a table) are read correctly."""
    table = torch.randn(24, 3, device=device)
    scores = table[:, 2]
    assert not scores.is_contiguous()
    got = rf.group_advantages(scores, group_size=4, estimator="rloo")
    want = hand_advantages(scores.cpu().double(), [i // 4 for i in range(24)], "rloo", 1e-6, True, "zero")
    torch.testing.assert_close(got.cpu().double(), want, rtol=1e-5, atol=1e-5)
    ids = torch.arange(24 * 2, device=device).view(24, 2)[:, 0] // 8  # stride 2, groups of 4
    got = rf.group_advantages(scores, group_ids=ids, estimator="rloo")
    torch.testing.assert_close(got.cpu().double(), want, rtol=1e-5, atol=1e-5)


def test_empty_batch(backend, device):
    assert rf.group_advantages(torch.empty(0, device=device), group_size=4).shape == (0,)
    out = rf.group_advantages(
        torch.empty(0, device=device), group_size=4, response_mask=torch.ones(0, 5, device=device)
    )
    assert out.shape == (0, 5)


def test_output_never_requires_grad():
    scores = torch.randn(8, requires_grad=True)
    assert not rf.group_advantages(scores, group_size=4).requires_grad


# --- peers ----------------------------------------------------------------------------------------

verl_core = pytest.importorskip("verl.trainer.ppo.core_algos")


def _verl_inputs(B, T, seed=0):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(B, generator=g)
    mask = (torch.rand(B, T, generator=g) > 0.2).float()
    token_rewards = torch.zeros(B, T)
    token_rewards[:, -1] = scores  # verl sums token-level rewards into the outcome score
    return scores, mask, token_rewards


@pytest.mark.parametrize(
    "verl_fn,estimator,kwargs,preset",
    [
        ("compute_grpo_outcome_advantage", "grpo", {}, "verl"),
        ("compute_grpo_outcome_advantage", "drgrpo", {"norm_adv_by_std_in_grpo": False}, "verl"),
        ("compute_grpo_vectorized_outcome_advantage", "grpo", {}, "verl"),
        ("compute_rloo_outcome_advantage", "rloo", {}, "verl"),
        # verl's vectorised RLOO gives singletons 0 where its loop version keeps r: our default does that
        ("compute_rloo_vectorized_outcome_advantage", "rloo", {}, None),
        ("compute_reinforce_plus_plus_baseline_outcome_advantage", "reinforce_pp_baseline", {}, "verl"),
    ],
)
def test_matches_verl(backend, device, verl_fn, estimator, kwargs, preset):
    B, T = 40, 13
    scores, mask, token_rewards = _verl_inputs(B, T)
    uids = np.random.default_rng(1).integers(0, 9, size=B)  # random uids: ragged groups, some singletons
    want, _ = getattr(verl_core, verl_fn)(token_rewards.clone(), mask, uids, **kwargs)
    got = rf.group_advantages(
        scores.to(device),
        group_ids=torch.from_numpy(uids).to(device),
        estimator=estimator,
        response_mask=mask.to(device),
        preset=preset,
    )
    assert np.bincount(uids).min() >= 1 and (np.bincount(uids) == 1).any()  # singletons are exercised
    torch.testing.assert_close(got.cpu(), want.float(), rtol=1e-5, atol=1e-5)


def test_matches_verl_contiguous(backend, device):
    B, T, n = 64, 9, 8
    scores, mask, token_rewards = _verl_inputs(B, T, seed=3)
    want, _ = verl_core.compute_grpo_outcome_advantage(token_rewards, mask, np.arange(B) // n)
    got = rf.group_advantages(scores.to(device), group_size=n, response_mask=mask.to(device), preset="verl")
    torch.testing.assert_close(got.cpu(), want, rtol=1e-5, atol=1e-5)


def trl_grpo_advantages(rewards, num_generations, scale_rewards="group"):
    """TRL GRPOTrainer's inline advantage formula (trl 1.16 grpo_trainer.py, sum_then_normalize)."""
    from trl.trainer.utils import nanstd

    mean = torch.nanmean(rewards.view(-1, num_generations), dim=1).repeat_interleave(num_generations)
    if num_generations > 1:
        std = nanstd(rewards.view(-1, num_generations), dim=1).repeat_interleave(num_generations)
    else:
        std = torch.zeros_like(rewards)
    adv = rewards - mean
    if scale_rewards != "none":
        adv = adv / (std + 1e-4)
    return torch.nan_to_num(adv, nan=0.0)


@pytest.mark.parametrize("estimator,scale", [("grpo", "group"), ("drgrpo", "none")])
@pytest.mark.parametrize("n", [1, 4, 8])
def test_matches_trl(backend, device, estimator, scale, n):
    pytest.importorskip("trl")
    rewards = torch.randint(0, 3, (8 * n,)).float()  # discrete rewards: ties and zero-std groups
    rewards[3] = float("nan")
    want = trl_grpo_advantages(rewards.clone(), n, scale)
    got = rf.group_advantages(rewards.to(device), group_size=n, estimator=estimator, preset="trl")
    torch.testing.assert_close(got.cpu(), want, rtol=1e-5, atol=1e-5)


# --- properties -----------------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(
    n=st.integers(2, 9),
    groups=st.integers(1, 6),
    shift=st.floats(-100, 100),
    scale=st.floats(0.01, 100),
    estimator=st.sampled_from(["grpo", "drgrpo", "rloo"]),
)
def test_group_properties(n, groups, shift, scale, estimator):
    """Advantages sum to zero in each group; grpo is invariant to affine maps of the rewards."""
    scores = torch.randn(n * groups, dtype=torch.float64)
    a = rf.group_advantages(scores, group_size=n, estimator=estimator).double()
    torch.testing.assert_close(a.view(groups, n).sum(1), torch.zeros(groups, dtype=torch.float64), atol=1e-4, rtol=0)
    if estimator == "grpo":
        b = rf.group_advantages(scores * scale + shift, group_size=n, eps=0.0).double()
        c = rf.group_advantages(scores, group_size=n, eps=0.0).double()
        torch.testing.assert_close(b, c, atol=1e-3, rtol=1e-3)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.integers(-3, 3), min_size=1, max_size=30))
def test_group_ids_equal_sorted_contiguous(labels):
    """Arbitrary label order gives the same per-sample advantages as the grouped, sorted layout."""
    ids = torch.tensor(labels)
    scores = torch.randn(len(labels))
    a = rf.group_advantages(scores, group_ids=ids)
    order = torch.argsort(ids, stable=True)
    b = rf.group_advantages(scores[order], group_ids=ids[order])
    torch.testing.assert_close(a[order], b)


# --- bad input ------------------------------------------------------------------------------------


def test_bad_input_messages(backend, device):
    s = torch.randn(8, device=device)
    with pytest.raises(ValueError, match="group_size: must divide the batch size 8, got 3"):
        rf.group_advantages(s, group_size=3)
    with pytest.raises(ValueError, match="exactly one of group_size"):
        rf.group_advantages(s)
    with pytest.raises(ValueError, match="exactly one of group_size"):
        rf.group_advantages(s, group_size=2, group_ids=torch.zeros(8, dtype=torch.long))
    with pytest.raises(ValueError, match=r"group_ids: expected shape \(8,\)"):
        rf.group_advantages(s, group_ids=torch.zeros(7, dtype=torch.long, device=device))
    with pytest.raises(TypeError, match="group_ids: expected dtype"):
        rf.group_advantages(s, group_ids=torch.zeros(8, device=device))
    with pytest.raises(TypeError, match="scores: expected dtype"):
        rf.group_advantages(torch.arange(8, device=device), group_size=2)
    with pytest.raises(ValueError, match="scores: expected a 1-d tensor"):
        rf.group_advantages(s.view(2, 4), group_size=2)
    with pytest.raises(ValueError, match=r"response_mask: expected shape \(8, T\)"):
        rf.group_advantages(s, group_size=2, response_mask=torch.ones(7, 3, device=device))
    with pytest.raises(ValueError, match="estimator: expected one of"):
        rf.group_advantages(s, group_size=2, estimator="ppo")
    with pytest.raises(ValueError, match="preset: expected one of"):
        rf.group_advantages(s, group_size=2, preset="openrlhf")
    with pytest.raises(ValueError, match="group_size: expected a positive int"):
        rf.group_advantages(s, group_size=0)
    nan = s.clone()
    nan[5] = float("nan")
    with pytest.raises(ValueError, match="scores: expected finite values.*first at flat index 5.*preset='trl'"):
        rf.group_advantages(nan, group_size=2)
    inf = s.clone()
    inf[2] = float("inf")
    with pytest.raises(ValueError, match="scores: expected finite values"):
        rf.group_advantages(inf, group_size=2, preset="trl")


@pytest.mark.parametrize("group_size,T", [(256, 40), (200, 1030), (3, 1500), (16, 1)])
def test_token_tiles_of_large_groups_and_long_rows(backend, device, group_size, T):
    """The contiguous kernel writes token advantages in ROWS x BLOCK_T tiles over the group's rows (issue
    20): every row and column of groups up to 256 and rows past one tile equal the reference, with a
    strided bool mask."""
    g = torch.Generator().manual_seed(group_size + T)
    scores = torch.randn(2 * group_size, generator=g).to(device)
    mask = (torch.rand(2 * group_size, T + 3, generator=g) > 0.3).to(device)[:, 2 : T + 2]
    got = rf.group_advantages(scores, group_size=group_size, response_mask=mask)
    per_sample = rf.group_advantages(scores.double(), group_size=group_size).float()
    want = torch.where(mask, per_sample[:, None], 0.0)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_token_tile_shapes_and_one_kernel_per_bucket():
    """Tiles keep at least 128 float32 columns (whole 512-byte row segments) once T allows, at most 4,096
    elements, and the group size is a runtime argument: one compiled kernel per power-of-two bucket."""
    K = pytest.importorskip("rlvr_fast.kernels.advantages")
    for block_n in (1, 2, 16, 128, 256):
        for T in (1, 17, 128, 1000, 5000):
            rows, block_t = K.token_tile(block_n, T)
            assert rows * block_t <= K.TILE_ELEMS and 1 <= rows <= block_n
            assert block_t >= min(128, T) and block_t >= 16
    assert K.token_tile(256, 1024) == (4, 1024)  # formerly (256, 16)
    import inspect

    params = inspect.signature(K._contiguous_group_kernel.fn).parameters.values()  # jit or interpreted
    constexprs = {p.name for p in params if "constexpr" in str(p.annotation)}
    assert "GROUP" not in constexprs and {"BLOCK_N", "ROWS", "BLOCK_T"} <= constexprs
