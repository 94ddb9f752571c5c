"""Video world-model rewards: ``rlvr_fast.pixel_metrics`` and the whole token -> reward path.

Two ops, both forward only (rewards carry no gradient):

(a) ``pixel_metrics``: MSE, MAE, PSNR and SSIM of every prediction against its group's real frame,
    per sample (float32 [B] each). Predictions [B, C, H, W], real frames [G, C, H, W], B = G x n;
    inputs in [0, 1] (predictions = the group's real frame + N(0, 0.1) noise, clamped), so every
    provider sees the same values (piqa asserts the range, rlvr_fast clamps).
    Work: one read of the predictions (+ the G targets); SSIM is 5 separable 11-tap Gaussian
    filterings of x, y, x^2, y^2, xy per pixel, i.e. compute-bound on CPU.
    GPU target shape (docs/DESIGN.md section 8): 2048 x 3x256x320 bf16 with 128 real frames (n = 16):
    predictions 1.01 GB, read once -> 0.30 ms at 3.35 TB/s; target >= 10x piqa and one pass over the
    predictions. CPU small shape = the CPU target: 256 x 3x64x64 float32 with 16 real frames (n = 16);
    target >= 3x piqa SSIM+PSNR on the same cores.
    Providers (each returns (mse, mae, psnr, ssim), float32 [B]):
        rlvr_fast       ``pixel_metrics(pred, target, group_size=n)`` (CPU: the extension's C++ kernel;
                        CUDA: its CUDA kernel); the target is read in place
        torch-ref       ``rlvr_fast.ops.pixel_metrics_ref`` in float32 (repeats the targets, five
                        explicit depthwise convolutions, as piqa does)
        piqa            what RLVR-World does: ``target.repeat_interleave(n, 0)``, ``piqa.SSIM`` and
                        ``piqa.PSNR`` with ``reduction="none"`` (input checks on, piqa's default),
                        MSE / MAE as torch means; bf16 inputs are cast to float32 first (piqa's window
                        is a float32 buffer, conv2d refuses mixed dtypes)
        pytorch-msssim  ``pytorch_msssim.ssim(x, y, data_range=1, size_average=False)`` + PSNR / MSE / MAE
                        in torch, on the repeated targets (float32)
        torchmetrics    ``torchmetrics.functional.image.structural_similarity_index_measure(...,
                        reduction="none", data_range=1.0)`` + ``peak_signal_noise_ratio(..., data_range=1.0,
                        reduction="none", dim=(1, 2, 3))`` + MSE / MAE, on the repeated targets. torchmetrics
                        (1.9) pads reflectively and averages SSIM over the whole image, border windows
                        included, where piqa / pytorch-msssim / rlvr_fast average the valid windows only:
                        its SSIM differs by ~0.2% (more on small frames), so its check is loosened to
                        rtol = atol = 2e-2 (every other output still agrees to float32 rounding).

(b) ``video_reward``: RLVR-World's single-step video reward for B rollouts, from generated tokens to
    token-level rewards. Responses [B, 321] (320 visual ids in [0, 4375) for the 16 x 20 latent grid,
    then EOS; ``VideoTokenLayout()``), an int64 response mask of ones, and G = B / n real frames.
    Both paths use the same stand-in tokenizer decoder, built once with a fixed seed: FSQ levels
    [7, 5, 5, 5, 5] -> ``project_out`` Linear(5, 64) -> conv 3x3 (64 -> 32) + SiLU -> log2(up) x
    [nearest upsample x2, conv 3x3 (c -> max(16, c/2)), SiLU] -> conv 3x3 (-> 3) -> sigmoid, i.e.
    [N, 64, 16, 20] latents -> [N, 3, 16 up, 20 up] frames (iVideoGPT's decoder upsamples x16 to
    256x320 and is far heavier; this one keeps the CPU runs to seconds). Reward: ``-(MAE - SSIM)``,
    RLVR-World's ``_compute_loss`` with weights mae = ssim = 1, written at the last response token.
    Providers (each returns the float32 [B, 321] token-level rewards):
        rlvr_fast   ``rlvr_fast.rewards.video.VideoReward`` (what the trainer runs):
                    ``unpack_video_tokens`` -> ``codes_to_latents(codes, Quantizer.fsq(levels,
                    [project_out]), memory_format=torch.channels_last)`` (project_out folded into the gather
                    table; CUDA: bf16, the decoder under bf16 autocast; CPU: float32) -> the decoder
                    (CUDA: the whole batch in one call; CPU: chunks of 4 like RLVR-World, because this
                    decoder runs ~2x faster on 2 cores in chunks whose activations stay in cache than
                    over the whole batch) -> ``pixel_reward(pred, real, {"mae": 1, "ssim": 1},
                    group_size=n, valid=valid, invalid_reward=-2)`` -> ``scatter_sequence_reward``
        rlvr-world  RLVR-World's ``reward_fn``, written out: ``responses[:, -321:-1].clamp(0, 4374)``
                    -> [B, 16, 20] -> iVideoGPT FSQ ``indices_to_codes`` (digits ``(idx // basis) %
                    levels``, ``(d - L // 2) / (L // 2)``, ``project_out``) -> decode in micro-batches of
                    4 (bf16 autocast on CUDA) -> ``clamp(0, 1)`` -> ``real.repeat_interleave(n, 0)`` ->
                    ``.float().cpu()`` copies of both -> piqa SSIM and MAE on the host -> loss -> a Python
                    loop ``reward_tensor[i, valid_response_length - 1] = -loss[i].item()``. The loop
                    runs on a host copy of the response mask (verl's driver holds the batch on the
                    host) and the finished reward tensor is moved back to the inputs' device.
        floor       the decoder alone, chunked as in rlvr_fast's path, on rlvr_fast's latents made
                    beforehand: the work any path must do (not checked: it returns frames, not rewards)
    Every rollout is well-formed, so the clamping path and ours agree (ours would give a malformed
    rollout the -2 penalty; the clamp would score it as some other frame). Records carry
    ``rollouts_per_s`` (B / median time), also at the head of the note.
    Shapes: smoke 8 rollouts (n = 4) at 16x20; small (CPU) 64 rollouts, n = 8, 64x80 frames (x4);
    target (GPU, docs/DESIGN.md section 8: >= 3x the RLVR-World path) 2048 rollouts, n = 16 (128 real
    frames), 256x320 (x16).

Run: ``python benchmarks/bench_video.py --shapes small`` (CPU) or ``--shapes target`` (GPU).
"""

