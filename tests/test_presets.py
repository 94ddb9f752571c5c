"""The RLVR-World run presets (rlvr_fast/configs/presets), the CLI's --preset, and the text game's
gold + non-gold mix (data.nongold_path / data.nongold_rows, the trainer's DataStream)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from test_text_game import CURR, EATEN, OPENED, rlvr_row
from test_text_game import write_jsonl as write_game
from test_trainer import _records
from test_web_page import row as web_row
from test_web_page import write_jsonl as write_web
from test_web_page import write_parquet

import rlvr_fast.configs as presets
from rlvr_fast.cli import main
from rlvr_fast.trainer import GRPOTrainer, train
from rlvr_fast.trainer import config as C
from rlvr_fast.trainer.run_state import DataStream

ROOT = Path(__file__).resolve().parents[1]
NAMES = [
    "rlvr_world_rt1_multi_step",
    "rlvr_world_rt1_single_step",
    "rlvr_world_text_game_binary",
    "rlvr_world_text_game_task",
    "rlvr_world_web_page",
]


# ------------------------------------------------------------------------------------------ the files
def test_preset_names_are_the_files_and_are_packaged():
    assert presets.preset_names() == NAMES
    assert sorted(p.stem for p in (ROOT / "rlvr_fast" / "configs" / "presets").glob("*.yaml")) == NAMES
    assert '"presets/*.yaml"' in (ROOT / "setup.py").read_text()  # package_data ships them


# RLVR-World's values (thuml/RLVR-World e1b8b6f): lang_wm/verl/examples/grpo_trainer/run_text_game_rl.sh,
# run_web_agent_rl.sh, vid_wm/verl/examples/grpo_trainer/run_vgpt.sh + vid_wm/README.md, verl's defaults.
COMMON = {
    "algo.estimator": "grpo",
    "algo.ppo_epochs": 1,
    "algo.clip_low": 0.2,
    "algo.clip_high": 0.2,
    "algo.kl_coef": 0.001,
    "algo.kl_type": "k3",
    "algo.agg": "token-mean",
    "rollout.temperature": 1.0,
    "rollout.top_p": 1.0,
    "rollout.top_k": 0,
    "trainer.weight_decay": 0.01,
    "trainer.warmup_steps": 0,
    "trainer.grad_clip": 1.0,
    "mle.steps": 0,
}
TEXT_GAME = {
    **COMMON,
    "data.world": "text_game",
    "data.max_prompt_tokens": 7192,
    "rollout.max_new_tokens": 4096,
    "rollout.n": 5,
    "rollout.prompts_per_step": 128,
    "algo.mini_batch_size": 320,
    "algo.micro_batch_size": 2,
    "algo.entropy_coef": 0.001,
    "trainer.lr": 1e-6,
    "trainer.eval_size": 1000000,
    "model.gradient_checkpointing": True,
    "reward.decode": "verl",
}
RT1 = {  # vid_wm: run_vgpt.sh / run_ctx_msp_vgpt.sh with the README's overrides, vgpt_ppo_trainer.yaml
    **COMMON,
    "data.world": "rt1_video",
    "video.action_bins": 256,
    "video.reward_weights": {"mae": 1, "lpips": 1},
    "video.invalid_tokens": "clamp",
    "rollout.n": 16,
    "rollout.prompts_per_step": 128,
    "algo.mini_batch_size": 512,
    "algo.micro_batch_size": 8,
    "algo.entropy_coef": 0.0,
    "trainer.lr": 5e-5,
    "trainer.steps": 10000,
    "model.gradient_checkpointing": False,
}
EXPECTED = {
    "rlvr_world_text_game_binary": {**TEXT_GAME, "reward.name": "text_game/binary", "data.nongold_rows": 7278},
    "rlvr_world_text_game_task": {**TEXT_GAME, "reward.name": "text_game/task", "data.nongold_rows": 1000},
    "rlvr_world_web_page": {
        **COMMON,
        "data.world": "web_page",
        "data.max_prompt_tokens": 5000,
        "rollout.max_new_tokens": 7288,
        "rollout.n": 5,
        "rollout.prompts_per_step": 64,
        "algo.mini_batch_size": 80,
        "algo.micro_batch_size": 5,
        "algo.entropy_coef": 0.001,
        "trainer.lr": 1e-6,
        "trainer.eval_size": 1000000,
        "model.gradient_checkpointing": True,
        "reward.name": "web_page/f1",
        "reward.decode": "verl",
        "data.nongold_rows": 0,
    },
    "rlvr_world_rt1_multi_step": {  # run_ctx_msp_vgpt.sh + the README's overrides
        **RT1,
        "data.max_prompt_tokens": 1373,  # 32 x 40 context + 80 + 13
        "model.max_position_embeddings": 2024,  # processor.max_length
        "video.context_frames": 1,
        "video.predict_frames": 7,  # segment_length 8
        "video.tokenizer": "ivideogpt_ctx",
        "video.aggregate": "mean",
        "trainer.eval_every": 10,
        "trainer.save_every": 10,
    },
    "rlvr_world_rt1_single_step": {
        **RT1,
        "data.max_prompt_tokens": 1333,  # 4 x (320 + 13) + 1
        "video.context_frames": 4,
        "video.predict_frames": 1,
        "video.tokenizer": "ivideogpt",
    },
}


def _get(cfg, dotted):
    section, key = dotted.split(".")
    return getattr(getattr(cfg, section), key)


@pytest.mark.parametrize("name", NAMES)
def test_preset_holds_rlvr_worlds_values(name):
    files = ["data.train_path=a", "data.test_path=b", "model.path=m", "data.nongold_path=c"]
    if "rt1" in name:  # its reward weights LPIPS: the run is refused without the weight files
        files += ["video.lpips_vgg_path=v", "video.lpips_lin_path=l"]
    cfg = C.load_config(None, files, preset=name)
    for dotted, want in EXPECTED[name].items():
        assert _get(cfg, dotted) == want, dotted


def test_layering_preset_then_config_file_then_overrides(tmp_path, capsys):
    f = tmp_path / "mine.yaml"
    f.write_text("rollout:\n  n: 3\n  max_new_tokens: 100\n")
    args = ["config", "--preset", "rlvr_world_web_page", "--config", str(f), "rollout.n=4", "algo.mini_batch_size=null"]
    assert main([*args, "data.train_path=x", "data.test_path=y", "model.path=m"]) == 0
    out = capsys.readouterr().out
    assert "n = 4  #" in out and "max_new_tokens = 100  #" in out  # override over file over preset
    assert "prompts_per_step = 64  #" in out and "max_prompt_tokens = 5000  #" in out  # the preset's
    assert "world = 'web_page'  #" in out
    # without the files and model a run needs: printed to be filled in; train refuses it
    for name in NAMES:
        assert main(["config", "--preset", name]) == 0
        assert f"max_prompt_tokens = {EXPECTED[name]['data.max_prompt_tokens']}  #" in capsys.readouterr().out
        assert main(["train", "--preset", name]) == 2
        assert "set " in capsys.readouterr().err


# ------------------------------------------------------------------------------------------ bad input
def test_unknown_preset_lists_the_available_ones(tmp_path, capsys):
    (tmp_path / "config.json").write_text("{}")  # the checkpoint directory eval checks first
    listed = ", ".join(NAMES)
    with pytest.raises(C.ConfigError, match=re.escape(f"unknown preset 'rlvr_world'; available presets: {listed}")):
        C.load_config(None, preset="rlvr_world")
    for cmd in (["config"], ["train"], ["eval", "--checkpoint", str(tmp_path)]):
        assert main([*cmd, "--preset", "nope"]) == 2
        assert f"unknown preset 'nope'; available presets: {listed}" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["rlvr_world_text_game_binary", "rlvr_world_text_game_task"])
def test_text_game_preset_without_the_second_file_names_the_key(name, capsys):
    args = ["data.train_path=a.parquet", "data.test_path=b.parquet", "model.path=m"]
    with pytest.raises(C.ConfigError, match=r"draws rows from a second training file: set data\.nongold_path"):
        C.load_config(None, args, preset=name)
    assert main(["train", "--preset", name, *args]) == 2
    assert "set data.nongold_path (or data.nongold_rows=0)" in capsys.readouterr().err
    C.load_config(None, [*args, "data.nongold_rows=0"], preset=name)  # the mix off: no second file needed
    with pytest.raises(C.ConfigError, match=r"data.world = 'web_page' reads no second training file"):
        C.load_config(None, [*args, "data.nongold_rows=3", "data.nongold_path=c"], preset="rlvr_world_web_page")
    with pytest.raises(C.ConfigError, match="data.nongold_rows must be >= 0"):
        C.load_config(None, [*args, "data.nongold_rows=-1", "data.nongold_path=c"])


# ------------------------------------------------------------------------------------------ the mix
def test_stream_draws_the_configured_rows_per_epoch_from_the_seed():
    n, extra, pool = 4, 6, 5
    s = DataStream(n, seed=1, extra=extra, pool=pool)
    epochs = [s.take(n + extra) for _ in range(3)]
    for e in epochs:
        assert sorted(i for i in e if i < n) == list(range(n))  # every gold row once per epoch
        drawn = [i for i in e if i >= n]
        assert len(drawn) == extra and all(n <= i < n + pool for i in drawn)
    draws = [sorted(i for i in e if i >= n) for e in epochs]
    assert draws[0] != draws[1] and draws[1] != draws[2]  # a fresh draw every epoch
    again = DataStream(n, seed=1, extra=extra, pool=pool)
    assert [again.take(n + extra) for _ in range(3)] == epochs  # from the seed
    assert DataStream(n, seed=2, extra=extra, pool=pool).take(3 * (n + extra)) != sum(epochs, [])
    # with replacement: some row drawn twice over many epochs of 6 draws from 5
    assert any(len(set(e)) < len(e) for e in epochs + [s.take(n + extra) for _ in range(20)])


def test_stream_resumes_the_exact_draw_and_reads_old_states():
    a = DataStream(4, seed=3, extra=6, pool=5)
    whole = a.take(25)  # two and a half epochs
    b = DataStream(4, seed=3, extra=6, pool=5)
    b.take(13)
    c = DataStream(4, seed=3, extra=6, pool=5)
    c.load_state_dict(json.loads(json.dumps(b.state_dict())))
    assert c.take(12) == whole[13:] and c.drawn() == a.drawn()
    # a checkpoint written before the mix existed holds (epoch, pos) only: it resumes the same order
    order = DataStream(10, seed=3).take(22)
    old = DataStream(10, seed=3)
    old.load_state_dict({"epoch": 1, "pos": 7})
    assert old.take(5) == order[17:22]
    with pytest.raises(ValueError, match="the data files changed"):
        DataStream(4, seed=3, extra=6, pool=4).load_state_dict(b.state_dict())
    with pytest.raises(ValueError, match="need a pool"):
        DataStream(4, seed=3, extra=6, pool=0)


# ------------------------------------------------------------------------------------------ 2 GRPO steps each
def tiny_model(tmp_path: Path) -> Path:
    """A tiny local Hugging Face model directory (weights, config, tokenizer), as tests/test_text_game.py's."""
    from rlvr_fast.models import tiny_llama
    from rlvr_fast.worlds.synthetic import synthetic_text_game_task

    tok = synthetic_text_game_task(seed=0, n_train=4, n_test=2).tokenizer
    torch.manual_seed(0)
    # head size 32: the smallest vLLM's CPU attention serves (the presets run on both rollout engines)
    model = tiny_llama(C.ModelConfig(hidden_size=64, num_layers=1, num_heads=2, intermediate_size=64), tok)
    out = tmp_path / "model"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


