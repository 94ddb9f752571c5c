"""The video demo's claim at CI size: GRPO on the demo's reward does not lower the held-out object metric.

`rlvr_fast/configs/demo_video.yaml` (its reward weights, KL, learning rate, rollout sizes) shrunk to
about two minutes on one CPU thread: a smaller model and tokenizer, fewer clips and steps. The
pixel-only reward the demo used before (MAE + SSIM) erases sprites (README, "The video world"); the
object term must keep them. One thread makes the run the same on any machine (the thread count
changes float reductions, hence the sampled trajectory).
"""

from __future__ import annotations

import pytest

from rlvr_fast.trainer import config as C

DEMO = "rlvr_fast/configs/demo_video.yaml"

CI_SIZE = [
    "data.n_train=1000",
    "data.n_test=256",
    "video.tokenizer_steps=300",
    "model.hidden_size=64",
    "model.num_layers=2",
    "model.num_heads=2",
    "model.intermediate_size=192",
    "trainer.steps=20",
    "trainer.eval_every=20",
    "trainer.save_every=20",
    "trainer.eval_size=256",
    "trainer.progress=false",
    "trainer.cpu_threads=1",
    "trainer.seed=0",
    "video.preview=2",
]

# The GRPO change in held-out `objects` at this size, measured over seeds 0-5 with the demo's weights
# (2026-12-05, tokenizer on auto threads): +0.018, +0.003, -0.009, +0.006, -0.003, -0.019 (mean -0.001,
# sd 0.013); with the pixel-only reward, seeds 0-2: -0.034, -0.037, -0.011. The tolerance, 2 sd, sits
# above every demo-weight change measured and below the pixel-only reward's typical drop.
OBJECTS_TOLERANCE = 0.025


@pytest.mark.slow
def test_grpo_on_the_demo_reward_keeps_the_objects(tmp_path):
    from rlvr_fast.trainer import train

    cfg = C.load_config(DEMO, [*CI_SIZE, f"trainer.out_dir={tmp_path}"])
    assert cfg.video.reward_weights.get("objects", 0) > 0, "the demo's reward must weight the object term"
    summary = train(cfg)
    mle, rlvr = summary["mle"], summary["rlvr"]
    assert 0.0 < mle["objects"] < 1.0 and 0.0 <= rlvr["objects"] <= 1.0
    assert rlvr["objects"] >= mle["objects"] - OBJECTS_TOLERANCE, (mle, rlvr)
    # and the pixel metrics it also optimises are not given back
    # (measured over the same seeds: MAE changed by -0.0009..+0.0002, SSIM by -0.0013..+0.0066)
    assert rlvr["mae"] <= mle["mae"] + 0.001 and rlvr["ssim"] >= mle["ssim"] - 0.005, (mle, rlvr)
