"""The one place that chooses a backend for each op call (docs/DESIGN.md section 3).

Backends:
- ``torch``: the pure-PyTorch reference, any device;
- ``triton``: the Triton kernels (``rlvr_fast/kernels/``), CUDA tensors (or CPU ones under ``TRITON_INTERPRET=1``);
- ``cuda``: the compiled extension ``rlvr_fast._C`` on CUDA tensors (needs a CUDA build of it);
- ``cpp``: the same extension's C++ kernels on CPU tensors.

Rules:
- ``RLVR_FAST_BACKEND=torch|triton|cuda|cpp`` forces a backend. A forced backend that cannot run the call
  raises RuntimeError saying why (Triton not installed, CPU tensors without ``TRITON_INTERPRET=1``,
  an op without that backend).
- Otherwise CUDA tensors go to ``triton`` (or ``cuda`` for the ops that only the extension implements)
  and CPU tensors to ``cpp`` for the extension's ops, else to ``torch``. When an automatic choice has
  to fall back (Triton or the extension missing), it is logged once per op.
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

BACKENDS = ("torch", "triton", "cuda", "cpp")
_warned: set[tuple[str, str]] = set()


@functools.lru_cache(maxsize=None)
def _load_extension():
    """(module, None) for ``rlvr_fast._C``, or (None, why it cannot be imported)."""
    try:
        from . import _C  # type: ignore[attr-defined]
    except ImportError as e:
        return None, (
            f"the extension rlvr_fast._C is not built ({e}); build it with "
            "`pip install --no-build-isolation -e .` (not with RLVR_FAST_SKIP_EXT=1)"
        )
    return _C, None


def extension():
    """The compiled extension module ``rlvr_fast._C``; RuntimeError saying how to build it if missing."""
    module, why = _load_extension()
    if module is None:
        raise RuntimeError(why)
    return module


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
    if backend in ("cuda", "cpp"):
        want = "cuda" if backend == "cuda" else "cpu"
        if device.type != want:
            return f"the {backend} backend needs {want.upper()} tensors (got {device.type})"
        module, why = _load_extension()
        if module is None:
            return why
        if backend == "cuda" and not module.with_cuda():
            return "rlvr_fast._C was built without CUDA (a CPU build of torch or no CUDA toolchain at build time)"
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
    candidates = ("triton", "cuda") if device.type == "cuda" else ("cpp",)
    reasons = []
    for candidate in candidates:
        if candidate in supported:
            reason = _why_not(candidate, device, supported)
            if reason is None:
                return candidate
            reasons.append(f"{candidate}: {reason}")
    if reasons:
        key = (op, device.type)
        if key not in _warned:
            _warned.add(key)
            logger.warning("%s: falling back to the torch reference (%s)", op, "; ".join(reasons))
    return "torch"


def use_triton(op: str, t: torch.Tensor) -> bool:
    """Whether ``op`` on ``t`` runs the Triton kernels; empty inputs always take the torch path."""
    return t.numel() > 0 and select_backend(op, t.device) == "triton"
