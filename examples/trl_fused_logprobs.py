"""TRL's GRPOTrainer with rlvr_fast's fused linear log-probs: the [B, T, V] logits are never built.

TRL computes every log-prob (old, reference, and the ones the loss differentiates) in one method,
``GRPOTrainer._get_per_token_logps_and_entropies``. Overriding it with
``rlvr_fast.integrations.hf.response_logprobs`` (backbone -> last hidden states of the completion
positions -> ``fused_linear_logprobs`` against ``lm_head.weight``) changes nothing else in TRL: its loss,
advantages, clipping and logging run on the log-probs as before.

    python examples/trl_fused_logprobs.py --steps 2        # a tiny Llama on CPU, a toy reward

Scope of this drop-in: text-only causal LMs in one process (multimodal inputs and MoE auxiliary losses
fall back to TRL's own method; under DDP the unwrapped module would bypass gradient all-reduce, so wrap
your own model call there instead). Positions are ``arange(L)`` like TRL's own forward, which passes no
position ids.
"""

from __future__ import annotations

import argparse
import tempfile

import torch
from trl import GRPOConfig, GRPOTrainer

from rlvr_fast.integrations.hf import response_logprobs


class FusedGRPOTrainer(GRPOTrainer):
    """``trl.GRPOTrainer`` whose per-token log-probs and entropies come from the fused linear op."""

    def _get_per_token_logps_and_entropies(
        self,
        model,
        input_ids,
        attention_mask,
        logits_to_keep,
        batch_size=None,
        compute_entropy=False,
        compute_aux_loss=False,
        **extra,
    ):
        if compute_aux_loss or any(v is not None for v in extra.values()):
            return super()._get_per_token_logps_and_entropies(
                model, input_ids, attention_mask, logits_to_keep, batch_size, compute_entropy, compute_aux_loss, **extra
            )
        module = self.accelerator.unwrap_model(model)
        batch_size = batch_size or input_ids.size(0)
        positions = torch.arange(input_ids.shape[1], device=input_ids.device).expand_as(input_ids)
        logps, entropies = [], []
        for s in range(0, input_ids.size(0), batch_size):
            rows = slice(s, s + batch_size)
            with self.accelerator.autocast():
                lp, ent = response_logprobs(
                    module,
                    input_ids[rows],
                    attention_mask[rows],
                    logits_to_keep,
                    temperature=self.temperature,
                    return_entropy=True,
                    position_ids=positions[rows],
                )
            logps.append(lp)
            entropies.append(ent)
        return torch.cat(logps), (torch.cat(entropies) if compute_entropy else None), None


def tiny_setup(vocab_words: int = 40, seed: int = 0):
    """A tiny random Llama, its word-level tokenizer and a prompt dataset (nothing downloaded)."""
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForCausalLM

    from rlvr_fast.worlds.synthetic import build_tokenizer

    words = [f"w{i}" for i in range(vocab_words)]
    tok = build_tokenizer([" ".join(words)])
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(cfg)
    g = torch.Generator().manual_seed(seed)
    prompts = [
        " ".join(words[i] for i in torch.randint(0, vocab_words, (int(n),), generator=g).tolist())
        for n in torch.randint(2, 6, (32,), generator=g)
    ]
    return model, tok, Dataset.from_dict({"prompt": prompts})


def count_w0(completions, **kwargs) -> list[float]:
    """Toy verifiable reward: the share of words that are ``w0``."""
    return [c.split().count("w0") / max(1, len(c.split())) for c in completions]


def make_trainer(steps: int, out_dir: str, fused: bool = True, temperature: float = 1.0):
    model, tok, data = tiny_setup()
    config = GRPOConfig(
        output_dir=out_dir,
        per_device_train_batch_size=8,
        num_generations=4,
        max_completion_length=8,
        learning_rate=1e-3,
        max_steps=steps,
        beta=0.0,
        loss_type="dapo",
        report_to=[],
        save_strategy="no",
        logging_steps=1,
        disable_tqdm=True,
        bf16=False,
        use_cpu=not torch.cuda.is_available(),
        gradient_checkpointing=False,
        seed=0,
        temperature=temperature,
    )
    cls = FusedGRPOTrainer if fused else GRPOTrainer
    return cls(model=model, reward_funcs=[count_w0], args=config, train_dataset=data, processing_class=tok)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=2)
    p.add_argument("--out", default=None, help="output directory (default: a temporary one)")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = make_trainer(args.steps, args.out or tmp)
        trainer.train()
        history = [r for r in trainer.state.log_history if "reward" in r]
    for r in history:
        print(f"step {r['step']}: reward {r['reward']:.3f}, entropy {r.get('entropy', float('nan')):.3f}")
    return {"history": history}


if __name__ == "__main__":
    main()
