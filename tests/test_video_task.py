"""Video world models end to end: the reward path on tokens, the task (tokens, prompts, tokenizer cache),
forced action tokens in generation, and short MLE + GRPO runs on CPU (single- and multi-step, RT-1 npz)."""

from __future__ import annotations

import json
from typing import NamedTuple

import numpy as np
import pytest
import torch

from rlvr_fast.models.tiny_fsq import TinyFSQConfig, TinyFSQTokenizer
from rlvr_fast.ops import VideoTokenLayout, codes_to_latents, pixel_metrics_ref
from rlvr_fast.rewards.video import VideoReward, default_invalid_reward, default_weights
from rlvr_fast.trainer import config as C
from rlvr_fast.trainer.rollout import sample, teacher_batch

TINY = TinyFSQConfig(channels=(8, 16, 16), res_blocks=0, latent_channels=8, fsq_levels=(5, 4, 3))  # 60 codes

# A sprite-world run shrunk to seconds on 2 cores.
SHORT = [
    "data.world=sprite_video",
    "data.n_train=64",
    "data.n_test=8",
    "video.tokenizer_steps=3",
    "video.tokenizer_channels=[8, 16, 16]",
    "video.tokenizer_res_blocks=0",
    "model.hidden_size=32",
    "model.num_layers=1",
    "model.num_heads=2",
    "model.intermediate_size=64",
    "mle.steps=3",
    "mle.batch_size=8",
    "trainer.steps=2",
    "rollout.n=4",
    "rollout.prompts_per_step=2",
    "trainer.eval_size=8",
    "trainer.eval_every=1",
    "trainer.progress=false",
    "video.preview=2",
]


class _Generated(NamedTuple):
    """What a task scores of a rollout batch: the response ids and the tokens present."""

    responses: torch.Tensor
    present: torch.Tensor


