"""CPU thread policy: never run more torch threads than there are idle cores.

Why: every medium-sized aten op on CPU is an OpenMP parallel region that ends in a barrier. When
other processes keep a core busy, one of our threads is descheduled and the others spin at the
barrier until it gets a time slice back, so each op costs a scheduler quantum. Measured on a 2-core
machine with another process using ~1.5 cores: `make demo` MLE steps went from ~2 s to 15-20 s with
2 threads; with 1 thread they stay near the idle time. On an idle machine 2 threads are faster.

``CpuThreads`` measures how much CPU the *other* processes used since its last look (``/proc/stat``
busy time of the cores this process may run on, minus this process's own CPU time from
``os.times()``), and sets ``torch.set_num_threads`` to the idle cores (a core counts when others leave
over 0.7 of it), at least 1 and at most the cores available. It looks again every ``interval_s``
seconds of wall time, from the step loops of the trainer and of the frame tokenizer's training, and
logs each change. Where ``/proc`` is unreadable (not Linux) it keeps the thread count it was given. A
fixed count (``trainer.cpu_threads=N``) turns it off.
"""

from __future__ import annotations

import logging
import math
import os
import time

import torch

log = logging.getLogger("rlvr_fast")

_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def _cores() -> list[int]:
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return list(range(os.cpu_count() or 1))


def _busy_seconds(cores: list[int]) -> float | None:
    """Busy CPU seconds of ``cores`` since boot (all but idle and iowait), or None without /proc."""
    try:
        with open("/proc/stat", encoding="ascii") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    want = {f"cpu{c}" for c in cores}
    busy = 0
    for line in lines:
        parts = line.split()
        if parts and parts[0] in want:
            ticks = [int(x) for x in parts[1:9]]  # user nice system idle iowait irq softirq steal
            busy += sum(ticks) - ticks[3] - ticks[4]
    return busy / _CLK_TCK


def _own_seconds() -> float:
    t = os.times()
    return t.user + t.system


class CpuThreads:
    """Adapts ``torch.set_num_threads`` to the cores other processes leave idle (see module doc).

    Args:
        setting: ``"auto"`` (adapt), or an int >= 1 (fixed: set once, never changed).
        interval_s: seconds of wall time between two looks.
    """

    def __init__(self, setting: str | int = "auto", interval_s: float = 5.0):
        self.cores = _cores()
        self.auto = setting == "auto"
        self.interval_s = interval_s
        if not self.auto:
            torch.set_num_threads(int(setting))
        self.threads = torch.get_num_threads()
        self._last = self._sample()

    def _sample(self):
        busy = _busy_seconds(self.cores)
        return None if busy is None else (time.monotonic(), busy, _own_seconds())

    def others_busy(self, now=None) -> float | None:
        """Cores' worth of CPU other processes used since the last look (None without /proc)."""
        now = now or self._sample()
        if now is None or self._last is None or now[0] - self._last[0] <= 0:
            return None
        wall = now[0] - self._last[0]
        return max(0.0, ((now[1] - self._last[1]) - (now[2] - self._last[2])) / wall)

    def step(self) -> int:
        """Look again if ``interval_s`` has passed; returns the thread count in force."""
        if not self.auto or self._last is None or time.monotonic() - self._last[0] < self.interval_s:
            return self.threads
        now = self._sample()
        others = self.others_busy(now)
        self._last = now
        if others is None:
            return self.threads
        # a core counts as idle only when others leave more than 0.7 of it: a half-busy core still
        # stalls the barriers
        want = max(1, min(len(self.cores), math.floor(len(self.cores) - others + 0.3)))
        if want != self.threads:
            log.info(
                "CPU threads %d -> %d: other processes used %.1f of %d cores",
                self.threads,
                want,
                others,
                len(self.cores),
            )
            torch.set_num_threads(want)
            self.threads = want
        return self.threads