SMALL = [
    "rollout.n=2",
    "rollout.prompts_per_step=2",
    "rollout.max_new_tokens=4",
    "algo.mini_batch_size=null",
    "algo.micro_batch_size=4",
    "trainer.steps=2",
    "trainer.eval_every=0",
    "trainer.save_every=0",
    "trainer.eval_size=2",
    "trainer.progress=false",
    "trainer.device=cpu",
    "reward.workers=1",
]


def text_game_files(tmp_path: Path) -> list[str]:
    """Gold train (parquet, as RLVR-World's), held-out and non-gold files; non-gold prompts say 'state 1xx'."""
    gold = [rlvr_row(i, split="train") for i in range(3)]
    write_parquet(tmp_path / "gold.parquet", gold)
    write_parquet(tmp_path / "nongold.parquet", [rlvr_row(100 + i, nxt=EATEN, split="train") for i in range(4)])
    write_game(tmp_path / "test.jsonl", [rlvr_row(i, curr=CURR, nxt=OPENED) for i in range(2)])
    return [
        f"data.train_path={tmp_path / 'gold.parquet'}",
        f"data.test_path={tmp_path / 'test.jsonl'}",
        f"data.nongold_path={tmp_path / 'nongold.parquet'}",
    ]


def _engine(engine: str) -> list[str]:
    """The rollout engine's settings (vllm: skipped where vLLM is not installed)."""
    if engine == "vllm":
        pytest.importorskip("vllm")
    return [f"rollout.engine={engine}"]