def _tok(seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return TinyFSQTokenizer(TINY).eval()


def _layout(tok, frames=1, actions=0):
    K = tok.num_codes
    return VideoTokenLayout(
        frames=frames,
        frame_shape=(8, 8),
        visual_vocab=K,
        action_offset=K,
        action_bins=16,
        action_dims=max(actions, 1),
        action_tokens_per_frame=actions,
        bos_id=K + 16,
        eos_id=K + 17,
        pad_id=K + 17,
    )


# ----------------------------------------------------------------------------- reward path


def _reference(tok, layout, responses, present, target, n, weights, penalty):
    """Sample by sample: slice, decode_codes, clamp, float64 metrics, verl-style placement."""
    B, R = responses.shape
    out = torch.zeros(B, R, dtype=torch.float64)
    hw = layout.tokens_per_frame
    for i in range(B):
        ids = responses[i]
        valid = bool(present[i, : layout.response_length].all()) and bool(
            ((ids[:hw] >= 0) & (ids[:hw] < tok.num_codes)).all()
        )
        if valid:
            pred = tok.decode_codes(ids[:hw].view(1, 8, 8)).double()
            vals = pixel_metrics_ref(
                pred, target[i // n : i // n + 1], 1, 1, 1.0, 0.01, 0.03, True, 11, 1.5, dtype=torch.float64
            )
            m = dict(zip(("mse", "mae", "psnr", "ssim"), vals[:, 0].tolist()))
            r = -sum(w * (-1 if k in ("ssim", "psnr") else 1) * m[k] for k, w in weights.items())
        else:
            r = penalty
        out[i, int(present[i].nonzero().max())] = r
    return out


@pytest.mark.parametrize("weights", [None, {"mae": 1.0}, {"mse": 2.0, "psnr": 0.1, "ssim": 0.5}])
def test_video_reward_matches_per_sample_reference(weights):
    tok = _tok()
    layout = _layout(tok)
    g = torch.Generator().manual_seed(0)
    n, G = 3, 2
    codes = torch.randint(0, tok.num_codes, (G * n, 1, 8, 8), generator=g)
    responses = layout.response_ids(codes)
    present = torch.ones_like(responses, dtype=torch.bool)
    responses[1, 5] = layout.action_offset  # an action id in a visual slot: invalid
    present[4, 30:] = False  # early EOS: invalid
    target = torch.rand(G, 3, 64, 64, generator=g)
    reward = VideoReward.from_tokenizer(layout, tok, weights)
    out = reward(responses, present, target, group_size=n)
    w = weights or default_weights(False)
    assert reward.weights == w
    assert out.valid.tolist() == [True, False, True, True, False, True]
    # the default penalty is the worst reward a valid rollout can get
    ref = _reference(tok, layout, responses, present, target, n, w, default_invalid_reward(w))
    torch.testing.assert_close(out.token_rewards.double(), ref, atol=2e-5, rtol=1e-5)
    torch.testing.assert_close(out.scores.double(), ref.sum(1), atol=2e-5, rtol=1e-5)
    assert set(out.metrics) >= {"mse", "mae", "psnr", "ssim"}


def test_video_reward_perfect_prediction_is_best_and_invalid_gets_penalty():
    tok = _tok(1)
    layout = _layout(tok)

    def decoder(z):  # a decoder under which different codes give visibly different frames
        return (z[:, :3] * 0.5 + 0.5).repeat_interleave(8, -1).repeat_interleave(8, -2)

    codes = torch.randint(0, tok.num_codes, (2, 1, 8, 8), generator=torch.Generator().manual_seed(1))
    real = decoder(codes_to_latents(codes[:, 0], tok.quantizer())).clamp(0, 1)  # what a perfect prediction decodes to
    responses = layout.response_ids(codes).repeat_interleave(2, 0)
    responses[1] = layout.response_ids(torch.randint(0, tok.num_codes, (1, 1, 8, 8)))[0]
    responses[3, 10] = layout.eos_id  # early EOS
    present = torch.ones_like(responses, dtype=torch.bool)
    present[3, 11:] = False
    out = VideoReward(layout, tok.quantizer(), decoder, {"mae": 1.0, "ssim": 1.0}, invalid_reward=-7.0)(
        responses, present, real, group_size=2
    )
    assert out.scores[0].item() == pytest.approx(1.0, abs=1e-5)  # MAE 0, SSIM 1: the best reward
    assert out.scores[1].item() < out.scores[0].item()
    assert out.scores[3].item() == -7.0 and not out.valid[3]
    assert out.token_rewards[3, 10].item() == -7.0 and out.token_rewards[0, -1].item() == out.scores[0].item()


def test_video_reward_multistep_aggregation_and_checks():
    tok = _tok(2)
    layout = _layout(tok, frames=3, actions=2)
    g = torch.Generator().manual_seed(2)
    codes = torch.randint(0, tok.num_codes, (2, 3, 8, 8), generator=g)
    bins = torch.randint(0, 16, (2, 3, 2), generator=g)
    responses = layout.response_ids(codes, bins)
    present = torch.ones_like(responses, dtype=torch.bool)
    target = torch.rand(2, 3, 3, 64, 64, generator=g)
    frames = torch.stack([tok.decode_codes(codes[:, f]) for f in range(3)], 1)
    for how in ("mean", "last", "discount"):
        out = VideoReward.from_tokenizer(layout, tok, {"mae": 1.0}, aggregate=how, gamma=0.5)(
            responses, present, target
        )
        mae = (frames.double() - target.double()).abs().mean((2, 3, 4))  # [B, F]
        want = {
            "mean": mae.mean(1),
            "last": mae[:, -1],
            "discount": (mae * torch.tensor([1.0, 0.5, 0.25], dtype=torch.float64)).sum(1) / 1.75,
        }[how]
        torch.testing.assert_close(out.scores.double(), -want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="target"):
        VideoReward.from_tokenizer(layout, tok)(responses, present, target[:, :2])
    with pytest.raises(ValueError, match="visual_vocab"):
        VideoReward.from_tokenizer(VideoTokenLayout(), tok)
    with pytest.raises(ValueError, match="lpips"):
        VideoReward.from_tokenizer(layout, tok, {"lpips": 1.0})


def test_video_reward_refuses_float_targets_outside_unit_range(monkeypatch):
    """Float frames in [0, 255] used to be clamped to [0, 1] silently (every reward about -0.998)."""
    tok = _tok(2)
    layout = _layout(tok, frames=3, actions=2)
    g = torch.Generator().manual_seed(2)
    codes = torch.randint(0, tok.num_codes, (2, 3, 8, 8), generator=g)
    responses = layout.response_ids(codes, torch.randint(0, 16, (2, 3, 2), generator=g))
    present = torch.ones_like(responses, dtype=torch.bool)
    target = torch.rand(2, 3, 3, 64, 64, generator=g)
    reward = VideoReward.from_tokenizer(layout, tok, {"mae": 1.0})
    for bad, shown in ((target * 255, "divide float frames in [0, 255] by 255"), (target - 0.5, "[0, 1.0]")):
        with pytest.raises(ValueError, match=r"^target: expected float frames in \[0, 1.0\]") as info:
            reward(responses, present, bad)
        assert shown in str(info.value)
    as_uint8 = reward(responses, present, (target * 255).round().to(torch.uint8))  # uint8 is scaled, fine
    rescaled = reward(responses, present, (target * 255).round() / 255)
    torch.testing.assert_close(as_uint8.scores, rescaled.scores)
    monkeypatch.setenv("RLVR_FAST_CHECK_VALUES", "0")  # the check costs a sync; it can be switched off
    assert torch.isfinite(reward(responses, present, target * 255).scores).all()


# ----------------------------------------------------------------------------- forced tokens


def test_forced_slots_in_generation_and_teacher_batch():
    from rlvr_fast.models import tiny_llama
    from rlvr_fast.worlds.video_task import layout_tokenizer

    tok = _tok()
    layout = _layout(tok, frames=2, actions=2)
    hf_tok = layout_tokenizer(layout)
    assert len(hf_tok) == layout.vocab_size and hf_tok.eos_token_id == layout.eos_id == hf_tok.pad_token_id
    assert hf_tok.bos_token_id == layout.bos_id
    assert hf_tok.decode([0, layout.action_offset + 3, layout.eos_id]) == "v0 a3 <eos>"
    cfg = C.load_config(
        None, ["model.hidden_size=32", "model.num_layers=1", "model.num_heads=2", "model.intermediate_size=64"]
    )
    torch.manual_seed(0)
    model = tiny_llama(cfg.model, hf_tok).eval()
    slots = [False] * layout.response_length
    for f in range(2):
        for a in range(2):
            slots[f * 66 + 64 + a] = True
    answers = [
        layout.response_ids(torch.zeros(1, 2, 8, 8, dtype=torch.long), torch.tensor([[[1, 2], [3, 4]]]))[0].tolist(),
        layout.response_ids(torch.ones(1, 2, 8, 8, dtype=torch.long), torch.tensor([[[5, 6], [7, 8]]]))[0].tolist(),
    ]
    prompts = [[layout.bos_id], [3, layout.bos_id]]
    cfg.rollout.max_new_tokens = layout.response_length
    batch = sample(model, hf_tok, prompts, 3, cfg.rollout, forced_slots=slots, answers=answers)
    resp = batch.responses
    R = resp.shape[1]
    pos = [i for i, f in enumerate(slots) if f and i < R]
    forced_seen = 0
    for row in range(6):
        present = batch.present[row]
        for t in pos:
            if present[t]:  # a row that stopped early (EOS) has no tokens after it
                assert resp[row, t].item() == answers[row // 3][t]
                forced_seen += 1
        assert not batch.response_mask[row, pos].any()
        assert torch.equal(batch.response_mask[row] | torch.tensor(slots[:R]) & present, present)
    assert forced_seen >= 2  # some rows got past the first frame
    tb = teacher_batch(prompts, answers, hf_tok.pad_token_id, "cpu", slots)
    assert tb.present.all() and tb.response_mask.sum().item() == 2 * (layout.response_length - 4)
    with pytest.raises(ValueError, match="answers"):
        sample(model, hf_tok, prompts, 1, cfg.rollout, forced_slots=slots)


# ----------------------------------------------------------------------------- the task


def test_a_video_task_takes_a_ready_frame_tokenizer_and_scores_in_one_call():
    from rlvr_fast.task import ScoreStats
    from rlvr_fast.trainer.tasks import task_options
    from rlvr_fast.worlds import load_task

    cfg = C.load_config(None, [*SHORT, "data.n_train=4", "data.n_test=2"])
    tok = _tok()
    task = load_task("sprite_video", strict=False, **task_options(cfg), frame_tokenizer=tok)
    assert task.frame_tokenizer is tok and task.tokenizer.eos_token_id == task.layout.eos_id
    assert (len(task.train), len(task.test), task.select_metric) == (4, 2, "reward")
    answers = task.splits["test"].answers
    scored = task.score(_Generated(answers, torch.ones_like(answers, dtype=torch.bool)), task.test, 1)
    torch.testing.assert_close(scored.scores, scored.token_rewards.sum(-1))
    assert scored.stats == ScoreStats() and {"valid", "reward", "sprites", "mae"} <= set(scored.metrics)
    assert scored.metrics["valid"].tolist() == [1.0, 1.0]


def test_sprite_task_tokens_match_the_layout_and_the_tokenizer_is_cached(tmp_path, monkeypatch):
    import rlvr_fast.trainer.train_tokenizer as tt
    from rlvr_fast.trainer.tasks import build_task
    from rlvr_fast.worlds.sprite import SpriteWorld
    from rlvr_fast.worlds.video import discretize_actions

    cfg = C.load_config(None, SHORT)
    calls = []
    real_train = tt.train_tokenizer
    monkeypatch.setattr(tt, "train_tokenizer", lambda *a, **k: calls.append(1) or real_train(*a, **k))
    vtask = build_task(cfg, "cpu", cache_dir=tmp_path / "tok")
    assert len(calls) == 1 and (tmp_path / "tok" / "fingerprint.txt").is_file()
    lay = vtask.layout
    assert (lay.frame_shape, lay.visual_vocab, lay.action_dims, lay.response_length) == ((8, 8), 1000, 2, 65)
    assert (lay.action_offset, lay.bos_id, lay.eos_id) == (1000, 1256, 1257)
    # item 3 of the held-out split, rebuilt by hand from the world, the tokenizer and the discretiser
    ex = SpriteWorld(n_sprites=3, seed=0).sample(3, "test")
    codes = vtask.frame_tokenizer.encode((ex.frames * 255).round() / 255)  # the task keeps frames as uint8
    bins = discretize_actions(ex.actions, SpriteWorld().action_ranges(), 256)
    prompt, answer = vtask.encode(vtask.items("test")[3])
    assert prompt == [*codes[0].flatten().tolist(), *(bins[0] + 1000).tolist(), 1256]
    assert answer == [*codes[1].flatten().tolist(), 1257]
    # a second task with the same settings reuses the cached tokenizer; other settings retrain it
    again = build_task(cfg, "cpu", cache_dir=tmp_path / "tok")
    assert len(calls) == 1 and again.encode(again.items("test")[3]) == (prompt, answer)
    cfg2 = C.load_config(None, [*SHORT, "video.tokenizer_steps=4"])
    build_task(cfg2, "cpu", cache_dir=tmp_path / "tok")
    assert len(calls) == 2


def _check_summary(summary, out):
    for stage in ("mle", "rlvr"):
        m = summary[stage]
        assert {"mae", "mse", "psnr", "ssim", "valid", "reward"} <= set(m)
        assert 0 <= m["valid"] <= 1 and 0 <= m["mae"] <= 1 and -1 <= m["ssim"] <= 1
        assert all(np.isfinite(v) for v in m.values())
    assert summary["select_metric"] == "reward" and summary["task"] == "sprite_video"
    assert (out / "preview.png").is_file() and (out / "curves.png").is_file()
    saved = out / "checkpoint" / "frame_tokenizer"  # TinyFSQ's file name, or diffusers' (compressive)
    assert (saved / "model.safetensors").is_file() or (saved / "diffusion_pytorch_model.safetensors").is_file()
    recs = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    rl = [r for r in recs if r["stage"] == "rl"]
    assert rl and all(
        r["response_len"] > 0 and "train/mae" in r and "train/sprites" in r and "reward_s" in r for r in rl
    )


@pytest.mark.parametrize(
    "world,extra",
    [
        ("video", []),
        ("video", ["video.context_frames=2", "video.predict_frames=2", "video.aggregate=discount"]),
        ("video", ["video.tokenizer=tiny_ctx", "video.predict_frames=3", "model.max_position_embeddings=1024"]),
        ("video_msp", []),  # the demo's own config: 32x32, 7 frames in the ctx_msp layout
    ],
    ids=["single_step", "multi_step", "ctx_msp", "video_msp_demo"],
)
def test_short_grpo_run_and_eval_from_the_checkpoint(tmp_path, capsys, world, extra):
    from rlvr_fast.cli import DEMO_CONFIGS, main

    assert main(["demo", "--world", world, *SHORT, *extra, f"trainer.out_dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert "MAE (lower is better)" in out and "PSNR, dB" in out and "preview.png" in out
    summary = json.loads((tmp_path / "summary.json").read_text())
    _check_summary(summary, tmp_path)
    # the checkpoint carries its frame tokenizer: eval elsewhere reproduces the run's final numbers
    assert (
        main(
            [
                "eval",
                "--config",
                f"rlvr_fast/configs/{DEMO_CONFIGS[world]}",
                "--checkpoint",
                str(tmp_path / "checkpoint"),
                *SHORT,
                *extra,
                f"trainer.out_dir={tmp_path / 'elsewhere'}",
            ]
        )
        == 0
    )
    printed = capsys.readouterr().out
    got = json.loads(printed[printed.index("{") :])
    assert got == pytest.approx(summary["rlvr"], rel=1e-6, abs=1e-7)
    assert not (tmp_path / "elsewhere" / "tokenizer").exists()  # nothing was retrained


def test_rt1_npz_task_runs(tmp_path):
    """RLVR-World's converter format (uint8 [T, H, W, 3] ``image``, 13-dim ``action``), 64x64 frames."""
    from rlvr_fast.trainer import train

    rng = np.random.default_rng(0)
    root = tmp_path / "RT-1_processed"
    root.mkdir()
    for i in range(3):  # file 0 is held out (iVideoGPT's i % 100 == 0 rule)
        frames = (
            np.repeat(np.linspace(0, 255, 64, dtype=np.uint8)[None, None, :, None], 6, 0).repeat(64, 1).repeat(3, 3)
        )
        frames = (frames + rng.integers(0, 30, frames.shape)).astype(np.uint8)
        actions = rng.uniform(-0.5, 0.5, (6, 13))
        np.savez_compressed(root / f"train_eps_{i:08d}.npz", image=frames, action=actions)
    over = [o for o in SHORT if not o.startswith("data.world")]
    cfg = C.load_config(
        None,
        [
            *over,
            "data.world=rt1_video",
            f"data.train_path={root}",
            "video.context_frames=2",
            "data.n_train=8",
            "data.n_test=2",
            "trainer.eval_size=2",
            f"trainer.out_dir={tmp_path / 'run'}",
        ],
    )
    from rlvr_fast.trainer.tasks import build_task

    vtask = build_task(cfg, "cpu")
    assert vtask.layout.action_dims == 13 and vtask.layout.frame_shape == (8, 8)
    # two context frames of 8x8 codes with 13 action tokens each, then BOS; 4 windows per 6-frame file
    assert vtask.splits["train"].prompts.shape == (8, 2 * (64 + 13) + 1)
    assert vtask.splits["test"].sources[0].startswith(str(root / "train_eps_00000000.npz"))
    summary = train(cfg)
    assert summary["task"] == "rt1_video" and summary["eval_examples"] == 2
    assert 0 <= summary["rlvr"]["valid"] <= 1 and np.isfinite(summary["rlvr"]["mae"])
    assert json.loads((tmp_path / "run" / "config.json").read_text())["rollout"]["max_new_tokens"] == 65


def test_config_video_section():
    cfg = C.load_config("rlvr_fast/configs/demo_video.yaml")
    assert cfg.data.world == "sprite_video" and cfg.video.reward_weights == {"mae": 1.0, "ssim": 1.0, "objects": 1.0}
    cfg = C.load_config(None, ["video.reward_weights={mae: 1, lpips: 1}"])
    assert cfg.video.reward_weights == {"mae": 1, "lpips": 1}
    with pytest.raises(C.ConfigError, match="expected dict"):
        C.load_config(None, ["video.reward_weights=3"])
    with pytest.raises(C.ConfigError, match="rt1_video"):
        C.load_config(None, ["data.world=rt1_video"])
    with pytest.raises(C.ConfigError, match="video.aggregate"):
        C.load_config(None, ["video.aggregate=max"])


def test_text_reward_name_is_refused_for_video_worlds(tmp_path, capsys):
    from rlvr_fast.cli import main

    assert main(["train", *SHORT, "reward.name=text_game/task", f"trainer.out_dir={tmp_path}"]) == 2
    assert "reward.name='text_game/task' does not apply to sprite_video" in capsys.readouterr().err


def test_sprite_accuracy_sees_erased_and_moved_sprites():
    from rlvr_fast.worlds.sprite import SpriteWorld, sprite_accuracy

    w = SpriteWorld(n_sprites=3)
    ex = w.sample(0)
    real = ex.target  # [1, 3, 64, 64]
    state = ex.extra["states"][-1]
    empty = w.render(())[None]  # the canvas without sprites
    moved = w.render(tuple(s.__class__(s.kind, s.x + 5, s.y, s.vx, s.vy) if s.kind == 0 else s for s in state))[None]
    pred = torch.stack([real, empty, moved, real])  # [4, 1, 3, 64, 64] against two real clips
    got = sprite_accuracy(pred, torch.stack([real, real]), 3, group_size=2)
    assert got.tolist() == pytest.approx([1.0, 0.0, 2 / 3, 1.0])
    noisy = (real + 0.05 * torch.randn(real.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    assert sprite_accuracy(noisy[None], real[None], 3).item() == 1.0  # small noise keeps every sprite
    with pytest.raises(ValueError, match="group_size"):
        sprite_accuracy(pred, real[None], 3, group_size=2)


def test_resume_keeps_the_mle_preview_and_the_tokenizer(tmp_path, monkeypatch):
    """A run continued with --resume reuses the cached tokenizer and still draws the MLE predictions."""
    import rlvr_fast.trainer.train_tokenizer as tt
    from rlvr_fast.trainer import train
    from rlvr_fast.trainer.checkpoint import read_trainer_state

    train(C.load_config(None, [*SHORT, f"trainer.out_dir={tmp_path}"]))
    first = json.loads((tmp_path / "summary.json").read_text())
    (tmp_path / "preview.png").unlink()
    monkeypatch.setattr(tt, "train_tokenizer", lambda *a, **k: pytest.fail("the cached tokenizer was not reused"))
    summary = train(C.load_config(None, [*SHORT, "trainer.steps=3", f"trainer.out_dir={tmp_path}"]), resume=True)
    assert summary["mle"] == first["mle"] and (tmp_path / "preview.png").is_file()
    state = read_trainer_state(tmp_path / "checkpoint")
    assert set(state["previews"]) == {"mle", "rlvr"} and state["rl_step"] == 3


def test_lpips_weight_files_switch_the_default_reward_to_mae_plus_lpips(tmp_path):
    """With video.lpips_* set, the task's reward is RLVR-World's MAE 1 + LPIPS 1 and evaluation reports LPIPS."""
    from test_lpips import random_weights

    from rlvr_fast.trainer.tasks import build_task

    vgg, lin = random_weights()
    torch.save(vgg, tmp_path / "vgg16.pth")
    torch.save(lin, tmp_path / "vgg.pth")
    cfg = C.load_config(
        None, [*SHORT, f"video.lpips_vgg_path={tmp_path / 'vgg16.pth'}", f"video.lpips_lin_path={tmp_path / 'vgg.pth'}"]
    )
    vtask = build_task(cfg, "cpu")
    assert vtask.reward.weights == {"mae": 1.0, "lpips": 1.0} and vtask.reward.lpips is not None
    items = vtask.items("test")[:2]
    answers = torch.stack([vtask.splits["test"].answers[i.index] for i in items])
    present = torch.ones_like(answers, dtype=torch.bool)
    scored = vtask.score(_Generated(answers, present), items, 1)
    token_rewards, metrics = scored.token_rewards, scored.metrics
    assert {"lpips", "mae", "ssim", "psnr", "valid", "sprites"} <= set(metrics)
    want = -(metrics["mae"] + metrics["lpips"])
    torch.testing.assert_close(token_rewards[:, -1], want, rtol=1e-5, atol=1e-6)
    cfg = C.load_config(None, [*SHORT, f"video.lpips_vgg_path={tmp_path / 'vgg16.pth'}"])
    with pytest.raises(ValueError, match="both video.lpips_vgg_path and video.lpips_lin_path"):
        build_task(cfg, "cpu")


def test_ctrl_c_during_preparation_says_what_is_discarded_and_propagates(tmp_path, monkeypatch, caplog):
    import rlvr_fast.trainer.train_tokenizer as tt
    from rlvr_fast.trainer.tasks import build_task
    from rlvr_fast.worlds.sprite import SpriteWorld

    cfg = C.load_config(None, SHORT)
    real_examples = SpriteWorld.examples

    def two_then_ctrl_c(self, split="train", n=None):
        for i, ex in enumerate(real_examples(self, split, n)):
            if i == 2:
                raise KeyboardInterrupt
            yield ex

    monkeypatch.setattr(SpriteWorld, "examples", two_then_ctrl_c)
    with caplog.at_level("WARNING"), pytest.raises(KeyboardInterrupt):
        build_task(cfg, "cpu", cache_dir=tmp_path / "tok")
    clips = f"interrupted while generating the sprite_video train clips (2/{cfg.data.n_train})"
    assert clips + ": nothing was saved; the next run starts this step again" in caplog.text
    monkeypatch.setattr(SpriteWorld, "examples", real_examples)
    caplog.clear()

    def ctrl_c(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tt, "train_tokenizer", ctrl_c)
    with caplog.at_level("WARNING"), pytest.raises(KeyboardInterrupt):
        build_task(cfg, "cpu", cache_dir=tmp_path / "tok")
    steps = cfg.video.tokenizer_steps
    tokenizer = f"interrupted while training the frame tokenizer ({steps} steps): nothing was saved"
    assert tokenizer + "; the next run trains it again from step 0" in caplog.text
    assert not (tmp_path / "tok" / "fingerprint.txt").exists()


CTX_MSP = [
    *SHORT,
    "video.tokenizer=tiny_ctx",
    "video.predict_frames=3",
    "video.tokenizer_batch_size=4",
    "model.max_position_embeddings=1024",  # prompt 322 + response 198
]


def test_ctx_msp_task_layout_and_an_exact_resume(tmp_path):
    """The sprite world in RLVR-World's ctx_msp layout: prompt = 16x16 context codes (offset) + the first
    frame's 8x8 codes + its 2 action bins; response = 3 x (64 codes + 2 forced bins), no EOS (sampling
    ignores EOS); GRPO 2 steps + --resume to 3 equals 3 steps in one go."""
    from rlvr_fast.trainer import GRPOTrainer
    from rlvr_fast.trainer.checkpoint import read_trainer_state

    run = [*CTX_MSP, "trainer.steps=3", "trainer.save_every=1", "trainer.eval_every=0"]
    t = GRPOTrainer(C.load_config(None, [*run, f"trainer.out_dir={tmp_path / 'full'}"]))
    task, lay = t.task, t.task.layout
    assert (lay.context_shape, lay.frame_shape, lay.frames, lay.eos_after) == ((16, 16), (8, 8), 3, False)
    assert (lay.context_offset, lay.action_offset, lay.vocab_size) == (1000, 2000, 2258)
    assert task.ignore_eos and task.response_length == 198 and task.forced_slots == lay.forced_slots()
    assert sum(task.forced_slots) == 6 and task.forced_slots[-1]
    prompt, answer = task.encode(task.train[0], None)
    assert len(prompt) == 256 + 64 + 2 and all(1000 <= i < 2000 for i in prompt[:256])
    assert all(i < 1000 for i in prompt[256:320]) and all(2000 <= i < 2256 for i in prompt[320:])
    assert torch.equal(lay.context_codes(torch.tensor([prompt])), task.splits["train"].context_codes[:1])
    forced = [a for a, f in zip(answer, task.forced_slots) if f]
    assert all(2000 <= a < 2256 for a in forced) and len(answer) == 198
    t.run()
    cut = tmp_path / "cut"
    GRPOTrainer(C.load_config(None, [*run, "trainer.steps=2", f"trainer.out_dir={cut}"])).run()
    GRPOTrainer(C.load_config(None, [*run, f"trainer.out_dir={cut}"])).run(resume=True)

    def rl(out):
        recs = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        return [r for r in recs if r.get("stage") == "rl"]

    a, b = rl(tmp_path / "full"), rl(cut)
    assert [r["step"] for r in b] == [1, 2, 3] and all(
        r["response_len"] == 3 * 64 for r in a
    )  # loss tokens: codes only
    assert a[2]["reward"] == b[2]["reward"] and a[2]["pg_loss"] == pytest.approx(b[2]["pg_loss"], abs=1e-6)
    assert read_trainer_state(cut / "checkpoint")["rl_step"] == 3
