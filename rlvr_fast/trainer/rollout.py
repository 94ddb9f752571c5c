"""Sampling with Hugging Face ``generate`` (KV cache) and the padded rollout batch every engine returns.

Layout of a batch of B = prompts x n sequences (groups contiguous, as TRL and ``group_size`` expect)::

    input_ids       [B, P + R]   left-padded prompt | response, padded after its EOS
    attention_mask  [B, P + R]   1 on real prompt tokens and on response tokens up to and incl. EOS
    response_mask   [B, R] bool  the response tokens the policy chose (incl. EOS; a cut response has none)

A task may force some response positions to given tokens (the action tokens of a multi-step video
response are inputs, not predictions): ``generate`` is constrained to them there, they stay in the
attention mask (``present``) and are left out of ``response_mask``, so no loss is taken on them.

Position ids are ``cumsum(attention_mask) - 1`` both in ``generate`` and in the training forward, so
left padding does not shift positions.

``completions`` are the responses as text, the string a text reward and its metrics see, decoded one of
:data:`DECODE_MODES` ways (:func:`decode_responses`; the trainer's ``reward.decode``).

A group's n samples share their prompt. With ``prefill="group"`` (the default) each distinct prompt is
prefilled once and its KV cache repeated n times before decoding; ``generate``'s own
``num_return_sequences`` repeats the prompt first and prefills it n times (``prefill="sample"``). Both
draw the same samples for the same RNG state: the first sampling step sees the same logits (only the
prompt's last token is computed with the shared cache) and ``generate`` draws from the global RNG the
same way. The logits agree to rounding, not bit for bit (the last prompt token goes through a
[1, d] instead of a [P, d] product), so in float32 a draw that lands within rounding of a boundary
between two tokens can differ; ``tests/test_rollout_engines.py`` checks equality in float64.

The vLLM engine (``engines.py``, ``vllm_engine.py``) returns the same layout, plus ``engine_logp``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .._checks import check_choice

# How a response becomes the text its reward sees (decode_responses): "clean" drops EOS and special
# tokens; "verl" is what RLVR-World's verl hands compute_score (special tokens kept, EOS included).
DECODE_MODES = ("clean", "verl")


def left_pad(seqs: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids [B, L], attention_mask [B, L])`` with the sequences right-aligned."""
    L = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), L), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), L), dtype=torch.long)
    for i, s in enumerate(seqs):
        if s:
            ids[i, L - len(s) :] = torch.tensor(s, dtype=torch.long)
            mask[i, L - len(s) :] = 1
    return ids.to(device), mask.to(device)


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    return (attention_mask.long().cumsum(-1) - 1).clamp_(min=0)


@dataclass
class Rollout:
    """A padded batch of prompt+response sequences (module docstring for the layout)."""

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    response_mask: torch.Tensor
    prompt_len: int
    completions: list[str]
    # float32 [B, R]: the rollout engine's log-prob of each response token (vLLM; None for HF generate,
    # whose log-probs are the trainer's own); 0 at padding
    engine_logp: torch.Tensor | None = None

    @property
    def responses(self) -> torch.Tensor:
        return self.input_ids[:, self.prompt_len :]

    @property
    def present(self) -> torch.Tensor:
        """Bool [B, R]: the response tokens that exist (generated or forced, up to and incl. EOS)."""
        return self.attention_mask[:, self.prompt_len :].bool()

    def select(self, idx: torch.Tensor | slice) -> "Rollout":
        rows = range(len(self.completions))[idx] if isinstance(idx, slice) else idx.tolist()
        return Rollout(
            self.input_ids[idx],
            self.attention_mask[idx],
            self.response_mask[idx],
            self.prompt_len,
            [self.completions[i] for i in rows],
            None if self.engine_logp is None else self.engine_logp[idx],
        )


def response_mask_from(responses: torch.Tensor, eos_id: int) -> torch.Tensor:
    """Bool [B, R]: tokens up to and including the first EOS (all tokens when there is none)."""
    is_eos = responses == eos_id
    after_eos = (is_eos.long().cumsum(-1) - is_eos.long()) > 0  # strictly after the first EOS
    return ~after_eos