ENGINES = ["hf", "vllm"]


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("name", ["rlvr_world_text_game_binary", "rlvr_world_text_game_task"])
def test_text_game_preset_runs_two_grpo_steps(tmp_path, name, engine):
    files = text_game_files(tmp_path)
    cfg = C.load_config(
        None,
        [
            *files,
            f"model.path={tiny_model(tmp_path)}",
            *SMALL,
            *_engine(engine),
            "data.nongold_rows=5",
            f"trainer.out_dir={tmp_path}/r",
        ],
        preset=name,
    )
    t = GRPOTrainer(cfg)
    assert t.engine.name == engine
    assert t.task.reward == EXPECTED[name]["reward.name"]
    assert (len(t.train_set), t.stream.n, t.stream.extra, t.stream.pool) == (7, 3, 5, 4)
    drawn = t.stream.drawn()
    assert len(drawn) == 5 and all("state 10" in t.train_set[i][0].prompt for i in drawn)
    summary = t.run()
    records = _records(tmp_path / "r")
    assert [r["step"] for r in records if r["stage"] == "rl"] == [1, 2]
    assert {"exact", "task", "property_acc"} <= set(summary["rlvr"])


def test_the_mix_is_identical_after_resume(tmp_path):
    files = text_game_files(tmp_path)
    model = tiny_model(tmp_path)
    # 3 gold + 5 drawn rows an epoch, 2 prompts a step: step 5 starts the second epoch's draw
    args = [*files, f"model.path={model}", *SMALL, "data.nongold_rows=5", "trainer.save_every=2"]

    def run(out, steps, resume=False):
        cfg = C.load_config(
            None, [*args, f"trainer.steps={steps}", f"trainer.out_dir={out}"], preset="rlvr_world_text_game_binary"
        )
        t = GRPOTrainer(cfg)
        taken = []
        take = t.stream.take
        t.stream.take = lambda k: taken.append(take(k)) or taken[-1]
        t.run(resume=resume)
        return taken

    full = run(tmp_path / "full", 6)
    first = run(tmp_path / "cut", 2)
    rest = run(tmp_path / "cut", 6, resume=True)
    assert first + rest == full
    assert len({i for batch in full[:4] for i in batch if i >= 3}) >= 1  # pool rows were drawn
    rl = [[r for r in _records(tmp_path / d) if r["stage"] == "rl"] for d in ("cut", "full")]
    assert rl[0] == rl[1] and len(rl[0]) == 6


