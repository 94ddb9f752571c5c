"""``video.invalid_tokens``: what a video rollout whose frame slots are not all generated visual ids scores.
``penalty`` (default): the penalty reward. ``clamp``: RLVR-World's ``reward_fn`` / ``msp_reward_fn``
(``vid_wm/verl/verl/trainer/ppo/ray_trainer.py``, e1b8b6f) read the frame slots of the padded response
tensor, whatever the mask says, clamp every id into ``[0, visual_token_num - 1]`` and score that frame.
Hand-made token rows, expected codes and rewards computed by hand."""

from __future__ import annotations

from typing import NamedTuple

import pytest
import torch

import rlvr_fast as rf
from rlvr_fast import _dispatch
from rlvr_fast.ops import Quantizer, VideoTokenLayout
from rlvr_fast.rewards.video import INVALID_TOKENS, VideoReward
from rlvr_fast.trainer import config as C
from rlvr_fast.trainer.tasks import task_options

BACKENDS = ["torch", "cpp"] if _dispatch._load_extension()[0] is not None else ["torch"]

# 10 visual codes, frames of 2x3 tokens, then EOS (= pad); action ids 10..13, BOS 14
LAYOUT = VideoTokenLayout(
    frame_shape=(2, 3), visual_vocab=10, action_offset=10, action_bins=4, action_dims=1, bos_id=14, eos_id=15, pad_id=15
)
EOS = 15


class _Generated(NamedTuple):
    """What a video task scores of a rollout batch."""

    responses: torch.Tensor
    present: torch.Tensor


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    monkeypatch.setenv("RLVR_FAST_BACKEND", request.param)
    return request.param


def _rows():
    """(responses [4, 7], present [4, 7]): valid; an action id and BOS in frame slots; an early EOS then
    padding; an early EOS then tokens generated past it (masked)."""
    responses = torch.tensor(
        [
            [0, 1, 2, 3, 4, 5, EOS],
            [0, 1, 12, 3, 14, 5, EOS],
            [1, 2, EOS, EOS, EOS, EOS, EOS],
            [1, 2, EOS, 3, 4, 5, 6],
        ]
    )
    present = torch.tensor([[1] * 7, [1] * 7, [1, 1, 1, 0, 0, 0, 0], [1, 1, 1, 0, 0, 0, 0]], dtype=torch.bool)
    return responses, present


def test_unpack_clamp_by_hand(backend):
    responses, present = _rows()
    codes, valid, n_bad = rf.unpack_video_tokens(responses, present, LAYOUT)
    clamped, valid_c, n_bad_c = rf.unpack_video_tokens(responses, present, LAYOUT, clamp=True)
    assert codes.view(4, 6).tolist() == [
        [0, 1, 2, 3, 4, 5],
        [0, 1, 0, 3, 0, 5],
        [1, 2, 0, 0, 0, 0],
        [1, 2, 0] + [0] * 3,
    ]
    # RLVR-World: ids clamped into [0, 9] (action 12 and BOS 14 -> 9, EOS/pad 15 -> 9); a masked slot reads
    # the token standing there (row 3: tokens generated past the EOS)
    assert clamped.view(4, 6).tolist() == [
        [0, 1, 2, 3, 4, 5],
        [0, 1, 9, 3, 9, 5],
        [1, 2, 9, 9, 9, 9],
        [1, 2, 9, 3, 4, 5],
    ]
    assert clamped.dtype == torch.int32 and clamped.shape == (4, 1, 2, 3)
    # well-formedness is reported the same way in both modes
    assert valid.tolist() == valid_c.tolist() == [True, False, False, False]
    assert n_bad.tolist() == n_bad_c.tolist() == [0, 2, 4, 4]