from __future__ import annotations

import contextlib
import math
import sys

import common as C
import torch
from torch import nn

OP_METRICS, OP_REWARD = "pixel_metrics", "video_reward"
METRICS = ("mse", "mae", "psnr", "ssim")

SHAPES = {
    "small": dict(
        metrics=[dict(G=16, n=16, C=3, H=64, W=64, dtype="float32")],  # docs/DESIGN.md section 8 CPU target
        reward=[dict(B=64, n=8, up=4)],
    ),
    "target": dict(
        metrics=[dict(G=128, n=16, C=3, H=256, W=320, dtype="bfloat16")],  # docs/DESIGN.md section 8 GPU target
        reward=[dict(B=2048, n=16, up=16)],
    ),
    # seconds: checks that every provider still runs
    "smoke": dict(metrics=[dict(G=2, n=4, C=3, H=32, W=40, dtype="float32")], reward=[dict(B=8, n=4, up=1)]),
}

TORCHMETRICS_TOL = (2e-2, 2e-2)


def _has_piqa() -> bool:
    try:
        C.import_piqa()
        return True
    except Exception:  # noqa: BLE001 - any import failure means "not installed"
        return False


# ----------------------------------------------------------------------------------------------
# (a) pixel_metrics
# ----------------------------------------------------------------------------------------------


def _metric_inputs(G: int, n: int, Ch: int, H: int, W: int, dtype: torch.dtype) -> dict:
    target = torch.rand((G, Ch, H, W), generator=C.generator(41, C.DEVICE), device=C.DEVICE)
    pred = target.repeat_interleave(n, 0).add_(C.randn((G * n, Ch, H, W), seed=42, scale=0.1)).clamp_(0, 1)
    return dict(pred=pred.to(dtype), target=target.to(dtype), n=n)


def _mse_mae(x, y):
    d = x - y
    return d.square().mean((1, 2, 3)), d.abs().mean((1, 2, 3))


def _metrics_ours(d):
    import rlvr_fast

    out = rlvr_fast.pixel_metrics(d["pred"], d["target"], group_size=d["n"], metrics=METRICS, data_range=1.0)
    return tuple(out[m] for m in METRICS)


def _metrics_torch_ref(d):
    from rlvr_fast.ops import pixel_metrics_ref

    args = (1, d["n"], 1.0, 0.01, 0.03, True, 11, 1.5, torch.float32)  # frames .. sigma, dtype
    table = pixel_metrics_ref(d["pred"], d["target"], *args)
    return tuple(table)


def _metrics_piqa(d):
    if "piqa" not in d:
        piqa = C.import_piqa()
        d["piqa"] = (
            piqa.SSIM(reduction="none").to(C.DEVICE),
            piqa.PSNR(reduction="none"),
        )
    ssim, psnr = d["piqa"]
    x = d["pred"].float()
    y = d["target"].repeat_interleave(d["n"], 0).float()
    mse, mae = _mse_mae(x, y)
    return mse, mae, psnr(x, y), ssim(x, y)


def _metrics_msssim(d):
    from pytorch_msssim import ssim

    x = d["pred"].float()
    y = d["target"].repeat_interleave(d["n"], 0).float()
    mse, mae = _mse_mae(x, y)
    return mse, mae, 10 * torch.log10(1.0 / (mse + 1e-8)), ssim(x, y, data_range=1, size_average=False)


def _metrics_torchmetrics(d):
    from torchmetrics.functional.image import peak_signal_noise_ratio, structural_similarity_index_measure

    x = d["pred"].float()
    y = d["target"].repeat_interleave(d["n"], 0).float()
    mse, mae = _mse_mae(x, y)
    psnr = peak_signal_noise_ratio(x, y, data_range=1.0, reduction="none", dim=(1, 2, 3))
    ssim = structural_similarity_index_measure(x, y, reduction="none", data_range=1.0)
    return mse, mae, psnr, ssim


METRIC_PROVIDERS = {
    "rlvr_fast": (_metrics_ours, lambda: True),
    "torch-ref": (_metrics_torch_ref, lambda: True),
    "piqa": (_metrics_piqa, _has_piqa),
    "pytorch-msssim": (_metrics_msssim, lambda: C.try_import("pytorch_msssim")),
    "torchmetrics": (_metrics_torchmetrics, lambda: C.try_import("torchmetrics.functional.image")),
}
METRIC_NOTES = {
    "rlvr_fast": "MSE+MAE+PSNR+SSIM per sample; targets read in place",
    "torch-ref": "pixel_metrics_ref, float32; repeated targets",
    "piqa": "piqa SSIM+PSNR (reduction=none) + torch MSE/MAE on repeat_interleave'd targets (RLVR-World)",
    "pytorch-msssim": "pytorch_msssim.ssim(size_average=False) + torch PSNR/MSE/MAE; repeated targets",
    "torchmetrics": "functional SSIM+PSNR (reduction=none) + torch MSE/MAE; repeated targets; SSIM over "
    "reflect-padded full image (checked at 2e-2)",
}


