"""Shared machinery of the ``rlvr_fast`` benchmark suite (docs/DESIGN.md section 7).

Every ``bench_<family>.py`` describes its work as a list of :class:`Case` objects (one op, provider,
mode and shape each) and hands them to :func:`run`, which, for each group of cases that compute the
same thing (op, mode, shape):

1. builds each case's inputs, runs the provider once and checks its outputs against ``rlvr_fast``'s
   on the same inputs (a baseline that computes something else is reported and never timed);
2. times the providers (:func:`time_group_cpu` / :func:`time_fn_cuda`);
3. measures their peak memory (:func:`cuda_peak_bytes` in process on CUDA; on CPU one fresh
   subprocess per (bench, provider, shape), see :func:`cpu_peak_bytes_in_process`);
4. appends one JSON line per case to ``benchmarks/results/<device>.jsonl`` (:func:`write_records`).

Timing
    CUDA: ``triton.testing.do_bench(fn, quantiles=[0.5, 0.2, 0.8])`` (warm-up 25 ms, 100 ms of
    repetitions, L2 flushed between calls), one case at a time. A callable slower than 1 s per call
    would make do_bench take minutes, so it is timed with a synchronised ``perf_counter`` loop of 3.
    CPU: pytest-benchmark's repeated rounds (its calibrated mode, reimplemented with
    ``time.perf_counter`` because its fixture only exists inside a pytest session): the checked first
    call is the warm-up (it also compiles ``torch.compile`` providers; calls under 50 ms get one more),
    ``iterations`` per round are calibrated so that a round lasts >= 1 ms (1 for anything slower), and
    rounds continue until ``--min-rounds`` (5) rounds and ``--max-time`` (1 s) per provider have
    passed. The providers of one group are interleaved round by round (rotating order), because the
    shared 2-core VMs this runs on drift by up to 2x within seconds; timing them one after the other
    would compare different machine states. Reported: median, 20th and 80th percentile of the
    per-call time over the rounds, in ms.

Peak memory
    CUDA: ``torch.cuda.max_memory_allocated()`` during one call minus ``memory_allocated()`` before it
    (after the warm-up), i.e. everything the call allocates on top of its inputs, outputs and
    gradients included.
    CPU: torch's CPU allocations are invisible to ``tracemalloc``, so the growth of the resident set
    is measured instead, in a fresh Python process per (bench, provider, shape) so that no other
    provider's memory or caches are in the way. That process runs with ``MALLOC_MMAP_THRESHOLD_=65536``
    (glibc: every block over 64 KiB is mmap'ed and handed back to the OS on free, so freed memory
    neither hides in the heap nor gets reused unseen), builds the inputs, makes one warm-up call
    (compiles ``torch.compile`` providers; its outputs are dropped), resets the kernel's RSS
    high-water mark (``echo 5 > /proc/self/clear_refs``), reads the current RSS, makes one call and
    reports the high-water mark after it (``VmHWM``; this is ``getrusage().ru_maxrss`` without the
    floor that ``ru_maxrss`` inherits at exec from the forked parent) minus that RSS: the peak growth
    of the resident set during one call, outputs included. Untouched pages do not count; noise is a
    few hundred KiB. Where ``clear_refs`` cannot be written the warm-up is skipped and the growth over
    the RSS after the inputs were built is reported instead (the record's ``peak_method`` says which).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import gc
import json
import math
import os
import platform
import re
import resource
import subprocess
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

BENCH_DIR = Path(__file__).resolve().parent
REPO_ROOT = BENCH_DIR.parent
RESULTS_DIR = BENCH_DIR / "results"

HAS_CUDA = torch.cuda.is_available()
DEVICE = torch.device("cuda" if HAS_CUDA else "cpu")

FWD, FWD_BWD = "fwd", "fwd+bwd"


# ----------------------------------------------------------------------------------------------
# Environment
# ----------------------------------------------------------------------------------------------


def setup_threads() -> None:
    """Use every core for intra-op parallelism on CPU (the default can be lower in containers)."""
    if not HAS_CUDA:
        torch.set_num_threads(os.cpu_count() or 1)


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "cpu"


def _short_cpu_name(model: str) -> str:
    model = re.sub(r"\((r|tm)\)|cpu|processor|\d+-core|@.*$", " ", model, flags=re.IGNORECASE)
    words = [w for w in model.split() if w.lower() not in ("with", "radeon", "graphics")]
    return _slug(" ".join(words[:4])) or "cpu"


def device_name() -> str:
    return torch.cuda.get_device_name() if HAS_CUDA else cpu_model()


def device_slug() -> str:
    """File name of this machine's results: the GPU name, or ``cpu-<model>-<cores>c``."""
    if HAS_CUDA:
        return _slug(torch.cuda.get_device_name())
    return f"cpu-{_short_cpu_name(cpu_model())}-{os.cpu_count()}c"


