"""Ctrl-C during training: finish the current step, write a checkpoint, then stop."""

from __future__ import annotations

import logging
import signal
from collections.abc import Callable
from pathlib import Path

import torch

from . import distributed as D

log = logging.getLogger(__name__)


class Interrupt:
    """SIGINT as a request to stop at the next step boundary; installed around the loop with ``with``.

    The first Ctrl-C only sets :attr:`stopped`. The loop asks :meth:`should_stop` before each step, then
    calls :meth:`exit_if_stopped` after it, which writes a checkpoint and raises KeyboardInterrupt. A
    second Ctrl-C raises KeyboardInterrupt at once. Leaving the ``with`` block restores the previous
    handler.
    """

    def __init__(self, dist: D.DistInfo, device: torch.device):
        self.dist, self.device = dist, device
        self.stopped = False
        self._previous = None

    def __enter__(self) -> Interrupt:
        self._previous = signal.getsignal(signal.SIGINT)
        signal.signal(signal.SIGINT, self.on_sigint)
        return self

    def __exit__(self, *exc_info) -> None:
        signal.signal(signal.SIGINT, self._previous)

    def on_sigint(self, signum, frame) -> None:
        """The SIGINT handler."""
        if self.stopped:  # a second Ctrl-C: stop now
            raise KeyboardInterrupt
        self.stopped = True
        log.warning("interrupted: finishing the current step, then writing a checkpoint (Ctrl-C again to abort)")

    def should_stop(self) -> bool:
        """Whether any rank was interrupted (collective: every rank calls it at each step boundary)."""
        # every rank must stop at the same step boundary, so the flag is agreed collectively
        self.stopped = D.any_rank(self.stopped, self.dist, self.device)
        return self.stopped

    def exit_if_stopped(self, save: Callable[[], None], checkpoint: Path) -> None:
        """After a stage's loop: if it stopped early, ``save()`` the checkpoint ``checkpoint`` (collective),
        say where it is and raise KeyboardInterrupt."""
        if not self.stopped:
            return
        save()
        if self.dist.main:
            print(f"checkpoint written to {checkpoint}; continue with --resume")
        raise KeyboardInterrupt