def _make_metrics(fn, spec):
    def make():
        d = _metric_inputs(spec["G"], spec["n"], spec["C"], spec["H"], spec["W"], C.DTYPES[spec["dtype"]])
        return lambda: fn(d)

    return make


# ----------------------------------------------------------------------------------------------
# (b) video_reward
# ----------------------------------------------------------------------------------------------

FSQ_LEVELS = (7, 5, 5, 5, 5)
LATENT_DIM = 64  # iVideoGPT's FSQ project_out: Linear(len(levels) -> 64)
MICRO_BATCH = 4  # RLVR-World decodes in micro-batches of 4
# rlvr_fast's path: the whole batch in one decoder call on CUDA; on CPU the stand-in decoder is
# ~1.5-2x faster in chunks of 4 than over the whole batch (its activations then stay in cache), so there
# it decodes in the same chunks as RLVR-World and the two paths differ only in the reward machinery.
OURS_DECODE_CHUNK = None if C.HAS_CUDA else MICRO_BATCH
# Latents straight in channels_last (codes_to_latents writes that layout): the layout of RLVR-World's
# permuted project_out output too, and faster for the decoder's convolutions on CPU as well as GPU.
OURS_MEMORY_FORMAT = torch.channels_last  # as VideoReward
OURS_DTYPE = torch.bfloat16 if C.HAS_CUDA else torch.float32
WEIGHTS = {"mae": 1.0, "ssim": 1.0}
INVALID_REWARD = -2.0
_MODELS: dict = {}


