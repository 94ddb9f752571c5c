"""Run every benchmark, then regenerate ``benchmarks/RESULTS.md`` from ``benchmarks/results/*.jsonl``.

    python benchmarks/run_all.py --shapes small      # CPU
    python benchmarks/run_all.py --shapes target     # GPU (docs/DESIGN.md section 8 shapes)
    python benchmarks/run_all.py --report-only       # only rebuild RESULTS.md (and the chart)

Flags other than ``--report-only`` / ``--only`` are passed through to each ``bench_*.py``. Each bench
runs in its own process. RESULTS.md keeps, per device, the latest row of every
(op, provider, mode, shape, dtype); a "Targets" table compares them with docs/DESIGN.md section 8 (the
targets are data: ``targets.py``).
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import operator
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

from targets import BF16_LOGITS, TARGETS, CoresNote, Target

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
RESULTS_MD = BENCH_DIR / "RESULTS.md"
BENCHES = ("advantages", "logprobs", "policy_loss", "fused_linear", "trainer", "video", "rollout")
OURS = "rlvr_fast"
NO_GPU = "not measured (no GPU lent yet)"


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------


def _shape_key(shape: dict) -> str:
    return json.dumps(shape, sort_keys=True)


def load_latest() -> list[dict]:
    """Latest record per (device, op, provider, mode, shape, dtype) over all results/*.jsonl."""
    latest: dict[tuple, dict] = {}
    for path in sorted(RESULTS_DIR.glob("*.jsonl")):
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                print(f"warning: {path.name}:{n} is not JSON; skipped", file=sys.stderr)
                continue
            key = (
                rec.get("device_slug", path.stem),
                rec["op"],
                rec["provider"],
                rec["mode"],
                _shape_key(rec["shape"]),
                rec.get("dtype"),
            )
            if key not in latest or rec.get("timestamp", "") >= latest[key].get("timestamp", ""):
                latest[key] = rec
    return list(latest.values())


def _groups(rows: list[dict]) -> dict[tuple, list[dict]]:
    g = defaultdict(list)
    for r in rows:
        g[(r["op"], r["mode"], r.get("shape_name") or _shape_key(r["shape"]), r.get("dtype"))].append(r)
    return g


def _ordered(groups: dict[tuple, list[dict]]) -> list[tuple[tuple, list[dict]]]:
    """Groups by op name, then in the order they were first run (shapes small to large as benched)."""
    return sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1], min(r.get("timestamp", "") for r in kv[1])))


def _by_device(rows: list[dict]) -> dict[str, list[dict]]:
    d = defaultdict(list)
    for r in rows:
        d[r.get("device_slug", "?")].append(r)
    return d


# ----------------------------------------------------------------------------------------------
# Formatting helpers
# ----------------------------------------------------------------------------------------------


def _ms(x) -> str:
    if x is None:
        return "-"
    return f"{x:.3f}" if x < 10 else f"{x:.1f}" if x < 1000 else f"{x:,.0f}"


def _mib(b) -> str:
    return "-" if b is None else f"{b / 2**20:,.1f}"


def _ratio(x) -> str:
    return "-" if x is None else f"{x:.2f}x"


def _find(rows, *, op, provider, mode=None, device_type=None, shape=None, dtype=None):
    out = [
        r
        for r in rows
        if r["op"] == op
        and r["provider"] == provider
        and (mode is None or r["mode"] == mode)
        and (device_type is None or r.get("device_type") == device_type)
        and (dtype is None or r.get("dtype") == dtype)
        and (shape is None or all(r["shape"].get(k) == v for k, v in shape.items()))
    ]
    return max(out, key=lambda r: r.get("timestamp", "")) if out else None


# ----------------------------------------------------------------------------------------------
# Targets (docs/DESIGN.md section 8; the table is targets.py)
# ----------------------------------------------------------------------------------------------

_DEVICE_TYPES = {"H100": "cuda", "CPU": "cpu"}
# How a time per call reads (Target.show), given rlvr_fast's shape.
_SHOW_TIME = {
    "ms": lambda ms, shape: f"{_ms(ms)} ms",
    "tok/s": lambda ms, shape: f"{shape['B'] * shape['T'] / ms * 1e3:,.0f} tok/s",
    "ms+rollouts/s": lambda ms, shape: f"{_ms(ms)} ms ({shape['B'] / ms * 1e3:,.0f} rollouts/s)",
}
_COMPARE = {">=": operator.ge, "<=": operator.le, "<": operator.lt}


def _show(t: Target, value: float, shape: dict) -> str:
    """A value of ``t.metric`` as the table words it."""
    return f"{_mib(value)} MiB" if t.metric == "peak_bytes" else _SHOW_TIME[t.show](value, shape)


def _evaluate(t: Target, rows: list[dict]) -> tuple | None:
    """(measured, compared with, ratio, status) of one target on its device's rows; None if a side is
    missing."""

    def find(provider: str, op: str) -> dict | None:
        return _find(rows, op=op, provider=provider, mode=t.mode, shape=t.shape, dtype=t.dtype)

    ours = find(t.provider, t.op)
    if ours is None or ours.get(t.metric) is None:
        return None
    if t.baseline == (BF16_LOGITS,):
        s = ours["shape"]
        provider, base = BF16_LOGITS, s["B"] * (s["T"] + 1) * s["V"] * 2
    else:
        peers = [r for r in (find(p, t.baseline_op or t.op) for p in t.baseline) if r and r.get(t.metric)]
        if not peers:
            return None
        best = min(peers, key=lambda r: r[t.metric])
        provider, base = best["provider"], best[t.metric]
    value, shape = ours[t.metric], ours["shape"]
    ratio = base / value if t.comparison == ">=" else value / base
    measured = ("peak " if t.metric == "peak_bytes" else "") + _show(t, value, shape)
    limit = _show(t, t.threshold * base, shape)
    compared = t.label.format(provider=provider, value=_show(t, base, shape), limit=limit)
    return measured, compared, ratio, "met" if _COMPARE[t.comparison](ratio, t.threshold) else "missed"


TARGET_COLUMNS = [
    "target",
    "shape",
    "criterion",
    "device",
    "measured (rlvr_fast)",
    "compared with",
    "ratio",
    "status",
]


def target_rows(rows: list[dict]) -> list[list[str]]:
    """The Targets table's rows (columns: TARGET_COLUMNS)."""
    by_device = {name: [r for r in rows if r.get("device_type") == dt] for name, dt in _DEVICE_TYPES.items()}
    gpu = by_device["H100"]
    gpu_names = ", ".join(sorted({r.get("device", "?").removeprefix("NVIDIA ") for r in gpu}))
    table = []
    for t in TARGETS:
        if isinstance(t, CoresNote):
            cores = {r.get("n_cores") for r in by_device["CPU"] if r["op"] == t.op}
            if cores and cores != {t.cores}:
                note = f"CPU rows measured with {sorted(cores)} cores, target says {t.cores}"
                table.append(["(note)", "", note, "", "", "", "", ""])
            continue
        result = None if t.op is None else _evaluate(t, by_device[t.device])
        if t.info_only is not None:
            if result is None:
                continue
            result = (*result[:3], t.info_only.format(status=result[3]))
        # the targets are set for an H100; say which GPU measured them
        device = f"H100 (measured on {gpu_names})" if t.device == "H100" and gpu else t.device
        if result is None:
            missing = NO_GPU if t.device == "H100" and t.op is not None and not gpu else t.missing
            table.append([t.target, t.shape_text, t.criterion, device, "-", "-", "-", missing])
        else:
            measured, against, ratio, status = result
            cells = [measured, against, _ratio(ratio), status]
            table.append([t.target, t.shape_text, t.criterion, device, *cells])
    return table


# ----------------------------------------------------------------------------------------------
# Chart
# ----------------------------------------------------------------------------------------------


def speedup_chart(slug: str, rows: list[dict]) -> Path | None:
    """Horizontal bars of rlvr_fast's speedup over each baseline (log scale); None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    labels, values = [], []
    for (op, mode, shape, _dtype), grp in _ordered(_groups(rows)):
        ours = next((r for r in grp if r["provider"] == OURS), None)
        if ours is None:
            continue
        for r in sorted(grp, key=lambda r: r["provider"]):
            if r["provider"] in (OURS, "floor"):
                continue
            labels.append(f"{op} {mode} {shape} vs {r['provider']}")
            values.append(r["median_ms"] / ours["median_ms"])
    if not values:
        return None
    fig, ax = plt.subplots(figsize=(11, 0.32 * len(values) + 1.5))
    y = range(len(values))
    ax.barh(list(y), values, color=["tab:green" if v >= 1 else "tab:red" for v in values])
    ax.set_yticks(list(y))
    ax.set_yticklabels(labels, fontsize=7)
    ax.invert_yaxis()
    ax.set_xscale("log")
    ax.axvline(1.0, color="black", lw=0.8)
    for i, v in enumerate(values):
        ax.text(v, i, f" {v:.2f}x", va="center", fontsize=7)
    ax.set_xlabel("rlvr_fast speedup (baseline median / rlvr_fast median; > 1: rlvr_fast faster)")
    ax.set_title(f"rlvr_fast vs baselines on {slug}")
    fig.tight_layout()
    path = RESULTS_DIR / f"{slug}_speedups.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


# ----------------------------------------------------------------------------------------------
# RESULTS.md
# ----------------------------------------------------------------------------------------------


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    out += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return out


def render(rows: list[dict]) -> str:
    now = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%d %H:%M UTC")
    md = [
        "# rlvr_fast benchmark results",
        "",
        (
            f"Generated by `python benchmarks/run_all.py` on {now} from `benchmarks/results/*.jsonl` "
            "(latest row per device, op, provider, mode, shape and dtype). Do not edit by hand. "
            "How each number is measured: [README.md](README.md)."
        ),
        "",
        "- **median / p20 / p80**: milliseconds per call (forward, or forward + backward).",
        "- **speedup**: baseline median / rlvr_fast median; > 1 means rlvr_fast is faster.",
        (
            "- **peak**: memory allocated by one call on top of its inputs (outputs and gradients "
            "included), in MiB; on CPU the growth of the resident set in a fresh process."
        ),
        (
            "- **floor** rows are not a peer: they time the unavoidable work on the same machine (memory "
            "traffic: one read of the logits for fwd, two reads + one write for fwd+bwd; for video_reward "
            "the decoder forward alone); the speedup column then shows rlvr_fast's time as a multiple of "
            "the floor."
        ),
        "",
        "## Targets (docs/DESIGN.md section 8)",
        "",
    ]
    md += _table(TARGET_COLUMNS, target_rows(rows))
    md.append("")
    md.append(
        "Ratios: speed targets give peer time / rlvr_fast time; floor targets give rlvr_fast time / floor; "
        "memory targets give rlvr_fast peak / peer peak (or / logits bytes where stated)."
    )
    md.append("")
    for slug, dev_rows in sorted(_by_device(rows).items()):
        latest = max(dev_rows, key=lambda r: r.get("timestamp", ""))
        md += [f"## {latest.get('device', slug)} (`{slug}`)", ""]
        shas = sorted({str(r.get("git_sha")) + ("+dirty" if r.get("git_dirty") else "") for r in dev_rows})
        md.append(
            f"{latest.get('n_cores')} cores, {latest.get('n_threads')} torch threads; "
            f"torch {latest.get('torch')}, "
            f"triton {latest.get('triton')}, CUDA {latest.get('cuda') or '-'}; rlvr_fast backend "
            f"`{latest.get('backend')}`; git {', '.join(shas)}; last run {latest.get('timestamp')}."
        )
        md.append("")
        if latest.get("device_type") == "cpu":
            chart = speedup_chart(slug, dev_rows)
            if chart is not None:
                md += [f"![rlvr_fast speedups on {slug}](results/{chart.name})", ""]
        for (op, mode, shape, dtype), grp in _ordered(_groups(dev_rows)):
            ours = next((r for r in grp if r["provider"] == OURS), None)
            md += [f"### {op} — {mode} — {shape} ({dtype})", ""]
            body = []
            for r in sorted(grp, key=lambda r: (r["provider"] != OURS, r["median_ms"])):
                if r["provider"] == OURS:
                    sp, pk = "1.00x (reference)", "1.00x"
                elif ours is None:
                    sp, pk = "-", "-"
                elif r["provider"] == "floor":
                    sp = f"rlvr_fast = {ours['median_ms'] / r['median_ms']:.2f}x floor"
                    pk = "-"
                else:
                    sp = _ratio(r["median_ms"] / ours["median_ms"])
                    pk = (
                        _ratio(ours["peak_bytes"] / r["peak_bytes"])
                        if ours.get("peak_bytes") is not None and r.get("peak_bytes")
                        else "-"
                    )
                rounds = r.get("rounds")
                body.append(
                    [
                        f"**{r['provider']}**" if r["provider"] == OURS else r["provider"],
                        _ms(r["median_ms"]),
                        _ms(r["p20_ms"]),
                        _ms(r["p80_ms"]),
                        _mib(r.get("peak_bytes")),
                        sp,
                        pk,
                        "-" if rounds is None else rounds,
                        r.get("note") or "",
                    ]
                )
            md += _table(
                [
                    "provider",
                    "median ms",
                    "p20 ms",
                    "p80 ms",
                    "peak MiB",
                    "rlvr_fast speedup",
                    "rlvr_fast peak / theirs",
                    "rounds",
                    "note",
                ],
                body,
            )
            md.append("")
    return "\n".join(md) + "\n"


def write_report() -> Path:
    rows = load_latest()
    RESULTS_MD.write_text(render(rows))
    return RESULTS_MD


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--report-only", action="store_true", help="only regenerate RESULTS.md from results/*.jsonl")
    p.add_argument("--only", default="", help=f"comma-separated subset of {','.join(BENCHES)}")
    args, passthrough = p.parse_known_args(argv)
    failures = []
    if not args.report_only:
        only = [b.strip() for b in args.only.split(",") if b.strip()] or list(BENCHES)
        for name in only:
            script = BENCH_DIR / f"bench_{name}.py"
            print(f"\n=== {script.name} {' '.join(passthrough)}", flush=True)
            t0 = time.perf_counter()
            rc = subprocess.run([sys.executable, str(script), *passthrough], check=False).returncode
            print(f"=== {script.name}: exit {rc}, {time.perf_counter() - t0:.0f} s", flush=True)
            if rc != 0:
                failures.append(name)
    path = write_report()
    print(f"wrote {path}")
    if failures:
        print(f"benches that failed: {failures}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