def test_unpack_clamp_truncated_and_offset(backend):
    # a batch cut at 4 tokens: the two missing slots read the pad id (verl pads responses with it)
    cut = torch.tensor([[6, 7, 8, 0], [6, 7, 8, 13]])
    codes, valid, n_bad = rf.unpack_video_tokens(cut, torch.ones_like(cut), LAYOUT, clamp=True)
    assert codes.view(2, 6).tolist() == [[6, 7, 8, 0, 9, 9], [6, 7, 8, 9, 9, 9]]
    assert not valid.any() and n_bad.tolist() == [2, 3]
    # visual ids 5..14: ids below the range clamp to code 0 (here the pad id 4), above it to code 9
    shifted = VideoTokenLayout(
        frame_shape=(1, 3),
        visual_offset=5,
        visual_vocab=10,
        action_offset=15,
        action_bins=2,
        bos_id=3,
        eos_id=4,
        pad_id=4,
    )
    resp = torch.tensor([[5, 14, 16, 4], [0, 9, 4, 4]])
    present = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]], dtype=torch.bool)
    codes, valid, n_bad = rf.unpack_video_tokens(resp, present, shifted, clamp=True)
    assert codes.view(2, 3).tolist() == [[0, 9, 9], [0, 4, 0]]
    assert valid.tolist() == [False, False] and n_bad.tolist() == [1, 2]
    codes, _, _ = rf.unpack_video_tokens(resp[:, :2], present[:, :2], shifted, clamp=True)  # slot 2 missing: pad 4
    assert codes.view(2, 3).tolist() == [[0, 9, 0], [0, 4, 0]]


def test_unpack_clamp_multi_step_skips_action_tokens(backend):
    """RLVR-World msp: each chunk's first tokens_per_frame ids are the frame, the action tokens are never read."""
    msp = VideoTokenLayout(
        frames=2,
        frame_shape=(1, 2),
        visual_vocab=10,
        action_tokens_per_frame=1,
        action_offset=10,
        action_bins=4,
        action_dims=1,
        bos_id=14,
        eos_id=15,
        pad_id=15,
        eos_after=False,
    )
    resp = torch.tensor([[1, 12, 13, 11, 3, 10]])
    codes, valid, n_bad = rf.unpack_video_tokens(resp, torch.ones_like(resp), msp, clamp=True)
    assert codes.tolist() == [[[[1, 9]], [[9, 3]]]] and n_bad.tolist() == [2] and not valid.any()


# ----------------------------------------------------------------------------------------- the reward
def _reward(**kw) -> VideoReward:
    """Code k decodes to the grey frame of value k / 9 (16x24 pixels); MAE against a black frame is then
    the mean code / 9."""
    quantizer = Quantizer.vq(torch.arange(10, dtype=torch.float64)[:, None] / 9)

    def decoder(z):  # [N, 1, 2, 3] -> [N, 3, 16, 24]
        return z.expand(-1, 3, -1, -1).repeat_interleave(8, -2).repeat_interleave(8, -1)

    return VideoReward(LAYOUT, quantizer, decoder, {"mae": 1.0}, **kw)


def test_penalty_and_clamp_rewards_by_hand():
    responses, present = _rows()
    black = torch.zeros(4, 3, 16, 24)
    penalty = _reward()(responses, present, black, group_size=1)
    clamp = _reward(invalid_tokens="clamp")(responses, present, black, group_size=1)
    # penalty: the worst reward of a valid rollout, -MAE at its worst = -1
    want_penalty = [-15 / 54, -1.0, -1.0, -1.0]
    # clamp: code sums 15, 0+1+9+3+9+5 = 27, 1+2+9*4 = 39, 1+2+9+3+4+5 = 24, over 6 slots x 9
    want_clamp = [-15 / 54, -27 / 54, -39 / 54, -24 / 54]
    torch.testing.assert_close(penalty.scores, torch.tensor(want_penalty), rtol=0, atol=1e-6)
    torch.testing.assert_close(clamp.scores, torch.tensor(want_clamp), rtol=0, atol=1e-6)
    assert penalty.valid.tolist() == clamp.valid.tolist() == [True, False, False, False]
    torch.testing.assert_close(
        clamp.metrics["mae"], torch.tensor([15 / 54, 27 / 54, 39 / 54, 24 / 54]), rtol=0, atol=1e-6
    )
    # the reward sits on the last present token (verl's layout) in both modes
    for out in (penalty, clamp):
        assert out.token_rewards[:, 6].tolist()[:2] == out.scores.tolist()[:2]
        assert out.token_rewards[2:, 2].tolist() == out.scores.tolist()[2:]
        assert torch.count_nonzero(out.token_rewards).item() == 4
    # the decoded frames are the clamped codes' (row 1: codes 0 1 9 3 9 5 over the 2x3 grid)
    assert clamp.frames[1, 0, 0, ::8, ::8].mul(9).round().tolist() == [[0, 1, 9], [3, 9, 5]]
    # a truncated batch (4 of 7 tokens): penalty -1, clamp scores codes 6 7 8 0 9 9
    cut = responses[:1, :4].clone()
    cut[0] = torch.tensor([6, 7, 8, 0])
    mask = torch.ones_like(cut, dtype=torch.bool)
    assert _reward()(cut, mask, black[:1]).scores.item() == -1.0
    assert _reward(invalid_tokens="clamp")(cut, mask, black[:1]).scores.item() == pytest.approx(-39 / 54, abs=1e-6)


