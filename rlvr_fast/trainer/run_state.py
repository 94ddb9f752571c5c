"""What a checkpoint holds of a run besides the weights, and how ``--resume`` puts it back.

The trainer state: the stage and step counters, the data order (:class:`DataStream`), the optimizer
and LR scheduler, the evaluation results and the best one, the failure counters, the elapsed seconds,
the frozen reference's weights, every rank's random generator states, the held-out previews and the
run's configuration. :mod:`.checkpoint` writes and reads the files (formats, verification, the fallback
to the previous good checkpoint); this module decides what goes in, what a resumed run may change
(:data:`RESUME_CHANGEABLE`) and how the trainer continues from it.

``trainer`` below is a :class:`~rlvr_fast.trainer.grpo.GRPOTrainer`: these functions read and set its
progress attributes (``stage``, ``mle_step``, ``rl_step``, ``stream``, ``results``, ``previews``,
``best``, ``counters``, ``elapsed``), its optimizer and scheduler (``opt``, ``sched``) and its
reference model (``ref``).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import torch

from . import distributed as D
from .checkpoint import load_checkpoint, rng_state, save_checkpoint, set_rng_state
from .config import Config, ConfigError

log = logging.getLogger(__name__)

# Settings that ``--resume`` may change: they do not alter what the run computes, only how long it runs,
# when it evaluates or saves, how it reports, and where its directory is. Any other change is refused.
RESUME_CHANGEABLE = frozenset(
    {
        "trainer.steps",
        "trainer.eval_every",
        "trainer.save_every",
        "trainer.progress",
        "trainer.tensorboard",
        "trainer.cpu_threads",
        "trainer.out_dir",
        "reward.workers",
        "rollout.kv_cache_gb",
        "rollout.sleep",
    }
)
# what resume() reads from a checkpoint's trainer state
STATE_KEYS = "stage mle_step rl_step stream optimizer scheduler results best counters elapsed ref rng".split()


def config_changes(saved: dict, current: dict) -> dict[str, tuple[Any, Any]]:
    """``{"section.key": (saved value, current value)}`` for every setting that differs between two
    ``Config.to_dict()`` trees; keys only one of them has (options added or removed since) are skipped."""
    out = {}
    for section, values in current.items():
        old = saved.get(section)
        if not (isinstance(values, dict) and isinstance(old, dict)):
            continue
        for key, value in values.items():
            if key in old and old[key] != value:
                out[f"{section}.{key}"] = (old[key], value)
    return out


class DataStream:
    """Endless shuffled indices over ``n`` examples plus ``extra`` rows drawn per epoch from a pool of
    ``pool`` more (indices ``n .. n + pool - 1``); each epoch a fresh permutation of its ``n + extra``
    slots and a fresh draw, both from ``(seed, epoch)``. Its whole state is (epoch, position), so a
    checkpoint resumes the exact order and the exact draw.

    The mix is RLVR-World's text-game dataset (``RLHFTextGameDataset`` in
    ``lang_wm/verl/verl/utils/dataset/rl_dataset_text_game.py``, thuml/RLVR-World e1b8b6f): an epoch is
    the gold rows plus ``sample_no_gold_data_num`` slots, each slot a non-gold row drawn uniformly with
    replacement. There the draw happens in the dataloader workers with Python's ``random`` (not
    reproducible); here it is drawn once per epoch from the seed. ``extra = 0`` gives the permutations
    of a stream without a pool (checkpoints written before the pool existed resume unchanged).
    """

    def __init__(self, n: int, seed: int, *, extra: int = 0, pool: int = 0):
        if extra and pool < 1:
            raise ValueError(f"DataStream: {extra} extra rows per epoch need a pool of at least one row")
        self.n, self.seed, self.extra, self.pool, self.epoch, self.pos = n, seed, extra, pool, 0, 0
        self._perm = self._permutation()

    def _permutation(self) -> list[int]:
        generator = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        perm = torch.randperm(self.n + self.extra, generator=generator)
        if self.extra:  # slot n + j holds the j-th row drawn from the pool this epoch
            drawn = self.n + torch.randint(self.pool, (self.extra,), generator=generator)
            perm = torch.where(perm < self.n, perm, drawn[(perm - self.n).clamp(min=0)])
        return perm.tolist()

    def drawn(self) -> list[int]:
        """The pool rows (indices ``n ..``) of the current epoch, in the epoch's order."""
        return [i for i in self._perm if i >= self.n]

    def take(self, k: int) -> list[int]:
        out = []
        size = self.n + self.extra
        while len(out) < k:
            if self.pos == size:
                self.epoch, self.pos = self.epoch + 1, 0
                self._perm = self._permutation()
            m = min(k - len(out), size - self.pos)
            out += self._perm[self.pos : self.pos + m]
            self.pos += m
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "pos": self.pos, "sizes": [self.n, self.extra, self.pool]}

    def load_state_dict(self, s: dict) -> None:
        """Restore (epoch, position); a checkpoint that records the stream's sizes (written since the pool
        exists) must match them: other data files would make another order (ValueError)."""
        sizes = s.get("sizes")
        if sizes is not None and list(sizes) != [self.n, self.extra, self.pool]:
            raise ValueError(
                f"--resume: the checkpoint's data stream had (examples, extra rows per epoch, pool) = "
                f"{tuple(sizes)}, this run has {(self.n, self.extra, self.pool)}: the data files changed"
            )
        self.epoch, self.pos = s["epoch"], s["pos"]
        self._perm = self._permutation()


