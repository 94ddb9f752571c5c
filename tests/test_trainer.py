"""The GRPO trainer: config validation, rollout layout, reward scoring, a short end-to-end run, exact
resume after Ctrl-C, NaN-step skipping and a 2-process gloo run whose ranks must agree."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from rlvr_fast import rewards
from rlvr_fast.task import Example, ScoreStats
from rlvr_fast.trainer import config as C
from rlvr_fast.trainer.grpo import GRPOTrainer
from rlvr_fast.trainer.rollout import (
    Rollout,
    left_pad,
    position_ids,
    response_logits,
    response_mask_from,
    sample,
    teacher_batch,
)
from rlvr_fast.trainer.run_state import DataStream

ROOT = Path(__file__).resolve().parents[1]

# A model and run small enough for seconds on 2 CPU cores.
TINY = [
    "model.hidden_size=32",
    "model.num_layers=1",
    "model.num_heads=2",
    "model.intermediate_size=64",
    "data.n_train=200",
    "data.n_test=16",
    "rollout.n=4",
    "rollout.prompts_per_step=4",
    "rollout.max_new_tokens=12",
    "mle.steps=4",
    "mle.batch_size=8",
    "trainer.steps=4",
    "trainer.eval_every=2",
    "trainer.eval_size=8",
    "trainer.save_every=0",
    "trainer.progress=false",
    "algo.micro_batch_size=8",
]
TIMING_KEYS = {"gen_s", "reward_s", "step_s", "tokens_per_s"}


def tiny_config(tmp_path: Path, *extra: str) -> C.Config:
    return C.load_config(None, [*TINY, f"trainer.out_dir={tmp_path}", *extra])


# ------------------------------------------------------------------------------------------ config
def test_config_yaml_and_overrides(tmp_path):
    f = tmp_path / "x.yaml"
    f.write_text("trainer:\n  lr: 3.0e-4\n  steps: 7\nrollout:\n  n: 4\n  prompts_per_step: 2\n")
    cfg = C.load_config(f, ["trainer.lr=1e-5", "algo.dual_clip=3", "model.path=null", "trainer.betas=[0.9, 0.95]"])
    assert cfg.trainer.lr == 1e-5 and cfg.trainer.steps == 7 and cfg.rollout.n == 4
    assert cfg.algo.dual_clip == 3.0 and isinstance(cfg.algo.dual_clip, float)
    assert cfg.trainer.betas == [0.9, 0.95]
    assert "lr = 0.0001" not in C.describe(cfg) and "lr = 1e-05" in C.describe(cfg)


@pytest.mark.parametrize(
    "override, message",
    [
        ("trainer.lrr=1", "valid keys under trainer: ['betas'"),
        ("nosection.x=1", "valid keys: ['algo', 'data'"),
        ("algo.estimator=foo", "is not one of ['grpo', 'drgrpo', 'rloo', 'reinforce_pp_baseline']"),
        ("rollout.n=x", "rollout.n: expected int, got 'x'"),
        ("rollout.n=true", "rollout.n: expected int"),
        ("trainer=3", "expected a section"),
        ("algo.mini_batch_size=7", "must divide the rollout batch"),
        ("algo.mini_batch_size=4", "must be a multiple of rollout.n = 8"),
        ("rollout.n=1", "use rollout.n >= 2"),
        ("rollout.top_p=0", "rollout.top_p must be in (0, 1]"),
        ("rollout.temperature=0", "rollout.temperature must be > 0"),
        ("algo.dual_clip=0.5", "algo.dual_clip must be > 1"),
        ("data.world=text_game", "set data.train_path and data.test_path"),
        ("trainer.lr", "not of the form section.key=value"),
    ],
)
def test_config_errors_name_the_valid_choices(override, message):
    with pytest.raises(C.ConfigError) as e:
        C.load_config(None, [override])
    assert message in str(e.value)


def test_config_file_errors(tmp_path):
    with pytest.raises(C.ConfigError, match="does not exist"):
        C.load_config(tmp_path / "missing.yaml")
    (tmp_path / "bad.yaml").write_text("- a list\n")
    with pytest.raises(C.ConfigError, match="must hold a mapping"):
        C.load_config(tmp_path / "bad.yaml")


def _float_keys() -> list[str]:
    """Every float field of the config tree (float or optional float), as section.key."""
    import typing

    keys = []
    for section in C.dataclasses.fields(C.Config()):
        node = getattr(C.Config(), section.name)
        hints = typing.get_type_hints(type(node))
        keys += [f"{section.name}.{k}" for k, h in hints.items() if h is float or float in typing.get_args(h)]
    return keys


def test_the_float_sweep_covers_every_float_field():
    keys = set(_float_keys())
    assert len(keys) == 18 and {"reward.timeout_s", "rollout.kv_cache_gb", "algo.tis_cap", "video.gamma"} <= keys
    assert C.INF_ALLOWED == {"reward.timeout_s"}


@pytest.mark.parametrize("key", _float_keys())
@pytest.mark.parametrize("value", ["nan", ".nan", "inf", ".inf", "-inf", "-.inf"])
def test_every_float_must_be_finite(key, value):
    """NaN and +-inf are refused for every float key, naming it; reward.timeout_s=inf means no limit."""
    if key in C.INF_ALLOWED and value in ("inf", ".inf"):
        assert getattr(C.load_config(None, [f"{key}={value}"]).reward, key.split(".")[1]) == float("inf")
        return
    with pytest.raises(C.ConfigError) as e:
        C.load_config(None, [f"{key}={value}"])
    assert str(e.value).startswith(f"{key} must be")


@pytest.mark.parametrize(
    "override, message",
    [
        ("trainer.betas=[.nan, 0.9]", "trainer.betas must be a finite number, got [nan, 0.9]"),
        ("trainer.betas=[nan, 0.9]", "trainer.betas must be two numbers in [0, 1), got ['nan', 0.9]"),
        ("video.reward_weights={mae: .inf}", "video.reward_weights must be a finite number, got {'mae': inf}"),
        ("video.reward_weights={mae: nan}", "video.reward_weights must map terms to numbers"),
        ("reward.timeout_s=0", "reward.timeout_s must be > 0 (inf: no limit), got 0.0"),
        ("reward.timeout_s=-1", "reward.timeout_s must be > 0"),
        ("reward.workers=0", "reward.workers must be >= 1, got 0"),
        ("video.gamma=0", "video.gamma must be in (0, 1], got 0.0"),
        ("video.gamma=1.5", "video.gamma must be in (0, 1]"),
        ("video.tokenizer_lr=0", "video.tokenizer_lr must be > 0"),
        ("trainer.weight_decay=-0.1", "trainer.weight_decay must be >= 0, got -0.1"),
    ],
)
def test_config_ranges_name_the_key(override, message):
    with pytest.raises(C.ConfigError) as e:
        C.load_config(None, [override])
    assert message in str(e.value)


def test_finite_values_at_the_edges_are_accepted():
    edges = [
        "reward.failure_reward=-1e30",
        "video.gamma=1",
        "reward.timeout_s=1e-3",
        "video.reward_weights={mae: 2, ssim: 0.5}",
        "trainer.betas=[0, 0.99]",
    ]
    cfg = C.load_config(None, edges)
    assert (cfg.reward.failure_reward, cfg.video.gamma, cfg.reward.timeout_s) == (-1e30, 1.0, 1e-3)


def test_demo_config_is_valid():
    cfg = C.load_config(ROOT / "rlvr_fast" / "configs" / "demo.yaml")
    assert cfg.data.world == "synthetic_text_game" and cfg.mle.steps > 0 and cfg.trainer.steps > 0


# ------------------------------------------------------------------------------------------ data order
def test_data_stream_is_deterministic_and_resumable():
    a = DataStream(10, seed=3)
    first = a.take(7) + a.take(7)  # crosses an epoch boundary
    assert sorted(first[:10]) == list(range(10))
    b = DataStream(10, seed=3)
    b.take(7)
    state = b.state_dict()
    c = DataStream(10, seed=3)
    c.load_state_dict(state)
    assert c.take(7) == first[7:]


# ------------------------------------------------------------------------------------------ rollout layout
def test_response_mask_and_padding():
    resp = torch.tensor([[5, 6, 2, 0], [5, 2, 2, 0], [7, 7, 7, 7]])
    assert response_mask_from(resp, eos_id=2).tolist() == [
        [True, True, True, False],
        [True, True, False, False],
        [True, True, True, True],
    ]
    ids, mask = left_pad([[1, 2, 3], [4]], pad_id=0, device="cpu")
    assert ids.tolist() == [[1, 2, 3], [0, 0, 4]] and mask.tolist() == [[1, 1, 1], [0, 0, 1]]
    assert position_ids(mask).tolist() == [[0, 1, 2], [0, 0, 0]]
    tb = teacher_batch([[1, 2], [3]], [[7, 8, 2], [9, 2]], 0, "cpu")
    assert tb.input_ids.tolist() == [[1, 2, 7, 8, 2], [0, 3, 9, 2, 0]]
    assert tb.response_mask.tolist() == [[True, True, True], [True, True, False]]


@pytest.fixture(scope="module")
def tiny_model():
    from rlvr_fast.models import tiny_llama
    from rlvr_fast.worlds.synthetic import synthetic_text_game_task

    task = synthetic_text_game_task(seed=0, n_train=50, n_test=10)
    cfg = C.ModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64)
    torch.manual_seed(0)
    return tiny_llama(cfg, task.tokenizer).eval(), task


def test_response_logits_match_full_forward_with_left_padding(tiny_model):
    """Only the response positions go through lm_head; left padding must not shift positions."""
    model, task = tiny_model
    tok = task.tokenizer
    prompts = [tok(e.prompt)["input_ids"][: 5 + 3 * i] for i, e in enumerate(task.train[:3])]
    answers = [tok(e.answer)["input_ids"][:6] for e in task.train[:3]]
    batch = teacher_batch(prompts, answers, tok.pad_token_id, "cpu")
    got = torch.log_softmax(response_logits(model, batch).float(), -1)
    for i, (p, a) in enumerate(zip(prompts, answers)):  # each sequence alone, unpadded
        full = model(input_ids=torch.tensor([p + a])).logits.float().log_softmax(-1)[0, len(p) - 1 : -1]
        torch.testing.assert_close(got[i, : len(a)], full, atol=2e-5, rtol=2e-5)


def _sample_two_prompts(tiny_model, n: int, max_new_tokens: int, seed: int) -> Rollout:
    model, task = tiny_model
    prompts = [task.tokenizer(e.prompt)["input_ids"] for e in task.train[:2]]
    torch.manual_seed(seed)
    return sample(model, task.tokenizer, prompts, n, C.RolloutConfig(n=n, max_new_tokens=max_new_tokens))


def test_sample_groups_and_masks(tiny_model):
    tok = tiny_model[1].tokenizer
    r = _sample_two_prompts(tiny_model, 3, 8, seed=0)
    assert r.input_ids.shape[0] == 6 and r.response_mask.shape == (6, r.input_ids.shape[1] - r.prompt_len)
    for g in range(2):  # groups are contiguous and share their prompt
        assert all(
            torch.equal(r.input_ids[g * 3, : r.prompt_len], r.input_ids[g * 3 + k, : r.prompt_len]) for k in range(3)
        )
    # tokens after EOS are padding and masked out
    assert torch.all(r.responses[~r.response_mask] == tok.pad_token_id)
    assert len(r.completions) == 6 and isinstance(r.select(torch.tensor([1, 4])), Rollout)


# ------------------------------------------------------------------------------------------ rewards
def _ok(c, e):
    return len(c)


def _boom(c, e):
    raise RuntimeError("user reward bug")


def _slow(c, e):
    time.sleep(5)
    return 1.0


def test_reward_registry_and_module_paths():
    assert {"text_game/binary", "text_game/task", "web_page/f1"} <= set(rewards.reward_names())
    assert rewards.get_reward(f"{__name__}:_ok") is _ok
    with pytest.raises(ValueError, match="unknown reward 'nope'; choose one of"):
        rewards.get_reward("nope")
    with pytest.raises(ValueError, match="cannot import"):
        rewards.get_reward("no_such_module_xyz:f")
    rewards.register_reward("test/len", _ok)
    assert rewards.get_reward("test/len") is _ok
    with pytest.raises(ValueError, match="already registered"):
        rewards.register_reward("test/len", _ok)


def _mixed(c, e):
    if c == "raise":
        raise KeyError(c)
    return {"ok": 2.0, "nan": float("nan"), "str": "x", "none": None}[c]


def test_reward_failures_are_counted_never_raised():
    ex = Example("p", "a", "g")
    out, stats = rewards.score(_mixed, ["ok", "nan", "str", "none", "raise"], [ex] * 5, failure_reward=-1.0)
    assert out == [2.0, -1.0, -1.0, -1.0, -1.0]
    assert (stats.errors, stats.non_finite, stats.timeouts) == (3, 1, 0)
    with pytest.raises(ValueError, match="differ in length"):
        rewards.score(_mixed, ["ok"], [ex, ex])


def test_reward_timeouts_do_not_stall_the_batch():
    ex = Example("p", "a", "g")
    t0 = time.monotonic()
    out, stats = rewards.score(
        lambda c, e: _slow(c, e) if c == "slow" else 1.0,
        ["a", "slow", "b", "slow", "c"],
        [ex] * 5,
        timeout_s=0.3,
        failure_reward=-2.0,
        workers=2,
    )
    assert time.monotonic() - t0 < 3.0
    assert out == [1.0, -2.0, 1.0, -2.0, 1.0] and stats.timeouts == 2
    out, stats = rewards.score(_boom, ["a"], [ex], failure_reward=0.25)
    assert out == [0.25] and stats.errors == 1


def _misbehave(c, e):
    """Spins (after writing its pid), exits, interrupts, ends its process, or returns len(c)."""
    if c == "spin":
        Path(e.extra["pidfile"]).write_text(str(os.getpid()))
        while True:
            pass
    if c == "exit":
        raise SystemExit(3)
    if c == "interrupt":
        raise KeyboardInterrupt
    if c == "die":
        os._exit(1)
    return len(c)


def test_a_spinning_reward_is_killed_and_exits_are_failures(tmp_path):
    ex = Example("p", "a", "g", extra={"pidfile": str(tmp_path / "pid")})
    batch = ["a", "spin", "bb", "exit", "ccc", "interrupt", "dddd", "die", "eeeee"]
    t0 = time.monotonic()
    out, stats = rewards.score(_misbehave, batch, [ex] * len(batch), timeout_s=0.5, failure_reward=-1.0, workers=2)
    assert time.monotonic() - t0 < 5.0
    assert out == [1.0, -1.0, 2.0, -1.0, 3.0, -1.0, 4.0, -1.0, 5.0]
    assert (stats.errors, stats.timeouts, stats.non_finite) == (3, 1, 0)
    spinner = int((tmp_path / "pid").read_text())
    with pytest.raises(ProcessLookupError):  # stopped, not abandoned: it no longer burns a core
        os.kill(spinner, 0)
    # the pool stays up from call to call: same processes, no fork per step
    pids = sorted(w.proc.pid for w in rewards._POOL.workers)
    assert spinner not in pids and len(pids) == 2
    for _ in range(3):
        out, stats = rewards.score(_misbehave, ["x" * i for i in range(256)], [ex] * 256, workers=2)
        assert out == [float(i) for i in range(256)] and stats == ScoreStats()
    assert sorted(w.proc.pid for w in rewards._POOL.workers) == pids
    rewards.close_pool()
    assert rewards._POOL is None
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_a_worker_killed_from_outside_is_replaced_and_examples_must_pickle():
    ex = Example("p", "a", "g")
    assert rewards.score(_ok, ["ab"] * 4, [ex] * 4, workers=2) == ([2.0] * 4, ScoreStats())
    victim = rewards._POOL.workers[0].proc.pid
    os.kill(victim, signal.SIGKILL)
    assert rewards.score(_ok, ["abc"] * 8, [ex] * 8, workers=2) == ([3.0] * 8, ScoreStats())
    assert victim not in [w.proc.pid for w in rewards._POOL.workers]
    bad = Example("p", "a", "g", extra={"f": lambda: 0}, source="x.jsonl:3")
    with pytest.raises(TypeError, match="examples: x.jsonl:3 cannot be pickled"):
        rewards.score(_ok, ["a"], [bad])
    assert rewards._POOL is None  # an interrupted call closes the pool


def test_score_arguments_are_checked():
    ex = Example("p", "a", "g")
    cases = [
        ({"timeout_s": float("nan")}, "timeout_s"),
        ({"timeout_s": 0}, "timeout_s"),
        ({"failure_reward": float("nan")}, "failure_reward"),
        ({"failure_reward": float("-inf")}, "failure_reward"),
        ({"workers": 0}, "workers"),
    ]
    for kwargs, name in cases:
        with pytest.raises(ValueError, match=f"^{name} must"):
            rewards.score(_ok, ["a"], [ex], **kwargs)
    assert rewards.score(_ok, ["abc"], [ex], timeout_s=float("inf")) == ([3.0], ScoreStats())


def _raises_exit(c, e):
    raise SystemExit(3)


def _raises_interrupt(c, e):
    raise KeyboardInterrupt


@pytest.mark.parametrize("fn", ["_raises_exit", "_raises_interrupt"])
def test_reward_that_exits_or_interrupts_is_a_failure_not_the_end_of_the_run(tmp_path, fn):
    cfg = tiny_config(
        tmp_path,
        "mle.steps=0",
        "trainer.steps=1",
        "trainer.eval_every=0",
        f"reward.name={__name__}:{fn}",
        "reward.failure_reward=-1",
    )
    summary = GRPOTrainer(cfg).run()
    rl = [r for r in _records(tmp_path) if r["stage"] == "rl"]
    assert [r["reward"] for r in rl] == [-1.0] and summary["counters"]["reward_errors"] == 16
    assert rewards._POOL is None  # the run closed its worker processes


_REWARD_MODULE = """
import os
import time