def test_invalid_tokens_is_checked():
    assert INVALID_TOKENS == ("penalty", "clamp") and _reward().invalid_tokens == "penalty"
    with pytest.raises(ValueError, match=r"invalid_tokens: expected one of \['penalty', 'clamp'\], got 'zero'"):
        _reward(invalid_tokens="zero")
    with pytest.raises(ValueError, match="invalid_reward=-7.0 applies to invalid_tokens='penalty' only"):
        _reward(invalid_tokens="clamp", invalid_reward=-7.0)
    assert _reward(invalid_reward=-7.0).invalid_reward == -7.0


def test_config_key_reaches_the_loaders():
    import inspect

    from rlvr_fast.worlds.video_task import rt1_video, sprite_video

    assert C.Config().video.invalid_tokens == "penalty"
    cfg = C.load_config(None, ["data.world=sprite_video", "video.invalid_tokens=clamp"])
    assert task_options(cfg)["invalid_tokens"] == "clamp"
    for loader in (sprite_video, rt1_video):
        assert inspect.signature(loader).parameters["invalid_tokens"].default == "penalty"
    with pytest.raises(C.ConfigError, match=r"video.invalid_tokens: 'zero' is not one of \['penalty', 'clamp'\]"):
        C.load_config(None, ["video.invalid_tokens=zero"])


def test_sprite_task_scores_with_the_clamp():
    """load_task passes invalid_tokens by name; the task's reward scores a malformed rollout on its frame."""
    from rlvr_fast.models.tiny_fsq import TinyFSQConfig, TinyFSQTokenizer
    from rlvr_fast.worlds import load_task

    torch.manual_seed(0)
    tok = TinyFSQTokenizer(TinyFSQConfig(channels=(8, 16, 16), res_blocks=0, latent_channels=8, fsq_levels=(5, 4, 3)))
    common = dict(
        seed=0,
        n_train=2,
        n_test=2,
        context_frames=1,
        predict_frames=1,
        n_sprites=1,
        frame_size=[64, 64],
        action_bins=16,
        frame_tokenizer=tok.eval(),
        aggregate="mean",
        gamma=0.9,
        preview=0,
    )
    tasks = {mode: load_task("sprite_video", **common, invalid_tokens=mode) for mode in INVALID_TOKENS}
    assert {m: t.reward.invalid_tokens for m, t in tasks.items()} == {"penalty": "penalty", "clamp": "clamp"}
    t = tasks["clamp"]
    answer = torch.tensor([t.encode(t.test[0])[1]])
    bad = answer.clone()
    bad[0, 0] = t.layout.eos_id  # a non-visual id in the first frame slot
    rollout = _Generated(torch.cat([answer, bad]), torch.ones(2, answer.shape[1], dtype=torch.bool))
    clamped = t.score(rollout, [t.test[0]] * 2, 2)
    penalised = tasks["penalty"].score(rollout, [t.test[0]] * 2, 2)
    assert clamped.metrics["valid"].tolist() == penalised.metrics["valid"].tolist() == [1.0, 0.0]
    assert clamped.scores[0] == penalised.scores[0]  # a well-formed rollout scores the same
    assert penalised.scores[1].item() == -2.0  # MAE 1 + SSIM 1 (no LPIPS): the worst, -(1 - (-1))
    fixed = answer.clone()
    fixed[0, 0] = t.layout.visual_vocab - 1  # what the clamp makes of the EOS id
    want = t.score(_Generated(fixed, rollout.present[:1]), [t.test[0]], 1).scores
    torch.testing.assert_close(clamped.scores[1:], want)
