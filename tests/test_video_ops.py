"""Video ops (rlvr_fast.ops.video / pixel_metrics): the extension's C++ kernels (backend ``cpp``) and
the torch references against float64 maths, iVideoGPT's FSQ formula, piqa and pytorch-msssim."""

import math

import pytest
import torch
from conftest import import_piqa

import rlvr_fast as rf
from rlvr_fast import _dispatch
from rlvr_fast.ops.pixel_metrics import gaussian_window, pixel_metrics_ref
from rlvr_fast.ops.video import _slot_tensor
from rlvr_fast.rewards.video import default_invalid_reward, pixel_reward

HAS_EXT = _dispatch._load_extension()[0] is not None
VIDEO_BACKENDS = ["torch", "cpp"] if HAS_EXT else ["torch"]


@pytest.fixture(params=VIDEO_BACKENDS)
def vbackend(request, monkeypatch):
    monkeypatch.setenv("RLVR_FAST_BACKEND", request.param)
    return request.param


def test_extension_is_built():
    """`make test` builds rlvr_fast._C; a missing extension must not pass silently in CI."""
    assert HAS_EXT, _dispatch._load_extension()[1]
    assert rf.ops.video.extension().with_cuda() in (True, False)


# ------------------------------------------------------------------------------------------------
# unpack_video_tokens
# ------------------------------------------------------------------------------------------------

L1 = rf.VideoTokenLayout()  # RLVR-World single step: 320 visual tokens then EOS


