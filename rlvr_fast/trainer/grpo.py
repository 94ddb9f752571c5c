"""GRPO post-training of a world model on a verifiable reward (RLVR-World's recipe), with an MLE stage.

Algorithm (GRPO, DeepSeekMath arXiv 2402.03300; as RLVR-World, Wu et al. NeurIPS 2025, uses it):

0. MLE (optional, ``mle.steps``): teacher-forced cross-entropy on the gold answers of the training
   split, then a held-out evaluation: the "mle" row of the summary. The reference model for the KL
   term is a frozen copy of the policy at this point (RLVR-World: the SFT model).
1. Per GRPO step, take ``prompts_per_step`` training prompts and sample ``n`` responses for each with
   the current policy (temperature / top-p / top-k) on the rollout engine (``engines.py``: HF ``generate``
   on the policy, or a colocated vLLM engine whose weights are synced from the policy first).
2. Score every response with the task's verifiable reward, ``Task.score`` -> ``r_i`` and per-response
   metrics (text worlds: a registered reward on the host, a failure gets ``reward.failure_reward``;
   video worlds: the pixel reward on the device, token-level rewards summed into ``r_i``). Multi-step
   video responses force their action tokens during generation and leave them out of every loss.
3. Group advantages ``A_i = (r_i - mean_group) / (std_group + eps)`` (``rlvr_fast.group_advantages``;
   other estimators by ``algo.estimator``), the same for every token of response i.
4. Log-probs of the sampled tokens under the sampling policy (``old``) and the reference (``ref``).
5. ``ppo_epochs`` passes over the batch in mini-batches (one optimizer step each, gradients
   accumulated over micro-batches) of the clipped surrogate with the KL penalty
   (``rlvr_fast.policy_loss_from_logits``: selective log-softmax, ratio, clip, KL and aggregation
   fused over the logits), AdamW with warmup and global-norm clipping.
6. Every ``eval_every`` steps: greedy decoding on the held-out split, the task's metrics, and the best
   checkpoint by ``select_metric``.

Simplifications, all deliberate: rollouts and training share one device in turn; with one PPO epoch
and one mini-batch the "old" log-probs are the current ones (ratio 1, no extra forward), as in verl;
text rewards are computed on the host (they parse strings); sequences are padded, not packed.

Around the loop, each in its own module: what a checkpoint holds and how ``--resume`` continues from it
(``run_state.py``, files in ``checkpoint.py``), Ctrl-C (``interrupt.py``), the summary (``report.py``).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import torch

from .. import ops as rf
from .. import rewards
from .._threads import CpuThreads
from ..models import count_parameters, load_model
from ..ops.advantages import WHITENED_ESTIMATORS
from ..task import Task
from . import distributed as D
from . import evaluation, interrupt, mismatch, report, run_state
from .config import Config
from .engines import build_engine, sync_weights
from .logger import RunLogger
from .rollout import Rollout, response_logits, teacher_batch
from .tasks import build_task, check_positions

log = logging.getLogger(__name__)


class GRPOTrainer:
    """MLE then GRPO on one task; ``run()`` returns the summary (also written to ``summary.json``).

    cfg: the :class:`~rlvr_fast.trainer.config.Config` tree. task: defaults to
    :func:`~rlvr_fast.trainer.tasks.build_task` of ``cfg``; a given task scores with its own reward (the
    ``reward`` section configures the tasks built from ``cfg``).
    eval_only: only :meth:`evaluate` will be called: the train split is not encoded and may be empty
    (``rlvr-fast eval`` of a text world whose config has no ``data.train_path``).
    Launch under ``torchrun --nproc_per_node=N`` for data parallelism (prompts split over ranks).
    """

    def __init__(self, cfg: Config, task: Task | None = None, *, eval_only: bool = False):
        self.cfg = cfg
        self.dist, self.device = D.init(cfg.trainer.device)
        torch.manual_seed(cfg.trainer.seed)  # the same initial weights on every rank
        self.out = Path(cfg.trainer.out_dir)
        self.task = (
            task
            if task is not None
            else build_task(
                cfg,
                self.device,
                cache_dir=self.out / "tokenizer",
                main=self.dist.main,
                sync=lambda: D.gather_objects(None, self.dist),
            )
        )
        if self.task.response_length is not None and cfg.rollout.max_new_tokens != self.task.response_length:
            log.info(
                "rollout.max_new_tokens = %d: the task's responses have exactly that many tokens",
                self.task.response_length,
            )
            cfg.rollout.max_new_tokens = self.task.response_length
        module, self.tok = load_model(cfg.model, self.task.tokenizer, self.device)
        self.train_set = [] if eval_only else self._encode(self.task.train, "train")
        self.test_set = self._encode(self.task.test[: cfg.trainer.eval_size], "test")
        check_positions(self.task, module, cfg, max(len(p) for _, p, _ in self.train_set + self.test_set))
        self.module = module
        self.model = D.wrap(module, self.dist, cfg.trainer.parallel, self.device)
        # on CPU: no more torch threads than idle cores (re-checked from the step loops)
        self.threads = CpuThreads(cfg.trainer.cpu_threads or "auto") if self.device.type == "cpu" else None
        self.ref: torch.nn.Module | None = None
        self.bf16 = cfg.trainer.bf16 == "on" or (cfg.trainer.bf16 == "auto" and self.device.type == "cuda")
        self.engine = build_engine(
            cfg.rollout,
            module,
            self.tok,
            self.device,
            world=self.dist.world,
            bf16=self.bf16,
            max_prompt_tokens=cfg.data.max_prompt_tokens,
            seed=cfg.trainer.seed,
        )
        self.engine_stale, self.sync_s = False, 0.0  # stale: the policy changed since the engine's last sync
        self.logger = RunLogger(
            self.out, enabled=self.dist.main, tensorboard=cfg.trainer.tensorboard, progress=cfg.trainer.progress
        )
        extra = 0 if eval_only else cfg.data.nongold_rows  # rows drawn per epoch from the task's pool
        if extra and not self.task.train_pool:
            raise ValueError(f"data.nongold_rows = {extra}: the {self.task.name} task has no non-gold rows to draw")
        pool = self._encode(self.task.train_pool, "non-gold") if extra else []
        # the run's progress: what a checkpoint holds besides weights, optimizer and reference (run_state.py)
        self.stream = run_state.DataStream(len(self.train_set), cfg.trainer.seed, extra=extra, pool=len(pool))
        self.train_set += pool  # the stream's indices n.. are pool rows
        self.stage, self.mle_step, self.rl_step = "mle", 0, 0
        self.results: dict[str, Any] = {}
        self.previews: dict[str, Any] = {}  # stage -> held-out greedy responses for Task.preview
        self.best: dict[str, Any] = {}
        self.counters = {"nan_skipped": 0, "reward_errors": 0, "reward_timeouts": 0}
        self.elapsed = 0.0  # seconds of earlier sessions (a resumed run)
        self.started = 0.0  # time.perf_counter() when run() began
        self.interrupt = interrupt.Interrupt(self.dist, self.device)
        if cfg.mle.steps:
            self.new_optimizer(cfg.mle.lr, cfg.mle.warmup_steps, decay_steps=cfg.mle.steps)
        else:
            self.new_optimizer(cfg.trainer.lr, cfg.trainer.warmup_steps)

    # ---------------------------------------------------------------- setup helpers
    def _encode(self, examples, split: str) -> list[tuple[Any, list[int], list[int]]]:
        """(example, prompt ids, answer ids) for every example whose prompt fits max_prompt_tokens."""
        out, dropped = [], 0
        for ex in examples:
            p, a = self.task.encode(ex, self.tok, chat_template=self.cfg.data.chat_template)
            if len(p) > self.cfg.data.max_prompt_tokens:
                dropped += 1
                continue
            out.append((ex, p, a))
        if dropped:
            log.warning(
                "%s split: dropped %d prompt(s) longer than data.max_prompt_tokens=%d",
                split,
                dropped,
                self.cfg.data.max_prompt_tokens,
            )
        if not out:
            raise ValueError(f"{split} split is empty after dropping prompts longer than data.max_prompt_tokens")
        return out

    def new_optimizer(self, lr: float, warmup: int, decay_steps: int = 0) -> None:
        """AdamW with linear warmup, then constant (GRPO, as verl) or, with ``decay_steps``, cosine to 10%
        of the peak (the MLE stage, as usual for supervised fine-tuning)."""
        t = self.cfg.trainer
        self.opt = torch.optim.AdamW(self.model.parameters(), lr=lr, betas=tuple(t.betas), weight_decay=t.weight_decay)

        def factor(s: int) -> float:
            if s < warmup:
                return (s + 1) / warmup
            if not decay_steps:
                return 1.0
            frac = min(1.0, (s - warmup) / max(1, decay_steps - warmup))
            return 0.1 + 0.45 * (1 + math.cos(math.pi * frac))

        self.sched = torch.optim.lr_scheduler.LambdaLR(self.opt, factor)

    def _autocast(self):
        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def _rank_slice(self, items: list) -> list:
        k = len(items) // self.dist.world
        return items[self.dist.rank * k : (self.dist.rank + 1) * k]

    # ---------------------------------------------------------------- the two stages
    def mle_update(self) -> dict[str, float]:
        """One teacher-forced cross-entropy step on gold answers (the MLE baseline of RLVR-World)."""
        rows = [self.train_set[i] for i in self._rank_slice(self.stream.take(self.cfg.mle.batch_size))]
        batch = teacher_batch(
            [p for _, p, _ in rows], [a for _, _, a in rows], self.tok.pad_token_id, self.device, self.task.forced_slots
        )
        with self._autocast():
            logits = response_logits(self.model, batch)
        logp = rf.token_logprobs(logits, batch.responses)
        mask = batch.response_mask
        loss = -(logp * mask).sum() / mask.sum()
        loss.backward()  # a NaN loss is caught by _optimizer_step through the gradient norm
        return {"loss": loss.item(), **self._optimizer_step()}

    def grpo_step(self) -> dict[str, float]:
        """Sample, score, compute advantages, then ``ppo_epochs`` passes of clipped policy updates."""
        cfg, n = self.cfg, self.cfg.rollout.n
        t0 = time.perf_counter()
        rows = [self.train_set[i] for i in self._rank_slice(self.stream.take(cfg.rollout.prompts_per_step))]
        with self._autocast():
            batch = self._sample(rows, n)
        self.engine.release()  # vLLM on GPU: its memory is the update's until the next rollout
        t_gen = time.perf_counter() - t0
        examples = [ex for ex, _, _ in rows for _ in range(n)]
        scored = self.task.score(batch, examples, n)
        scores, stats = scored.scores, scored.stats
        self.counters["reward_errors"] += stats.errors + stats.non_finite
        self.counters["reward_timeouts"] += stats.timeouts
        names = [k for k in scored.metrics if k != "reward"]
        means = torch.stack([scored.metrics[k].float().mean() for k in names]).tolist() if names else []  # one sync
        reward_metrics = {f"train/{k}": v for k, v in zip(names, means)}
        t_reward = time.perf_counter() - t0 - t_gen
        whitened = cfg.algo.estimator in WHITENED_ESTIMATORS  # its batch statistics count response tokens
        adv = rf.group_advantages(
            scores, group_size=n, estimator=cfg.algo.estimator, response_mask=batch.response_mask if whitened else None
        )

        B = len(examples)
        mini = (cfg.algo.mini_batch_size or B * self.dist.world) // self.dist.world
        on_policy = cfg.algo.ppo_epochs == 1 and mini == B
        old_logp = None if on_policy else self._logprobs(self.model, batch)
        ref_logp = self._logprobs(self.ref, batch) if self.ref is not None else None

        # the engine's log-probs against the trainer's "old" ones (computed per micro-batch when on-policy)
        mm = mismatch.Mismatch(cfg.algo.tis_cap)
        if old_logp is not None:
            mm.observe(old_logp, batch)
        agg: dict[str, list[torch.Tensor]] = {}
        step_metrics: dict[str, float] = {}
        for _ in range(cfg.algo.ppo_epochs):
            # whole groups in a shuffled order, so every mini-batch holds complete groups
            order = (torch.randperm(B // n)[:, None] * n + torch.arange(n)).flatten() if mini < B else torch.arange(B)
            for m0 in range(0, B, mini):
                idx = order[m0 : m0 + mini].to(self.device)
                self._policy_update(batch, idx, adv, old_logp, ref_logp, agg, mm)
                step_metrics = self._optimizer_step()
        valid = batch.response_mask.sum(1).float()
        totals = D.all_reduce_sum(torch.stack([scores.sum(), scores.new_tensor(B), valid.sum()]), self.dist)
        step_s = time.perf_counter() - t0
        return {
            "reward": (totals[0] / totals[1]).item(),
            "reward_std": scores.std().item() if B > 1 else 0.0,
            "response_len": (totals[2] / totals[1]).item(),
            "reward_failures": stats.failures,
            "gen_s": t_gen,
            "sync_s": self.sync_s,  # part of gen_s
            "reward_s": t_reward,
            **reward_metrics,
            "step_s": step_s,
            "tokens_per_s": totals[2].item() / step_s,
            **{k: torch.stack(v).mean().item() for k, v in agg.items()},
            **mm.metrics(),
            **step_metrics,
        }

    @torch.no_grad()
    def _logprobs(self, model, batch: Rollout) -> torch.Tensor:
        """float32 [B, R] log-probs of the response tokens under ``model``, in micro-batches."""
        mb = self.cfg.algo.micro_batch_size
        outs = []
        for s in range(0, batch.input_ids.shape[0], mb):
            part = batch.select(slice(s, s + mb))
            with self._autocast():
                logits = response_logits(model, part)
            outs.append(rf.token_logprobs(logits, part.responses, temperature=self.cfg.rollout.temperature))
        return torch.cat(outs)

    def _policy_update(self, batch, idx, adv, old_logp, ref_logp, agg, mm: mismatch.Mismatch) -> None:
        """Accumulate the gradient of one mini-batch over micro-batches (one host sync for its counts)."""
        a, mbs = self.cfg.algo, self.cfg.algo.micro_batch_size
        # normalise by the mini-batch's counts so accumulated micro-batch losses equal the mini-batch loss
        counts = batch.response_mask[idx].sum(1)
        n_seq = 1
        if a.agg == "token-mean":
            norm = counts.sum().item()
        else:
            n_seq = max(1, (counts > 0).sum().item())
            # Dr. GRPO's constant T, or the number of sequences
            norm = float(self.cfg.rollout.max_new_tokens) if a.agg == "seq-mean-token-sum-norm" else n_seq
        for s in range(0, len(idx), mbs):
            sub = idx[s : s + mbs]
            part = batch.select(sub)
            last = s + mbs >= len(idx)
            with D.grad_sync(self.model, last):  # DDP: forward and backward inside, all-reduce on the last
                with self._autocast():
                    logits = response_logits(self.model, part)
                old = (
                    rf.token_logprobs(logits.detach(), part.responses, temperature=self.cfg.rollout.temperature)
                    if old_logp is None
                    else old_logp[sub]
                )
                if old_logp is None:
                    mm.observe(old, part)
                loss, m = rf.policy_loss_from_logits(
                    logits,
                    part.responses,
                    old,
                    mm.advantages(adv[sub], old, part),
                    part.response_mask,
                    ref_logp=ref_logp[sub] if ref_logp is not None else None,
                    kl_type=a.kl_type if ref_logp is not None else None,
                    kl_coef=a.kl_coef,
                    clip_low=a.clip_low,
                    clip_high=a.clip_high,
                    dual_clip=a.dual_clip,
                    entropy_coef=a.entropy_coef,
                    agg=a.agg,
                    norm_const=norm,
                    temperature=self.cfg.rollout.temperature,
                )
                if a.agg == "seq-mean-token-sum-norm":
                    loss = loss * (part.response_mask.sum(1) > 0).sum() / n_seq
                # no per-micro-batch finiteness sync: a NaN loss makes the gradient norm NaN, which
                # _optimizer_step sees once per step (identically on every rank after the all-reduce)
                loss.backward()
            for k in ("pg_loss", "clipfrac", "kl", "entropy"):
                if k in m:
                    agg.setdefault(k, []).append(m[k])

    def _optimizer_step(self) -> dict[str, float]:
        """Clip, step and zero. A non-finite loss makes the gradient norm non-finite (on every rank,
        after DDP's all-reduce): that update is skipped, warned about and counted."""
        params = [p for p in self.model.parameters() if p.grad is not None]
        clip = self.cfg.trainer.grad_clip
        gn = (
            float(torch.nn.utils.clip_grad_norm_(params, clip if clip > 0 else float("inf")))
            if params
            else float("nan")
        )
        if math.isfinite(gn):
            self.opt.step()
            self.sched.step()
            self.engine_stale = True
        else:
            self.counters["nan_skipped"] += 1
            log.warning("non-finite loss or gradient: update skipped (%d so far)", self.counters["nan_skipped"])
        self.opt.zero_grad(set_to_none=True)
        return {"grad_norm": gn, "lr": self.sched.get_last_lr()[0]}

    def _sample(self, rows, n: int, greedy: bool = False) -> Rollout:
        """Responses to ``rows`` (example, prompt ids, answer ids): n per prompt, or one greedy each, from
        the engine; first the policy's weights into the engine if they changed (``sync_s`` seconds)."""
        self.sync_s = 0.0
        if self.engine_stale or self.engine.needs_weights:
            where = f"GRPO step {self.rl_step + 1} (MLE step {self.mle_step})"
            self.sync_s = sync_weights(self.engine, self.model, where=where, checkpoint=self.out / "checkpoint")
            self.engine_stale = False
        return self.engine.sample(
            [p for _, p, _ in rows],
            n,
            greedy=greedy,
            forced_slots=self.task.forced_slots,
            ignore_eos=self.task.ignore_eos,
            answers=[a for _, _, a in rows],
            decode=self.cfg.reward.decode,  # training and held-out evaluation alike, as RLVR-World's verl
        )

    # ---------------------------------------------------------------- evaluation (evaluation.py)
    def evaluate(self) -> dict[str, float]:
        """Greedy decoding on the held-out split: the mean of each task metric (:func:`evaluation.evaluate`)."""
        return evaluation.evaluate(self)

    def _eval_and_select(self) -> dict[str, float]:
        return evaluation.evaluate_and_select(self)

    # ---------------------------------------------------------------- checkpoints
    def save(self, name: str = "checkpoint") -> None:
        """Checkpoint into ``out_dir/name`` (collective: all ranks call it; rank 0 writes)."""
        # the latest checkpoint keeps its predecessor (the resume fallback); best/ needs none
        run_state.save(self, self.out / name, keep_previous=name == "checkpoint")

    def resume(self, path: Path) -> None:
        """Continue from the checkpoint ``path`` (or, if a file of it is broken, the previous good one)."""
        run_state.resume(self, path)
        self.engine_stale = True  # the engine was built from the initial weights

    def make_ref(self, weights: dict | None = None) -> None:
        """The frozen reference: a copy of the policy, or of ``weights`` (from a checkpoint)."""
        if D.is_fsdp(self.model):  # a sharded module cannot be deep-copied: rebuild from gathered weights
            ref, _ = load_model(self.cfg.model, self.tok, self.device)
            weights = weights if weights is not None else D.full_state_dict(self.model)
        else:
            ref = copy.deepcopy(D.unwrap(self.model))
        if weights is not None:
            ref.load_state_dict(weights, strict=False)
        self.ref = ref.eval().requires_grad_(False)

    # ---------------------------------------------------------------- the run
    def run(self, resume: bool = False) -> dict[str, Any]:
        """MLE stage, evaluation, GRPO stage with periodic evaluation and checkpoints, final evaluation and
        checkpoint; the summary. Ctrl-C finishes the current step, writes a checkpoint and raises
        KeyboardInterrupt (a second Ctrl-C raises at once)."""
        cfg, t = self.cfg, self.cfg.trainer
        self.started = time.perf_counter()
        if resume:
            self.resume(self.out / "checkpoint")
        elif self.dist.main:
            self.out.mkdir(parents=True, exist_ok=True)
            (self.out / "metrics.jsonl").unlink(missing_ok=True)
            (self.out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2))
        if self.dist.main:
            sizes = count_parameters(self.module) / 1e6, self.device, len(self.train_set), len(self.test_set)
            log.info("model: %.2fM parameters on %s; %d train / %d held-out examples", *sizes)
        try:
            with self.interrupt:
                if self.stage == "mle":
                    self._mle_stage()
                    self.results["mle"] = self._eval_and_select()
                    self.stage = "rl"
                    self.new_optimizer(t.lr, t.warmup_steps)
                    if cfg.algo.kl_coef > 0:
                        self.make_ref()
                self._grpo_stage()
                if self.rl_step:
                    self.results["rlvr"] = self._eval_and_select()
                else:  # no GRPO step taken: the "after" model is the "before" one, no need to decode it again
                    self.results["rlvr"] = dict(self.results.get("mle", {}))
                self.save()
        finally:
            rewards.close_pool()  # the reward worker processes live for one run
            self.logger.close()
            self.engine.close()
        return report.summarize(
            model=self.model,
            dist=self.dist,
            task=self.task,
            held_out=[ex for ex, _, _ in self.test_set],
            results=self.results,
            best=self.best,
            counters=self.counters,
            previews=self.previews,
            seconds=self.elapsed + time.perf_counter() - self.started,
            logger=self.logger,
            out=self.out,
        )

    def _mle_stage(self) -> None:
        """Teacher-forced steps up to ``mle.steps``, a log record every 10 and a checkpoint every
        ``save_every``."""
        steps = self.cfg.mle.steps
        self.logger.start_bar(steps, self.mle_step, "MLE")
        while self.mle_step < steps and not self.interrupt.should_stop():
            self._adapt_threads()
            m = self.mle_update()
            self.mle_step += 1
            if self.mle_step % 10 == 0 or self.mle_step == steps:
                self.logger.write({"stage": "mle", "step": self.mle_step, **m})
            self.logger.advance(loss=m["loss"])
            self._maybe_save(self.mle_step)
        self.logger.close_bar()
        self.interrupt.exit_if_stopped(self.save, self.out / "checkpoint")

    def _grpo_stage(self) -> None:
        """GRPO steps up to ``trainer.steps``, each logged, an evaluation every ``eval_every`` (the last
        one is run()'s) and a checkpoint every ``save_every``."""
        t = self.cfg.trainer
        self.logger.start_bar(t.steps, self.rl_step, "GRPO")
        while self.rl_step < t.steps and not self.interrupt.should_stop():
            self._adapt_threads()
            m = self.grpo_step()
            self.rl_step += 1
            self.logger.write({"stage": "rl", "step": self.rl_step, **m, **self.counters})
            self.logger.advance(reward=m["reward"], kl=m.get("kl", 0.0), clip=m.get("clipfrac", 0.0))
            if t.eval_every and self.rl_step % t.eval_every == 0 and self.rl_step < t.steps:
                self._eval_and_select()
            self._maybe_save(self.rl_step)
        self.logger.close_bar()
        self.interrupt.exit_if_stopped(self.save, self.out / "checkpoint")

    def _adapt_threads(self) -> None:
        if self.threads is not None:
            self.threads.step()

    def _maybe_save(self, step: int) -> None:
        every = self.cfg.trainer.save_every
        if every and step % every == 0:
            self.save()


def train(cfg: Config, *, resume: bool = False, task: Task | None = None) -> dict[str, Any]:
    """Run :class:`GRPOTrainer` on ``cfg``; returns the summary dict."""
    trainer = GRPOTrainer(cfg, task)
    try:
        return trainer.run(resume=resume)
    finally:
        D.shutdown(trainer.dist)
