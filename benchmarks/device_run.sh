#!/usr/bin/env bash
# One-shot GPU session for a borrowed machine with no network (an H200 here): environment report,
# carried wheels, the C++/CUDA extension, the GPU test tier and the target-shape benchmarks, inside a
# wall-clock budget. Run from anywhere; it works in the repository root:
#
#     bash benchmarks/device_run.sh            # OUT=<folder whose files come back>, default /tmp/device_out
#
# Every stage runs under its own `timeout` and its exit status is recorded; a failed or timed-out stage
# never stops the next one. Stages run in order of value and each is skipped, not started, when the
# time left in the budget is below what it needs, so the script ends inside DEVICE_RUN_BUDGET_S.
# Everything is logged to $OUT/log.txt; the benchmark records (benchmarks/results/<gpu>.jsonl) are
# copied to $OUT after every benchmark stage, RESULTS.md once at the end (it can also be rebuilt
# anywhere from the .jsonl with `python benchmarks/run_all.py --report-only`).
#
# Benchmarks: each bench_*.py is called directly (as run_all.py would, one process per bench), its
# providers split over processes with `--providers`: first those docs/DESIGN.md section 8 compares (rlvr_fast,
# floor, Liger, TRL, piqa) plus cheap eager ones, later the RLVR-World video path (host-CPU bound, ~2-3
# min) and the torch.compile references ("extras", compile time dominates). A bench writes its records
# only when it finishes, so a timeout then costs one group of providers, not the target rows. Every
# provider is still checked against rlvr_fast's outputs on the same inputs first (rlvr_fast runs untimed
# as the reference when it is not among the providers); on CUDA cases are timed one at a time anyway.
# The GRPO-step bench runs shortened (see DEVICE_RUN_TRAINER_ARGS), without its memory processes when
# less than 150 s are left.
#
# The peers travel as wheels in .whl/ (gitignored; `carry: [".whl"]` in the device call). Fetch them
# here first, pure-Python wheels for the device's Python 3.12 (versions as in constraints.txt):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 -d .whl liger-kernel==0.8.5 trl==1.16.0 datasets==5.2.0 \
#     multiprocess==0.70.19 dill==0.4.1 piqa==1.3.2 pytorch-msssim==1.0.0
#
# Environment knobs:
#   DEVICE_RUN_BUDGET_S   wall-clock budget of the whole script in seconds (default 420)
#   DEVICE_RUN_STAGES     space-separated subset of the stages below (default: all, in this order)
#   DEVICE_RUN_SHAPES     --shapes for the benches (default target; smoke for a dry run)
#   DEVICE_RUN_BENCH_ARGS extra flags for every bench (e.g. --no-record for a dry run)
#   DEVICE_RUN_TRAINER_ARGS  flags of bench_trainer.py (default: --warmup 1 --min-rounds 3 --mem-steps 1)
#   DEVICE_RUN_SITE       --target folder of the carried wheels (default /tmp/site)
#   PY                    the Python to use (default python3)
# Stages: env wheels build tests_triton tests_ext logprobs policy_loss fused_linear advantages video
#         trainer video_rlvr_world extras_logprobs extras_policy_loss extras_fused_linear
#         extras_advantages report

set -o pipefail
set -u

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
REPO=$(pwd)
OUT=${OUT:-/tmp/device_out}
mkdir -p "$OUT"
PY=${PY:-python3}
BUDGET=${DEVICE_RUN_BUDGET_S:-420}
SHAPES=${DEVICE_RUN_SHAPES:-target}
BENCH_ARGS=${DEVICE_RUN_BENCH_ARGS:-}
TRAINER_ARGS=${DEVICE_RUN_TRAINER_ARGS:---warmup 1 --min-rounds 3 --mem-steps 1}
ALL_STAGES="env wheels build tests_triton tests_ext logprobs policy_loss fused_linear advantages video
trainer video_rlvr_world extras_logprobs extras_policy_loss extras_fused_linear extras_advantages report"
STAGES=" $(echo ${DEVICE_RUN_STAGES:-$ALL_STAGES}) "
RESERVE=25  # seconds kept for the report and the copies at the end
SITE=${DEVICE_RUN_SITE:-/tmp/site}
BUILD_LOG=/tmp/device_run.build.log
EXT_LOG=/tmp/device_run.ext.log
EXT_TESTS_LOG=/tmp/device_run.tests_ext.log
T0=$(date +%s)

