"""The performance targets of docs/DESIGN.md section 8, as data: one :class:`Target` per row of the "Targets"
table in ``RESULTS.md``, in the order they appear there. ``run_all.py`` evaluates them against the
latest result rows (``run_all.target_rows``); adding a target is a row here.
"""

from __future__ import annotations

from dataclasses import dataclass

# The shapes the targets are measured at (bench_*.py --shapes target on the GPU, --shapes small on CPU).
GPU_LP = dict(N=16384, V=151936)
CPU_LP = dict(N=4096, V=32000)
GPU_ADV = dict(G=8192, n=16, T=1024)
CPU_ADV = dict(G=256, n=16, T=1024)
GPU_PIX = dict(B=2048, G=128, H=256, W=320)
CPU_PIX = dict(B=256, G=16, H=64, W=64)
GPU_VID = dict(B=2048, n=16, H=256, W=320)
CPU_VID = dict(B=64, n=8, H=64, W=80)
GPU_FL = dict(N=16384, H=4096, V=151936)
CPU_FL = dict(N=2048, H=512, V=32000)
GPU_GRPO = dict(P=64, n=8, T=256)
CPU_GRPO = dict(P=16, n=8, T=64)
GPU_RT1 = dict(V=9008, P=16, n=8, L=1333, T=321)
CPU_RT1 = dict(V=9008, P=2, n=8, L=1333, T=321)

# The baseline of a memory target that is no provider's row: the bytes of the bf16 logits [B, T + 1, V].
BF16_LOGITS = "bf16 logits"
# Why a GPU target has no number when the GPU run has rows but not these (Target.missing's default).
GPU_SKIPPED = "not measured on the GPU run (the peer was not installed there, or the case was skipped)"
CPU_ANALOGUE = "info only (CPU analogue of the H100 target; would be {status})"


@dataclass(frozen=True)
class Target:
    """One target: rlvr_fast's row of ``op`` / ``mode`` / ``shape`` / ``dtype`` on ``device`` against a
    baseline, its ratio compared with ``threshold``.

    ``comparison`` ">=" reads the ratio as baseline / rlvr_fast (a speedup), "<=" and "<" as rlvr_fast /
    baseline (a multiple of a floor or of the peer's memory). ``metric`` is ``median_ms`` or
    ``peak_bytes``; ``baseline`` names the provider(s) compared with (the best of several), or
    :data:`BF16_LOGITS`. ``label`` words the "compared with" cell: ``{provider}``, ``{value}`` (the
    baseline's number) and ``{limit}`` (threshold x baseline). ``show`` words a time: ``ms``, ``tok/s``
    (B x T tokens of rlvr_fast's shape per call) or ``ms+rollouts/s`` (B rollouts per call).
    ``op=None``: the benchmarks do not measure it; ``missing`` says why. ``info_only``: a CPU analogue,
    listed only when measured, its status worded by this template.
    """

    target: str
    shape_text: str
    criterion: str
    device: str  # "H100" (measured on the cuda rows) or "CPU"
    op: str | None = None
    mode: str = "fwd"
    shape: dict | None = None
    dtype: str | None = None
    metric: str = "median_ms"
    comparison: str = ">="
    threshold: float = 1.0
    baseline: tuple[str, ...] = ()
    baseline_op: str | None = None  # the baseline rows' op, when not ``op`` (a floor shared by two ops)
    label: str = "{provider} {value}"
    show: str = "ms"
    missing: str = GPU_SKIPPED
    info_only: str | None = None
    provider: str = "rlvr_fast"  # whose row is judged (rlvr_fast-vllm: the trainer on the vLLM engine)


@dataclass(frozen=True)
class CoresNote:
    """A note row when the CPU rows of ``op`` were measured on another core count than the targets'."""

    op: str
    cores: int


def _token_logprobs(op: str) -> list[Target]:
    where = dict(op=op, mode="fwd", shape=GPU_LP, dtype="bfloat16")
    return [
        Target(
            target=f"{op} fwd",
            shape_text="N=16384, V=151936, bf16",
            criterion="<= 1.15x HBM floor",
            device="H100",
            **where,
            comparison="<=",
            threshold=1.15,
            baseline=("floor",),
            baseline_op="token_logprobs",
            label="floor (one read, measured) {value}",
        ),
        Target(
            target=f"{op} fwd",
            shape_text="N=16384, V=151936, bf16",
            criterion=">= 1.0x fastest of Liger / flash-attn CE / TRL",
            device="H100",
            **where,
            baseline=("liger", "flash-attn-ce", "trl"),
            label="fastest peer {provider} {value}",
        ),
    ]