def _git(*args: str) -> str | None:
    env = dict(os.environ, GIT_OPTIONAL_LOCKS="0")  # read-only: never refresh or lock the index
    try:
        out = subprocess.run(
            ["git", *args], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=20, check=False
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def environment() -> dict[str, Any]:
    """Fields shared by every record of this run."""
    try:
        import triton

        triton_version = triton.__version__
    except ImportError:
        triton_version = None
    sha = _git("rev-parse", "--short", "HEAD")
    # rlvr_fast's own sources differ from HEAD, or new untracked ones exist? (read-only, index untouched)
    dirty = None
    if sha is not None:
        env = dict(os.environ, GIT_OPTIONAL_LOCKS="0")
        out = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=normal", "--", "rlvr_fast", "csrc"],
            cwd=REPO_ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        ).stdout
        dirty = bool(out.strip())
    return {
        "device": device_name(),
        "device_slug": device_slug(),
        "device_type": DEVICE.type,
        "n_cores": os.cpu_count(),
        "n_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "triton": triton_version,
        "cuda": torch.version.cuda if HAS_CUDA else None,
        "git_sha": sha,
        "git_dirty": dirty,
        "backend": os.environ.get("RLVR_FAST_BACKEND", "auto"),
        "python": platform.python_version(),
    }


# ----------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------


def _quantile(sorted_values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's / torch.quantile's default)."""
    if not sorted_values:
        return float("nan")
    pos = (len(sorted_values) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def time_fn_cuda(fn: Callable[[], Any]) -> dict[str, float]:
    """``triton.testing.do_bench`` with quantiles [0.5, 0.2, 0.8]; a plain loop for > 1 s calls."""
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    fn()
    torch.cuda.synchronize()
    one = time.perf_counter() - t0
    if one > 1.0:
        samples = []
        for _ in range(3):
            torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            torch.cuda.synchronize()
            samples.append(time.perf_counter() - t0)
        samples.sort()
        return {
            "median_ms": _quantile(samples, 0.5) * 1e3,
            "p20_ms": _quantile(samples, 0.2) * 1e3,
            "p80_ms": _quantile(samples, 0.8) * 1e3,
            "rounds": 3,
            "iterations": 1,
            "timer": "perf_counter + cuda.synchronize (call > 1 s)",
        }
    from triton.testing import do_bench

    med, p20, p80 = do_bench(fn, quantiles=[0.5, 0.2, 0.8])
    return {
        "median_ms": med,
        "p20_ms": p20,
        "p80_ms": p80,
        "rounds": None,
        "iterations": None,
        "timer": "triton.testing.do_bench",
    }


# ----------------------------------------------------------------------------------------------
# Peak memory
# ----------------------------------------------------------------------------------------------


def cuda_peak_bytes(fn: Callable[[], Any]) -> int:
    """Bytes allocated by one call on top of what was live before it (call already warmed up)."""
    gc.collect()
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = fn()
    torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() - base
    del out
    return int(peak)


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _reset_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _hwm_bytes() -> int:
    """Peak RSS of this process's memory map (``VmHWM``), reset by ``_reset_hwm``.

    ``getrusage().ru_maxrss`` reports the same high-water mark but takes the max with
    ``signal->maxrss``, which a process inherits at exec from the image it replaced, i.e. from the
    forked copy of the (large) parent benchmark process; ``VmHWM`` has no such floor.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def cpu_peak_bytes_in_process(fn_factory: Callable[[], Callable[[], Any]]) -> tuple[int, str]:
    """Peak RSS growth of one call (see module docstring); run inside the fresh worker process."""
    fn = fn_factory()
    can_reset = _reset_hwm()
    if can_reset:
        out = fn()  # warm-up (compiles torch.compile providers)
        del out
        gc.collect()
        _reset_hwm()
        method = "RSS high-water growth (VmHWM reset after warm-up), fresh process"
    else:
        method = "RSS high-water growth over RSS after inputs (cold call), fresh process"
        gc.collect()
    base = _rss_bytes()
    out = fn()
    peak = _hwm_bytes() - base
    del out, fn
    gc.collect()
    return max(0, int(peak)), method


