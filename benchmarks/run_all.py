"""Run every benchmark, then regenerate ``benchmarks/RESULTS.md`` from ``benchmarks/results/*.jsonl``.

    python benchmarks/run_all.py --shapes small      # CPU
    python benchmarks/run_all.py --shapes target     # GPU (DESIGN.md section 8 shapes)
    python benchmarks/run_all.py --report-only       # only rebuild RESULTS.md (and the chart)

Flags other than ``--report-only`` / ``--only`` are passed through to each ``bench_*.py``. Each bench
runs in its own process. RESULTS.md keeps, per device, the latest row of every
(op, provider, mode, shape, dtype); a "Targets" table compares them with DESIGN.md section 8.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import json
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
RESULTS_MD = BENCH_DIR / "RESULTS.md"
BENCHES = ("advantages", "logprobs", "policy_loss", "fused_linear", "trainer", "video")
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
    return sorted(
        groups.items(), key=lambda kv: (kv[0][0], kv[0][1], min(r.get("timestamp", "") for r in kv[1]))
    )


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
# Targets (DESIGN.md section 8)
# ----------------------------------------------------------------------------------------------

GPU_LP = dict(N=16384, V=151936)
CPU_LP = dict(N=4096, V=32000)
GPU_ADV = dict(G=8192, n=16, T=1024)
CPU_ADV = dict(G=256, n=16, T=1024)
GPU_PIX = dict(B=2048, G=128, H=256, W=320)  # bench_video.py --shapes target
CPU_PIX = dict(B=256, G=16, H=64, W=64)  # bench_video.py --shapes small
GPU_VID = dict(B=2048, n=16, H=256, W=320)
CPU_VID = dict(B=64, n=8, H=64, W=80)
GPU_FL = dict(N=16384, H=4096, V=151936)  # bench_fused_linear.py --shapes target
CPU_FL = dict(N=2048, H=512, V=32000)  # bench_fused_linear.py --shapes small
GPU_GRPO = dict(P=64, n=8, T=256)  # bench_trainer.py --shapes target
CPU_GRPO = dict(P=16, n=8, T=64)  # bench_trainer.py --shapes small


def _result(measured: str, compared: str, ratio: float, ok: bool) -> tuple:
    """(measured, compared with, ratio, status) of one target row."""
    return measured, compared, ratio, "met" if ok else "missed"


def _grpo_step(rows, shape, device_type):
    """(speed result, memory result) of rlvr_fast vs TRL on one GRPO-step shape, or (None, None)."""
    ours = _find(rows, op="grpo_step", provider=OURS, mode="step", shape=shape, device_type=device_type)
    trl = _find(rows, op="grpo_step", provider="trl", mode="step", shape=shape, device_type=device_type)
    if ours is None or trl is None:
        return None, None
    s = ours["shape"]
    tokens = s["B"] * s["T"]
    ratio = trl["median_ms"] / ours["median_ms"]  # = tokens/s ratio (both generate B x T tokens per step)
    speed = _result(f"{tokens / ours['median_ms'] * 1e3:,.0f} tok/s",
                    f"TRL GRPOTrainer {tokens / trl['median_ms'] * 1e3:,.0f} tok/s", ratio, ratio >= 1.5)
    return speed, _peak_vs(ours, trl, "TRL GRPOTrainer", 0.6)


def _peak_vs(ours, peer, peer_label, limit):
    """Target row 'ours' peak memory <= limit x peer's', or None when either peak is missing."""
    if not ours or not peer or ours.get("peak_bytes") is None or not peer.get("peak_bytes"):
        return None
    ratio = ours["peak_bytes"] / peer["peak_bytes"]
    return _result(f"peak {_mib(ours['peak_bytes'])} MiB", f"{peer_label} {_mib(peer['peak_bytes'])} MiB", ratio,
                   ratio <= limit)


def _speed(rows, op, mode, shape, dtype, device_type, peer, minimum, what):
    """Target row 'ours is >= minimum x faster than peer' (ratio = peer median / ours median)."""
    ours = _find(rows, op=op, provider=OURS, mode=mode, shape=shape, dtype=dtype, device_type=device_type)
    other = _find(rows, op=op, provider=peer, mode=mode, shape=shape, dtype=dtype, device_type=device_type)
    if ours is None or other is None:
        return None
    ratio = other["median_ms"] / ours["median_ms"]
    return _result(f"{_ms(ours['median_ms'])} ms", f"{what} {_ms(other['median_ms'])} ms", ratio, ratio >= minimum)


def _with_rollouts(rows, res, shape, device_type):
    """A video_reward speed result with both sides' rollouts/s added (None stays None)."""
    if res is None:
        return None
    ours = _find(rows, op="video_reward", provider=OURS, mode="fwd", shape=shape, device_type=device_type)
    peer = _find(rows, op="video_reward", provider="rlvr-world", mode="fwd", shape=shape,
                 device_type=device_type)
    b = ours["shape"]["B"]
    return (f"{res[0]} ({b / ours['median_ms'] * 1e3:,.0f} rollouts/s)",
            f"{res[1]} ({b / peer['median_ms'] * 1e3:,.0f} rollouts/s)", res[2], res[3])


