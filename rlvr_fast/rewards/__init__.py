"""Verifiable rewards: one registry for every reward the trainer can use.

A reward is ``fn(completion: str, example: Example) -> float``. Built-in names resolve lazily (their
modules import only when used); ``"package.module:function"`` names a user's own function.
:func:`score` applies one to a batch in worker processes with a per-call time limit and a failure
value, so a reward that raises, exits or hangs never kills, stalls or slows a run.
"""

from __future__ import annotations

import atexit
import collections
import importlib
import logging
import math
import multiprocessing as mp
import multiprocessing.connection as mpc
import signal
import sys
import time
from multiprocessing.reduction import ForkingPickler
from typing import Callable, Sequence

from ..task import Example, ScoreStats

log = logging.getLogger(__name__)

RewardFn = Callable[[str, Example], float]

# name -> (module, attribute); imported on first use so `import rlvr_fast.rewards` stays light.
_BUILTIN: dict[str, tuple[str, str]] = {
    "text_game/binary": ("rlvr_fast.rewards.text_game", "binary_reward"),
    "text_game/task": ("rlvr_fast.rewards.text_game", "task_reward"),
    "web_page/f1": ("rlvr_fast.rewards.web_page", "f1_reward"),
}
_USER: dict[str, RewardFn] = {}


def register_reward(name: str, fn: RewardFn | None = None):
    """Register ``fn`` under ``name`` (usable as a decorator). Names must be new."""

    def add(f: RewardFn) -> RewardFn:
        if name in _BUILTIN or name in _USER:
            raise ValueError(f"reward {name!r} is already registered")
        _USER[name] = f
        return f

    return add(fn) if fn is not None else add


def reward_names() -> list[str]:
    """All registered reward names (built-in and user-registered)."""
    return sorted([*_BUILTIN, *_USER])


def get_reward(name: str) -> RewardFn:
    """Resolve a registered name or a ``"module:function"`` path to the reward function."""
    if name in _USER:
        return _USER[name]
    if name in _BUILTIN:
        module, attr = _BUILTIN[name]
        return getattr(importlib.import_module(module), attr)
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            fn = getattr(importlib.import_module(module), attr)
        except (ImportError, AttributeError) as e:
            raise ValueError(f"reward {name!r}: cannot import {attr!r} from {module!r} ({e})") from e
        if not callable(fn):
            raise ValueError(f"reward {name!r} is not callable")
        return fn
    raise ValueError(f"unknown reward {name!r}; choose one of {reward_names()} or give 'module:function'")


# Worker processes are forked from the caller, deliberately, rather than spawned or started from a
# forkserver:
# - any callable works as it is: lambdas, closures, bound methods and rewards registered at run time
#   (a test module's functions) are inherited, not pickled, so nothing needs to be importable in the
#   worker, and a user script needs no ``if __name__ == "__main__"`` guard;
# - a worker starts in milliseconds (copy-on-write), so replacing one killed on a timeout is cheap;
#   a spawned one would import torch and the library again, seconds each;
# - the usual fork hazards concern what the child touches: it runs only the reward (string parsing),
#   never CUDA; Python re-creates the logging locks after a fork, and torch gets one thread (as
#   DataLoader workers do). A reward that uses CUDA itself is not supported.
# The cost: a worker keeps the pages of the caller's memory as they were when it was forked (the
# trainer's host memory; weights on a GPU are not host pages), for as long as it lives, which is one
# run (GRPOTrainer.run closes the pool). Where fork does not exist (Windows), workers are spawned and
# the reward must be a module-level function of an importable module.
_CONTEXT = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")


