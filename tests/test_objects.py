"""The object reward (rlvr_fast.rewards.objects) against a float64 re-computation on hand-built frames,
its place in the video reward, and the sprite world's instance."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from rlvr_fast.rewards.objects import ObjectReward
from rlvr_fast.rewards.video import REWARD_TERMS, default_invalid_reward, pixel_reward
from rlvr_fast.worlds.sprite import Sprite, SpriteWorld, sprite_accuracy, sprite_objects

WORLD = SpriteWorld(n_sprites=3)
# red 8 px at (10, 40), green 6 px at (44, 40), blue 4 px at (30, 50): clear of the walls, 64 x 64
STATE = (Sprite(0, 10, 40), Sprite(1, 44, 40, 2, 2), Sprite(2, 30, 50, 3, -3))
PALETTE = np.array([(0.1,) * 3, (0.5,) * 3, (1.0,) * 3, (0.9, 0.2, 0.2), (0.2, 0.8, 0.3), (0.25, 0.45, 0.95)])
SIZES = (8, 6, 4)


def reference(pred: np.ndarray, real: np.ndarray) -> float:
    """Float64, one frame pair [3, H, W], object by object, written from the module docstring."""
    label_p = ((pred[None] - PALETTE[:, :, None, None]) ** 2).sum(1).argmin(0)
    label_r = ((real[None] - PALETTE[:, :, None, None]) ** 2).sum(1).argmin(0)
    scores = []
    for k, size in enumerate(SIZES):
        p, r = np.argwhere(label_p == 3 + k), np.argwhere(label_r == 3 + k)  # (y, x) pixels
        if len(p) == 0 and len(r) == 0:
            scores.append(1.0)
        elif len(p) == 0 or len(r) == 0:
            scores.append(0.0)
        else:
            presence = min(len(p), len(r)) / max(len(p), len(r))
            d = math.dist(p.mean(0), r.mean(0))
            scores.append(presence * math.exp(-d / size))
    return float(np.mean(scores))


def render(state) -> torch.Tensor:
    return WORLD.render(state)


def moved(k: int, dx: int, dy: int = 0):
    return tuple(Sprite(s.kind, s.x + dx, s.y + dy, s.vx, s.vy) if s.kind == k else s for s in STATE)


def hand_built() -> dict[str, torch.Tensor]:
    real = render(STATE)
    frames = {"placed": real.clone()}
    for k in (1, 2, 4, 9):
        frames[f"red shifted {k} px"] = render(moved(0, k))
    frames["green shifted 3,4 px"] = render(moved(1, 3, 4))
    frames["green missing"] = render(tuple(s for s in STATE if s.kind != 1))
    frames["all missing"] = render(())
    extra = real.clone()
    extra[:, 6:12, 30:36] = torch.tensor((0.2, 0.8, 0.3))[:, None, None]  # a second green blob
    frames["extra green"] = extra
    occluded = real.clone()
    occluded[:, 40:48, 10:14] = 0.5  # a wall over the left half of the red sprite
    frames["red half under a wall"] = occluded
    blurred = torch.nn.functional.avg_pool2d(real[None], 3, 1, 1)[0]
    frames["blurred"] = blurred
    noisy = (real + 0.05 * torch.randn(real.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    frames["noisy"] = noisy
    return frames


def test_object_reward_matches_float64_on_hand_built_frames():
    real = render(STATE)
    frames = hand_built()
    pred = torch.stack(list(frames.values()))
    got = sprite_objects(3).scores(pred, real[None], group_size=len(frames))
    want = [reference(f.double().numpy(), real.double().numpy()) for f in frames.values()]
    assert got.dtype == torch.float32 and got.shape == (len(frames),)
    for name, g, w in zip(frames, got.tolist(), want):
        assert g == pytest.approx(w, abs=1e-6), name
    by = dict(zip(frames, got.tolist()))
    # the values the formula gives, by hand: 1 placed; a shift of k px costs exp(-k / 8) on red (1/3 weight)
    assert by["placed"] == pytest.approx(1.0)
    for k in (1, 2, 4, 9):
        assert by[f"red shifted {k} px"] == pytest.approx((2 + math.exp(-k / 8)) / 3, abs=1e-6)
    assert by["green shifted 3,4 px"] == pytest.approx((2 + math.exp(-5 / 6)) / 3, abs=1e-6)
    assert by["green missing"] == pytest.approx(2 / 3) and by["all missing"] == 0.0
    assert by["noisy"] == pytest.approx(1.0)  # nearest-colour labels ignore small noise
    # shifting further is worse; erasing is worse than any nearby drawing
    shifts = [by[f"red shifted {k} px"] for k in (1, 2, 4, 9)]
    assert shifts == sorted(shifts, reverse=True) and by["green missing"] < shifts[-1]
    assert by["extra green"] < 1 and by["red half under a wall"] < 1


def test_groups_frames_and_the_in_place_metric():
    real = render(STATE)
    frames = hand_built()
    names = ["placed", "red shifted 9 px", "green missing", "all missing"]
    pred = torch.stack([frames[n] for n in names])  # [4, 3, H, W]: two groups of two
    reals = torch.stack([real, render(moved(0, 9))])  # the second group's truth is the shifted red
    obj = sprite_objects(3)
    got = obj.scores(pred, reals, group_size=2)
    want = [
        reference(pred[i].double().numpy(), reals[i // 2].double().numpy()) for i in range(4)
    ]  # prediction i against real i // 2, labelled once
    assert got.tolist() == pytest.approx(want, abs=1e-6)
    # per-frame layout [B, T, 3, H, W] -> [B, T]
    per_frame = obj.scores(
        pred.view(2, 2, *pred.shape[1:]), reals[None].expand(1, 2, *reals.shape[1:]).clone(), group_size=2
    )
    assert per_frame.shape == (2, 2)
    assert per_frame.flatten().tolist() == pytest.approx(
        [reference(pred[i].double().numpy(), reals[i % 2].double().numpy()) for i in range(4)], abs=1e-6
    )
    # in place: IoU >= 0.5 per object; a 9 px shift of the 8 px red sprite leaves no overlap
    assert obj.in_place(pred, real[None], group_size=4).tolist() == pytest.approx([1.0, 2 / 3, 2 / 3, 0.0])
    assert sprite_accuracy(pred[:, None], real[None, None], 3, group_size=4).tolist() == pytest.approx(
        [1.0, 2 / 3, 2 / 3, 0.0]
    )


def test_object_term_in_the_pixel_reward():
    real = render(STATE)
    frames = hand_built()
    pred = torch.stack(list(frames.values()))
    obj = sprite_objects(3)
    base = pixel_reward(pred, real[None], {"mae": 1.0, "ssim": 1.0}, group_size=len(frames))
    both, metrics = pixel_reward(
        pred,
        real[None],
        {"mae": 1.0, "ssim": 1.0, "objects": 2.0},
        group_size=len(frames),
        objects=obj,
        return_metrics=True,
    )
    scores = obj.scores(pred, real[None], group_size=len(frames))
    torch.testing.assert_close(both, base + 2.0 * scores)  # higher object score, higher reward
    torch.testing.assert_close(metrics["objects"], scores)
    # the term that erasing the sprites cannot win: on MAE + SSIM the empty floor beats a 4 px miss
    i_empty, i_miss = list(frames).index("all missing"), list(frames).index("red shifted 4 px")
    assert both[i_miss] > both[i_empty]
    assert "objects" in REWARD_TERMS
    assert default_invalid_reward({"mae": 1.0, "ssim": 1.0, "objects": 2.0}) == pytest.approx(-(1.0 + 1.0))
    with pytest.raises(ValueError, match="ObjectReward"):
        pixel_reward(pred, real[None], {"mae": 1.0, "objects": 1.0}, group_size=len(frames))


def test_bad_arguments_name_themselves():
    with pytest.raises(ValueError, match="sizes"):
        ObjectReward([(0, 0, 0)], [(1, 0, 0)], [0])
    with pytest.raises(ValueError, match="colours must differ"):
        ObjectReward([(0, 0, 0)], [(0, 0, 0)], [3])
    with pytest.raises(ValueError, match="min_iou"):
        ObjectReward([(0, 0, 0)], [(1, 0, 0)], [3], min_iou=0)
    with pytest.raises(ValueError, match="n_sprites"):
        sprite_objects(5)
    obj = sprite_objects(2)
    with pytest.raises(ValueError, match="group_size"):
        obj.scores(torch.zeros(3, 3, 16, 16), torch.zeros(2, 3, 16, 16), group_size=2)


def test_worlds_without_objects_and_presets_without_lpips_files_are_refused():
    from rlvr_fast.ops import Quantizer, VideoTokenLayout
    from rlvr_fast.rewards.video import VideoReward
    from rlvr_fast.trainer.config import ConfigError, load_config

    layout = VideoTokenLayout(
        frames=1, frame_shape=(2, 2), visual_offset=0, visual_vocab=4, bos_id=4, eos_id=5, pad_id=5, eos_after=True
    )
    quantizer = Quantizer.vq(torch.arange(4, dtype=torch.float64)[:, None] / 3)
    with pytest.raises(ValueError, match="no objects of known colours"):
        VideoReward(layout, quantizer, lambda z: z, {"mae": 1.0, "objects": 1.0})
    with pytest.raises(TypeError, match="ObjectReward"):
        VideoReward(layout, quantizer, lambda z: z, {"mae": 1.0}, objects="sprites")
    # the RT-1 preset weights LPIPS: without its weight files the run stops before any work, naming the keys
    with pytest.raises(ConfigError, match="set video.lpips_vgg_path and video.lpips_lin_path"):
        load_config(
            None, ["data.train_path=x", "model.path=m", "video.tokenizer_path=t"], preset="rlvr_world_rt1_single_step"
        )
    load_config(None, [], preset="rlvr_world_rt1_single_step", inputs=False)  # printing it needs no files


def test_the_end_of_run_table_marks_metrics_that_got_worse():
    from rlvr_fast.cli import format_table

    summary = {
        "mle": {"exact": 0.50, "mae": 0.0185, "ssim": 0.879, "sprites": 0.113, "psnr": 21.677, "lpips": 0.30},
        "rlvr": {"exact": 0.52, "mae": 0.0190, "ssim": 0.887, "sprites": 0.096, "psnr": 21.6774, "lpips": 0.29},
    }
    rows = {line[:28].strip(): line for line in format_table(summary).splitlines()[1:]}
    worse = {label for label, line in rows.items() if line.endswith("<- worse")}
    # lower is better for MAE and LPIPS; a change that rounds to zero as printed is not marked
    assert worse == {"MAE (lower is better)", "sprites in place"}
    assert rows["PSNR, dB"].endswith("+0.000")