def _decoder(up: int) -> tuple[nn.Linear, nn.Module]:
    """(project_out, stand-in decoder) for an upsampling factor ``up`` (a power of 2), built once, seed 0."""
    if up not in _MODELS:
        stages = int(round(math.log2(up)))
        assert 2**stages == up, f"up must be a power of 2, got {up}"
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            project_out = nn.Linear(len(FSQ_LEVELS), LATENT_DIM)
            c = 32
            layers: list[nn.Module] = [nn.Conv2d(LATENT_DIM, c, 3, padding=1), nn.SiLU()]
            for _ in range(stages):
                c_out = max(16, c // 2)
                layers += [nn.Upsample(scale_factor=2, mode="nearest"), nn.Conv2d(c, c_out, 3, padding=1)]
                layers.append(nn.SiLU())
                c = c_out
            layers += [nn.Conv2d(c, 3, 3, padding=1), nn.Sigmoid()]
            decoder = nn.Sequential(*layers)
        project_out = project_out.to(C.DEVICE).requires_grad_(False).eval()
        decoder = decoder.to(C.DEVICE).requires_grad_(False).eval()
        _MODELS[up] = (project_out, decoder)
    return _MODELS[up]


def _autocast():
    """bf16 autocast on CUDA (how the decoder runs in a trainer); float32 on CPU."""
    return torch.autocast("cuda", dtype=torch.bfloat16) if C.HAS_CUDA else contextlib.nullcontext()


def _reward_inputs(B: int, n: int, up: int) -> dict:
    from rlvr_fast.ops import Quantizer, VideoTokenLayout

    layout = VideoTokenLayout()
    h, w = layout.frame_shape
    T = layout.response_length  # 321: 320 visual tokens, then EOS
    responses = torch.full((B, T), layout.eos_id, dtype=torch.int64, device=C.DEVICE)
    responses[:, : h * w] = C.randint(layout.visual_vocab, (B, h * w), seed=51)
    mask = torch.ones((B, T), dtype=torch.int64, device=C.DEVICE)
    project_out, decoder = _decoder(up)
    levels = torch.tensor(FSQ_LEVELS, dtype=torch.int32, device=C.DEVICE)
    basis = torch.cumprod(torch.tensor((1, *FSQ_LEVELS[:-1])), 0).to(device=C.DEVICE, dtype=torch.int32)
    d = dict(
        responses=responses,
        mask=mask,
        n=n,
        layout=layout,
        levels=levels,
        basis=basis,
        project_out=project_out,
        decoder=decoder,
        quantizer=Quantizer.fsq(FSQ_LEVELS, [project_out]),
    )
    # Real frames: the first rollout of each group decoded, plus N(0, 0.05) noise (SSIMs well above 0).
    with torch.no_grad(), _autocast():
        first = _fsq_latents_ivideogpt(d, responses[::n, : h * w].reshape(-1, h, w))
        real = decoder(first).float()
    real = real.add_(C.randn(real.shape, seed=52, scale=0.05)).clamp_(0, 1)
    d["real"] = real.to(torch.bfloat16) if C.HAS_CUDA else real
    return d


def _fsq_latents_ivideogpt(d, tokens):
    """iVideoGPT ``FSQ.indices_to_codes(indices, project_out=True)`` on [N, h, w] ids -> [N, 64, h, w]."""
    digits = (tokens[..., None] // d["basis"]) % d["levels"]  # codes_non_centered
    half_width = d["levels"] // 2
    codes = (digits - half_width) / half_width  # _scale_and_shift_inverse
    codes = d["project_out"](codes)  # [N, h, w, 64]
    return codes.permute(0, 3, 1, 2)  # rearrange 'b h w d -> b d h w'


def _decode(decoder, latents, chunk):
    """The decoder over all latents, in one call (``chunk`` None) or in chunks of ``chunk``."""
    if chunk is None or chunk >= latents.shape[0]:
        return decoder(latents)
    return torch.cat([decoder(latents[i : i + chunk]) for i in range(0, latents.shape[0], chunk)])


def _ours_latents(codes, d):
    from rlvr_fast.ops import codes_to_latents

    return codes_to_latents(codes, d["quantizer"], dtype=OURS_DTYPE, memory_format=OURS_MEMORY_FORMAT)


def _reward_ours(d):
    if "video_reward" not in d:  # the library's path (rlvr_fast.rewards.video), built on the warm-up call
        from rlvr_fast.rewards.video import VideoReward

        d["video_reward"] = VideoReward(
            d["layout"],
            d["quantizer"],
            d["decoder"],
            WEIGHTS,
            invalid_reward=INVALID_REWARD,
            decode_chunk=OURS_DECODE_CHUNK,
        )
    return d["video_reward"](d["responses"], d["mask"], d["real"], group_size=d["n"]).token_rewards


def _reward_rlvr_world(d):
    layout, responses, n = d["layout"], d["responses"], d["n"]
    if "ssim" not in d:
        d["ssim"] = C.import_piqa().SSIM(reduction="none")  # on the host, like their reward_fn
    B = responses.shape[0]
    h, w = layout.frame_shape
    tpf = layout.tokens_per_frame
    with torch.no_grad():
        tokens = responses[:, -tpf - 1 : -1].clamp(0, layout.visual_vocab - 1).reshape(B, h, w)
        with _autocast():
            latents = _fsq_latents_ivideogpt(d, tokens)
            preds = [d["decoder"](latents[i : i + MICRO_BATCH]) for i in range(0, B, MICRO_BATCH)]
        pred = torch.cat(preds).clamp(0.0, 1.0)
        real = d["real"].repeat_interleave(n, 0)
        pred, real = pred.float().cpu(), real.float().cpu()
        ssim = d["ssim"](pred, real)
        mae = (pred - real).abs().mean(dim=(1, 2, 3))
        loss = WEIGHTS["mae"] * mae - WEIGHTS["ssim"] * ssim
        attention_mask = d["mask"].cpu()  # verl's driver holds the batch on the host
        reward_tensor = torch.zeros(responses.shape, dtype=torch.float32)
        for i in range(B):
            valid_response_length = attention_mask[i].sum().long().item()
            reward_tensor[i, valid_response_length - 1] = -loss[i].item()
    return reward_tensor.to(C.DEVICE)


def _reward_floor(d):
    if "latents" not in d:  # rlvr_fast's latents, made once
        from rlvr_fast.ops import unpack_video_tokens

        codes = unpack_video_tokens(d["responses"], d["mask"], d["layout"])[0]
        d["latents"] = _ours_latents(codes, d)
    with torch.no_grad(), _autocast():
        return (_decode(d["decoder"], d["latents"], OURS_DECODE_CHUNK),)


REWARD_PROVIDERS = {
    "rlvr_fast": (_reward_ours, lambda: True),
    "rlvr-world": (_reward_rlvr_world, _has_piqa),
    "floor": (_reward_floor, lambda: True),
}
REWARD_NOTES = {
    "rlvr_fast": "unpack -> codes_to_latents -> decoder ("
    + ("whole batch" if OURS_DECODE_CHUNK is None else f"chunks of {OURS_DECODE_CHUNK}")
    + ") -> pixel_reward(mae+ssim) -> scatter",
    "rlvr-world": "clamp -> FSQ indices_to_codes -> decoder (micro-batches of 4) -> repeat_interleave -> "
    ".cpu() -> piqa SSIM + MAE -> .item() loop",
    "floor": "the stand-in decoder alone ("
    + ("whole batch" if OURS_DECODE_CHUNK is None else f"chunks of {OURS_DECODE_CHUNK}")
    + "; work every path does)",
}


def _make_reward(fn, spec):
    def make():
        d = _reward_inputs(spec["B"], spec["n"], spec["up"])
        return lambda: fn(d)

    return make


def _throughput(B: int, base_note: str):
    def derive(timing: dict) -> dict:
        rate = B / (timing["median_ms"] / 1e3)
        return {"rollouts_per_s": rate, "note": f"{rate:,.0f} rollouts/s; {base_note}"}

    return derive


# ----------------------------------------------------------------------------------------------
# Cases
# ----------------------------------------------------------------------------------------------


def cases(shapes: str, only: str | None = None) -> list[C.Case]:
    """All cases for ``shapes``; ``only``: build just this provider's (no availability probes of others)."""
    out = []
    for spec in SHAPES[shapes]["metrics"]:
        B = spec["G"] * spec["n"]
        shape = dict(B=B, G=spec["G"], n=spec["n"], C=spec["C"], H=spec["H"], W=spec["W"])
        name = C.shape_name(B=B, C=spec["C"], H=spec["H"], W=spec["W"], G=spec["G"])
        for provider, (fn, ok) in METRIC_PROVIDERS.items():
            if (only and provider != only) or not ok():
                continue
            out.append(
                C.Case(
                    op=OP_METRICS,
                    provider=provider,
                    mode=C.FWD,
                    shape=shape,
                    dtype=spec["dtype"],
                    make=_make_metrics(fn, spec),
                    shape_name=name,
                    tol=TORCHMETRICS_TOL if provider == "torchmetrics" else None,
                    note=METRIC_NOTES[provider],
                )
            )
    for spec in SHAPES[shapes]["reward"]:
        B, n, up = spec["B"], spec["n"], spec["up"]
        h, w = 16, 20
        shape = dict(B=B, n=n, G=B // n, T=h * w + 1, h=h, w=w, H=h * up, W=w * up)
        name = C.shape_name(B=B, n=n, H=h * up, W=w * up)
        for provider, (fn, ok) in REWARD_PROVIDERS.items():
            if (only and provider != only) or not ok():
                continue
            out.append(
                C.Case(
                    op=OP_REWARD,
                    provider=provider,
                    mode=C.FWD,
                    shape=shape,
                    dtype="bfloat16" if C.HAS_CUDA else "float32",
                    make=_make_reward(fn, spec),
                    shape_name=name,
                    check=provider != "floor",
                    note=REWARD_NOTES[provider],
                    derive=_throughput(B, REWARD_NOTES[provider]),
                )
            )
    return out


def main(argv=None) -> int:
    return C.main(__doc__, cases, __file__, argv)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