@pytest.mark.parametrize("engine", ENGINES)
def test_web_page_preset_runs_two_grpo_steps(tmp_path, engine):
    write_parquet(tmp_path / "train.parquet", [web_row(i) for i in range(3)])
    write_web(tmp_path / "test.jsonl", [web_row(i) for i in range(2)])
    files = [f"data.train_path={tmp_path / 'train.parquet'}", f"data.test_path={tmp_path / 'test.jsonl'}"]
    model = f"model.path={tiny_model(tmp_path)}"
    cfg = C.load_config(
        None, [*files, model, *SMALL, *_engine(engine), f"trainer.out_dir={tmp_path}/r"], preset="rlvr_world_web_page"
    )
    summary = train(cfg)
    assert summary["task"] == "web_page" and "f1" in summary["rlvr"]
    assert [r["step"] for r in _records(tmp_path / "r") if r["stage"] == "rl"] == [1, 2]


# per RT-1 preset: (frames per episode, tokenizer overrides in place of iVideoGPT's, context frames, response)
RT1_RUNS = {
    "rlvr_world_rt1_single_step": (
        6,
        ["video.tokenizer=tiny", "video.tokenizer_channels=[8, 16, 16]", "video.tokenizer_res_blocks=0"],
        4,
        8 * 8 + 1,  # one frame + EOS
    ),
    "rlvr_world_rt1_multi_step": (10, ["video.tokenizer=tiny_ctx", "video.tokenizer_batch_size=2"], 1, 7 * (64 + 13)),
}


@pytest.mark.parametrize("engine", ENGINES)
@pytest.mark.parametrize("name", sorted(RT1_RUNS))
def test_rt1_preset_runs_two_grpo_steps(tmp_path, name, engine):
    """RLVR-World's converter format (uint8 [T, H, W, 3] ``image``, 13-dim ``action``) at 64 x 64, a tiny
    trained frame tokenizer in place of iVideoGPT's (per-frame or compressive) and random LPIPS weights,
    as tests/test_video_task.py; the multi-step preset's 7 frames of 80 + 13 tokens become 7 x (64 + 13)."""
    from test_lpips import random_weights

    frames_per_episode, tokenizer, context, response = RT1_RUNS[name]
    rng = np.random.default_rng(0)
    root = tmp_path / "RT-1_processed"
    root.mkdir()
    for i in range(3):  # file 0 is held out (iVideoGPT's i % 100 == 0 rule)
        frames = rng.integers(0, 255, (frames_per_episode, 64, 64, 3)).astype(np.uint8)
        action = rng.uniform(-0.5, 0.5, (frames_per_episode, 13))
        np.savez_compressed(root / f"train_eps_{i:08d}.npz", image=frames, action=action)
    vgg, lin = random_weights()
    torch.save(vgg, tmp_path / "vgg16.pth")
    torch.save(lin, tmp_path / "vgg.pth")
    over = [
        f"data.train_path={root}",
        "data.n_train=4",
        "data.n_test=2",
        "video.tokenizer_steps=2",
        *tokenizer,
        f"video.lpips_vgg_path={tmp_path / 'vgg16.pth'}",
        f"video.lpips_lin_path={tmp_path / 'vgg.pth'}",
        "video.preview=0",
        "model.hidden_size=64",
        "model.num_layers=1",
        "model.num_heads=2",
        "model.intermediate_size=64",
        *SMALL,
        *_engine(engine),
        f"trainer.out_dir={tmp_path / 'r'}",
    ]
    if name == "rlvr_world_rt1_single_step":
        over.append("model.max_position_embeddings=512")
    cfg = C.load_config(None, over, preset=name)
    assert cfg.video.context_frames == context and cfg.video.reward_weights == {"mae": 1, "lpips": 1}
    t = GRPOTrainer(cfg)
    assert t.task.response_length == response and t.engine.name == engine
    summary = t.run()
    assert summary["task"] == "rt1_video" and np.isfinite(summary["rlvr"]["lpips"])
    assert [r["step"] for r in _records(tmp_path / "r") if r["stage"] == "rl"] == [1, 2]


def test_a_sequence_longer_than_the_models_positions_is_refused_before_any_rollout(tmp_path):
    """The multi-step sprite layout (prompt 256 + 64 + 2, response 7 x 66) needs 784 positions: a tiny
    model of 512 is refused at start-up, naming the key and the length it needs."""
    over = [
        "data.world=sprite_video",
        "data.n_train=2",
        "data.n_test=2",
        "video.tokenizer=tiny_ctx",
        "video.predict_frames=7",
        "video.tokenizer_steps=1",
        "video.tokenizer_batch_size=2",
        "video.preview=0",
        "model.max_position_embeddings=512",
        *SMALL,
        f"trainer.out_dir={tmp_path / 'r'}",
    ]
    with pytest.raises(
        ValueError, match=r"784 tokens \(322 prompt \+ 462 response\).*model.max_position_embeddings >= 784"
    ):
        GRPOTrainer(C.load_config(None, over))
