"""``reward.decode``: the text a text reward sees. ``clean`` drops EOS and special tokens; ``verl`` is what
RLVR-World's verl hands ``compute_score`` (``NaiveRewardManager`` in
``lang_wm/verl/verl/workers/reward_manager/naive.py``, e1b8b6f: the valid response tokens, EOS
included, decoded with special tokens kept). Expected strings are written out by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from rlvr_fast.trainer import config as C
from rlvr_fast.trainer.grpo import GRPOTrainer
from rlvr_fast.trainer.rollout import DECODE_MODES, decode_responses, response_mask_from

EOS = "<｜end▁of▁sentence｜>"  # DeepSeek-R1-Distill's EOS, RLVR-World's text-game model
BOS = "<｜begin▁of▁sentence｜>"


@pytest.fixture(scope="module")
def char_tokenizer():
    """A character-level PreTrainedTokenizerFast whose decoder glues tokens (as byte-level BPE does):
    ids 0 <pad>, 1 BOS, 2 EOS, then one id per character."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = list('{}[]:," abcdefghijklmnopqrstuvwxyz0123456789')
    vocab = {t: i for i, t in enumerate(["<pad>", BOS, EOS, *chars])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", bos_token=BOS, eos_token=EOS)


def _rows(tok, texts_and_tails, width):
    """Right-padded id rows: each text's ids followed by its tail ids, padded with <pad> to ``width``."""
    rows = []
    for text, tail in texts_and_tails:
        ids = [*tok(text, add_special_tokens=False)["input_ids"], *tail]
        rows.append(ids + [tok.pad_token_id] * (width - len(ids)))
    return torch.tensor(rows)


def test_clean_and_verl_strings_by_hand(char_tokenizer):
    tok = char_tokenizer
    eos, pad = tok.eos_token_id, tok.pad_token_id
    assert (eos, pad) == (2, 0)
    responses = _rows(
        tok,
        [
            ('{"a": 1}', [eos]),  # finished, then padding (a shorter row in the batch)
            ('{"a": 1', []),  # cut at the token limit: no EOS
            ('["x"]', [eos, 5, 6]),  # tokens after EOS: masked as padding, never decoded
            ('["x", "y"]', [eos]),  # exactly the width: EOS last
            ("", [eos]),  # an empty answer
            ('{"b"', [1, 2]),  # a special token (BOS) inside the response, then EOS
        ],
        width=11,
    )
    responses[1, 7:] = 9  # the cut row fills the width with real tokens
    present = response_mask_from(responses, eos)
    clean = decode_responses(tok, responses, present, "clean")
    verl = decode_responses(tok, responses, present, "verl")
    assert clean == ['{"a": 1}', '{"a": 1""""', '["x"]', '["x", "y"]', "", '{"b"']
    assert verl == [
        '{"a": 1}' + EOS,
        '{"a": 1""""',
        '["x"]' + EOS,
        '["x", "y"]' + EOS,
        EOS,
        '{"b"' + BOS + EOS,
    ]
    # the padding after EOS is not part of either string, even where <pad> is a special token
    assert all("<pad>" not in s for s in clean + verl)
    # a present mask that covers padding (a caller's own layout): verl decodes what the mask covers
    everything = torch.ones_like(present)
    assert decode_responses(tok, responses[:1], everything[:1], "verl") == ['{"a": 1}' + EOS + "<pad>" * 2]
    assert decode_responses(tok, responses[:1], everything[:1], "clean") == ['{"a": 1}']


def test_decode_mode_is_checked(char_tokenizer):
    ids = torch.zeros(1, 3, dtype=torch.long)
    with pytest.raises(ValueError, match=r"mode: expected one of \['clean', 'verl'\], got 'raw'"):
        decode_responses(char_tokenizer, ids, ids.bool(), "raw")
    assert DECODE_MODES == ("clean", "verl")


def test_synthetic_tokenizer_keeps_its_eos_text_under_verl():
    from rlvr_fast.worlds.synthetic import build_tokenizer

    tok = build_tokenizer(['{ "moves" : 3 }'])  # it joins every token with one space
    ids = tok('{ "moves" : 3 }', add_special_tokens=False)["input_ids"]
    responses = torch.tensor([[*ids, tok.eos_token_id, tok.pad_token_id]])
    present = response_mask_from(responses, tok.eos_token_id)
    assert decode_responses(tok, responses, present, "clean") == ['{ "moves" : 3 }']
    assert decode_responses(tok, responses, present, "verl") == ['{ "moves" : 3 } <eos>']


def test_config_key_lists_the_choices():
    assert C.Config().reward.decode == "clean"
    assert C.load_config(None, ["reward.decode=verl"]).reward.decode == "verl"
    with pytest.raises(C.ConfigError, match=r"reward.decode: 'raw' is not one of \['clean', 'verl'\]"):
        C.load_config(None, ["reward.decode=raw"])
    assert "reward.decode" not in C.INF_ALLOWED and "clean = " in C.describe()


# ------------------------------------------------------------------------------------------ the trainer
_SEEN: Path | None = None  # where _recording writes; set before the reward's worker process is forked


def _recording(completion, example):
    """A reward that appends each string it is given to ``_SEEN`` (one JSON line) and scores its length."""
    with open(_SEEN, "a") as f:
        f.write(json.dumps(completion) + "\n")
    return float(len(completion))


@pytest.mark.parametrize("mode", ["verl", "clean"])
def test_the_trainer_hands_the_reward_the_configured_decode(tmp_path, mode):
    """A short MLE + GRPO run on the synthetic world: the reward and the held-out metrics see exactly
    ``decode_responses(..., mode)`` of the rollouts."""
    global _SEEN
    _SEEN = tmp_path / "seen.jsonl"
    cfg = C.load_config(
        None,
        [
            "model.hidden_size=32",
            "model.num_layers=1",
            "model.num_heads=2",
            "model.intermediate_size=64",
            "data.n_train=64",
            "data.n_test=4",
            "rollout.n=4",
            "rollout.prompts_per_step=2",
            "rollout.max_new_tokens=16",
            "mle.steps=2",
            "mle.batch_size=8",
            "trainer.steps=1",
            "trainer.eval_every=0",
            "trainer.eval_size=4",
            "trainer.save_every=0",
            "trainer.progress=false",
            "algo.micro_batch_size=8",
            "reward.workers=1",
            f"reward.name={__name__}:_recording",
            f"reward.decode={mode}",
            f"trainer.out_dir={tmp_path / 'run'}",
        ],
    )
    t = GRPOTrainer(cfg)
    eos = t.tok.eos_token_id

    # the EOS logit of the first half of the rows lifted: those finish with EOS, the others are mostly cut
    def boost(module, inputs, out):
        out = out.clone()
        out[: len(out) // 2, :, eos] += 6.0
        return out

    t.module.lm_head.register_forward_hook(boost)
    scored, evaluated = [], []
    score, evaluate = t.task.score, t.task.evaluate

    def spy_score(rollout, examples, group_size):
        scored.append(rollout)
        return score(rollout, examples, group_size)

    def spy_evaluate(rollout, examples):
        evaluated.append(rollout)
        return evaluate(rollout, examples)

    t.task.score, t.task.evaluate = spy_score, spy_evaluate
    t.run()
    assert len(scored) == 1 and len(evaluated) >= 2  # one GRPO step; the MLE and final evaluations
    seen = [json.loads(line) for line in _SEEN.read_text().splitlines()]
    batch = scored[0]
    want = decode_responses(t.tok, batch.responses, batch.present, mode)
    assert batch.completions == want and sorted(seen) == sorted(want) and len(seen) == 8
    for r in evaluated:  # held-out evaluation decodes the same way
        assert r.completions == decode_responses(t.tok, r.responses, r.present, mode)
    finished = ((batch.responses == eos) & batch.present).any(1)  # rows that ended with EOS
    if mode == "verl":
        assert all(s.endswith("<eos>") == bool(f) for s, f in zip(want, finished.tolist()))
        assert finished.any() and not finished.all()
    else:
        assert not any("<eos>" in s for s in want)