# ----------------------------------------------------------------------------------------------
# Cases
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Case:
    """One (op, provider, mode, shape) measurement.

    ``make()`` builds fresh inputs and returns a zero-argument callable; each call runs the provider
    once (forward, or forward + backward) and returns its outputs as a tuple of tensors, in the
    same order as the ``rlvr_fast`` case of the same ``group`` returns them (that is how outputs are
    checked). Nothing may stay referenced between calls except the inputs.
    """

    op: str
    provider: str
    mode: str
    shape: dict
    dtype: str
    make: Callable[[], Callable[[], Any]]
    shape_name: str
    check: bool = True  # False for the "floor" pseudo-provider, which computes something else
    tol: tuple[float, float] | None = None  # (rtol, atol relative to max |expected|) override
    note: str = ""
    # Expected outputs when rlvr_fast must be called differently for this peer (e.g. preset="trl"):
    # a make-like callable returning rlvr_fast's callable on the same inputs, and a key to cache it.
    ref_make: Callable[[], Callable[[], Any]] | None = None
    ref_key: str = ""
    # Extra record fields derived from the timing (e.g. throughput): ``derive(timing) -> dict``, merged
    # into the record last (so it may also extend ``note``). None: the record has the standard fields.
    derive: Callable[[dict], dict] | None = None

    @property
    def group(self) -> tuple:
        return (self.op, self.mode, self.shape_name)


OURS = "rlvr_fast"


def default_tol(dtype: str) -> tuple[float, float]:
    """(rtol, atol as a fraction of max |expected|): float32, or the peers' own bf16/fp16 arithmetic."""
    return (1e-4, 1e-5) if dtype in ("float32", "float64") else (3e-2, 3e-2)


def _as_tuple(out) -> tuple:
    if isinstance(out, torch.Tensor):
        return (out,)
    return tuple(out)


def check_outputs(case: Case, got, expected) -> None:
    """Raise AssertionError unless every output of ``case`` matches ``rlvr_fast``'s."""
    got, expected = _as_tuple(got), _as_tuple(expected)
    if len(got) != len(expected):
        raise AssertionError(f"{case.provider}: {len(got)} outputs, rlvr_fast gives {len(expected)}")
    rtol, atol_frac = case.tol or default_tol(case.dtype)
    for i, (g, e) in enumerate(zip(got, expected, strict=True)):
        g = g.detach().float().reshape(e.shape) if g.numel() == e.numel() else g
        e = e.float()
        scale = float(e.abs().max()) if e.numel() else 1.0
        torch.testing.assert_close(
            g,
            e,
            rtol=rtol,
            atol=atol_frac * max(scale, 1e-30),
            check_dtype=False,
            msg=lambda m, i=i: (
                f"{case.op} {case.mode} {case.shape_name}: output {i} of {case.provider} differs from rlvr_fast: {m}"
            ),
        )


def _detach_clone(out) -> tuple:
    return tuple(t.detach().clone() if isinstance(t, torch.Tensor) else t for t in _as_tuple(out))


def _sync():
    if HAS_CUDA:
        torch.cuda.synchronize()


# ----------------------------------------------------------------------------------------------
# Records
# ----------------------------------------------------------------------------------------------


def results_path() -> Path:
    return RESULTS_DIR / f"{device_slug()}.jsonl"


