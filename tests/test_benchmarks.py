"""The benchmark scripts run: every provider's output check passes (nothing is timed seriously or recorded)."""

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


# every provider but the torch.compile ones (compiling them takes most of a minute on 2 cores)
PROVIDERS = {
    "bench_advantages.py": "torch-ref,verl-loop,verl-vectorized,trl-formula",
    "bench_logprobs.py": "torch-naive,trl,verl,floor",
    "bench_policy_loss.py": "torch-ref,verl,verl-unfused,trl-unfused,floor",
    "bench_fused_linear.py": "unfused,floor",
    # the trainers (ours on both rollout engines, TRL), interleaved in one process (~25 s on 2 cores)
    "bench_trainer.py": "rlvr_fast,rlvr_fast-vllm,trl",
    # the vLLM engine, HF generate with one prefill per group, plain HF generate
    "bench_rollout.py": "rlvr_fast,rlvr_fast-hf,hf-generate",
    # pixel_metrics vs torch-ref / piqa / pytorch-msssim / torchmetrics; video_reward vs the RLVR-World path
    "bench_video.py": "torch-ref,piqa,pytorch-msssim,torchmetrics,rlvr-world,floor",
}


@pytest.mark.parametrize("bench", sorted(PROVIDERS))
def test_bench_script_checks_and_runs(bench):
    """Each provider must agree with rlvr_fast on the smoke shapes, then be timed without error."""
    cmd = [
        sys.executable,
        str(ROOT / "benchmarks" / bench),
        "--shapes",
        "smoke",
        "--providers",
        PROVIDERS[bench],
        "--no-record",
        "--no-memory",
        "--max-time",
        "0.01",
        "--min-rounds",
        "1",
    ]
    res = subprocess.run(
        cmd, capture_output=True, text=True, cwd=ROOT, env={**__import__("os").environ, "RLVR_FAST_BACKEND": "torch"}
    )
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert "median" in res.stdout


def test_targets_table_gives_the_committed_results_md(monkeypatch):
    """benchmarks/targets.py evaluates against the committed result rows and gives exactly the "Targets"
    table of the committed RESULTS.md (which run_all.py generated from those rows)."""
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import run_all

    got = run_all._table(run_all.TARGET_COLUMNS, run_all.target_rows(run_all.load_latest()))
    lines = (ROOT / "benchmarks" / "RESULTS.md").read_text().splitlines()
    start = lines.index("## Targets (docs/DESIGN.md section 8)") + 2
    want = lines[start : lines.index("", start)]
    assert got == want
