"""The end of a run: the summary dict (also ``summary.json``), the curves and the held-out previews."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from . import distributed as D
from .logger import RunLogger


def summarize(
    *,
    model: torch.nn.Module,
    dist: D.DistInfo,
    task: Any,
    held_out: list[Any],
    results: dict[str, Any],
    best: dict[str, Any],
    counters: dict[str, int],
    previews: dict[str, Any],
    seconds: float,
    logger: RunLogger,
    out: Path,
) -> dict[str, Any]:
    """The run's summary (collective: every rank calls it; rank 0 also writes the files).

    model: the trained (possibly wrapped) model. task: the run's task (name, select_metric, preview).
    held_out: the evaluated held-out examples, in evaluation order. results: {"mle" | "rlvr": metrics}.
    best: the best evaluation and where it was. previews: {stage: (positions in held_out, responses,
    present)} for ``task.preview``. seconds: the run's time, earlier sessions included. Rank 0 writes
    ``curves.png`` (through ``logger``), ``preview.png`` and ``summary.json`` into ``out``.
    """
    # data parallelism must leave every rank with the same weights; check it rather than assume it
    checksum = float(sum(p.detach().double().sum().item() for p in D.unwrap(model).parameters()))
    sums = D.gather_objects(checksum, dist)
    summary = {
        "ranks": dist.world,
        "ranks_agree": all(c == sums[0] for c in sums),
        "mle": results.get("mle", {}),
        "rlvr": results.get("rlvr", {}),
        "seconds": round(seconds, 1),
        "best": best,
        "select_metric": task.select_metric,
        "task": task.name,
        "eval_examples": len(held_out),
        "counters": counters,
    }
    if dist.main:
        summary["plot"] = str(logger.plot(task.select_metric))
        if previews:  # kept only for a task that draws previews (Task.preview_count)
            stages = {k: ([held_out[i] for i in pos], r, m) for k, (pos, r, m) in previews.items()}
            picture = task.preview(out / "preview.png", stages)
            if picture is not None:  # None: the task could not draw (matplotlib missing)
                summary["preview"] = str(picture)
        (out / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary
