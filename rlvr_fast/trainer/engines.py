"""Rollout engines: what turns a batch of prompts into a :class:`~rlvr_fast.trainer.rollout.Rollout`.

Two engines, one interface (``sample``, ``sync``, ``release``, ``close``, ``needs_weights``), chosen by
``rollout.engine``:

- ``hf``: Hugging Face ``generate`` on the training model itself (``rollout.sample``), one prefill per
  group (``rollout.prefill``). Nothing to sync: it is the policy.
- ``vllm``: a vLLM engine in the training process (``vllm_engine.VLLMEngine``; TRL's
  ``vllm_mode="colocate"``, verl's hybrid engine), built once from the policy's config with its weights
  loaded from the policy in memory. The trainer calls ``sync`` before the engine samples whenever an
  optimizer step (or a resume) has changed the policy since the last sync, so the engine never samples
  from stale weights; several optimizer steps between two rollouts (``ppo_epochs`` > 1, mini-batches)
  cost one sync. After ``release`` (GPU sleep mode: the weights are dropped while the policy trains)
  ``needs_weights`` is true and the trainer syncs before the next sample whether or not the policy moved.
  It also returns its own log-prob of every sampled token (``Rollout.engine_logp``),
  which the trainer compares with its own (``logp_gap_*`` metrics; ``algo.tis_cap`` corrects for it).
- ``auto``: vllm when it imports and can serve the model here, else hf; the log says which and why.

Every engine returns the same layout for the same inputs (prompt left-padded, responses padded after
EOS, forced tokens in ``present`` but not in ``response_mask``).
"""

from __future__ import annotations

import logging
import time

from . import distributed as D
from .rollout import Rollout, sample

log = logging.getLogger(__name__)

ENGINES = ("hf", "vllm", "auto")


class HFEngine:
    """``generate`` on the policy module itself (``rollout.sample``)."""

    name = "hf"
    needs_weights = False  # it samples from the policy itself

    def __init__(self, module, tokenizer, cfg):
        self.module, self.tok, self.cfg = module, tokenizer, cfg

    def sample(
        self, prompts, n, *, greedy=False, forced_slots=None, answers=None, decode="clean", ignore_eos=False
    ) -> Rollout:
        """``n`` responses per prompt (greedy: one each); arguments as :func:`rollout.sample`."""
        return sample(
            self.module,
            self.tok,
            prompts,
            n,
            self.cfg,
            greedy=greedy,
            forced_slots=forced_slots,
            answers=answers,
            decode=decode,
            prefill=self.cfg.prefill,
            ignore_eos=ignore_eos,
        )

    def sync(self, weights) -> None:
        """Nothing to do: the engine is the policy."""

    def release(self) -> None:
        """Nothing to release."""

    def close(self) -> None:
        """Nothing to close."""


def build_engine(cfg, module, tokenizer, device, *, world: int = 1, max_prompt_tokens: int, seed: int, bf16: bool):
    """The run's rollout engine for ``cfg.engine`` (a :class:`RolloutConfig`).

    ``vllm`` that cannot start (not installed, a model it cannot serve, a KV-cache budget that cannot
    hold one group, several ranks) raises :class:`~rlvr_fast.trainer.config.ConfigError` naming the
    setting to change, at start-up; ``auto`` falls back to ``hf`` then and logs why.
    """
    if cfg.engine == "hf":
        return HFEngine(module, tokenizer, cfg)
    from . import vllm_engine

    try:
        vllm_engine.check_can_serve(module, cfg, device=device, world=world, max_prompt_tokens=max_prompt_tokens)
    except vllm_engine.ConfigError as e:
        if cfg.engine == "vllm":
            raise
        log.info("rollout.engine = auto: Hugging Face generate (%s)", e)
        return HFEngine(module, tokenizer, cfg)
    if cfg.engine == "auto":
        log.info("rollout.engine = auto: vLLM %s (installed and able to serve the model)", vllm_engine.version())
    return vllm_engine.VLLMEngine(
        module, tokenizer, cfg, device=device, max_prompt_tokens=max_prompt_tokens, seed=seed, bf16=bf16
    )


def sync_weights(engine, model, *, where: str, checkpoint) -> float:
    """Load the policy ``model``'s weights (gathered if FSDP-sharded) into ``engine``; seconds taken.

    A failure raises ``RuntimeError`` naming ``where`` (the run's step) and that ``checkpoint`` (the last
    one written) is untouched: nothing is saved after a failed sync.
    """
    if engine.name == "hf":  # it samples from the policy itself
        return 0.0
    t0 = time.perf_counter()
    try:
        engine.sync(D.full_state_dict(model) if D.is_fsdp(model) else D.unwrap(model).state_dict())
    except Exception as e:
        raise RuntimeError(
            f"syncing the policy's weights into the {engine.name} engine failed at {where}; the run stops here "
            f"and {checkpoint} keeps the last checkpoint"
        ) from e
    return time.perf_counter() - t0