def _group_advantages(peer: str, minimum: float) -> list[Target]:
    """The H100 target, then the same ratio on the CPU small shape for information."""
    check = dict(op="group_advantages", dtype="float32", threshold=minimum, baseline=(peer,))
    return [
        Target(
            target="group_advantages",
            shape_text="8192 x 16, T=1024",
            criterion=f">= {minimum}x {peer}",
            device="H100",
            shape=GPU_ADV,
            **check,
        ),
        Target(
            target="group_advantages",
            shape_text="256 x 16, T=1024 (CPU small)",
            criterion=f">= {minimum}x {peer}",
            device="CPU",
            shape=CPU_ADV,
            **check,
            info_only=CPU_ANALOGUE,
        ),
    ]


def _grpo_step(device: str, shape_text: str, shape: dict, info_only: str | None) -> list[Target]:
    where = dict(op="grpo_step", mode="step", shape=shape, baseline=("trl",), label="TRL GRPOTrainer {value}")
    common = dict(shape_text=shape_text, device=device, info_only=info_only, **where)
    speed = dict(criterion=">= 1.5x TRL GRPOTrainer tokens/s", threshold=1.5, show="tok/s", **common)
    return [
        Target(target="GRPO step, end to end", **speed),
        Target(
            target="GRPO step, end to end",
            criterion="<= 0.6x TRL GRPOTrainer peak memory",
            metric="peak_bytes",
            comparison="<=",
            threshold=0.6,
            **common,
        ),
        Target(target="GRPO step, end to end, vLLM engine", provider="rlvr_fast-vllm", **speed),
    ]


def _cpu_token_logprobs(criterion: str, **check) -> list[Target]:
    return [
        Target(
            target=f"CPU token_logprobs {mode}",
            shape_text="N=4096, V=32000, fp32, 2 cores",
            criterion=criterion,
            device="CPU",
            op="token_logprobs",
            mode=mode,
            shape=CPU_LP,
            dtype="float32",
            **check,
            missing="not measured (run bench_logprobs.py on CPU)",
        )
        for mode in ("fwd", "fwd+bwd")
    ]


PLFL = dict(op="policy_loss_from_logits", mode="fwd+bwd", shape=GPU_LP, dtype="bfloat16")
FL = "fused linear log-probs + loss fwd+bwd"
FL_SHAPE = "N=16384, H=4096, V=151936, bf16"
PIX = "pixel metrics MSE+MAE+PSNR+SSIM"
PIX_SHAPE = "2048 x 3x256x320 bf16, 128 targets"
PIQA = "piqa SSIM+PSNR (+ torch MSE/MAE) {value}"

