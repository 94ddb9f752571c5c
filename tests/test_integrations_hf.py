"""rlvr_fast.integrations.hf against the models' own logits on tiny random Llama, Qwen2 and GPT-2 configs."""

from __future__ import annotations

import pytest
import torch

import rlvr_fast as rf
from rlvr_fast.integrations import hf


def _model(kind: str, tied: bool):
    from transformers import (
        GPT2Config,
        GPT2LMHeadModel,
        LlamaConfig,
        LlamaForCausalLM,
        Qwen2Config,
        Qwen2ForCausalLM,
    )

    torch.manual_seed(0)
    common = dict(vocab_size=97, tie_word_embeddings=tied, bos_token_id=1, eos_token_id=2, pad_token_id=0)
    if kind == "llama":
        cfg = LlamaConfig(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            **common,
        )
        return LlamaForCausalLM(cfg).eval()
    if kind == "qwen2":
        cfg = Qwen2Config(
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            **common,
        )
        return Qwen2ForCausalLM(cfg).eval()
    cfg = GPT2Config(n_embd=32, n_layer=2, n_head=4, n_positions=64, **common)
    return GPT2LMHeadModel(cfg).eval()


def _batch():
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(3, 97, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[0, :4] = 0  # a left-padded prompt
    ids[0, :4] = 0
    return ids, mask


@pytest.mark.parametrize("kind", ["llama", "qwen2", "gpt2"])
@pytest.mark.parametrize("tied", [True, False])
def test_response_logprobs_match_the_models_logits(kind, tied):
    model = _model(kind, tied)
    ids, mask = _batch()
    R = 5
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=pos[:, :-1]).logits[:, -R:]
    want_lp, want_ent = rf.token_logprobs(logits, ids[:, -R:], temperature=0.8, return_entropy=True)
    lp, ent = hf.response_logprobs(model, ids, mask, R, temperature=0.8, return_entropy=True, chunk_vocab=10)
    torch.testing.assert_close(lp, want_lp, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ent, want_ent, rtol=1e-5, atol=1e-5)
    # gradients reach every parameter, as through the logits
    params = [p for p in model.parameters() if p.requires_grad]
    g = torch.autograd.grad(lp.sum() + 0.1 * ent.sum(), params)
    logits = model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=pos[:, :-1]).logits[:, -R:]
    a, b = rf.token_logprobs(logits, ids[:, -R:], temperature=0.8, return_entropy=True)
    g_ref = torch.autograd.grad(a.sum() + 0.1 * b.sum(), params, allow_unused=True)
    for x, y in zip(g, g_ref):
        torch.testing.assert_close(x, y if y is not None else torch.zeros_like(x), rtol=1e-4, atol=1e-6)


def test_response_policy_loss_matches_the_logits_path():
    model = _model("llama", False)
    ids, mask = _batch()
    R = 4
    old = torch.full((3, R), -4.5)
    adv = torch.tensor([1.0, -0.5, 0.2])
    rmask = torch.ones(3, R, dtype=torch.bool)
    loss, m = hf.response_policy_loss(model, ids, mask, R, old, adv, rmask, clip_high=0.28, entropy_coef=0.01)
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=pos[:, :-1]).logits[:, -R:]
    loss2, m2 = rf.policy_loss_from_logits(logits, ids[:, -R:], old, adv, rmask, clip_high=0.28, entropy_coef=0.01)
    torch.testing.assert_close(loss, loss2, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(m["logp"], m2["logp"], rtol=1e-5, atol=1e-5)


def test_refuses_logit_transforms_and_bad_lengths():
    model = _model("llama", True)
    ids, mask = _batch()
    with pytest.raises(ValueError, match="response_length"):
        hf.response_logprobs(model, ids, mask, 12)
    model.config.final_logit_softcapping = 30.0
    with pytest.raises(NotImplementedError, match="final_logit_softcapping"):
        hf.response_logprobs(model, ids, mask, 3)


def test_trl_example_matches_trls_own_logprobs_and_trains(tmp_path):
    """examples/trl_fused_logprobs.py: the override gives TRL's numbers (values and gradients) and a
    short GRPOTrainer run goes through it on CPU."""
    import importlib.util
    import pathlib

    from trl import GRPOTrainer

    path = pathlib.Path(__file__).parents[1] / "examples" / "trl_fused_logprobs.py"
    spec = importlib.util.spec_from_file_location("trl_fused_logprobs", path)
    ex = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ex)
    trainer = ex.make_trainer(1, str(tmp_path), temperature=0.7)
    ids = torch.randint(3, 40, (4, 10), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[0, :3] = 0  # a left-padded prompt
    params = [p for p in trainer.model.parameters() if p.requires_grad]
    got = trainer._get_per_token_logps_and_entropies(trainer.model, ids, mask, 4, batch_size=3, compute_entropy=True)
    want = GRPOTrainer._get_per_token_logps_and_entropies(trainer, trainer.model, ids, mask, 4, compute_entropy=True)
    torch.testing.assert_close(got[0], want[0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(got[1], want[1], rtol=1e-5, atol=1e-5)
    g1 = torch.autograd.grad(got[0].sum() + got[1].sum(), params)
    g2 = torch.autograd.grad(want[0].sum() + want[1].sum(), params)
    for a, b in zip(g1, g2):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)
    out = ex.main(["--steps", "2", "--out", str(tmp_path / "run")])
    assert [r["step"] for r in out["history"]] == [1, 2]
    assert all(0 <= r["reward"] <= 1 and r["entropy"] > 0 for r in out["history"])


def test_verl_example_matches_verls_padded_path():
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).parents[1] / "examples" / "verl_fused_logprobs.py"
    spec = importlib.util.spec_from_file_location("verl_fused_logprobs", path)
    ex = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(ex)
    assert ex.main() < 1e-5
    model, batch = ex.demo_batch(seed=1)
    ent, logp = ex.forward_micro_batch(model, batch, 1.0, calculate_entropy=False)
    assert ent is None and logp.shape == batch["responses"].shape
