"""RLVR-World's ctx_msp layout (iVideoGPT's compressive tokenizer): ids, hand-written sequences through
VideoTokenLayout and unpack_video_tokens (torch, C++ and, in the GPU tier, CUDA), forced action slots,
and the multi-step reward against a float64 re-computation of RLVR-World's msp_reward_fn."""

from __future__ import annotations

import pytest
import torch

import rlvr_fast as rf
from rlvr_fast import _dispatch
from rlvr_fast.models.compressive import CompressiveFSQTokenizer, tiny_compressive_config
from rlvr_fast.models.lpips import LPIPS
from rlvr_fast.rewards.video import VideoReward

HAS_EXT = _dispatch._load_extension()[0] is not None
RT1 = rf.VideoTokenLayout.ctx_msp()
BACKENDS = ["torch", "cpp"] if HAS_EXT else ["torch"]
if torch.cuda.is_available():
    BACKENDS.append(pytest.param("cuda", marks=pytest.mark.gpu))


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    monkeypatch.setenv("RLVR_FAST_BACKEND", request.param)
    return "cuda" if request.param == "cuda" else "cpu"


def test_rlvr_world_ids_and_lengths():
    """run_ctx_msp_vgpt.sh / ctx_llama_small.json: vocab 9008, BOS 9006, EOS = pad 9007, prompt 1373, response 651."""
    assert (RT1.visual_offset, RT1.visual_vocab, RT1.context_offset, RT1.context_vocab) == (0, 4375, 4375, 4375)
    assert (RT1.action_offset, RT1.action_bins, RT1.bos_id, RT1.eos_id, RT1.pad_id) == (8750, 256, 9006, 9007, 9007)
    assert (RT1.vocab_size, RT1.context_tokens, RT1.tokens_per_frame, RT1.response_length) == (9008, 1280, 80, 651)
    assert not RT1.eos_after
    with pytest.raises(ValueError, match="context ids .* disjoint"):
        rf.VideoTokenLayout(context_shape=(4, 4), context_offset=4000, eos_after=False)
    with pytest.raises(ValueError, match="has no EOS"):
        rf.VideoTokenLayout(context_shape=(4, 4), context_offset=5000)
    with pytest.raises(ValueError, match="need context_shape"):
        rf.VideoTokenLayout(context_offset=5000)


def _hand_written(b: int, seed: int = 0):
    """Sequences written token by token as RLVR-World's processor concatenates them (plain Python lists)."""
    g = torch.Generator().manual_seed(seed)
    ctx = torch.randint(0, 4375, (b, 32, 40), generator=g)
    codes = torch.randint(0, 4375, (b, 8, 8, 10), generator=g)  # frame 1 (prompt) + 7 predicted
    actions = torch.randint(0, 256, (b, 8, 13), generator=g)
    prompts, responses = [], []
    for i in range(b):
        p = [4375 + int(v) for v in ctx[i].flatten()] + [int(v) for v in codes[i, 0].flatten()]
        p += [8750 + int(a) for a in actions[i, 0]]
        r = []
        for t in range(1, 8):
            r += [int(v) for v in codes[i, t].flatten()] + [8750 + int(a) for a in actions[i, t]]
        prompts.append(p)
        responses.append(r)
    return ctx, codes, actions, torch.tensor(prompts), torch.tensor(responses)


def test_hand_written_sequences_round_trip(backend):
    ctx, codes, actions, prompts, responses = _hand_written(3)
    assert prompts.shape == (3, 1373) and responses.shape == (3, 651)
    assert torch.equal(RT1.context_prompt_ids(ctx, codes[:, 0], actions[:, 0]), prompts)
    assert torch.equal(RT1.response_ids(codes[:, 1:], actions[:, 1:]), responses)
    assert torch.equal(RT1.context_codes(prompts), ctx)
    dev = torch.device(backend)
    got, valid, n_bad = rf.unpack_video_tokens(
        responses.to(dev), torch.ones_like(responses, dtype=torch.bool, device=dev), RT1
    )
    assert torch.equal(got.cpu().long(), codes[:, 1:]) and bool(valid.all()) and int(n_bad.sum()) == 0
    # a context id (offset) sampled at a code slot is invalid, and clamped to 4374 the RLVR-World way
    bad = responses.clone()
    bad[1, 93 + 5] = 4375 + 17
    got, valid, n_bad = rf.unpack_video_tokens(bad.to(dev), torch.ones_like(bad, dtype=torch.bool, device=dev), RT1)
    assert valid.cpu().tolist() == [True, False, True] and n_bad.cpu().tolist() == [0, 1, 0]
    clamped = rf.unpack_video_tokens(bad.to(dev), torch.ones_like(bad, dtype=torch.bool, device=dev), RT1, clamp=True)[
        0
    ]
    assert int(clamped[1, 1].flatten()[5]) == 4374