export PYTHONUNBUFFERED=1
export PYTHONPATH="$SITE:$REPO${PYTHONPATH:+:$PYTHONPATH}"
# no network there: never wait on the Hub or telemetry
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
export DISABLE_TELEMETRY=1 WANDB_DISABLED=true WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false
export MAX_JOBS=16 RLVR_FAST_CUDA_ARCHS=90 TORCH_CUDA_ARCH_LIST=9.0

STATUS=()      # "stage rc seconds" per stage run or skipped
EXT_OK=0       # rlvr_fast._C imported and built with CUDA
BG_PID=""

elapsed() { echo $(($(date +%s) - T0)); }
left() { echo $((BUDGET - $(elapsed) - RESERVE)); }
want() { [[ "$STAGES" == *" $1 "* ]]; }
banner() { echo; echo "################ [+$(elapsed)s, $(date -u +%H:%M:%S)] $*"; }

# run_stage NAME CAP_S MIN_S CMD...: run CMD under timeout min(CAP_S, time left); skip if < MIN_S left
run_stage() {
    local name=$1 cap=$2 min=$3
    shift 3
    if ! want "$name"; then return 0; fi
    local l t0 t rc
    l=$(left)
    if ((l < min)); then
        banner "SKIP $name: ${l}s left in the budget, it needs >= ${min}s"
        STATUS+=("$name skipped(${l}s-left) 0")
        return 0
    fi
    t=$((cap < l ? cap : l))
    banner "stage $name (timeout ${t}s): $*"
    t0=$(date +%s)
    if declare -F "$1" >/dev/null; then  # a shell function (exported below): timeout runs programs
        timeout -k 10 "$t" bash -c '"$@"' _ "$@"
    else
        timeout -k 10 "$t" "$@"
    fi
    rc=$?
    ((rc == 124 || rc == 137)) && echo "!!! stage $name TIMED OUT after ${t}s"
    echo "### stage $name: rc=$rc in $(($(date +%s) - t0))s"
    STATUS+=("$name rc=$rc $(($(date +%s) - t0))s")
    return 0
}