def _single_step(batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    resp = torch.randint(0, 4375, (batch, 321), generator=g)
    resp[:, 320] = L1.eos_id
    return resp, torch.ones_like(resp, dtype=torch.bool)


def test_unpack_single_step_valid(vbackend):
    resp, mask = _single_step(5)
    codes, valid, n_bad = rf.unpack_video_tokens(resp, mask, L1)
    assert codes.shape == (5, 1, 16, 20) and codes.dtype == torch.int32
    assert torch.equal(codes.view(5, 320), resp[:, :320].int())  # RLVR-World's responses[:, -321:-1]
    assert valid.all() and (n_bad == 0).all()


@pytest.mark.parametrize("slot", [0, 159, 319])
@pytest.mark.parametrize("bad_id", [4375, 4631, 4632, -1, -5000, 10**9])
def test_unpack_marks_out_of_range_never_clamps(vbackend, slot, bad_id):
    resp, mask = _single_step(3)
    resp[1, slot] = bad_id
    codes, valid, n_bad = rf.unpack_video_tokens(resp, mask, L1)
    assert valid.tolist() == [True, False, True]
    assert n_bad.tolist() == [0, 1, 0]
    assert codes.view(3, 320)[1, slot] == 0  # marked, not clamped to 4374
    others = torch.arange(320) != slot
    assert torch.equal(codes.view(3, 320)[1, others], resp[1, :320][others].int())


def test_unpack_early_eos_and_truncation(vbackend):
    resp, mask = _single_step(3)
    resp[0, 100] = L1.eos_id  # EOS in the middle: the rest is padding, masked out
    resp[0, 101:] = L1.pad_id
    mask[0, 101:] = False
    codes, valid, n_bad = rf.unpack_video_tokens(resp, mask, L1)
    assert n_bad.tolist() == [220, 0, 0] and valid.tolist() == [False, True, True]
    # a generation cut at 200 tokens (T shorter than the layout): the 120 missing slots are invalid
    codes, valid, n_bad = rf.unpack_video_tokens(resp[:, :200], mask[:, :200], L1)
    assert n_bad.tolist() == [220, 120, 120] and not valid.any()


def test_unpack_multi_step_layout_by_hand(vbackend):
    """2 frames of 2x3 visual tokens, each followed by 2 action tokens (RLVR-World msp layout)."""
    layout = rf.VideoTokenLayout(
        frames=2,
        frame_shape=(2, 3),
        visual_vocab=10,
        action_tokens_per_frame=2,
        action_offset=10,
        action_bins=4,
        bos_id=14,
        eos_id=15,
        pad_id=15,
        eos_after=False,
    )
    assert layout.slot_positions() == [0, 1, 2, 3, 4, 5, 8, 9, 10, 11, 12, 13]
    assert layout.response_length == 16 and layout.vocab_size == 16
    resp = torch.tensor(
        [[1, 2, 3, 4, 5, 6, 10, 13, 7, 8, 9, 0, 1, 2, 11, 12], [1, 2, 3, 4, 5, 6, 10, 13, 7, 8, 12, 0, 1, 2, 11, 12]]
    )
    codes, valid, n_bad = rf.unpack_video_tokens(resp, torch.ones_like(resp), layout)
    assert codes[0].tolist() == [[[1, 2, 3], [4, 5, 6]], [[7, 8, 9], [0, 1, 2]]]
    assert valid.tolist() == [True, False] and n_bad.tolist() == [0, 1]  # an action id in a visual slot


def test_layout_builds_ivideogpt_sequences_by_hand():
    """Prompt: per context frame its visual tokens then its action tokens, then BOS; response: frame, EOS."""
    layout = rf.VideoTokenLayout(
        frame_shape=(2, 2),
        visual_vocab=10,
        action_offset=10,
        action_bins=4,
        action_dims=2,
        bos_id=14,
        eos_id=15,
        pad_id=15,
    )
    ctx = torch.tensor([[[[1, 2], [3, 4]], [[5, 6], [7, 8]]]])  # B=1, 2 context frames
    acts = torch.tensor([[[0, 3], [2, 1]]])
    assert layout.prompt_ids(ctx, acts).tolist() == [[1, 2, 3, 4, 10, 13, 5, 6, 7, 8, 12, 11, 14]]
    nxt = torch.tensor([[[[9, 0], [1, 2]]]])
    resp = layout.response_ids(nxt)
    assert resp.tolist() == [[9, 0, 1, 2, 15]]
    codes, valid, _ = rf.unpack_video_tokens(resp, torch.ones_like(resp), layout)
    assert torch.equal(codes, nxt.int()) and valid.all()
    msp = rf.VideoTokenLayout(
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
    got = msp.response_ids(torch.tensor([[[[1, 2]], [[3, 4]]]]), torch.tensor([[[3], [0]]]))
    assert got.tolist() == [[1, 2, 13, 3, 4, 10]]
    with pytest.raises(IndexError, match="codes"):
        layout.response_ids(torch.tensor([[[[10, 0], [1, 2]]]]))
    with pytest.raises(IndexError, match="action bins"):
        layout.prompt_ids(ctx, torch.tensor([[[0, 4], [2, 1]]]))
    with pytest.raises(ValueError, match="actions"):
        msp.response_ids(torch.tensor([[[[1, 2]], [[3, 4]]]]))


def test_unpack_matches_reference_random(vbackend):
    g = torch.Generator().manual_seed(3)
    resp = torch.randint(-10, 4700, (64, 321), generator=g, dtype=torch.int32)
    mask = torch.rand(64, 321, generator=g) > 0.01
    got = rf.unpack_video_tokens(resp, mask.to(torch.uint8), L1)
    want = rf.ops.unpack_video_tokens_ref(resp, mask, _slot_tensor(L1, torch.device("cpu")), 0, 4375)
    assert torch.equal(got[0].view(64, -1), want[0]) and torch.equal(got[1], want[1])
    assert torch.equal(got[2], want[2])


def test_unpack_op_marks_slots_outside_the_response(vbackend):
    """Direct calls of the registered op: a slot position past T (or negative) is invalid, never read."""
    resp = torch.arange(8).view(2, 4)
    slots = torch.tensor([0, 3, 5, 100000000, -3], dtype=torch.int32)
    codes, valid, n_bad = torch.ops.rlvr_fast.unpack_video_tokens(
        resp, torch.ones(2, 4, dtype=torch.bool), slots, 0, 10
    )
    assert codes.tolist() == [[0, 3, 0, 0, 0], [4, 7, 0, 0, 0]] and n_bad.tolist() == [3, 3]
    assert not valid.any()


def test_unpack_empty_batch(vbackend):
    codes, valid, n_bad = rf.unpack_video_tokens(
        torch.zeros(0, 321, dtype=torch.long), torch.zeros(0, 321, dtype=torch.bool), L1
    )
    assert codes.shape == (0, 1, 16, 20) and valid.shape == (0,) and n_bad.shape == (0,)


def test_unpack_bad_input():
    resp, mask = _single_step(2)
    with pytest.raises(TypeError, match="responses"):
        rf.unpack_video_tokens(resp.float(), mask, L1)
    with pytest.raises(ValueError, match="response_mask"):
        rf.unpack_video_tokens(resp, mask[:, :10], L1)
    with pytest.raises(TypeError, match="layout"):
        rf.unpack_video_tokens(resp, mask, {"frames": 1})
    with pytest.raises(ValueError, match="eos_id"):
        rf.VideoTokenLayout(eos_id=5)
    with pytest.raises(ValueError, match="disjoint"):
        rf.VideoTokenLayout(action_offset=4000)


# ------------------------------------------------------------------------------------------------
# codes_to_latents
# ------------------------------------------------------------------------------------------------


def _ivideogpt_fsq_codes(indices, levels):
    """iVideoGPT's FSQ.indices_to_codes written out digit by digit (without projections)."""
    out, rest = [], indices.long()
    for lv in levels:
        digit = rest % lv
        rest = rest // lv
        out.append((digit.double() - lv // 2) / (lv // 2))
    return torch.stack(out, 1)  # [N, D, h, w]


@pytest.mark.parametrize("levels", [[7, 5, 5, 5, 5], [8, 8, 8], [2, 3]])
def test_fsq_latents_match_ivideogpt_formula(vbackend, levels):
    k = math.prod(levels)
    codes = torch.randint(0, k, (3, 2, 4, 5))
    lat = rf.codes_to_latents(codes, rf.Quantizer.fsq(levels))
    assert lat.shape == (6, len(levels), 4, 5) and lat.dtype == torch.float32
    torch.testing.assert_close(lat, _ivideogpt_fsq_codes(codes.view(6, 4, 5), levels).float(), rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("memory_format", [torch.contiguous_format, torch.channels_last])
def test_vq_with_folded_projections_matches_modules(vbackend, dtype, memory_format):
    """codebook -> Linear (FSQ project_out) -> 1x1 conv (post_quant_conv), folded into one table."""
    codebook = torch.randn(37, 6)
    lin = torch.nn.Linear(6, 8)
    conv = torch.nn.Conv2d(8, 4, 1)
    q = rf.Quantizer.vq(codebook, [lin, conv])
    codes = torch.randint(0, 37, (5, 7, 9))
    got = rf.codes_to_latents(codes, q, dtype=dtype, memory_format=memory_format)
    with torch.no_grad():  # what the tokenizer's decoder does: look up, project, convolve
        z = lin(codebook[codes]).permute(0, 3, 1, 2)
        want = conv(z)
    assert got.shape == (5, 4, 7, 9) and got.dtype == dtype
    assert got.is_contiguous(memory_format=memory_format)
    tol = {torch.float32: 1e-5, torch.bfloat16: 1e-2, torch.float16: 2e-3}[dtype]
    torch.testing.assert_close(got.float(), want, rtol=tol, atol=tol)


def test_quantizer_table_follows_parameter_updates(vbackend):
    lin = torch.nn.Linear(5, 3)
    q = rf.Quantizer.fsq([7, 5, 5, 5, 5], [lin])
    codes = torch.randint(0, 4375, (2, 16, 20))
    before = rf.codes_to_latents(codes, q)
    assert rf.codes_to_latents(codes, q) is not before and q.table() is q.table()  # cached
    with torch.no_grad():
        lin.bias.add_(1.0)  # an optimizer step updates in place
    torch.testing.assert_close(rf.codes_to_latents(codes, q), before + 1.0)


def test_codes_to_latents_bad_input():
    q = rf.Quantizer.fsq([7, 5, 5, 5, 5])
    with pytest.raises(IndexError, match="codes"):
        rf.codes_to_latents(torch.tensor([[[0, 4375]]]), q)
    with pytest.raises(IndexError, match="codes"):
        rf.codes_to_latents(torch.tensor([[[-1, 3]]]), q)
    with pytest.raises(ValueError, match="projections"):
        rf.Quantizer.fsq([7, 5, 5, 5, 5], [torch.nn.Linear(4, 3)])
    with pytest.raises(ValueError, match="levels"):
        rf.fsq_codebook([1, 5])
    with pytest.raises(TypeError, match="quantizer"):
        rf.codes_to_latents(torch.zeros(1, 2, 2, dtype=torch.long), [1, 2])
    with pytest.raises(IndexError, match="codes"):  # saturated, not wrapped to 5
        rf.codes_to_latents(torch.tensor([[[2**32 + 5, 1]]]), q)
    with pytest.raises(ValueError, match="frame grid"):
        rf.codes_to_latents(torch.zeros(2, 0, 3, dtype=torch.long), q)
    with pytest.raises(ValueError, match="frame_shape"):
        rf.VideoTokenLayout(frame_shape=5)


def test_quantizer_clear_cache_after_data_updates(vbackend):
    lin = torch.nn.Linear(5, 3)
    q = rf.Quantizer.fsq([7, 5, 5, 5, 5], [lin])
    before = q.table().clone()
    lin.bias.data.add_(1.0)  # bypasses the version counter (EMA-style update)
    q.clear_cache()
    torch.testing.assert_close(q.table(), before + 1.0)


# ------------------------------------------------------------------------------------------------
# pixel_metrics
# ------------------------------------------------------------------------------------------------


def _f64(pred, target, group_size, frames=1, data_range=1.0):
    return pixel_metrics_ref(
        pred.reshape(-1, *pred.shape[-3:]),
        target.reshape(-1, *target.shape[-3:]),
        frames,
        group_size,
        data_range,
        0.01,
        0.03,
        True,
        11,
        1.5,
        dtype=torch.float64,
    )


SHAPES = [(11, 11), (17, 17), (11, 40), (64, 64), (256, 320)]


@pytest.mark.parametrize("hw", SHAPES)
@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("group_size", [1, 4, 16])
def test_pixel_metrics_against_float64(vbackend, hw, channels, group_size):
    groups = 1 if hw == (256, 320) else 2
    pred = torch.rand(groups * group_size, channels, *hw)
    target = (pred[::group_size] + 0.1 * torch.randn(groups, channels, *hw)).clamp(0, 1)  # similar frames
    got = rf.pixel_metrics(pred, target, group_size=group_size)
    want = _f64(pred, target, group_size)
    for i, name in enumerate(("mse", "mae", "psnr", "ssim")):
        assert got[name].shape == (groups * group_size,) and got[name].dtype == torch.float32
        torch.testing.assert_close(got[name].double(), want[i].double(), rtol=2e-5, atol=2e-5, msg=name)


@pytest.mark.parametrize("hw", [(11, 11), (17, 17), (64, 64), (256, 320)])
@pytest.mark.parametrize("channels", [1, 3])
def test_pixel_metrics_against_piqa(vbackend, hw, channels):
    piqa = import_piqa()
    pred = torch.rand(8, channels, *hw)
    target = torch.rand(2, channels, *hw)
    got = rf.pixel_metrics(pred, target, group_size=4)
    rep = target.repeat_interleave(4, 0)
    ssim = piqa.SSIM(window_size=11, sigma=1.5, n_channels=channels, reduction="none")(pred, rep)
    psnr = piqa.PSNR(epsilon=1e-8, value_range=1.0, reduction="none")(pred, rep)
    torch.testing.assert_close(got["ssim"], ssim, rtol=1e-5, atol=2e-6)
    torch.testing.assert_close(got["psnr"], psnr, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("hw", [(11, 11), (17, 17), (64, 64), (256, 320)])
def test_pixel_metrics_against_pytorch_msssim(vbackend, hw):
    msssim = pytest.importorskip("pytorch_msssim")
    pred = torch.rand(4, 3, *hw)
    target = torch.rand(4, 3, *hw)
    got = rf.pixel_metrics(pred, target, metrics=("ssim",))["ssim"]
    want = msssim.ssim(pred, target, data_range=1.0, size_average=False)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=2e-6)


@pytest.mark.parametrize("group_size", [1, 3])
def test_identical_images(vbackend, group_size):
    real = torch.rand(6 // group_size, 3, 32, 24)
    x = real.repeat_interleave(group_size, 0)
    got = rf.pixel_metrics(x, real, group_size=group_size)
    assert (got["mse"] == 0).all() and (got["mae"] == 0).all()
    torch.testing.assert_close(got["psnr"], torch.full((6,), 80.0))
    torch.testing.assert_close(got["ssim"], torch.ones(6), rtol=0, atol=1e-6)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_inputs_are_read_exactly(vbackend, dtype):
    pred = torch.rand(8, 3, 20, 30).to(dtype)
    target = torch.rand(2, 3, 20, 30)  # mixed dtypes: pred half, target float32
    got = rf.pixel_metrics(pred, target, group_size=4)
    want = _f64(pred, target, 4)
    for i, name in enumerate(("mse", "mae", "psnr", "ssim")):
        torch.testing.assert_close(got[name].double(), want[i].double(), rtol=2e-5, atol=2e-5, msg=name)


def test_inputs_are_clamped_to_data_range(vbackend):
    pred = torch.rand(4, 3, 16, 16) * 3 - 1  # decoder overshoot outside [0, 2]
    target = torch.rand(4, 3, 16, 16) * 2
    got = rf.pixel_metrics(pred, target, data_range=2.0)
    want = rf.pixel_metrics(pred.clamp(0, 2), target, data_range=2.0)
    for name in got:
        torch.testing.assert_close(got[name], want[name], rtol=0, atol=0)
    torch.testing.assert_close(got["psnr"], 10 * torch.log10(4 / (got["mse"] + 1e-8)))


def test_metric_subsets_and_nan(vbackend):
    pred, target = torch.rand(4, 3, 12, 12), torch.rand(4, 3, 12, 12)
    only = rf.pixel_metrics(pred, target, metrics=("mae", "psnr"))
    assert list(only) == ["mae", "psnr"]
    torch.testing.assert_close(only["mae"], rf.pixel_metrics(pred, target)["mae"], rtol=0, atol=0)
    # frames smaller than the window are fine when SSIM is not asked for
    small = rf.pixel_metrics(pred[..., :5, :5], target[..., :5, :5], metrics=("mse",))["mse"]
    torch.testing.assert_close(small, ((pred[..., :5, :5] - target[..., :5, :5]) ** 2).mean((1, 2, 3)))
    pred[1, 0, 3, 3] = float("nan")  # a broken decode shows up as NaN, it is not clamped away
    out = rf.pixel_metrics(pred, target)
    assert torch.isnan(out["mse"][1]) and torch.isnan(out["ssim"][1]) and torch.isfinite(out["mse"][0])


@pytest.mark.parametrize("how", ["mean", "last", "discount"])
def test_per_frame_metrics_and_aggregation(vbackend, how):
    """[B, T, C, H, W] predictions against [G, T, ...] real clips (RLVR-World multi-step reward)."""
    pred = torch.rand(6, 3, 3, 16, 18)
    target = torch.rand(2, 3, 3, 16, 18)
    per = rf.pixel_metrics(pred, target, group_size=3)
    assert per["ssim"].shape == (6, 3)
    for b in range(6):
        for t in range(3):
            one = rf.pixel_metrics(pred[b, t][None], target[b // 3, t][None])
            torch.testing.assert_close(per["mae"][b, t], one["mae"][0])
            torch.testing.assert_close(per["ssim"][b, t], one["ssim"][0])
    agg = rf.pixel_metrics(pred, target, group_size=3, aggregate=how)["mae"]
    weight = torch.tensor([1.0, 0.9, 0.81])
    want = {
        "mean": per["mae"].mean(1),
        "last": per["mae"][:, -1],
        "discount": (per["mae"] * weight).sum(1) / weight.sum(),
    }[how]
    torch.testing.assert_close(agg, want)


def test_pixel_metrics_bad_input():
    x = torch.rand(4, 3, 16, 16)
    with pytest.raises(ValueError, match="smaller than the SSIM window"):
        rf.pixel_metrics(x[..., :10, :], x[..., :10, :])
    with pytest.raises(ValueError, match="group_size"):
        rf.pixel_metrics(x, x[:1], group_size=3)
    with pytest.raises(ValueError, match="target"):
        rf.pixel_metrics(x, x[:, :2])
    with pytest.raises(TypeError, match="pred"):
        rf.pixel_metrics(x.double(), x)
    with pytest.raises(ValueError, match="metrics"):
        rf.pixel_metrics(x, x, metrics=("lpips",))
    with pytest.raises(ValueError, match="aggregate"):
        rf.pixel_metrics(x, x, aggregate="mean")
    with pytest.raises(ValueError, match="window_size"):
        rf.pixel_metrics(x, x, window_size=4)
    with pytest.raises(TypeError, match="metrics"):
        rf.pixel_metrics(x, x, metrics="ssim")
    with pytest.raises(ValueError, match="data_range"):
        rf.pixel_metrics(x, x, data_range=float("inf"))
    with pytest.raises(ValueError, match="group_size"):
        rf.pixel_metrics(x, x, group_size=True)
    with pytest.raises(ValueError, match="non-empty"):
        rf.pixel_metrics(x[:, :0], x[:, :0])
    with pytest.raises(ValueError, match="at least one frame"):
        rf.pixel_metrics(x[:, None][:, :0], x[:, None][:, :0], aggregate="mean")


def test_pixel_metrics_op_rejects_targets_not_whole_clips():
    """Direct op call: 2 target images cannot be clips of 4 frames (would read past the targets)."""
    if not HAS_EXT:
        pytest.skip("extension not built")
    x = torch.rand(4, 1, 11, 11)
    with pytest.raises(RuntimeError, match="frames dividing M"):
        rf.ops.video.extension().pixel_metrics(x, x[:2], 4, 2, 1.0, 0.01, 0.03, True, gaussian_window(11, 1.5))


def test_gaussian_window_is_piqas():
    import_piqa()
    from piqa.utils.functional import gaussian_kernel

    torch.testing.assert_close(gaussian_window(11, 1.5), gaussian_kernel(11, 1.5).flatten(), rtol=1e-6, atol=1e-7)


# ------------------------------------------------------------------------------------------------
# pixel_reward
# ------------------------------------------------------------------------------------------------


def test_pixel_reward_signs_follow_rlvr_world(vbackend):
    """reward = -(w_mae MAE + w_mse MSE - w_ssim SSIM - w_psnr PSNR), as in their _compute_loss."""
    pred, target = torch.rand(8, 3, 16, 16), torch.rand(2, 3, 16, 16)
    w = {"mae": 1.0, "mse": 0.5, "ssim": 2.0, "psnr": 0.01}
    reward, m = pixel_reward(pred, target, w, group_size=4, return_metrics=True)
    want = -(m["mae"] + 0.5 * m["mse"] - 2.0 * m["ssim"] - 0.01 * m["psnr"])
    torch.testing.assert_close(reward, want)
    best = pixel_reward(target.repeat_interleave(4, 0), target, w, group_size=4)
    assert (best > reward).all()  # a perfect prediction beats every other
    torch.testing.assert_close(best, torch.full((8,), -(0 + 0 - 2.0 - 0.8)))


def test_pixel_reward_invalid_penalty(vbackend):
    pred, target = torch.rand(4, 3, 16, 16), torch.rand(1, 3, 16, 16)
    valid = torch.tensor([True, False, True, False])
    r = pixel_reward(pred, target, {"mae": 1.0, "ssim": 1.0}, group_size=4, valid=valid, invalid_reward=-7.0)
    assert r[1] == -7.0 and r[3] == -7.0 and r[0] > -2.0
    r = pixel_reward(pred, target, {"mae": 1.0, "ssim": 1.0}, group_size=4, valid=valid)
    assert r[1] == default_invalid_reward({"mae": 1.0, "ssim": 1.0}) == -2.0
    assert (r[valid] >= -2.0).all()


def test_pixel_reward_lpips_term(vbackend):
    from rlvr_fast.models.lpips import LPIPS

    net = LPIPS()
    pred, target = torch.rand(6, 3, 32, 32), torch.rand(2, 3, 32, 32)
    reward, m = pixel_reward(pred, target, {"mae": 1.0, "lpips": 1.0}, group_size=3, lpips=net, return_metrics=True)
    want_lp = net(pred, target.repeat_interleave(3, 0))
    torch.testing.assert_close(m["lpips"], want_lp, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(reward, -(m["mae"] + want_lp))
    # per-frame: LPIPS of clip b, frame t against real clip b // 3, frame t
    pred5, target5 = torch.rand(6, 2, 3, 32, 32), torch.rand(2, 2, 3, 32, 32)
    r5, m5 = pixel_reward(
        pred5, target5, {"lpips": 1.0}, group_size=3, lpips=net, aggregate="last", return_metrics=True
    )
    torch.testing.assert_close(m5["lpips"], net(pred5[:, 1], target5[:, 1], group_size=3), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="LPIPS"):
        pixel_reward(pred, target, {"lpips": 1.0}, group_size=3)


@pytest.mark.parametrize("how", ["mean", "last", "discount"])
def test_pixel_reward_multi_step_aggregates_loss(vbackend, how):
    pred, target = torch.rand(4, 3, 3, 16, 16), torch.rand(2, 3, 3, 16, 16)
    w = {"mae": 1.0, "ssim": 0.5}
    r = pixel_reward(pred, target, w, group_size=2, aggregate=how)
    per = rf.pixel_metrics(pred, target, group_size=2)
    loss = per["mae"] - 0.5 * per["ssim"]  # RLVR-World msp_reward_fn aggregates the per-frame loss
    torch.testing.assert_close(r, -rf.aggregate_frames(loss, how, 0.9))


def test_default_invalid_reward_is_the_worst_valid_reward():
    assert default_invalid_reward({"mae": 1.0, "ssim": 1.0}) == -2.0
    assert default_invalid_reward({"mse": 2.0}, data_range=2.0) == -8.0
    assert default_invalid_reward({"psnr": 0.1}) == pytest.approx(0.1 * 10 * math.log10(1 / (1 + 1e-8)))
    assert default_invalid_reward({"psnr": -0.1}) == pytest.approx(-8.0)  # reward = -0.1 PSNR, worst at 80 dB
    assert default_invalid_reward({"ssim": -1.0, "lpips": 0.5}) == -1.5


def test_pixel_reward_bad_weights():
    x = torch.rand(2, 3, 16, 16)
    with pytest.raises(ValueError, match="invalid_reward"):
        pixel_reward(x, x, {"mae": 1.0}, invalid_reward=float("nan"))
    with pytest.raises(ValueError, match="weights"):
        pixel_reward(x, x, {"fvd": 1.0})
    with pytest.raises(ValueError, match="weights"):
        pixel_reward(x, x, {"mae": float("nan")})
    with pytest.raises(ValueError, match="valid"):
        pixel_reward(x, x, {"mae": 1.0}, valid=torch.ones(3, dtype=torch.bool))


# ------------------------------------------------------------------------------------------------
# scatter_sequence_reward
# ------------------------------------------------------------------------------------------------


def test_scatter_places_reward_on_last_valid_token(vbackend):
    reward = torch.tensor([1.5, -2.0, 3.0, 4.0])
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [0, 0, 0, 0, 0], [1, 0, 1, 0, 0]])
    out = rf.scatter_sequence_reward(reward, mask)
    want = torch.zeros(4, 5)
    want[0, 2], want[1, 4], want[3, 2] = 1.5, -2.0, 4.0  # row 2: empty response, all zeros
    assert torch.equal(out, want) and out.dtype == torch.float32


def test_scatter_matches_verl_loop_and_reference(vbackend):
    lengths = torch.randint(1, 50, (64,))
    mask = torch.arange(50)[None] < lengths[:, None]
    reward = torch.randn(64, dtype=torch.bfloat16)
    out = rf.scatter_sequence_reward(reward, mask)
    verl = torch.zeros(64, 50)
    for i in range(64):  # verl's reward manager
        verl[i, lengths[i] - 1] = reward[i].float()
    assert torch.equal(out, verl)
    assert torch.equal(out, rf.ops.scatter_sequence_reward_ref(reward.float(), mask))


def test_scatter_edge_shapes(vbackend):
    assert rf.scatter_sequence_reward(torch.zeros(0), torch.zeros(0, 7, dtype=torch.bool)).shape == (0, 7)
    assert rf.scatter_sequence_reward(torch.ones(3), torch.zeros(3, 0, dtype=torch.bool)).shape == (3, 0)
    with pytest.raises(ValueError, match="finite"):
        rf.scatter_sequence_reward(torch.tensor([float("nan")]), torch.ones(1, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="rows"):
        rf.scatter_sequence_reward(torch.ones(2), torch.ones(3, 2, dtype=torch.bool))


# ------------------------------------------------------------------------------------------------
# Dispatch, custom ops, determinism
# ------------------------------------------------------------------------------------------------


def test_backends_agree_bitwise_where_exact(monkeypatch):
    """cpp vs torch: integer ops and the gather are exact; metrics agree to float32 rounding."""
    if not HAS_EXT:
        pytest.skip("extension not built")
    resp, mask = _single_step(8)
    resp[2, 7] = 9999
    x, t = torch.rand(8, 3, 20, 20), torch.rand(2, 3, 20, 20)
    outs = {}
    for b in ("cpp", "torch"):
        monkeypatch.setenv("RLVR_FAST_BACKEND", b)
        codes, valid, n_bad = rf.unpack_video_tokens(resp, mask, L1)
        lat = rf.codes_to_latents(codes, rf.Quantizer.fsq([7, 5, 5, 5, 5]))
        outs[b] = (codes, valid, n_bad, lat, rf.pixel_metrics(x, t, group_size=4))
    for a, b in zip(outs["cpp"][:4], outs["torch"][:4]):
        assert torch.equal(a, b)
    for k in outs["cpp"][4]:
        torch.testing.assert_close(outs["cpp"][4][k], outs["torch"][4][k], rtol=1e-5, atol=1e-6)


def test_cpp_kernels_are_deterministic(monkeypatch):
    if not HAS_EXT:
        pytest.skip("extension not built")
    monkeypatch.setenv("RLVR_FAST_BACKEND", "cpp")
    x, t = torch.rand(32, 3, 40, 50), torch.rand(2, 3, 40, 50)
    a, b = rf.pixel_metrics(x, t, group_size=16), rf.pixel_metrics(x, t, group_size=16)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_auto_backend_on_cpu_is_cpp_and_falls_back(monkeypatch, caplog):
    monkeypatch.delenv("RLVR_FAST_BACKEND", raising=False)
    cpu = torch.device("cpu")
    if HAS_EXT:
        assert _dispatch.select_backend("pixel_metrics", cpu, ("torch", "cpp", "cuda")) == "cpp"
    monkeypatch.setattr(_dispatch, "_load_extension", lambda: (None, "not built (test)"))
    _dispatch._warned.clear()
    with caplog.at_level("WARNING", logger="rlvr_fast"):
        assert _dispatch.select_backend("pixel_metrics", cpu, ("torch", "cpp", "cuda")) == "torch"
        x = torch.rand(2, 3, 12, 12)
        rf.pixel_metrics(x, x)  # still works, through the reference
    assert any("not built (test)" in r.message for r in caplog.records)
    monkeypatch.setenv("RLVR_FAST_BACKEND", "cpp")
    with pytest.raises(RuntimeError, match="not built"):
        rf.pixel_metrics(x, x)


def test_forced_cuda_backend_on_cpu_tensors_raises(monkeypatch):
    monkeypatch.setenv("RLVR_FAST_BACKEND", "cuda")
    with pytest.raises(RuntimeError, match="CUDA tensors"):
        rf.scatter_sequence_reward(torch.ones(1), torch.ones(1, 2, dtype=torch.bool))


@pytest.mark.parametrize("backend_name", VIDEO_BACKENDS)
def test_opcheck(monkeypatch, backend_name):
    monkeypatch.setenv("RLVR_FAST_BACKEND", backend_name)
    resp, mask = _single_step(3)
    slots = _slot_tensor(L1, torch.device("cpu"))
    torch.library.opcheck(torch.ops.rlvr_fast.unpack_video_tokens.default, (resp, mask, slots, 0, 4375))
    codes = torch.randint(0, 11, (4, 12), dtype=torch.int32)
    for cl in (False, True):
        torch.library.opcheck(torch.ops.rlvr_fast.codes_to_latents.default, (codes, torch.randn(11, 3), cl))
    x, t = torch.rand(4, 3, 16, 16), torch.rand(2, 3, 16, 16)
    torch.library.opcheck(torch.ops.rlvr_fast.pixel_metrics.default, (x, t, 1, 2, 1.0, 0.01, 0.03, True, 11, 1.5))
    torch.library.opcheck(torch.ops.rlvr_fast.scatter_sequence_reward.default, (torch.randn(3), mask))


def test_reward_path_compiles_without_graph_breaks():
    """tokens -> codes -> latents -> (a decoder) -> reward -> token rewards, under torch.compile(fullgraph)."""
    q = rf.Quantizer.fsq([7, 5, 5, 5, 5])
    table = q.table()
    decoder = torch.nn.Sequential(torch.nn.Conv2d(5, 3, 3, padding=1), torch.nn.Upsample(scale_factor=2))

    def path(resp, mask, target):
        codes, valid, _ = rf.unpack_video_tokens(resp, mask, L1)
        frames = decoder(rf.codes_to_latents(codes, table)).sigmoid()
        reward = pixel_reward(frames, target, {"mae": 1.0, "ssim": 1.0}, group_size=2, valid=valid, invalid_reward=-2.0)
        return rf.scatter_sequence_reward(reward, mask)

    resp, mask = _single_step(4)
    target = torch.rand(2, 3, 32, 40)
    eager = path(resp, mask, target)
    table = q  # the Quantizer itself works inside the graph too (its table is built there)
    torch._dynamo.reset()
    torch.testing.assert_close(torch.compile(path, fullgraph=True, backend="aot_eager")(resp, mask, target), eager)
    table = q.table()
    torch._dynamo.reset()
    compiled = torch.compile(path, fullgraph=True, backend="aot_eager")(resp, mask, target)
    torch.testing.assert_close(compiled, eager)
    assert (eager != 0).sum() == 4 and (eager[:, 320] != 0).all()