def write_records(records: list[dict]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = results_path()
    with open(path, "a") as f:
        f.writelines(json.dumps(rec, sort_keys=True) + "\n" for rec in records)
    return path


def make_record(case: Case, timing: dict, peak: int | None, env: dict, mem_method: str | None) -> dict:
    return {
        "op": case.op,
        "provider": case.provider,
        "mode": case.mode,
        "shape": case.shape,
        "shape_name": case.shape_name,
        "dtype": case.dtype,
        "median_ms": timing["median_ms"],
        "p20_ms": timing["p20_ms"],
        "p80_ms": timing["p80_ms"],
        "rounds": timing.get("rounds"),
        "iterations": timing.get("iterations"),
        "timer": timing.get("timer"),
        "peak_bytes": peak,
        "peak_method": mem_method,
        "checked": case.check,
        "note": case.note,
        **env,
        "timestamp": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        **(case.derive(timing) if case.derive is not None else {}),
    }


# ----------------------------------------------------------------------------------------------
# CLI and driver
# ----------------------------------------------------------------------------------------------


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument(
        "--shapes",
        choices=("small", "target", "smoke"),
        default="target" if HAS_CUDA else "small",
        help="target: docs/DESIGN.md section 8 shapes (GPU); small: CPU-sized (default without CUDA); "
        "smoke: tiny shapes that only check every provider runs (use with --no-record)",
    )
    p.add_argument("--providers", default="", help="comma-separated providers to time (default: all installed)")
    p.add_argument("--no-record", action="store_true", help="print results only; append nothing to results/")
    p.add_argument("--no-memory", action="store_true", help="skip peak-memory measurement")
    p.add_argument("--max-time", type=float, default=1.0, help="CPU: seconds of timed rounds per provider")
    p.add_argument("--min-rounds", type=int, default=5, help="CPU: at least this many timed rounds per provider")
    # internal: the fresh-process CPU memory worker
    p.add_argument("--mem-worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--mem-provider", default="", help=argparse.SUPPRESS)
    p.add_argument("--mem-shape", default="", help=argparse.SUPPRESS)
    return p


def _fmt_bytes(n: int | None) -> str:
    if n is None:
        return "-"
    return f"{n / 2**20:,.1f} MiB"


def cpu_peak_worker(cases: list[Case], provider: str, shape_name: str) -> None:
    """Body of the fresh memory-measurement process: one JSON line per case on stdout."""
    for case in cases:
        if case.provider != provider or case.shape_name != shape_name:
            continue
        try:
            peak, method = cpu_peak_bytes_in_process(case.make)
            print(
                "MEM " + json.dumps({"key": list(case.group), "peak_bytes": peak, "method": method}),
                flush=True,
            )
        except Exception as exc:  # noqa: BLE001 - report and go on
            print("MEM " + json.dumps({"key": list(case.group), "error": repr(exc)}), flush=True)


def _cpu_peaks(script: str, shapes: str, provider: str, shape_name: str) -> dict[tuple, tuple[int, str]]:
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", PYTHONUNBUFFERED="1")
    cmd = [
        sys.executable,
        script,
        "--mem-worker",
        "--shapes",
        shapes,
        "--mem-provider",
        provider,
        "--mem-shape",
        shape_name,
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    peaks = {}
    for line in proc.stdout.splitlines():
        if line.startswith("MEM "):
            rec = json.loads(line[4:])
            if "error" in rec:
                print(f"  [memory] {provider} {rec['key']}: {rec['error']}", flush=True)
                continue
            peaks[tuple(rec["key"])] = (rec["peak_bytes"], rec["method"])
    if proc.returncode != 0:
        print(f"  [memory] worker for {provider}/{shape_name} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return peaks


def time_group_cpu(
    fns: list[Callable[[], Any]],
    first_call_s: list[float],
    *,
    min_rounds: int = 5,
    max_time_s: float = 1.0,
    min_round_s: float = 1e-3,
    max_rounds: int = 2_000,
) -> list[dict]:
    """pytest-benchmark-style rounds for several providers of one workload, interleaved on CPU.

    Shared CPUs (this project's 2-core VMs) drift by 2x within seconds, so timing one provider after
    another would compare different machine states. Here every round times each provider once (each
    with its own calibrated ``iterations``), the order rotating from round to round; rounds continue
    until ``min_rounds`` rounds and ``max_time_s`` seconds per provider have passed.
    """
    iters = []
    for fn, first_s in zip(fns, first_call_s, strict=True):
        # The checked first call already warmed every provider up (and compiled torch.compile ones);
        # calls that took under 50 ms get one more warm-up call, which also calibrates them.
        one = first_s
        if first_s < 0.05:
            t0 = time.perf_counter()
            fn()
            one = time.perf_counter() - t0
        iters.append(1 if one >= min_round_s else max(1, math.ceil(min_round_s / max(one, 1e-9))))
    samples: list[list[float]] = [[] for _ in fns]
    started = time.perf_counter()
    budget = max_time_s * len(fns)
    r = 0
    while r < max_rounds and (r < min_rounds or time.perf_counter() - started < budget):
        for k in range(len(fns)):
            i = (k + r) % len(fns)
            t0 = time.perf_counter()
            for _ in range(iters[i]):
                fns[i]()
            samples[i].append((time.perf_counter() - t0) / iters[i])
        r += 1
    out = []
    for i, s in enumerate(samples):
        s.sort()
        out.append(
            {
                "median_ms": _quantile(s, 0.5) * 1e3,
                "p20_ms": _quantile(s, 0.2) * 1e3,
                "p80_ms": _quantile(s, 0.8) * 1e3,
                "rounds": len(s),
                "iterations": iters[i],
                "timer": "perf_counter rounds (pytest-benchmark style), interleaved across providers",
            }
        )
    return out


def _prepare(case: Case, expected: dict, ours: dict):
    """Build the case, run it once and check it against rlvr_fast; returns the callable."""
    key = (case.group, case.ref_key)
    if case.check and case.provider != OURS and key not in expected:
        ref_fn = (case.ref_make or ours[case.group].make)()
        expected[key] = _detach_clone(ref_fn())
        del ref_fn
    fn = case.make()
    t0 = time.perf_counter()
    out = fn()
    _sync()
    first_s = time.perf_counter() - t0
    if case.provider == OURS:
        expected.setdefault(key, _detach_clone(out))
    elif case.check:
        check_outputs(case, out, expected[key])
    del out
    return fn, first_s


def _label(case: Case) -> str:
    return f"{case.op:<24} {case.mode:<7} {case.shape_name:<20} {case.provider:<16}"


FAILURES: list[str] = []  # "op mode shape provider: reason" of every case that was not timed


def _report_failure(case: Case, exc: Exception) -> None:
    FAILURES.append(f"{case.op} {case.mode} {case.shape_name} {case.provider}: {type(exc).__name__}")
    kind = "check" if isinstance(exc, AssertionError) else "error"
    print(f"{_label(case)} FAILED ({kind}), not timed: {str(exc).splitlines()[0][:400]}", flush=True)
    if not isinstance(exc, AssertionError):
        traceback.print_exc(limit=4)


def _print_timing(case: Case, timing: dict, peak: int | None) -> None:
    print(
        f"{_label(case)} median {timing['median_ms']:10.3f} ms  [p20 {timing['p20_ms']:.3f}, "
        f"p80 {timing['p80_ms']:.3f}]  peak {_fmt_bytes(peak)}",
        flush=True,
    )


def run(cases: list[Case], args: argparse.Namespace, script: str) -> list[dict]:
    """Check, time and measure every case; append the records unless ``--no-record``."""
    if args.mem_worker:
        cpu_peak_worker(cases, args.mem_provider, args.mem_shape)
        return []
    wanted = {p.strip() for p in args.providers.split(",") if p.strip()}
    env = environment()
    print(
        f"# {Path(script).name}: device {env['device']} ({env['device_slug']}), threads {env['n_threads']}, "
        f"torch {env['torch']}, triton {env['triton']}, git {env['git_sha']}",
        flush=True,
    )
    ours = {c.group: c for c in cases if c.provider == OURS}
    groups: dict[tuple, list[Case]] = {}
    for case in cases:
        if not wanted or case.provider in wanted:
            groups.setdefault(case.group, []).append(case)
    done: list[tuple[Case, dict, int | None, str | None]] = []
    for group_cases in groups.values():
        expected: dict[tuple, tuple] = {}  # one group's reference outputs alive at a time
        if HAS_CUDA:  # GPU: one case at a time (inputs can be GBs), do_bench is stable
            for case in group_cases:
                try:
                    fn, _ = _prepare(case, expected, ours)
                    timing = time_fn_cuda(fn)
                    peak = None if args.no_memory else cuda_peak_bytes(fn)
                    del fn
                    gc.collect()
                    torch.cuda.empty_cache()
                except Exception as exc:  # noqa: BLE001 - a failing provider must not stop the others
                    _report_failure(case, exc)
                    continue
                _print_timing(case, timing, peak)
                done.append((case, timing, peak, None if peak is None else "torch.cuda.max_memory_allocated delta"))
            continue
        ready: list[tuple[Case, Callable, float]] = []
        for case in group_cases:
            try:
                ready.append((case, *_prepare(case, expected, ours)))
            except Exception as exc:  # noqa: BLE001
                _report_failure(case, exc)
        expected.clear()
        gc.collect()
        if not ready:
            continue
        timings = time_group_cpu(
            [r[1] for r in ready], [r[2] for r in ready], min_rounds=args.min_rounds, max_time_s=args.max_time
        )
        for (case, _, _), timing in zip(ready, timings, strict=True):
            _print_timing(case, timing, None)
            done.append((case, timing, None, None))
        del ready
        gc.collect()
    # CPU peak memory: one fresh process per (provider, shape)
    if not HAS_CUDA and not args.no_memory and done:
        pairs = sorted({(c.provider, c.shape_name) for c, *_ in done})
        print(f"# peak memory: {len(pairs)} fresh processes (MALLOC_MMAP_THRESHOLD_=65536)", flush=True)
        peaks: dict[tuple, tuple] = {}
        for provider, shape_name in pairs:
            got = _cpu_peaks(script, args.shapes, provider, shape_name)
            peaks.update({(provider,) + k: v for k, v in got.items()})
        for i, (case, timing, _, _) in enumerate(done):
            peak, method = peaks.get((case.provider,) + case.group, (None, None))
            done[i] = (case, timing, peak, method)
            print(f"  {_label(case)} peak {_fmt_bytes(peak)}")
    records = [make_record(c, t, p, env, m) for c, t, p, m in done]
    if records and not args.no_record:
        path = write_records(records)
        print(f"# appended {len(records)} records to {path.relative_to(REPO_ROOT)}", flush=True)
    return records


# ----------------------------------------------------------------------------------------------
# Input helpers shared by the benches
# ----------------------------------------------------------------------------------------------

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def generator(seed: int, device: torch.device | str = "cpu") -> torch.Generator:
    return torch.Generator(device=device).manual_seed(seed)


def randn(shape, seed: int, dtype=torch.float32, scale: float = 1.0) -> torch.Tensor:
    """Seeded normal tensor on DEVICE, generated there in float32 (same seed -> same tensor)."""
    x = torch.randn(shape, generator=generator(seed, DEVICE), dtype=torch.float32, device=DEVICE)
    if scale != 1.0:
        x.mul_(scale)
    return x if dtype == torch.float32 else x.to(dtype)


def randint(high: int, shape, seed: int) -> torch.Tensor:
    return torch.randint(0, high, shape, generator=generator(seed, DEVICE), device=DEVICE)


def response_mask(B: int, T: int, seed: int, dtype=torch.int64) -> torch.Tensor:
    """Left-aligned response masks with lengths uniform in [T/4, T] (like right-padded rollouts)."""
    lengths = torch.randint(max(1, T // 4), T + 1, (B,), generator=generator(seed))
    mask = torch.arange(T)[None, :] < lengths[:, None]
    return mask.to(device=DEVICE, dtype=dtype)


def import_piqa():
    """``import piqa`` without torchvision (there is no CPU build of it here).

    piqa's package ``__init__`` imports torchvision for LPIPS only; SSIM and PSNR never touch it. When
    torchvision is absent an empty stand-in module is registered for the import and removed again
    afterwards: left in ``sys.modules`` (``__spec__`` None) it makes ``importlib.util.find_spec``
    raise ValueError, which breaks the import of torchmetrics (lightning_utilities probes torchvision).
    Raises ImportError when piqa itself is not installed.
    """
    import importlib.util
    import types

    if "piqa" in sys.modules:
        return sys.modules["piqa"]
    stub = None
    if "torchvision" not in sys.modules and importlib.util.find_spec("torchvision") is None:
        stub = sys.modules["torchvision"] = types.ModuleType("torchvision")
    try:
        import piqa
    finally:
        if stub is not None and sys.modules.get("torchvision") is stub:
            del sys.modules["torchvision"]
    return piqa


def try_import(module: str) -> bool:
    try:
        __import__(module)
        return True
    except Exception:  # noqa: BLE001 - any import failure means "not installed"
        return False


def shape_name(**dims) -> str:
    return "-".join(f"{k}{v}" for k, v in dims.items())


def main(doc: str, cases_fn: Callable, script: str, argv=None) -> int:
    """The ``main`` of every bench script: parse flags, run ``cases_fn(shapes, mem_provider)``, report.

    Returns 1 when any case failed its output check or errored (it is then not timed), else 0.
    """
    args = parser(doc.splitlines()[0]).parse_args(argv)
    setup_threads()
    run(cases_fn(args.shapes, args.mem_provider or None), args, script)
    if FAILURES:
        print("# not timed (failed check or error):\n#   " + "\n#   ".join(FAILURES), file=sys.stderr)
    return 1 if FAILURES else 0