TARGETS: list[Target | CoresNote] = [
    *_token_logprobs("token_logprobs"),
    *_token_logprobs("token_logprobs+entropy"),
    Target(
        target="policy_loss_from_logits fwd+bwd",
        shape_text="N=16384, V=151936, bf16",
        criterion="<= 1.25x floor",
        device="H100",
        **PLFL,
        comparison="<=",
        threshold=1.25,
        baseline=("floor",),
        label="floor (2 reads + 1 write, measured) {value}",
    ),
    Target(
        target="policy_loss_from_logits fwd+bwd",
        shape_text="N=16384, V=151936, bf16",
        criterion=">= 1.2x Liger grpo_loss",
        device="H100",
        **PLFL,
        threshold=1.2,
        baseline=("liger-grpo",),
        missing="not measured (liger_kernel not installed)",
    ),
    # d(view) + autograd's full-size d(logits) = 2x the bf16 logits; an fp32 copy would add 2x more
    Target(
        target="policy_loss_from_logits fwd+bwd",
        shape_text="N=16384, V=151936, bf16",
        criterion="no fp32 copy of the logits (ratio: peak / bf16 logits bytes)",
        device="H100",
        **PLFL,
        metric="peak_bytes",
        comparison="<",
        threshold=4,
        baseline=(BF16_LOGITS,),
        label="4x the bf16 logits = {limit} (2 bf16 grads + fp32 copy)",
    ),
    Target(
        target=FL,
        shape_text=FL_SHAPE,
        criterion=">= 70% of measured bf16 matmul rate",
        device="H100",
        op="fused_linear_policy_loss",
        mode="fwd+bwd",
        shape=GPU_FL,
        threshold=0.7,
        baseline=("floor",),  # the floor times the 3 unavoidable matmuls
        label="3 matmuls alone {value}",
    ),
    Target(
        target=FL,
        shape_text=FL_SHAPE,
        criterion="extra memory <= 1 GiB",
        device="H100",
        missing="not measured by the benchmarks (peak minus gradients not recorded)",
    ),
    Target(
        target=FL,
        shape_text=FL_SHAPE,
        criterion="faster than LigerFusedLinearGRPOLoss",
        device="H100",
        op="fused_linear_policy_loss",
        mode="fwd+bwd",
        shape=GPU_FL,
        dtype="bfloat16",
        baseline=("liger",),
        label="Liger {value}",
    ),
    Target(
        target=FL,
        shape_text="N=2048, H=512, V=32000, fp32 (CPU small)",
        criterion="peak memory vs the unfused path",
        device="CPU",
        op="fused_linear_policy_loss",
        mode="fwd+bwd",
        shape=CPU_FL,
        metric="peak_bytes",
        comparison="<=",
        threshold=0.5,
        baseline=("unfused",),
        label="unfused (logits materialised) {value}",
        info_only="info only (CPU peak incl. gradients; would be {status} at <= 0.5x)",
    ),
    Target(
        target="group_advantages",
        shape_text="8192 x 16, T=1024",
        criterion="one launch",
        device="H100",
        missing="not measured by the benchmarks (launch count not recorded)",
    ),
    *_group_advantages("verl-loop", 100),
    *_group_advantages("verl-vectorized", 3),
    Target(
        target=PIX,
        shape_text=PIX_SHAPE,
        criterion="one pass over the predictions",
        device="H100",
        missing="not measured by the benchmarks (memory traffic not recorded)",
    ),
    Target(
        target=PIX,
        shape_text=PIX_SHAPE,
        criterion=">= 10x piqa",
        device="H100",
        op="pixel_metrics",
        shape=GPU_PIX,
        dtype="bfloat16",
        threshold=10,
        baseline=("piqa",),
        label=PIQA,
    ),
    Target(
        target="video reward pipeline",
        shape_text="RLVR-World single-step, 2048 rollouts",
        criterion=">= 3x the RLVR-World path",
        device="H100",
        op="video_reward",
        shape=GPU_VID,
        dtype="bfloat16",
        threshold=3,
        baseline=("rlvr-world",),
        label="RLVR-World path {value}",
        show="ms+rollouts/s",
    ),
    Target(
        target="video reward pipeline",
        shape_text="64 rollouts, n=8, 64x80 frames (CPU small)",
        criterion=">= 3x the RLVR-World path",
        device="CPU",
        op="video_reward",
        shape=CPU_VID,
        dtype="float32",
        threshold=3,
        baseline=("rlvr-world",),
        label="RLVR-World path {value}",
        show="ms+rollouts/s",
        info_only=CPU_ANALOGUE,
    ),
    *_grpo_step("H100", "~85M Llama, 64 prompts x 8 x 256 tokens", GPU_GRPO, None),
    *_grpo_step("CPU", "demo model, 16 x 8 x 64 tokens (CPU small)", CPU_GRPO, CPU_ANALOGUE),
    *(
        Target(
            target="rollouts, vLLM engine",
            shape_text=text,
            criterion=">= 3x HF generate tokens/s",
            device=device,
            op="rollout",
            mode="generate",
            shape=shape,
            threshold=3,
            baseline=("hf-generate",),
            label="HF generate {value}",
            show="tok/s",
        )
        for device, text, shape in (
            ("H100", "RT-1-like, ~85M Llama, 16 prompts of 1,333 tokens x 8 x 321", GPU_RT1),
            ("CPU", "RT-1-like, 4x256 Llama, 2 prompts of 1,333 tokens x 8 x 321 (CPU small)", CPU_RT1),
        )
    ),
    *_cpu_token_logprobs(
        ">= 1.5x TRL selective_log_softmax",
        threshold=1.5,
        baseline=("trl",),
        label="TRL selective_log_softmax {value}",
    ),
    *_cpu_token_logprobs(
        "peak <= 0.3x naive log_softmax + gather",
        metric="peak_bytes",
        comparison="<=",
        threshold=0.3,
        baseline=("torch-naive",),
        label="naive log_softmax+gather {value}",
    ),
    CoresNote("token_logprobs", 2),
    Target(
        target="CPU pixel metrics",
        shape_text="256 x 3x64x64",
        criterion=">= 3x piqa SSIM+PSNR",
        device="CPU",
        op="pixel_metrics",
        shape=CPU_PIX,
        dtype="float32",
        threshold=3,
        baseline=("piqa",),
        label=PIQA,
        missing="not measured (run bench_video.py on CPU)",
    ),
]