def test_forced_action_slots_are_the_13_after_each_frame():
    forced = RT1.forced_slots()
    want = [t % 93 >= 80 for t in range(651)]
    assert forced == want and sum(forced) == 7 * 13 and forced[-1]  # a8 after the last frame is forced too
    ctx, codes, actions, _, responses = _hand_written(1)
    idx = torch.tensor(forced).nonzero().flatten()
    assert torch.equal(responses[0, idx], (actions[0, 1:] + 8750).flatten())


def test_context_prompt_errors():
    ctx, codes, actions, prompts, _ = _hand_written(1)
    with pytest.raises(IndexError, match="context_codes"):
        RT1.context_prompt_ids(ctx + 4375, codes[:, 0], actions[:, 0])
    with pytest.raises(ValueError, match=r"context_codes: expected \[B, \(32, 40\)\]"):
        RT1.context_prompt_ids(ctx[:, :16], codes[:, 0], actions[:, 0])
    with pytest.raises(ValueError, match="no separate context frame"):
        rf.VideoTokenLayout().context_prompt_ids(ctx, codes[:, 0], actions[:, 0])
    with pytest.raises(IndexError, match="context tokens"):
        RT1.context_codes(prompts - 4375)


def _msp_reward_ref(tok64, lpips64, ctx, codes, real, recon: str, aggregate: str) -> torch.Tensor:
    """RLVR-World msp_reward_fn in float64: decode with the context, clamp to [0, 1], per frame recon (mse or
    mae over C, H, W) + LPIPS(real * 2 - 1, pred * 2 - 1) at 1:1, then mean | last | sum 0.9^t l_t / sum 0.9^t."""
    b, f = codes.shape[:2]
    with torch.no_grad():
        pred = tok64.decode(ctx, codes, clamp=True)  # [B, F, 3, H, W]
        diff = pred - real
        rec = diff.square().mean((2, 3, 4)) if recon == "mse" else diff.abs().mean((2, 3, 4))
        lp = torch.stack([lpips64(pred[:, t], real[:, t]) for t in range(f)], 1).double()
    loss = rec + lp
    if aggregate == "mean":
        loss = loss.mean(1)
    elif aggregate == "last":
        loss = loss[:, -1]
    else:
        w = 0.9 ** torch.arange(f, dtype=torch.float64)
        loss = (loss * w).sum(1) / w.sum()
    return -loss


@pytest.mark.parametrize("recon", ["mse", "mae"])
@pytest.mark.parametrize("aggregate", ["mean", "last", "discount"])
def test_reward_equals_rlvr_worlds_formula_in_float64(recon, aggregate):
    torch.manual_seed(0)
    tok = CompressiveFSQTokenizer(tiny_compressive_config()).eval()
    lpips = LPIPS().eval()
    cfg = tok.config
    layout = rf.VideoTokenLayout.ctx_msp(
        3, context_shape=cfg.context_grid, frame_shape=cfg.dynamics_grid, visual_vocab=tok.num_codes, action_dims=2
    )
    g, n = 2, 3
    gen = torch.Generator().manual_seed(1)
    ctx = torch.randint(0, tok.num_context_codes, (g, *cfg.context_grid), generator=gen)
    codes = torch.randint(0, tok.num_codes, (g * n, 3, *cfg.dynamics_grid), generator=gen)
    actions = torch.randint(0, 256, (g * n, 3, 2), generator=gen)
    real = torch.rand(g, 3, 3, 64, 64, generator=gen)
    responses = layout.response_ids(codes, actions)
    mask = torch.ones_like(responses, dtype=torch.bool)
    reward = VideoReward.from_tokenizer(
        layout,
        tok,
        {recon: 1.0, "lpips": 1.0},
        lpips=lpips,
        aggregate=aggregate,
        invalid_tokens="clamp",
        decode_chunk=4,
    )
    out = reward(responses, mask, real, group_size=n, context=ctx)
    ref = _msp_reward_ref(
        tok.double(),
        lpips.double(),
        ctx.repeat_interleave(n, 0),
        codes,
        real.double().repeat_interleave(n, 0),
        recon,
        aggregate,
    )
    torch.testing.assert_close(out.scores.double(), ref, rtol=0, atol=2e-5)
    # on the last response token (RLVR-World: index valid_response_length - 1 = the last forced action)
    assert torch.equal(out.token_rewards[:, -1], out.scores) and not out.token_rewards[:, :-1].any()
    with pytest.raises(ValueError, match="pass context"):
        reward(responses, mask, real, group_size=n)