def _die_with_parent() -> None:
    """Linux: the kernel kills this worker when the process that forked it dies (even by kill -9),
    so a worker stuck in a reward can never outlive the run. (Strictly: when the forking *thread*
    ends; :func:`score` then finds the worker dead and replaces it.)"""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _worker_main(conn, fn: RewardFn, inherited: list) -> None:
    """Worker loop: receive a chunk of (index, completion, example), send one result per call as it
    finishes, so the caller knows when each call started. ``None`` or a closed pipe ends it."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the trainer's to handle, not a reward failure
    _die_with_parent()
    for c in inherited:  # the caller's ends of the other workers' pipes, copied by fork
        c.close()
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(1)
    while True:
        try:
            task = conn.recv()
        except (EOFError, OSError):
            return
        if task is None:
            return
        conn.send((-1, True, 0.0))  # received: from here on, a death is a failure of the call it was running
        for i, completion, example in task:
            try:
                result = (i, True, float(fn(completion, example)))
            except BaseException as e:  # noqa: BLE001 - a reward's SystemExit / KeyboardInterrupt: a failure
                result = (i, False, f"{type(e).__name__}: {e}"[:300])
            conn.send(result)


class _Worker:
    """One worker process, its pipe, and the indices it was sent and has not answered yet."""

    def __init__(self, fn: RewardFn, others: list[_Worker]):
        conn, child = _CONTEXT.Pipe()
        fork = _CONTEXT.get_start_method() == "fork"
        inherited = [conn, *(w.conn for w in others)] if fork else []
        self.proc = _CONTEXT.Process(target=_worker_main, args=(child, fn, inherited), daemon=True, name="rlvr-reward")
        self.proc.start()
        child.close()
        self.conn = conn
        self.todo: collections.deque[int] = collections.deque()
        self.since = 0.0  # when the call at todo[0] started, as seen from the caller
        self.received = False  # whether the worker has read the chunk it was sent

    def send(self, items: list[int], completions: Sequence[str], examples: Sequence[Example]) -> None:
        """Send a chunk; ``OSError`` if the worker has died while idle."""
        try:
            data = ForkingPickler.dumps([(i, completions[i], examples[i]) for i in items])
        except Exception as e:  # noqa: BLE001 - pickle raises several types
            where = examples[items[0]].source or "an example"
            raise TypeError(f"examples: {where} cannot be pickled for the reward workers ({e})") from e
        self.conn.send_bytes(data)
        self.todo.extend(items)
        self.received = False
        self.since = time.monotonic()

    def kill(self) -> None:
        self.proc.kill()
        self.proc.join()
        self.conn.close()

    def stop(self) -> None:
        """End an idle worker politely (it may be stuck after all: then kill it)."""
        try:
            self.conn.send(None)
        except OSError:
            pass
        self.proc.join(0.5)
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join()
        self.conn.close()


class _Pool:
    """``workers`` processes for one reward function, reused from call to call; a worker whose call
    runs past its time limit is killed and replaced."""

    def __init__(self, fn: RewardFn, workers: int):
        self.fn, self.size = fn, workers
        self.workers: list[_Worker] = []

    def fill(self) -> None:
        for w in [w for w in self.workers if not w.proc.is_alive()]:  # e.g. killed from outside
            w.kill()
            self.workers.remove(w)
        while len(self.workers) < self.size:
            self.workers.append(_Worker(self.fn, self.workers))

    def replace(self, w: _Worker) -> None:
        w.kill()
        self.workers.remove(w)
        self.workers.append(_Worker(self.fn, self.workers))

    def close(self) -> None:
        for w in self.workers:
            if w.todo:
                w.kill()
            else:
                w.stop()
        self.workers = []


_POOL: _Pool | None = None


def close_pool() -> None:
    """Stop the reward worker processes (the next :func:`score` starts new ones). The trainer calls it
    at the end of a run; it also runs at interpreter exit."""
    global _POOL
    if _POOL is not None:
        pool, _POOL = _POOL, None
        pool.close()


atexit.register(close_pool)


def _pool(fn: RewardFn, workers: int) -> _Pool:
    global _POOL
    if _POOL is None or _POOL.fn is not fn or _POOL.size != workers:
        close_pool()
        _POOL = _Pool(fn, workers)
    _POOL.fill()
    return _POOL


def score(
    fn: RewardFn,
    completions: Sequence[str],
    examples: Sequence[Example],
    *,
    timeout_s: float = 10.0,
    failure_reward: float = 0.0,
    workers: int = 4,
) -> tuple[list[float], ScoreStats]:
    """Score each completion; a call that raises (``SystemExit`` and ``KeyboardInterrupt`` included),
    returns a non-number or NaN, ends its process, or runs longer than ``timeout_s`` (measured from
    its own start; ``inf``: no limit) gets ``failure_reward`` and is counted in the returned
    :class:`ScoreStats`. Results keep the input order.

    Calls run in ``workers`` worker processes (forked: see the note above ``_CONTEXT``), which stay up
    from one call to the next while ``fn`` and ``workers`` stay the same. Completions go out in a few
    chunks per worker. A call past its time limit is stopped for real: its worker is killed (SIGKILL)
    and replaced, and the rest of its chunk goes to the new one, so a hung or spinning reward costs
    ``timeout_s`` once and nothing afterwards. Workers ignore SIGINT: Ctrl-C reaches only the caller
    (the trainer's interrupt path). If this call is interrupted, every worker is killed.
    """
    if len(completions) != len(examples):
        raise ValueError(f"completions ({len(completions)}) and examples ({len(examples)}) differ in length")
    if not (timeout_s > 0):  # also refuses NaN
        raise ValueError(f"timeout_s must be > 0 (inf: no limit), got {timeout_s}")
    if not math.isfinite(failure_reward):
        raise ValueError(f"failure_reward must be a finite number, got {failure_reward}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ValueError(f"workers must be an int >= 1, got {workers!r}")
    stats = ScoreStats()
    out = [float(failure_reward)] * len(completions)
    if not completions:
        return out, stats
    pool = _pool(fn, workers)
    chunk = max(1, math.ceil(len(completions) / (2 * workers)))
    pending = collections.deque(range(len(completions)))
    finished, lost = False, 0

    def requeue(w: _Worker, items: list[int]) -> None:
        """``w`` died before running any of ``items``: nothing failed, they go back; a new worker."""
        nonlocal lost
        pending.extendleft(reversed(items))
        lost += 1
        if lost > 2 * workers:
            raise RuntimeError("reward workers keep dying before any call")
        pool.replace(w)

    try:
        while pending or any(w.todo for w in pool.workers):
            for w in list(pool.workers):
                if pending and not w.todo:
                    items = [pending.popleft() for _ in range(min(chunk, len(pending)))]
                    try:
                        w.send(items, completions, examples)
                    except OSError:  # it died while idle
                        requeue(w, items)
            busy = [w for w in pool.workers if w.todo]
            wait = max(0.0, min(w.since for w in busy) + timeout_s - time.monotonic())
            ready = mpc.wait([w.conn for w in busy], timeout=None if math.isinf(wait) else wait)
            for w in busy:
                if w.conn in ready:
                    try:
                        while w.todo and w.conn.poll():
                            i, ok, value = w.conn.recv()
                            w.since = time.monotonic()
                            if i < 0:
                                w.received = True
                                continue
                            w.todo.popleft()
                            out[i] = _checked(ok, value, stats, out[i], examples[i], fn)
                        continue
                    except (EOFError, OSError):
                        if not w.received:  # killed from outside before reading its chunk
                            items = list(w.todo)
                            w.todo.clear()
                            requeue(w, items)
                            continue
                        stats.errors += 1  # the reward ended its process (os._exit, a crash)
                        where = examples[w.todo[0]].source or "an example"
                        log.debug("reward %s ended its worker process on %s", _name(fn), where)
                elif time.monotonic() - w.since > timeout_s:
                    stats.timeouts += 1
                else:
                    continue
                w.todo.popleft()  # the failed call keeps the failure reward; the rest goes back
                pending.extendleft(reversed(w.todo))
                w.todo.clear()
                pool.replace(w)
        finished = True
    finally:
        if not finished:  # interrupted: results still in flight would confuse the next call
            close_pool()
    if stats.timeouts:
        log.warning(
            "%d reward call(s) ran past %.1f s: stopped, and given the failure reward", stats.timeouts, timeout_s
        )
    return out, stats


def _name(fn) -> str:
    return getattr(fn, "__name__", repr(fn))


def _checked(ok: bool, value, stats: ScoreStats, failure: float, example: Example, fn) -> float:
    if not ok:
        stats.errors += 1
        log.debug("reward %s failed with %s on %s", _name(fn), value, example.source or "an example")
        return failure
    if not math.isfinite(value):
        stats.non_finite += 1
        return failure
    return value


__all__ = ["RewardFn", "close_pool", "get_reward", "register_reward", "reward_names", "score"]
