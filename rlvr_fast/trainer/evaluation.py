"""Held-out evaluation of the trainer's policy: greedy decoding on the rollout engine, the task's metrics,
the previews, and the best checkpoint by ``task.select_metric``."""

from __future__ import annotations

import math

import torch

from . import distributed as D


@torch.no_grad()
def evaluate(t) -> dict[str, float]:
    """Greedy decoding of the :class:`~rlvr_fast.trainer.grpo.GRPOTrainer` ``t``'s policy on its held-out
    examples (split over ranks); the mean of each task metric. Keeps the first ``task.preview_count``
    greedy responses of rank 0 in ``t.last_preview``."""
    rows = t.test_set[t.dist.rank :: t.dist.world]
    per_example: list[dict[str, float]] = []
    bs = t.cfg.trainer.eval_batch_size
    t.last_preview = None
    for s in range(0, len(rows), bs):
        chunk = rows[s : s + bs]
        with t._autocast():
            batch = t._sample(chunk, 1, greedy=True)
        metrics = t.task.evaluate(batch, [ex for ex, _, _ in chunk])
        values = {k: v.cpu().tolist() for k, v in metrics.items()}
        per_example += [{k: v[i] for k, v in values.items()} for i in range(len(chunk))]
        k = t.task.preview_count
        if s == 0 and t.dist.main and k:  # test_set positions, not examples: the checkpoint state stays
            # plain tensors and ints
            positions = list(range(0, min(k, len(chunk)) * t.dist.world, t.dist.world))
            t.last_preview = (positions, batch.responses[:k].cpu(), batch.present[:k].cpu())
    t.engine.release()
    everything = [m for part in D.gather_objects(per_example, t.dist) for m in part]
    keys = sorted({k for m in everything for k in m})
    return {k: sum(m.get(k, 0.0) for m in everything) / max(1, len(everything)) for k in keys}


def evaluate_and_select(t) -> dict[str, float]:
    """``t.evaluate()``, logged; keeps the previews and saves ``best`` when ``task.select_metric`` improves."""
    metrics = t.evaluate()  # through the trainer, so a subclass or a test can replace it
    if t.last_preview is not None:
        t.previews["mle" if t.stage == "mle" else "rlvr"] = t.last_preview
    t.logger.write(
        {"stage": "eval", "step": t.rl_step, "rl_step": t.rl_step, **{f"eval/{k}": v for k, v in metrics.items()}}
    )
    key = t.task.select_metric
    # the MLE model (GRPO step 0) is a candidate too: GRPO must beat it to replace it
    if metrics.get(key, -math.inf) > t.best.get(key, -math.inf):
        t.best = {"step": t.rl_step, "stage": t.stage, **metrics}
        t.save("best")
    return metrics