def _vs_floor(rows, op, mode, floor_op, maximum, what):
    """Target row 'ours takes <= maximum x the measured floor' (ratio = ours median / floor median)."""
    ours = _find(rows, op=op, provider=OURS, mode=mode, shape=GPU_LP, dtype="bfloat16")
    floor = _find(rows, op=floor_op, provider="floor", mode=mode, shape=GPU_LP, dtype="bfloat16")
    if ours is None or floor is None:
        return None
    ratio = ours["median_ms"] / floor["median_ms"]
    return _result(f"{_ms(ours['median_ms'])} ms", f"floor ({what}, measured) {_ms(floor['median_ms'])} ms", ratio,
                   ratio <= maximum)


def _targets(rows: list[dict]) -> list[list[str]]:
    """[target, shape, criterion, device, measured, compared with, ratio, status] rows."""
    gpu = [r for r in rows if r.get("device_type") == "cuda"]
    cpu = [r for r in rows if r.get("device_type") == "cpu"]
    table = []

    gpu_names = ", ".join(sorted({r.get("device", "?").removeprefix("NVIDIA ") for r in gpu}))

    def add(target, shape, criterion, device, result, missing=NO_GPU):
        if missing == NO_GPU and gpu:
            missing = "not measured on the GPU run (the peer was not installed there, or the case was skipped)"
        if device == "H100" and gpu:  # the targets are set for an H100; say which GPU measured them
            device = f"H100 (measured on {gpu_names})"
        if result is None:
            table.append([target, shape, criterion, device, "-", "-", "-", missing])
        else:
            measured, against, ratio, status = result
            table.append([target, shape, criterion, device, measured, against, _ratio(ratio), status])

    # 1. token log-probs (+entropy) forward, H100
    for op in ("token_logprobs", "token_logprobs+entropy"):
        shp = "N=16384, V=151936, bf16"
        ours = _find(gpu, op=op, provider=OURS, mode="fwd", shape=GPU_LP, dtype="bfloat16")
        res = _vs_floor(gpu, op, "fwd", "token_logprobs", 1.15, "one read")
        add(f"{op} fwd", shp, "<= 1.15x HBM floor", "H100", res)
        peers = [
            p
            for p in ("liger", "flash-attn-ce", "trl")
            if _find(gpu, op=op, provider=p, mode="fwd", shape=GPU_LP, dtype="bfloat16")
        ]
        res = None
        if ours and peers:
            best = min(
                (_find(gpu, op=op, provider=p, mode="fwd", shape=GPU_LP, dtype="bfloat16") for p in peers),
                key=lambda r: r["median_ms"],
            )
            ratio = best["median_ms"] / ours["median_ms"]
            res = (
                f"{_ms(ours['median_ms'])} ms",
                f"fastest peer {best['provider']} {_ms(best['median_ms'])} ms",
                ratio,
                "met" if ratio >= 1.0 else "missed",
            )
        add(f"{op} fwd", shp, ">= 1.0x fastest of Liger / flash-attn CE / TRL", "H100", res)

    # 2. policy loss from logits fwd+bwd, H100
    op, shp = "policy_loss_from_logits", "N=16384, V=151936, bf16"
    ours = _find(gpu, op=op, provider=OURS, mode="fwd+bwd", shape=GPU_LP, dtype="bfloat16")
    add(f"{op} fwd+bwd", shp, "<= 1.25x floor", "H100", _vs_floor(gpu, op, "fwd+bwd", op, 1.25, "2 reads + 1 write"))
    add(
        f"{op} fwd+bwd",
        shp,
        ">= 1.2x Liger grpo_loss",
        "H100",
        _speed(gpu, op, "fwd+bwd", GPU_LP, "bfloat16", "cuda", "liger-grpo", 1.2, "liger-grpo"),
        NO_GPU if not gpu else "not measured (liger_kernel not installed)",
    )
    res = None
    if ours and ours.get("peak_bytes") is not None:
        s = ours["shape"]
        logits_bytes = s["B"] * (s["T"] + 1) * s["V"] * 2  # bf16 [B, T+1, V]
        limit = 4 * logits_bytes  # d(view) + autograd's full-size d(logits) = 2x; an fp32 copy adds 2x more
        res = (
            f"peak {_mib(ours['peak_bytes'])} MiB",
            f"4x the bf16 logits = {_mib(limit)} MiB (2 bf16 grads + fp32 copy)",
            ours["peak_bytes"] / logits_bytes,
            "met" if ours["peak_bytes"] < limit else "missed",
        )
    add(f"{op} fwd+bwd", shp, "no fp32 copy of the logits (ratio: peak / bf16 logits bytes)", "H100", res)

    # 3. fused linear log-probs + loss (bench_fused_linear.py): H100 targets; CPU memory for information
    op, shp = "fused linear log-probs + loss fwd+bwd", "N=16384, H=4096, V=151936, bf16"
    fl = "fused_linear_policy_loss"
    ours = _find(gpu, op=fl, provider=OURS, mode="fwd+bwd", shape=GPU_FL, device_type="cuda")
    floor = _find(gpu, op=fl, provider="floor", mode="fwd+bwd", shape=GPU_FL, device_type="cuda")
    if ours is not None and floor is not None:  # the floor times the 3 unavoidable matmuls
        ratio = floor["median_ms"] / ours["median_ms"]
        res = _result(f"{_ms(ours['median_ms'])} ms", f"3 matmuls alone {_ms(floor['median_ms'])} ms", ratio,
                      ratio >= 0.7)  # fmt: skip
    else:
        res = None
    add(op, shp, ">= 70% of measured bf16 matmul rate", "H100", res)
    add(op, shp, "extra memory <= 1 GiB", "H100", None,
        "not measured by the benchmarks (peak minus gradients not recorded)")
    add(op, shp, "faster than LigerFusedLinearGRPOLoss", "H100",
        _speed(gpu, fl, "fwd+bwd", GPU_FL, "bfloat16", "cuda", "liger", 1.0, "Liger"))
    ours = _find(cpu, op=fl, provider=OURS, mode="fwd+bwd", shape=CPU_FL, device_type="cpu")
    unfused = _find(cpu, op=fl, provider="unfused", mode="fwd+bwd", shape=CPU_FL, device_type="cpu")
    res = _peak_vs(ours, unfused, "unfused (logits materialised)", 0.5)
    if res is not None:
        add(op, "N=2048, H=512, V=32000, fp32 (CPU small)", "peak memory vs the unfused path", "CPU",
            (*res[:3], f"info only (CPU peak incl. gradients; would be {res[3]} at <= 0.5x)"))

    # 4. group advantages, H100
    op, shp = "group_advantages", "8192 x 16, T=1024"
    add(op, shp, "one launch", "H100", None, "not measured by the benchmarks (launch count not recorded)")
    for peer, minimum in (("verl-loop", 100), ("verl-vectorized", 3)):
        add(
            op,
            shp,
            f">= {minimum}x {peer}",
            "H100",
            _speed(gpu, op, "fwd", GPU_ADV, "float32", "cuda", peer, minimum, peer),
        )
        res = _speed(cpu, op, "fwd", CPU_ADV, "float32", "cpu", peer, minimum, peer)
        if res is not None:  # the same ratio on the CPU small shape, for information
            res = (*res[:3], f"info only (CPU analogue of the H100 target; would be {res[3]})")
            add(op, "256 x 16, T=1024 (CPU small)", f">= {minimum}x {peer}", "CPU", res)

    # 5. pixel metrics (bench_video.py), H100
    op, shp = "pixel metrics MSE+MAE+PSNR+SSIM", "2048 x 3x256x320 bf16, 128 targets"
    add(op, shp, "one pass over the predictions", "H100", None,
        "not measured by the benchmarks (memory traffic not recorded)")
    res = _speed(gpu, "pixel_metrics", "fwd", GPU_PIX, "bfloat16", "cuda", "piqa", 10,
                 "piqa SSIM+PSNR (+ torch MSE/MAE)")
    add(op, shp, ">= 10x piqa", "H100", res)
    # 6. video reward pipeline (bench_video.py): H100 target, and the CPU small shape for information
    op, shp = "video reward pipeline", "RLVR-World single-step, 2048 rollouts"
    res = _speed(gpu, "video_reward", "fwd", GPU_VID, "bfloat16", "cuda", "rlvr-world", 3, "RLVR-World path")
    add(op, shp, ">= 3x the RLVR-World path", "H100", _with_rollouts(gpu, res, GPU_VID, "cuda"))
    res = _speed(cpu, "video_reward", "fwd", CPU_VID, "float32", "cpu", "rlvr-world", 3, "RLVR-World path")
    if res is not None:
        res = (*_with_rollouts(cpu, res, CPU_VID, "cpu")[:3],
               f"info only (CPU analogue of the H100 target; would be {res[3]})")
        add(op, "64 rollouts, n=8, 64x80 frames (CPU small)", ">= 3x the RLVR-World path", "CPU", res)
    # 7. GRPO step end to end (bench_trainer.py): H100 target, and the CPU small shape for information
    shp = "~85M Llama, 64 prompts x 8 x 256 tokens"
    speed, memory = _grpo_step(gpu, GPU_GRPO, "cuda")
    add("GRPO step, end to end", shp, ">= 1.5x TRL GRPOTrainer tokens/s", "H100", speed)
    add("GRPO step, end to end", shp, "<= 0.6x TRL GRPOTrainer peak memory", "H100", memory)
    speed, memory = _grpo_step(cpu, CPU_GRPO, "cpu")
    for crit, res in (
        (">= 1.5x TRL GRPOTrainer tokens/s", speed),
        ("<= 0.6x TRL GRPOTrainer peak memory", memory),
    ):
        if res is not None:
            res = (*res[:3], f"info only (CPU analogue of the H100 target; would be {res[3]})")
            add("GRPO step, end to end", "demo model, 16 x 8 x 64 tokens (CPU small)", crit, "CPU", res)

    # 8. CPU token log-probs
    shp = "N=4096, V=32000, fp32, 2 cores"
    for mode in ("fwd", "fwd+bwd"):
        res = _speed(
            cpu, "token_logprobs", mode, CPU_LP, "float32", "cpu", "trl", 1.5, "TRL selective_log_softmax"
        )
        add(
            f"CPU token_logprobs {mode}",
            shp,
            ">= 1.5x TRL selective_log_softmax",
            "CPU",
            res,
            "not measured (run bench_logprobs.py on CPU)",
        )
    for mode in ("fwd", "fwd+bwd"):
        ours = _find(cpu, op="token_logprobs", provider=OURS, mode=mode, shape=CPU_LP, dtype="float32")
        naive = _find(
            cpu, op="token_logprobs", provider="torch-naive", mode=mode, shape=CPU_LP, dtype="float32"
        )
        res = _peak_vs(ours, naive, "naive log_softmax+gather", 0.3)
        add(
            f"CPU token_logprobs {mode}",
            shp,
            "peak <= 0.3x naive log_softmax + gather",
            "CPU",
            res,
            "not measured (run bench_logprobs.py on CPU)",
        )
    cores = {r.get("n_cores") for r in cpu if r["op"] == "token_logprobs"}
    if cores and cores != {2}:
        table.append(
            ["(note)", "", f"CPU rows measured with {sorted(cores)} cores, target says 2", "", "", "", "", ""]
        )

    # 9. CPU pixel metrics (bench_video.py --shapes small)
    add(
        "CPU pixel metrics",
        "256 x 3x64x64",
        ">= 3x piqa SSIM+PSNR",
        "CPU",
        _speed(cpu, "pixel_metrics", "fwd", CPU_PIX, "float32", "cpu", "piqa", 3,
               "piqa SSIM+PSNR (+ torch MSE/MAE)"),
        "not measured (run bench_video.py on CPU)",
    )
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
        "## Targets (DESIGN.md section 8)",
        "",
    ]
    md += _table(
        [
            "target",
            "shape",
            "criterion",
            "device",
            "measured (rlvr_fast)",
            "compared with",
            "ratio",
            "status",
        ],
        _targets(rows),
    )
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
    p.add_argument(
        "--report-only", action="store_true", help="only regenerate RESULTS.md from results/*.jsonl"
    )
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
