"""The one place that chooses a backend for each op call (DESIGN.md section 3).

Rules:
- ``RLVR_FAST_BACKEND=torch|triton|cuda`` forces a backend. A forced backend that cannot run the call
  raises RuntimeError saying why (Triton not installed, CPU tensors without ``TRITON_INTERPRET=1``,
  an op without that backend).
- Otherwise CUDA tensors go to ``triton`` when Triton imports, and everything else to ``torch`` (the
  pure-PyTorch reference). When an automatic choice has to fall back, it is logged once per op.
- ``TRITON_INTERPRET=1`` lets the triton backend take CPU tensors: the real kernels run in Triton's
  interpreter (float32, small shapes), which is how the CPU test tier exercises them.

The environment is read at every call (a dict lookup), so tests and users can switch backends
without re-importing anything.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os

import torch

logger = logging.getLogger("rlvr_fast")

BACKENDS = ("torch", "triton", "cuda")
_warned: set[tuple[str, str]] = set()


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    """True when the ``triton`` package can be imported (without importing it)."""
    return importlib.util.find_spec("triton") is not None


def triton_interpret() -> bool:
    """True when Triton's CPU interpreter is switched on (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def requested_backend() -> str | None:
    """The backend forced by ``RLVR_FAST_BACKEND`` (None when unset or ``auto``)."""
    value = os.environ.get("RLVR_FAST_BACKEND", "").strip().lower()
    if value in ("", "auto"):
        return None
    if value not in BACKENDS:
        raise ValueError(f"RLVR_FAST_BACKEND: expected one of {list(BACKENDS) + ['auto']}, got {value!r}")
    return value


def _why_not(backend: str, device: torch.device, supported: tuple[str, ...]) -> str | None:
    """Reason ``backend`` cannot run on ``device``, or None if it can."""
    if backend not in supported:
        return f"this op has no {backend!r} backend (it has {list(supported)})"
    if backend == "torch":
        return None
    if backend == "triton":
        if not triton_available():
            return "Triton is not installed"
        if device.type == "cuda" or (device.type == "cpu" and triton_interpret()):
            return None
        return f"Triton kernels need CUDA tensors (got {device.type}); set TRITON_INTERPRET=1 to run them on CPU"
    if backend == "cuda":
        if device.type != "cuda":
            return f"the CUDA extension needs CUDA tensors (got {device.type})"
        return None
    return f"unknown backend {backend!r}"


def select_backend(op: str, device: torch.device, supported: tuple[str, ...] = ("torch", "triton")) -> str:
    """Return the backend that runs ``op`` for tensors on ``device``.

    Args:
        op: the op's name, used in messages.
        device: the device of the op's main input.
        supported: the backends this op implements.
    """
    forced = requested_backend()
    if forced is not None:
        reason = _why_not(forced, device, supported)
        if reason is not None:
            raise RuntimeError(f"{op}: RLVR_FAST_BACKEND={forced} cannot be honoured: {reason}")
        return forced
    if device.type == "cuda":
        for candidate in ("triton", "cuda"):
            if candidate in supported and _why_not(candidate, device, supported) is None:
                return candidate
        key = (op, "cuda-fallback")
        if key not in _warned:
            _warned.add(key)
            logger.warning("%s: no GPU backend available (Triton missing?); falling back to torch", op)
    return "torch"


def use_triton(op: str, t: torch.Tensor) -> bool:
    """Whether ``op`` on ``t`` runs the Triton kernels; empty inputs always take the torch path."""
    return t.numel() > 0 and select_backend(op, t.device) == "triton"