# ------------------------------------------------------------------------------------------------
# Copies to $OUT (at most 8 files come back: log.txt, 2 junit files, the .jsonl, RESULTS.md, ...)
# ------------------------------------------------------------------------------------------------
MARK=/tmp/device_run.start
touch "$MARK"
PNG_SUMS=/tmp/device_run.png.md5
md5sum benchmarks/results/*.png >"$PNG_SUMS" 2>/dev/null || true

out_count() { find "$OUT" -maxdepth 1 -type f | wc -l; }
copy_out() {  # copy_out FILE: copy into $OUT (flat), if it is there already or fewer than 8 files are
    local f=$1 base
    base=$(basename "$f")
    [ -f "$f" ] || return 0
    if [ -e "$OUT/$base" ] || (($(out_count) < 8)); then
        cp -f "$f" "$OUT/$base"
    else
        echo "(not copied to \$OUT, 8 files already: $f)"
    fi
}
collect_records() {  # the .jsonl files this run appended to
    local f
    for f in benchmarks/results/*.jsonl; do
        [ "$f" -nt "$MARK" ] && copy_out "$f"
    done
    return 0
}

# ------------------------------------------------------------------------------------------------
# Stages
# ------------------------------------------------------------------------------------------------
stage_env() {
    uname -a
    nproc
    free -g 2>/dev/null | head -2
    if command -v nvidia-smi >/dev/null; then nvidia-smi; else echo "nvidia-smi not on PATH"; fi
    command -v "$PY"
    "$PY" - <<'EOF'
import sys, importlib.metadata as md
print("python", sys.version.split()[0], sys.executable)
import torch, triton
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available(),
      "device", torch.cuda.get_device_name() if torch.cuda.is_available() else None)
print("triton", triton.__version__)
for name in ("transformers", "accelerate", "numpy", "pandas", "pyarrow", "fsspec", "huggingface-hub",
             "torchvision", "torchmetrics", "pytest", "pytest-benchmark", "pytest-timeout", "hypothesis",
             "setuptools", "ninja", "pybind11", "matplotlib", "xxhash", "peft"):
    try:
        print(f"  {name} {md.version(name)}")
    except md.PackageNotFoundError:
        print(f"  {name} MISSING")
EOF
}

stage_wheels() {
    if ! ls .whl/*.whl >/dev/null 2>&1; then
        echo "no .whl/*.whl carried: the peers Liger, TRL, piqa, pytorch-msssim are not measured"
        return 3
    fi
    ls -la .whl
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
    local rc=$?
    "$PY" - <<'EOF'
import importlib, sys
sys.path.insert(0, "benchmarks")
import common
for mod in ("liger_kernel.transformers.functional", "liger_kernel.transformers.grpo_loss",
            "liger_kernel.chunked_loss", "trl.trainer.utils", "trl", "datasets", "pytorch_msssim",
            "torchmetrics.functional.image", "verl.trainer.ppo.core_algos"):
    try:
        m = importlib.import_module(mod)
        print(f"  import {mod}: ok")
    except Exception as e:  # noqa: BLE001
        print(f"  import {mod}: FAILED {type(e).__name__}: {str(e)[:200]}")
try:
    print(f"  import piqa (benchmarks/common.import_piqa): ok {common.import_piqa().__file__}")
except Exception as e:  # noqa: BLE001
    print(f"  import piqa: FAILED {type(e).__name__}: {e}")
EOF
    return $rc
}

find_cuda_home() {  # a toolkit folder with bin/nvcc and the CUDA headers (torch reads CUDA_HOME)
    local c home
    for c in "${CUDA_HOME:-/nonexistent}/bin/nvcc" /usr/local/cuda/bin/nvcc /usr/local/cuda-13*/bin/nvcc \
        "$(command -v nvcc 2>/dev/null)" /usr/local/cuda-1*/bin/nvcc /opt/cuda/bin/nvcc \
        $("$PY" -c 'import glob, site, os
for d in site.getsitepackages():
    print(" ".join(sorted(glob.glob(os.path.join(d, "nvidia", "*", "bin", "nvcc")))))' 2>/dev/null); do
        [ -n "$c" ] && [ -x "$c" ] || continue
        home=$(dirname "$(dirname "$(readlink -f "$c")")")  # (a wrapper script is not a toolkit)
        if [ -f "$home/include/cuda_runtime.h" ] || [ -f "$home/targets/x86_64-linux/include/cuda_runtime.h" ]; then
            export CUDA_HOME=$home
            export PATH="$CUDA_HOME/bin:$PATH"
            return 0
        fi
    done
    echo "no CUDA toolkit found (nvcc + cuda_runtime.h): the extension builds without its CUDA kernels"
    return 1
}

PYTEST_ARGS=(-m gpu tests/test_gpu.py -q -p no:cacheprovider -ra --durations=15)
"$PY" -c "import pytest_timeout" 2>/dev/null && PYTEST_ARGS+=(--timeout=180)

ext_check() {  # rc 0 when rlvr_fast._C imports and has its CUDA kernels
    ls -la rlvr_fast/_C*.so 2>/dev/null
    "$PY" - <<'EOF'
import sys
from rlvr_fast import _dispatch
module, why = _dispatch._load_extension()
if module is None:
    print("rlvr_fast._C: NOT importable:", why)
    sys.exit(3)
print("rlvr_fast._C:", module.__file__, "with_cuda():", module.with_cuda())
sys.exit(0 if module.with_cuda() else 4)
EOF
}