def trainer_state(trainer) -> dict[str, Any]:
    """The trainer's state (:data:`STATE_KEYS` but ``rng``, plus ``previews`` and ``config``); the
    elapsed seconds count this session up to now (``trainer.started``, set by ``run()``)."""
    t = trainer
    return {
        "stage": t.stage,
        "mle_step": t.mle_step,
        "rl_step": t.rl_step,
        "stream": t.stream.state_dict(),
        "optimizer": t.opt.state_dict(),
        "scheduler": t.sched.state_dict(),
        "results": t.results,
        "previews": t.previews,
        "best": t.best,
        "counters": t.counters,
        "elapsed": t.elapsed + time.perf_counter() - t.started,
        "ref": {k: v.cpu() for k, v in t.ref.state_dict().items()} if t.ref is not None else None,
        "config": t.cfg.to_dict(),
    }


def save(trainer, path: Path, *, keep_previous: bool) -> None:
    """Checkpoint ``trainer`` into ``path`` (collective: all ranks call it; rank 0 writes).
    keep_previous: the checkpoint it replaces stays as ``<path>.prev`` (the resume fallback)."""
    weights = D.full_state_dict(trainer.model)
    rngs = D.gather_objects(rng_state(), trainer.dist)
    if trainer.dist.main:
        state = trainer_state(trainer)
        state["rng"] = rngs
        save_checkpoint(
            path,
            D.unwrap(trainer.model),
            trainer.tok,
            state,
            weights=weights,
            assets=trainer.task.save_assets,
            keep_previous=keep_previous,
        )


def check_resume(cfg: Config, state: dict) -> dict[str, tuple[Any, Any]]:
    """The settings of ``cfg`` that differ from the checkpoint's; ConfigError listing the keys if any of
    them is not in :data:`RESUME_CHANGEABLE`. Called before the weights are loaded."""
    saved = state.get("config")
    if not isinstance(saved, dict):
        log.warning("the checkpoint records no configuration: changed settings cannot be checked")
        return {}
    changes = config_changes(saved, cfg.to_dict())
    refused = sorted(k for k in changes if k not in RESUME_CHANGEABLE)
    if refused:
        listed = ", ".join(f"{k}: {changes[k][0]!r} -> {changes[k][1]!r}" for k in refused)
        raise ConfigError(
            f"--resume: settings differ from the checkpoint's ({listed}); a resumed run must keep them "
            f"(changeable on resume: {sorted(RESUME_CHANGEABLE)}). Resume with the original values, or "
            "start a new run in another trainer.out_dir"
        )
    return changes


def resume(trainer, path: Path) -> None:
    """Continue ``trainer`` from the checkpoint ``path`` (or, if a file of it is broken, the previous good
    one): weights, progress, optimizer and scheduler, reference, this rank's generators; the log is cut
    back to the checkpoint and accepted setting changes are recorded in ``config.json``."""
    t, cfg = trainer, trainer.cfg
    state = load_checkpoint(path, D.unwrap(t.model), required=STATE_KEYS, check=lambda s: check_resume(cfg, s))
    path = Path(state.pop("loaded_from"))
    t.stage, t.mle_step, t.rl_step = state["stage"], state["mle_step"], state["rl_step"]
    t.stream.load_state_dict(state["stream"])
    t.results, t.best, t.previews = state["results"], state["best"], state.get("previews", {})
    t.counters, t.elapsed = state["counters"], state["elapsed"]
    if t.stage == "rl":
        t.new_optimizer(cfg.trainer.lr, cfg.trainer.warmup_steps)
        if state["ref"] is not None:
            t.make_ref(state["ref"])
    t.opt.load_state_dict(state["optimizer"])
    t.sched.load_state_dict(state["scheduler"])
    rngs = state["rng"]
    set_rng_state(rngs[t.dist.rank] if t.dist.rank < len(rngs) else rngs[0])
    # the log continues from the checkpoint: drop records an interrupted run wrote after it
    s, m, r = t.stage, t.mle_step, t.rl_step
    t.logger.truncate(
        lambda rec: (
            (rec["stage"] == "mle" and rec["step"] <= m)
            or (rec["stage"] in ("rl", "eval") and s == "rl" and rec["step"] <= r)
        )
    )
    log.info("resumed from %s at stage %s (MLE step %d, GRPO step %d)", path, s, m, r)
    saved = state.get("config")  # the changes the check above accepted: record them
    changes = config_changes(saved, cfg.to_dict()) if isinstance(saved, dict) else {}
    if changes:
        listed = ", ".join(f"{k}: {a!r} -> {b!r}" for k, (a, b) in sorted(changes.items()))
        where = t.out / "config.json"
        log.warning("--resume: changed settings accepted, recorded in %s: %s", where, listed)
        if t.dist.main:
            where.write_text(json.dumps(cfg.to_dict(), indent=2))