def decode_responses(tokenizer, responses: torch.Tensor, present: torch.Tensor, mode: str = "clean") -> list[str]:
    """The text of each response, as its reward sees it.

    Args:
        tokenizer: a ``transformers`` tokenizer (``decode``, ``eos_token_id``).
        responses: int [B, R] response ids; present: bool [B, R], the tokens up to and including EOS (a
            prefix of each row; a cut response has all R).
        mode: one of :data:`DECODE_MODES`. ``"clean"``: the present tokens but EOS, decoded with
            ``skip_special_tokens=True``. ``"verl"``: the first ``present.sum()`` tokens, EOS included,
            decoded with the tokenizer's defaults (special tokens kept), so the EOS text ends the string
            of a finished response: RLVR-World's ``NaiveRewardManager.__call__``
            (``lang_wm/verl/verl/workers/reward_manager/naive.py``, e1b8b6f) decodes
            ``response_ids[:valid_response_length]`` with ``valid_response_length`` the response part of
            the attention mask, and its validation uses the same reward manager.

    Returns:
        B strings.
    """
    check_choice("mode", mode, DECODE_MODES)
    texts = []
    for row, keep in zip(responses.tolist(), present.tolist()):
        if mode == "verl":
            texts.append(tokenizer.decode(row[: sum(keep)]))
        else:
            toks = [t for t, k in zip(row, keep) if k and t != tokenizer.eos_token_id]
            texts.append(tokenizer.decode(toks, skip_special_tokens=True))
    return texts


# How the HF engine prefills a group's shared prompt (sample(prefill=...), the config's rollout.prefill)
PREFILL_MODES = ("group", "sample")


def forced_rows(forced_slots: list[bool] | None, answers: list[list[int]] | None, rows: int) -> list[list[int]] | None:
    """Per prompt, the response's forced token at each position or -1 (None when nothing is forced)."""
    if forced_slots is None or not any(forced_slots):
        return None
    if answers is None or len(answers) != rows:
        raise ValueError("forced_slots needs the answers (one per prompt) that hold the forced tokens")
    return [[a[t] if f and t < len(a) else -1 for t, f in enumerate(forced_slots)] for a in answers[:rows]]


def _forced_tensor(forced_slots: list[bool] | None, answers: list[list[int]] | None, rows: int, device):
    """Long [rows, R]: the answer's token at forced positions, -1 elsewhere (None without forcing)."""
    table = forced_rows(forced_slots, answers, rows)
    return None if table is None else torch.tensor(table, dtype=torch.long, device=device)


class _ForceTokens:
    """A ``generate`` logits processor: at forced step t every row with a forced token gets only it."""

    def __init__(self, forced: torch.Tensor, slots: list[bool], prompt_len: int):
        self.forced, self.slots, self.prompt_len = forced, slots, prompt_len

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        t = input_ids.shape[1] - self.prompt_len
        if t >= len(self.slots) or not self.slots[t]:  # the slot pattern is host-side: no sync
            return scores
        keep = self.forced[:, t : t + 1]  # -1: this row's answer has no token here, it samples freely
        only = torch.full_like(scores, -math.inf).scatter_(1, keep.clamp(min=0), 0.0)
        return torch.where(keep >= 0, only, scores)


@torch.no_grad()
def sample(
    model,
    tokenizer,
    prompts: list[list[int]],
    n: int,
    cfg,
    *,
    greedy: bool = False,
    forced_slots: list[bool] | None = None,
    answers: list[list[int]] | None = None,
    decode: str = "clean",
    prefill: str = "group",
    ignore_eos: bool = False,
) -> Rollout:
    """Sample ``n`` responses per prompt (greedy: one each) with KV-cached ``generate``.

    cfg: :class:`~rlvr_fast.trainer.config.RolloutConfig` (temperature, top_p, top_k, max_new_tokens).
    Sampling draws from the global torch RNG, which the trainer seeds and checkpoints.
    forced_slots / answers: response positions forced to the answer's token (module docstring).
    decode: how ``completions`` are decoded, one of :data:`DECODE_MODES` (:func:`decode_responses`).
    prefill: one of :data:`PREFILL_MODES`: ``"group"`` prefills each prompt once and shares its cache
        among the group's samples; ``"sample"`` prefills every sample (module docstring).
    ignore_eos: sample all ``max_new_tokens`` tokens, an EOS among them included (a layout without EOS,
        RLVR-World's ctx_msp: ``ignore_eos=True`` in its rollout config).
    """
    check_choice("decode", decode, DECODE_MODES)
    check_choice("prefill", prefill, PREFILL_MODES)
    device = next(model.parameters()).device
    ids, mask = left_pad(prompts, tokenizer.pad_token_id, device)
    reps = 1 if greedy else n
    forced = _forced_tensor(forced_slots, answers, len(prompts), device)
    from transformers import GenerationConfig

    # a fresh GenerationConfig: settings saved with a checkpoint (repetition_penalty, min_p, ...) would
    # otherwise leak into sampling and make it differ from the policy whose ratio the loss computes
    common = dict(
        max_new_tokens=cfg.max_new_tokens,
        eos_token_id=None if ignore_eos else tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        use_cache=True,
    )
    shared = prefill == "group" and reps > 1 and ids.shape[1] > 1
    if greedy:
        gen = GenerationConfig(do_sample=False, num_return_sequences=1, **common)
    else:  # top_k=0 and top_p=1 switch those filters off
        gen = GenerationConfig(
            do_sample=True,
            temperature=cfg.temperature,
            top_p=cfg.top_p,
            top_k=cfg.top_k,
            num_return_sequences=1 if shared else n,
            **common,
        )
    extra = {}
    if forced is not None:
        from transformers import LogitsProcessorList

        proc = _ForceTokens(forced.repeat_interleave(reps, 0), list(forced_slots), ids.shape[1])
        extra["logits_processor"] = LogitsProcessorList([proc])
    gen_ids, gen_mask = ids, mask
    if shared:  # the prompt but its last token, once per prompt; generate continues from the cache
        extra["past_key_values"] = _prefill_once(model, ids, mask, reps)
        gen_ids, gen_mask = ids.repeat_interleave(reps, 0), mask.repeat_interleave(reps, 0)
    saved = model.generation_config
    model.generation_config = GenerationConfig()  # transformers fills unset fields from the model's config
    try:
        out = model.generate(input_ids=gen_ids, attention_mask=gen_mask, generation_config=gen, **extra)
    finally:
        model.generation_config = saved
    P = ids.shape[1]
    resp = out[:, P:]
    rmask = torch.ones_like(resp, dtype=torch.bool) if ignore_eos else response_mask_from(resp, tokenizer.eos_token_id)
    resp = resp.masked_fill(~rmask, tokenizer.pad_token_id)
    attn = torch.cat([mask.repeat_interleave(reps, 0), rmask.long()], 1)
    texts = decode_responses(tokenizer, resp, rmask, decode)
    return Rollout(torch.cat([ids.repeat_interleave(reps, 0), resp], 1), attn, unforced(rmask, forced_slots), P, texts)


def _prefill_once(model, ids: torch.Tensor, mask: torch.Tensor, reps: int):
    """The KV cache of ``ids[:, :-1]`` (one forward per distinct prompt), repeated ``reps`` times per row."""
    from transformers import DynamicCache

    cache = DynamicCache(config=model.config)
    model(
        input_ids=ids[:, :-1],
        attention_mask=mask[:, :-1],
        position_ids=position_ids(mask)[:, :-1],
        past_key_values=cache,
        use_cache=True,
        logits_to_keep=1,  # the prefill's logits are not used
    )
    cache.batch_repeat_interleave(reps)
    return cache


def unforced(mask: torch.Tensor, forced_slots: list[bool] | None) -> torch.Tensor:
    """Bool [B, R]: ``mask`` without the forced positions (the loss mask)."""
    if forced_slots is None or not any(forced_slots):
        return mask
    slots = torch.tensor(forced_slots, dtype=torch.bool, device=mask.device)[: mask.shape[1]]
    out = mask.clone()
    out[:, : slots.shape[0]] &= ~slots
    return out


def response_logits(model, batch: Rollout) -> torch.Tensor:
    """Logits [B, R, V] predicting each response token (only the last R positions go through lm_head).

    They are lm_head's own output (no slice of a longer logits tensor), so the d(logits) that
    ``token_logprobs`` writes goes straight to lm_head's backward: one write, the floor (issue 20)."""
    R = batch.response_mask.shape[1]
    pos = position_ids(batch.attention_mask)
    out = model(
        input_ids=batch.input_ids[:, :-1],
        attention_mask=batch.attention_mask[:, :-1],
        position_ids=pos[:, :-1],
        logits_to_keep=R,
        use_cache=False,
    )
    return out.logits


def teacher_batch(
    prompts: list[list[int]], answers: list[list[int]], pad_id: int, device, forced_slots: list[bool] | None = None
) -> Rollout:
    """Prompt + gold answer sequences in the rollout layout (for MLE and for scoring gold answers);
    forced positions are in the attention mask but not in ``response_mask``."""
    ids, mask = left_pad(prompts, pad_id, device)
    R = max(len(a) for a in answers)
    resp = torch.full((len(answers), R), pad_id, dtype=torch.long)
    rmask = torch.zeros((len(answers), R), dtype=torch.bool)
    for i, a in enumerate(answers):
        resp[i, : len(a)] = torch.tensor(a, dtype=torch.long)
        rmask[i, : len(a)] = True
    resp, rmask = resp.to(device), rmask.to(device)
    return Rollout(
        torch.cat([ids, resp], 1),
        torch.cat([mask, rmask.long()], 1),
        unforced(rmask, forced_slots),
        ids.shape[1],
        [""] * len(answers),
    )