# In the background, while the Triton tests use the GPU in the foreground: build the extension (CPU),
# check it, then run the GPU tests that need it (tests only: nothing is timed while this runs).
start_background() {
    if want build; then
        find_cuda_home
        banner "stage build (background, timeout 240s): CUDA_HOME=${CUDA_HOME:-<not found>}"
        [ -n "${CUDA_HOME:-}" ] && "$CUDA_HOME/bin/nvcc" --version | tail -2
        command -v gcc >/dev/null && gcc --version | head -1
    fi
    rm -f "$BUILD_LOG" "$EXT_LOG" "$EXT_TESTS_LOG" /tmp/device_run.ext.rc
    (
        if want build; then
            t0=$(date +%s)
            timeout -k 10 240 "$PY" setup.py build_ext --inplace >"$BUILD_LOG" 2>&1
            echo "build: rc=$? in $(($(date +%s) - t0))s" >>"$BUILD_LOG"
        fi
        ext_check >"$EXT_LOG" 2>&1
        echo $? >/tmp/device_run.ext.rc
        if want tests_ext; then
            t0=$(date +%s)
            timeout -k 10 150 "$PY" -m pytest "${PYTEST_ARGS[@]}" -k "video or pixel" \
                --junitxml="$OUT/gpu-tests-ext.xml" >"$EXT_TESTS_LOG" 2>&1
            echo "tests_ext: rc=$? in $(($(date +%s) - t0))s" >>"$EXT_TESTS_LOG"
        fi
    ) &
    BG_PID=$!
}

finish_background() {
    local t0 rc
    t0=$(date +%s)
    banner "waiting for the background build + extension tests (pid $BG_PID)"
    wait "$BG_PID"
    echo "waited $(($(date +%s) - t0))s"
    if [ -f "$BUILD_LOG" ]; then
        banner "stage build: log excerpt ($BUILD_LOG)"
        grep -E "building rlvr_fast._C| error|Error |FAILED" "$BUILD_LOG" | cut -c1-400 | head -30
        tail -n 8 "$BUILD_LOG" | cut -c1-400
        rc=$(tail -n 1 "$BUILD_LOG" | sed -n 's/^build: rc=\([0-9]*\) in \(.*\)$/\1 \2/p')
        STATUS+=("build rc=${rc:-?}")
        [ "${rc%% *}" = "0" ] || copy_out "$BUILD_LOG"
    fi
    banner "extension check"
    cat "$EXT_LOG" 2>/dev/null
    if [ "$(cat /tmp/device_run.ext.rc 2>/dev/null)" = "0" ]; then
        export EXT_OK=1
        command -v cuobjdump >/dev/null && cuobjdump --list-elf rlvr_fast/_C*.so 2>/dev/null | head -5
    else
        echo "!!! rlvr_fast._C has no CUDA kernels: the extension tests fail, the video benches are skipped"
    fi
    if [ -f "$EXT_TESTS_LOG" ]; then
        banner "stage tests_ext (ran in the background): $EXT_TESTS_LOG"
        cat "$EXT_TESTS_LOG"
        STATUS+=("$(tail -n 1 "$EXT_TESTS_LOG")")
    fi
}

bench() {  # bench NAME [flags...]: one bench_*.py, then copy the records
    local name=$1
    shift
    "$PY" "benchmarks/bench_$name.py" --shapes "$SHAPES" $BENCH_ARGS "$@"
    local rc=$?
    collect_records
    return $rc
}

ext_bench() {  # the video benches need rlvr_fast._C with CUDA
    if ((EXT_OK != 1)); then
        echo "skipped: rlvr_fast._C was not built with CUDA"
        return 5
    fi
    bench "$@"
}

