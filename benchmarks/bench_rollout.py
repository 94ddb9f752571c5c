"""Rollout generation: the vLLM engine against Hugging Face ``generate``, same model, same prompts.

docs/DESIGN.md section 8 target: the vLLM engine >= 3x HF generate's tokens/s on the RT-1-like shape.

What one call is
    ``P`` distinct prompts of ``prompt_len`` random token ids (BOS first), ``n`` samples each (B = P x n
    sequences, groups contiguous), exactly ``T`` new tokens per sample (temperature 1, top-p 1, no top-k),
    returned as the trainer's ``Rollout`` batch (ids, masks). Every sample is ``T`` tokens long: EOS is
    suppressed until then (HF: ``min_new_tokens = T`` added to ``generate``, as bench_trainer.py does;
    vLLM: ``min_tokens = T``), and each call checks that every response has T tokens.
    tokens/s = B x T / median call time.

Providers (one model: a Llama built once from the shape's settings, seed 0, float32 on the CPU and bf16
weights under autocast / bfloat16 serving on a GPU)
    rlvr_fast        ``rollout.engine=vllm``: the colocated vLLM engine (``VLLMEngine.sample``), prefix
                     caching on (one prefill per group); the prefix cache is cleared before every call
                     so that no call reuses the previous call's prompts
    rlvr_fast-hf     ``rollout.engine=hf``: ``rollout.sample`` with ``prefill="group"`` (each prompt
                     prefilled once, its KV cache repeated n times)
    hf-generate      ``rollout.sample`` with ``prefill="sample"``: HF ``generate`` with
                     ``num_return_sequences=n`` (every sample prefills the prompt: what rlvr_fast did
                     before, and what TRL's GRPOTrainer does without vLLM)
Outputs are samples, so they are not compared across providers (tests/test_rollout_engines.py checks
that greedy outputs agree and that the group prefill draws the same samples as plain generate).

Shapes
    smoke     2-layer 128-wide Llama, vocab 512; 2 prompts x 2 samples, 16 + 8 tokens (the test suite)
    small     text-game-like: 4-layer 256-wide Llama (head 64), vocab 32000; 4 prompts of 1,024 tokens
              x 8 samples x 64 new tokens (RLVR-World's text-game prompts run to 7,192 tokens)
              RT-1-like: 4-layer 256-wide Llama, vocab 9,008 (iVideoGPT's ids); 2 prompts of 1,333
              tokens x 8 samples x 321 new tokens (RLVR-World's RT-1 single-step shape)
    target    (GPU) the same sequence shapes with a ~85M Llama (768 wide, 12 layers) and 16 prompts

Peak memory is not measured: the vLLM engine's is the KV-cache budget it is given (``rollout.kv_cache_gb``).
Timing: common.py's interleaved rounds (CPU) or its perf_counter loop (GPU, calls over 1 s). Run:
``python benchmarks/bench_rollout.py --shapes small``.
"""

from __future__ import annotations

import sys

import common as C
import torch

OP, MODE = "rollout", "generate"
SEED = 0

_SMALL = dict(hidden=256, layers=4, heads=4, mlp=768)
_TARGET = dict(hidden=768, layers=12, heads=12, mlp=2048)
SHAPES = {
    "smoke": [dict(kind="smoke", hidden=128, layers=2, heads=2, mlp=256, V=512, P=2, n=2, L=16, T=8)],
    "small": [
        dict(kind="text-game", **_SMALL, V=32000, P=4, n=8, L=1024, T=64),
        dict(kind="rt1", **_SMALL, V=9008, P=2, n=8, L=1333, T=321),
    ],
    "target": [
        dict(kind="text-game", **_TARGET, V=32000, P=16, n=8, L=1024, T=256),
        dict(kind="rt1", **_TARGET, V=9008, P=16, n=8, L=1333, T=321),
    ],
}
PROVIDERS = ("rlvr_fast", "rlvr_fast-hf", "hf-generate")


class _Ids:
    """The tokenizer surface the engines use: pad / BOS / EOS ids and an empty decode (the rollout's
    text is not what is measured)."""

    pad_token_id, bos_token_id, eos_token_id = 0, 1, 2

    def decode(self, ids, **kwargs) -> str:
        return ""


def _model(s: dict):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(SEED)
    cfg = LlamaConfig(
        vocab_size=s["V"],
        hidden_size=s["hidden"],
        intermediate_size=s["mlp"],
        num_hidden_layers=s["layers"],
        num_attention_heads=s["heads"],
        num_key_value_heads=s["heads"],
        head_dim=s["hidden"] // s["heads"],
        max_position_embeddings=s["L"] + s["T"] + 16,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    return LlamaForCausalLM(cfg).to(C.DEVICE).eval()


def _prompts(s: dict) -> list[list[int]]:
    g = C.generator(SEED + 1)
    return [[1, *torch.randint(3, s["V"], (s["L"] - 1,), generator=g).tolist()] for _ in range(s["P"])]


def _rollout_cfg(s: dict, engine: str):
    from rlvr_fast.trainer.config import RolloutConfig

    return RolloutConfig(
        n=s["n"],
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        max_new_tokens=s["T"],
        engine=engine,
        kv_cache_gb=1.0 if not C.HAS_CUDA else 16.0,
    )


def _checked(s: dict, batch) -> tuple:
    B = s["P"] * s["n"]
    if batch.response_mask.shape != (B, s["T"]) or not bool(batch.present.all()):
        raise AssertionError(f"expected {B} responses of exactly {s['T']} tokens, got {tuple(batch.present.shape)}")
    return (batch.present.sum().float(),)  # not compared (samples); shape-checked above


def _make(s: dict, provider: str):
    def make():
        model, tok, prompts = _model(s), _Ids(), _prompts(s)
        autocast = torch.autocast("cuda", dtype=torch.bfloat16) if C.HAS_CUDA else torch.autocast("cpu", enabled=False)
        if provider == "rlvr_fast":
            from rlvr_fast.trainer.vllm_engine import VLLMEngine

            engine = VLLMEngine(
                model,
                tok,
                _rollout_cfg(s, "vllm"),
                device=C.DEVICE,
                max_prompt_tokens=s["L"],
                seed=SEED,
                bf16=C.HAS_CUDA,
            )
            engine.sampling_overrides = {"min_tokens": s["T"]}
            del model

            def call():
                engine.llm.reset_prefix_cache()  # no reuse of the previous call's prompts
                return _checked(s, engine.sample(prompts, s["n"]))

            return call
        from rlvr_fast.trainer.rollout import sample

        prefill = "group" if provider == "rlvr_fast-hf" else "sample"
        inner = model.generate
        model.generate = lambda *a, **k: inner(*a, **k, min_new_tokens=s["T"])

        def call():
            with autocast:
                return _checked(s, sample(model, tok, prompts, s["n"], _rollout_cfg(s, "hf"), prefill=prefill))

        return call

    return make


def cases(shapes: str, mem_provider: str | None = None) -> list[C.Case]:
    out = []
    for s in SHAPES[shapes]:
        shape = {k: s[k] for k in ("hidden", "layers", "V", "P", "n", "L", "T")} | {"B": s["P"] * s["n"]}
        name = f"{s['kind']}-llama{s['hidden']}x{s['layers']}-V{s['V']}-P{s['P']}xn{s['n']}-L{s['L']}+T{s['T']}"
        tokens = s["P"] * s["n"] * s["T"]
        for provider in PROVIDERS:
            if provider == "rlvr_fast" and not C.try_import("vllm"):
                print(f"# {name}: vLLM is not installed, the rlvr_fast (vllm engine) row is skipped", flush=True)
                continue
            out.append(
                C.Case(
                    op=OP,
                    provider=provider,
                    mode=MODE,
                    shape=shape,
                    dtype="bfloat16" if C.HAS_CUDA else "float32",
                    make=_make(s, provider),
                    shape_name=name,
                    check=False,
                    note=f"{s['kind']}: {s['P']} prompts x {s['n']} samples x {s['T']} tokens",
                    derive=lambda t, tokens=tokens: {"tokens_per_s": tokens / (t["median_ms"] / 1e3)},
                )
            )
    return out


if __name__ == "__main__":
    # no peak-memory rows: the vLLM engine's is the KV cache it was given (rollout.kv_cache_gb)
    argv = sys.argv[1:]
    sys.exit(C.main(__doc__, cases, __file__, argv if "--no-memory" in argv else [*argv, "--no-memory"]))