def forever(c, e):
    time.sleep(10**6)


def slow(c, e):
    open("scoring.started", "a").close()
    time.sleep(0.5)
    return 1.0
"""


def _cli_run(tmp_path: Path, *extra: str) -> subprocess.Popen:
    """The CLI in its own session (so the test can signal the whole process group, as a terminal does)."""
    (tmp_path / "my_rewards.py").write_text(_REWARD_MODULE)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable,
        "-m",
        "rlvr_fast.cli",
        "train",
        *TINY,
        f"trainer.out_dir={tmp_path / 'run'}",
        "mle.steps=0",
        "trainer.eval_every=0",
        "trainer.cpu_threads=1",
        *extra,
    ]
    return subprocess.Popen(
        cmd, env=env, cwd=tmp_path, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _communicate(proc: subprocess.Popen, timeout: float) -> tuple[str, str]:
    try:
        return proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, 9)
        out, err = proc.communicate()
        pytest.fail(f"the run did not exit within {timeout} s:\n{out[-2000:]}\n{err[-3000:]}")


def test_a_run_whose_reward_never_returns_finishes_and_exits(tmp_path):
    """Every call sleeps forever: each is stopped after reward.timeout_s, the run finishes, and the process
    exits right after writing its summary, leaving no process behind (before: it never exited)."""
    proc = _cli_run(tmp_path, "trainer.steps=2", "reward.name=my_rewards:forever", "reward.timeout_s=0.3")
    out, err = _communicate(proc, 240)
    exited = time.time()
    assert proc.returncode == 0, out[-2000:] + err[-3000:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["counters"]["reward_timeouts"] == 2 * 16 and summary["counters"]["reward_errors"] == 0
    assert exited - (tmp_path / "run" / "summary.json").stat().st_mtime < 15
    with pytest.raises(ProcessLookupError):  # nothing of the run's process group is left
        os.killpg(proc.pid, 0)


def test_ctrl_c_during_scoring_takes_the_trainer_interrupt_path(tmp_path):
    """SIGINT to the whole process group while rewards run (as a terminal's Ctrl-C): the workers ignore it,
    the step completes with no reward failure, the trainer writes its checkpoint and says so."""
    proc = _cli_run(tmp_path, "trainer.steps=100", "reward.name=my_rewards:slow", "reward.timeout_s=30")
    deadline = time.monotonic() + 200
    while not (tmp_path / "scoring.started").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    os.killpg(proc.pid, signal.SIGINT)
    out, err = _communicate(proc, 120)
    assert proc.returncode == 130, out[-2000:] + err[-3000:]
    assert f"checkpoint written to {tmp_path / 'run' / 'checkpoint'}; continue with --resume" in out
    assert (tmp_path / "run" / "checkpoint" / "model.safetensors").is_file()
    rl = [r for r in _records(tmp_path / "run") if r["stage"] == "rl"]
    assert 1 <= len(rl) < 100 and all(r["reward"] == 1.0 and r["reward_errors"] == 0 for r in rl)


# ------------------------------------------------------------------------------------------ the loop
def _records(out: Path) -> list[dict]:
    return [
        {k: v for k, v in json.loads(line).items() if k not in TIMING_KEYS}
        for line in (out / "metrics.jsonl").read_text().splitlines()
    ]


def test_end_to_end_run_writes_everything(tmp_path):
    summary = GRPOTrainer(
        tiny_config(tmp_path, "algo.kl_coef=0.01", "algo.ppo_epochs=2", "algo.mini_batch_size=8")
    ).run()
    assert set(summary["mle"]) >= {"exact", "task", "property_acc", "parsed"}
    assert set(summary["rlvr"]) == set(summary["mle"]) and summary["ranks_agree"]
    on_disk = json.loads((tmp_path / "summary.json").read_text())
    assert on_disk["mle"] == summary["mle"] and on_disk["rlvr"] == summary["rlvr"] and on_disk["seconds"] > 0
    recs = _records(tmp_path)
    rl = [r for r in recs if r["stage"] == "rl"]
    assert [r["step"] for r in rl] == [1, 2, 3, 4]
    assert all(0.0 <= r["clipfrac"] <= 1.0 and r["kl"] >= 0 and r["response_len"] > 0 for r in rl)
    assert [r["rl_step"] for r in recs if r["stage"] == "eval"] == [0, 2, 4]
    assert (tmp_path / "curves.png").stat().st_size > 1000
    for d in ("checkpoint", "best"):
        assert (tmp_path / d / "model.safetensors").is_file() and (tmp_path / d / "config.json").is_file()
    # the checkpoint is a loadable Hugging Face model directory
    from transformers import AutoModelForCausalLM, AutoTokenizer

    AutoModelForCausalLM.from_pretrained(tmp_path / "checkpoint")
    AutoTokenizer.from_pretrained(tmp_path / "checkpoint")


def test_resume_after_interrupt_is_exact(tmp_path):
    """Ctrl-C after GRPO step 2 writes a checkpoint; --resume then gives the uninterrupted run's metrics."""
    full, cut = tmp_path / "full", tmp_path / "cut"
    extra = ("algo.kl_coef=0.01", f"reward.name={__name__}:_ok")
    ref = GRPOTrainer(tiny_config(full, *extra))
    ref.run()

    t = GRPOTrainer(tiny_config(cut, *extra))
    step = t.grpo_step

    def interrupt_after_two():
        out = step()
        if t.rl_step == 1:  # the counter moves after this returns: this is step 2
            t.interrupt.on_sigint(None, None)
        return out

    t.grpo_step = interrupt_after_two
    with pytest.raises(KeyboardInterrupt):
        t.run()
    assert json.loads(json.dumps(_records(cut)))[-1]["step"] == 2
    GRPOTrainer(tiny_config(cut, *extra)).run(resume=True)

    assert _records(cut) == _records(full)
    a = (full / "checkpoint" / "model.safetensors").read_bytes()
    b = (cut / "checkpoint" / "model.safetensors").read_bytes()
    assert a == b


def test_resume_during_mle_stage(tmp_path):
    full, cut = tmp_path / "full", tmp_path / "cut"
    GRPOTrainer(tiny_config(full, "trainer.steps=2")).run()
    t = GRPOTrainer(tiny_config(cut, "trainer.steps=2"))
    upd = t.mle_update

    def interrupt():
        out = upd()
        if t.mle_step == 1:
            t.interrupt.on_sigint(None, None)
        return out

    t.mle_update = interrupt
    with pytest.raises(KeyboardInterrupt):
        t.run()
    GRPOTrainer(tiny_config(cut, "trainer.steps=2")).run(resume=True)
    assert _records(cut) == _records(full)


def test_nan_loss_skips_the_step(tmp_path, monkeypatch, caplog):
    import rlvr_fast.trainer.grpo as G

    real = G.rf.policy_loss_from_logits
    poison = {"on": False}

    def sometimes_nan(*a, **k):
        loss, m = real(*a, **k)
        return (loss * float("nan"), m) if poison["on"] else (loss, m)

    monkeypatch.setattr(G.rf, "policy_loss_from_logits", sometimes_nan)
    t = GRPOTrainer(
        tiny_config(tmp_path, "mle.steps=0", "trainer.steps=3", "trainer.eval_every=0", f"reward.name={__name__}:_ok")
    )
    before = {k: v.clone() for k, v in t.module.state_dict().items()}
    t.stage = "rl"
    t.started = time.perf_counter()
    t.grpo_step()
    after_first = {k: v.clone() for k, v in t.module.state_dict().items()}
    assert any(not torch.equal(before[k], after_first[k]) for k in before)
    poison["on"] = True
    with caplog.at_level("WARNING"):
        m = t.grpo_step()  # the NaN step: no update
    assert t.counters["nan_skipped"] == 1 and "update skipped" in caplog.text and m["grad_norm"] != m["grad_norm"]
    assert all(torch.equal(after_first[k], v) for k, v in t.module.state_dict().items())


def test_failing_user_reward_is_counted_in_the_log(tmp_path):
    summary = GRPOTrainer(
        tiny_config(
            tmp_path, "mle.steps=0", "trainer.steps=2", f"reward.name={__name__}:_boom", "reward.failure_reward=-1"
        )
    ).run()
    rl = [r for r in _records(tmp_path) if r["stage"] == "rl"]
    assert [r["reward"] for r in rl] == [-1.0, -1.0]
    assert rl[-1]["reward_errors"] == 2 * 16 and summary["counters"]["reward_errors"] == 32


@pytest.mark.slow
def test_two_process_gloo_run_ranks_agree(tmp_path):
    """torchrun with 2 CPU processes (gloo): prompts split over ranks, DDP keeps the weights identical."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "rlvr_fast.cli",
        "train",
        *TINY,
        f"trainer.out_dir={tmp_path}",
        "trainer.parallel=ddp",
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    if proc.returncode != 0 and "terminate called without an active exception" in proc.stderr:
        # Seen once in ~30 runs (a fresh-clone CI run, 2026-11-25): one rank aborted in C++ right after
        # start-up, before any step, with no Python traceback; not reproduced in 14 reruns, loaded or not.
        # One retry in a clean directory keeps CI honest about everything else; a second abort fails.
        shutil.rmtree(tmp_path)
        tmp_path.mkdir()
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["ranks"] == 2 and summary["ranks_agree"] is True
    assert [r["step"] for r in _records(tmp_path) if r["stage"] == "rl"] == [1, 2, 3, 4]


def test_sampling_ignores_settings_saved_with_the_model(tiny_model):
    """A checkpoint's generation_config (repetition_penalty, ...) must not change GRPO sampling."""
    model = tiny_model[0]
    clean = _sample_two_prompts(tiny_model, 2, 10, seed=1)
    saved = model.generation_config
    try:
        model.generation_config = type(saved).from_dict({**saved.to_dict(), "repetition_penalty": 50.0, "top_k": 3})
        poisoned = _sample_two_prompts(tiny_model, 2, 10, seed=1)
    finally:
        model.generation_config = saved
    assert torch.equal(clean.input_ids, poisoned.input_ids)


def test_demo_shows_a_finished_run_of_the_same_configuration(tmp_path, capsys):
    """A second `rlvr-fast demo` with the same settings prints the finished run instead of training again;
    other settings or --force train."""
    from rlvr_fast import cli

    args = ["demo", *TINY, f"trainer.out_dir={tmp_path}"]
    assert cli.main(args) == 0
    first = capsys.readouterr().out
    assert "holds a finished run" not in first and (tmp_path / cli.DEMO_REQUEST).is_file()
    metrics = (tmp_path / "metrics.jsonl").read_text()
    assert cli.main(args) == 0
    again = capsys.readouterr().out
    assert "holds a finished run of this configuration" in again
    table = lambda text: text[text.index("held-out metric") : text.index("best checkpoint")]  # noqa: E731
    assert table(again) == table(first)
    assert (tmp_path / "metrics.jsonl").read_text() == metrics  # nothing ran
    assert cli.main([*args, "trainer.steps=2"]) == 0
    assert "holds a finished run" not in capsys.readouterr().out
    assert cli.main([*args, "trainer.steps=2", "--force"]) == 0
    assert "holds a finished run" not in capsys.readouterr().out


# ------------------------------------------------------------------------------------------ checkpoints
class _Payload:
    """Unpickling this runs a shell command that creates ``marker``: what a crafted checkpoint would do."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _plant(file: Path, marker: Path) -> None:
    """Replace ``file`` with a pickle payload padded to its size (a size check alone cannot stop it)."""
    import pickle

    size = file.stat().st_size
    data = pickle.dumps(_Payload(marker), protocol=2)
    file.write_bytes(data + b" " * max(0, size - len(data)))  # pickle ignores bytes after STOP


SHORT = ("mle.steps=2", "trainer.steps=2", "trainer.eval_every=0", f"reward.name={__name__}:_ok")


def test_no_checkpoint_file_runs_code_and_errors_name_the_file(tmp_path):
    """A payload planted in any file of a checkpoint (new format, or the previous trainer_state.pt) never
    runs: the resume is refused with an error naming that file."""
    import pickle

    from rlvr_fast.trainer.checkpoint import LEGACY_STATE, CheckpointError, read_trainer_state

    run = tmp_path / "run"
    GRPOTrainer(tiny_config(run, *SHORT)).run()
    good = run / "checkpoint"
    files = sorted(p.relative_to(good).as_posix() for p in good.rglob("*") if p.is_file())
    expected = {"model.safetensors", "trainer_state.json", "trainer_state.safetensors", "config.json"}
    expected |= {"generation_config.json", "tokenizer.json", "tokenizer_config.json"}
    assert expected <= set(files) and LEGACY_STATE not in files
    marker = tmp_path / "pwned"
    t = GRPOTrainer(tiny_config(run, *SHORT))
    for i, rel in enumerate(files):
        case = tmp_path / f"case{i}" / "checkpoint"
        shutil.copytree(good, case)
        _plant(case / rel, marker)
        with pytest.raises(CheckpointError) as e:
            t.resume(case)
        assert str(case / rel) in str(e.value), (rel, str(e.value))
        assert not marker.exists(), rel
        assert t.rl_step == 0 and t.stage == "mle"  # nothing was loaded

    # the previous format: a torch.save pickle of the state (numpy RNG arrays included) still resumes ...
    legacy = tmp_path / "legacy" / "checkpoint"
    shutil.copytree(good, legacy)
    state = read_trainer_state(legacy)
    assert isinstance(state["rng"][0]["numpy"][1], __import__("numpy").ndarray)
    for name in ("trainer_state.json", "trainer_state.safetensors"):
        (legacy / name).unlink()
    torch.save(state, legacy / LEGACY_STATE)
    # ... but a payload in it, as a torch zip or a raw pickle, is refused, as is a truncated one
    writers = [
        lambda f: torch.save({"rng": _Payload(marker)}, f),
        lambda f: f.write_bytes(pickle.dumps(_Payload(marker), protocol=2)),
        lambda f: f.write_bytes((legacy / LEGACY_STATE).read_bytes()[:1000]),
    ]
    for i, write in enumerate(writers):
        case = tmp_path / f"legacy{i}" / "checkpoint"
        shutil.copytree(legacy, case)
        write(case / LEGACY_STATE)
        with pytest.raises(CheckpointError, match="truncated" if i == 2 else "could run code") as e:
            t.resume(case)
        assert str(case / LEGACY_STATE) in str(e.value) and not marker.exists()
    t.resume(legacy)
    assert (t.stage, t.mle_step, t.rl_step) == ("rl", 2, 2)


def test_corrupt_latest_checkpoint_falls_back_to_the_previous_one(tmp_path, caplog):
    """checkpoint/ keeps its predecessor in checkpoint.prev/; a truncated file in the latest one is named
    and the run resumes from the previous one, ending where the uninterrupted run ended."""
    from rlvr_fast.trainer.checkpoint import read_trainer_state

    extra = (*SHORT, "trainer.steps=3", "trainer.save_every=2")
    GRPOTrainer(tiny_config(tmp_path, *extra)).run()
    records = _records(tmp_path)
    latest, prev = tmp_path / "checkpoint", tmp_path / "checkpoint.prev"
    assert read_trainer_state(latest)["rl_step"] == 3 and read_trainer_state(prev)["rl_step"] == 2
    weights = (latest / "model.safetensors").read_bytes()
    for broken in ("model.safetensors", "trainer_state.safetensors"):
        f = latest / broken
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
        caplog.clear()
        with caplog.at_level("WARNING"):
            summary = GRPOTrainer(tiny_config(tmp_path, *extra)).run(resume=True)
        assert str(f) in caplog.text and f"resuming from the previous good checkpoint {prev}" in caplog.text
        assert [r["step"] for r in _records(tmp_path) if r["stage"] == "rl"] == [1, 2, 3]
        assert _records(tmp_path) == records and summary["counters"] == read_trainer_state(latest)["counters"]
        # the new latest is complete; the broken one was dropped, not kept as the fallback
        assert read_trainer_state(latest)["rl_step"] == 3 and read_trainer_state(prev)["rl_step"] == 2
        assert (latest / "model.safetensors").read_bytes() == weights


def test_resume_refuses_changed_settings_and_records_safe_ones(tmp_path, caplog):
    from rlvr_fast.trainer.checkpoint import read_trainer_state

    GRPOTrainer(tiny_config(tmp_path, *SHORT)).run()
    with pytest.raises(C.ConfigError) as e:
        changed = tiny_config(tmp_path, *SHORT, "mle.steps=250", "trainer.steps=6", "algo.kl_coef=0.1")
        GRPOTrainer(changed).run(resume=True)
    msg = str(e.value)
    assert "mle.steps: 2 -> 250" in msg and "algo.kl_coef: 0.0 -> 0.1" in msg
    assert "trainer.steps: 2" not in msg  # a changeable key is not among the refused ones
    assert json.loads((tmp_path / "config.json").read_text())["mle"]["steps"] == 2
    with caplog.at_level("WARNING"):
        GRPOTrainer(tiny_config(tmp_path, *SHORT, "trainer.steps=3", "trainer.save_every=1")).run(resume=True)
    assert "trainer.save_every: 0 -> 1, trainer.steps: 2 -> 3" in caplog.text
    assert [r["step"] for r in _records(tmp_path) if r["stage"] == "rl"] == [1, 2, 3]
    recorded = json.loads((tmp_path / "config.json").read_text())
    trainer = recorded["trainer"]
    assert (trainer["steps"], trainer["save_every"], recorded["mle"]["steps"]) == (3, 1, 2)
    assert read_trainer_state(tmp_path / "checkpoint")["config"]["trainer"]["steps"] == 3


def test_mle_model_is_a_candidate_for_best(tmp_path):
    """GRPO evaluations worse than the MLE model's leave best/ holding the MLE model."""
    from safetensors.torch import load_file

    from rlvr_fast.trainer.checkpoint import read_trainer_state

    t = GRPOTrainer(tiny_config(tmp_path, "mle.steps=2", "trainer.steps=4", f"reward.name={__name__}:_ok"))
    real, scripted, at_mle = t.evaluate, [0.5, 0.25, 0.4], {}

    def evaluate():
        m = real()
        if t.stage == "mle":
            at_mle.update({k: v.clone() for k, v in t.module.state_dict().items()})
        return {**m, "exact": scripted.pop(0)}

    t.evaluate = evaluate
    summary = t.run()
    assert not scripted and summary["rlvr"]["exact"] == 0.4 and summary["mle"]["exact"] == 0.5
    assert summary["best"] == {**summary["mle"], "step": 0, "stage": "mle"}
    state = read_trainer_state(tmp_path / "best")
    assert (state["stage"], state["mle_step"], state["rl_step"]) == ("mle", 2, 0)
    best = load_file(tmp_path / "best" / "model.safetensors")
    assert all(torch.equal(best[k], v) for k, v in at_mle.items() if k in best)
    assert any(not torch.equal(best[k], v) for k, v in t.module.state_dict().items() if k in best)