summary() {
    banner "SUMMARY (budget ${BUDGET}s, used $(elapsed)s)"
    printf '  %s\n' "${STATUS[@]}"
    echo "--- benchmark cases that failed their check or errored (not timed):"
    grep -aE "FAILED \((check|error)\), not timed|worker for .* exited|^# failed:" "$OUT/log.txt" |
        cut -c1-300 | head -40
    echo "--- GPU tests:"
    grep -aE "^(FAILED|ERROR) |^(=+ )?[0-9]+ (passed|failed|skipped|errors?|deselected).* in [0-9.]+s" "$OUT/log.txt" |
        cut -c1-300 | head -40
    if [ -f benchmarks/RESULTS.md ] && [ benchmarks/RESULTS.md -nt "$MARK" ]; then
        echo "--- benchmarks/RESULTS.md, targets:"
        sed -n '/^## Targets/,/^Ratios/p' benchmarks/RESULTS.md | grep -v "not measured (no GPU\|| CPU |" |
            cut -c1-400
    fi
    echo "--- files in \$OUT:"
    ls -la "$OUT"
}

export PY SHAPES BENCH_ARGS MARK OUT SITE EXT_OK
export -f stage_env stage_wheels bench ext_bench collect_records copy_out out_count

main() {
    banner "device_run.sh: repo $REPO, OUT=$OUT, budget ${BUDGET}s, shapes $SHAPES, stages:$STAGES"
    run_stage env 60 0 stage_env
    run_stage wheels 90 0 stage_wheels
    # GPU tests: the Triton kernels' tests here, while the extension compiles and then has its own
    # tests run in the background (test_gpu.py's video / pixel tests)
    start_background
    run_stage tests_triton 240 60 "$PY" -m pytest "${PYTEST_ARGS[@]}" -k "not (video or pixel)" \
        --junitxml="$OUT/gpu-tests-triton.xml"
    finish_background

    # Benchmarks, in order of value: the providers docs/DESIGN.md section 8 compares (and cheap eager ones)
    run_stage logprobs 150 40 bench logprobs --providers rlvr_fast,floor,liger,trl,flash-attn-ce,torch-naive
    run_stage policy_loss 120 40 bench policy_loss --providers rlvr_fast,floor,liger-grpo,trl-unfused,torch-ref
    run_stage fused_linear 180 60 bench fused_linear --providers rlvr_fast,floor,liger,unfused
    run_stage advantages 60 25 bench advantages --providers rlvr_fast,torch-ref,trl-formula
    run_stage video 120 40 ext_bench video --providers rlvr_fast,floor,piqa,pytorch-msssim,torchmetrics,torch-ref
    # GRPO step: 1 warm-up step, 3 timed steps per provider, 1 step per memory process; without the
    # two memory processes (~1 min) when less than 150 s are left
    local trainer_mem=""
    (($(left) < 150)) && trainer_mem="--no-memory"
    run_stage trainer 240 80 bench trainer $TRAINER_ARGS $trainer_mem
    # RLVR-World's path scores on the host CPU (piqa SSIM of 2048 frames): ~20-40 s a call, 5 calls
    run_stage video_rlvr_world 240 140 ext_bench video --providers rlvr-world --no-memory
    # torch.compile references (compile time dominates) and verl (not carried: ray is 79 MB)
    run_stage extras_logprobs 150 60 bench logprobs --providers torch-compiled,verl
    run_stage extras_policy_loss 90 40 bench policy_loss --providers torch-ref-compiled,verl,verl-unfused
    run_stage extras_fused_linear 120 60 bench fused_linear --providers torch-compiled
    run_stage extras_advantages 60 30 bench advantages --providers torch-ref-compiled,verl-loop,verl-vectorized

    if want report; then
        banner "stage report: benchmarks/run_all.py --report-only"
        timeout -k 5 60 "$PY" benchmarks/run_all.py --report-only
        STATUS+=("report rc=$?")
    fi
    collect_records
    [ benchmarks/RESULTS.md -nt "$MARK" ] && copy_out benchmarks/RESULTS.md
    local f
    for f in benchmarks/results/*.png; do  # new or changed charts only
        [ -f "$f" ] || continue
        grep -q "$(md5sum "$f" | cut -d' ' -f1)" "$PNG_SUMS" || copy_out "$f"
    done
    summary
}

main 2>&1 | tee -a "$OUT/log.txt"
exit 0
