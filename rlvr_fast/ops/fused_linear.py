"""Log-probs, entropy and the policy loss straight from hidden states: ``lm_head`` fused with the
log-softmax, so the [tokens x vocab] logits never exist in memory.

For a policy with hidden states ``h`` [N, H] and an output projection ``W`` [V, H] (+ bias ``b``), the
logits ``z = (h W^T + b) / T`` are only ever held one tile of ``chunk_tokens x chunk_vocab`` at a time:

forward, per tile (online logsumexp over vocabulary chunks, float32 statistics per token)::

    m' = max(m, max_j z_j);  s = s e^(m - m') + sum_j e^(z_j - m');  t = (t + s (m - m')) e^(m - m') + sum_j e^(z_j - m') (z_j - m')
    lse = m + log s;  logp = z_y - lse;  entropy = log s - t / s;  E_p[z] = m + t / s

backward, per tile (the tile is recomputed: one more ``h W^T``)::

    dz_j = g_logp (1[j = y] - p_j) + g_H p_j (E_p[z] - z_j),   p_j = e^(z_j - lse)
    d h += (dz / T) W_chunk;   d W_chunk += (dz / T)^T h;   d b_chunk += sum_tokens dz / T

Why recompute instead of computing the gradient in the forward (Liger's choice for its fused losses):
the log-probs are an intermediate whose upstream gradient is unknown in the forward (it comes from
whatever loss is applied to them, the policy loss, a KL term, an entropy bonus), so the d(logits) tile
cannot be formed then. The price is one extra ``N x H x V`` matmul (four instead of three); the gain is
one op that composes with any loss, and nothing of size [N, V] or an early [V, H] gradient held
between forward and backward. :func:`fused_linear_policy_loss` is this op followed by
:func:`~rlvr_fast.ops.policy_loss` on the [B, T] log-probs, so it has exactly the same gradients as
``policy_loss_from_logits(h @ W.T + b, ...)``.

Memory: beyond the inputs and outputs, the forward holds O(N) float32 statistics and ~3 float32 tiles;
the backward a float32 ``d h`` [N, H] (cast to ``h``'s dtype at the end), one float32 ``d W`` chunk
[chunk_vocab, H] and ~3 tiles. All matmuls run in the inputs' dtype (cuBLAS on GPU, with its float32
accumulation), as a model's ``lm_head`` and its backward would; the softmax statistics and the
d(logits) tile are float32 (the tile is rounded to the inputs' dtype for the gradient matmuls, as an
unfused backward rounds d(logits)).

Default chunk sizes (:func:`default_chunks`): ``chunk_tokens = min(N, 4096)`` and ``chunk_vocab`` the
largest multiple of 256 (at most V) whose three float32 tiles fit a fixed budget: 64 MiB on CPU, 1 GiB on
CUDA. The tiles are a function of N, V and the device type only, never of the free memory at the time of
the call, so two identical calls sum in the same order and give the same bits. On a GPU with little
memory, pass a smaller ``chunk_vocab``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch

from .. import _checks as C
from .._dispatch import select_backend
from .policy_loss import policy_loss

CPU_TILE_BUDGET = 64 << 20
CUDA_TILE_BUDGET = 1 << 30


def default_chunks(n_tokens: int, vocab: int, device: torch.device) -> tuple[int, int]:
    """(chunk_tokens, chunk_vocab) for ``n_tokens`` x ``vocab`` on ``device`` (module docstring).

    A pure function of its arguments (only ``device.type`` matters): the summation order, and so the
    result bits, never depend on how much memory happens to be free.
    """
    chunk_tokens = max(1, min(n_tokens, 4096))
    budget = CUDA_TILE_BUDGET if torch.device(device).type == "cuda" else CPU_TILE_BUDGET
    per_column = 3 * 4 * chunk_tokens  # three float32 tiles
    chunk_vocab = max(256, (budget // per_column) // 256 * 256)
    return chunk_tokens, min(vocab, chunk_vocab)


def fused_linear_logprobs(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    token_ids: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    return_entropy: bool = False,
    ignore_index: int = -100,
    chunk_tokens: int | None = None,
    chunk_vocab: int | None = None,
):
    """Log-probs (and entropy) of ``token_ids`` under ``softmax((hidden @ weight.T + bias) / temperature)``
    without materialising the logits (module docstring for the algorithm and memory).

    Args:
        hidden: [..., H] float32 / bfloat16 / float16 (e.g. a model's last hidden state, [B, T, H]).
        weight: [V, H] the output projection (``lm_head.weight``; tied embeddings work the same), same
            dtype and device as ``hidden``.
        token_ids: int [...] = ``hidden.shape[:-1]``; ids in [0, V) or ``ignore_index``.
        bias: optional [V] (GPT-2 style heads have none; some do).
        temperature: positive; the logits are divided by it.
        return_entropy: also return the entropy of each row.
        ignore_index: positions with this id give log-prob 0, entropy 0 and no gradient.
        chunk_tokens, chunk_vocab: tile sizes; default :func:`default_chunks`.

    Returns:
        float32 log-probs of shape ``token_ids.shape``, or ``(logp, entropy)`` with ``return_entropy``.
        Gradients flow to ``hidden``, ``weight`` and ``bias``.

    Source: the online logsumexp of Milakov & Gimelshein (arXiv 1805.02867), chunked over tokens and
    vocabulary as in Liger-Kernel's fused linear cross entropy (arXiv 2410.10989).
    """
    C.check_tensor("hidden", hidden, dtypes=(torch.float32, torch.bfloat16, torch.float16))
    C.check_tensor("weight", weight, dtypes=(hidden.dtype,), ndim=2)
    C.check_tensor("token_ids", token_ids, dtypes=C.INT_DTYPES)
    if hidden.dim() < 1 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"weight: expected [V, {hidden.shape[-1]}] (hidden is {tuple(hidden.shape)}), "
                         f"got {tuple(weight.shape)}")  # fmt: skip
    V = weight.shape[0]
    if V < 1:
        raise ValueError(f"weight: expected V >= 1 rows, got shape {tuple(weight.shape)}")
    C.check_shape("token_ids", token_ids, hidden.shape[:-1], "hidden.shape[:-1]")
    if bias is not None:
        C.check_tensor("bias", bias, dtypes=(hidden.dtype,), ndim=1)
        C.check_shape("bias", bias, (V,), "[V] like weight's rows")
    C.check_same_device(hidden=hidden, weight=weight, token_ids=token_ids, bias=bias)
    if not (isinstance(temperature, (int, float)) and temperature > 0 and temperature != float("inf")):
        raise ValueError(f"temperature: expected a positive finite number, got {temperature!r}")
    for name, value in (("chunk_tokens", chunk_tokens), ("chunk_vocab", chunk_vocab)):
        if value is not None:
            C.check_positive(name, value)
    h = hidden.reshape(-1, hidden.shape[-1])
    # 0 = the default, resolved inside the op from the shapes (default_chunks)
    logp, entropy, _, _ = torch.ops.rlvr_fast.fused_linear_logprobs(
        h, weight, bias, token_ids.reshape(-1), float(temperature), bool(return_entropy), int(ignore_index),
        int(chunk_tokens or 0), int(chunk_vocab or 0),
    )  # fmt: skip
    shape = token_ids.shape
    return (logp.view(shape), entropy.view(shape)) if return_entropy else logp.view(shape)


def fused_linear_policy_loss(
    hidden: torch.Tensor,
    weight: torch.Tensor,
    token_ids: torch.Tensor,
    old_logp: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    *,
    bias: torch.Tensor | None = None,
    temperature: float = 1.0,
    chunk_tokens: int | None = None,
    chunk_vocab: int | None = None,
    entropy_coef: float = 0.0,
    **loss_options,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """The clipped policy loss (:func:`~rlvr_fast.ops.policy_loss`) straight from hidden states.

    Args:
        hidden: [B, T, H] hidden states that predict ``token_ids`` (position t predicts token t).
        weight, bias, temperature, chunk_tokens, chunk_vocab: as :func:`fused_linear_logprobs`.
        token_ids: int [B, T] the sampled response tokens.
        old_logp, advantages, response_mask: as :func:`~rlvr_fast.ops.policy_loss` ([B, T]; advantages
            [B, T] or [B]).
        entropy_coef: entropy bonus weight; the entropy is computed in the same pass when non-zero.
        **loss_options: ``ref_logp``, ``clip_low``, ``clip_high``, ``dual_clip``, ``kl_type``, ``kl_coef``,
            ``kl_clamp``, ``log_ratio_clamp``, ``agg``, ``norm_const`` of :func:`~rlvr_fast.ops.policy_loss`.

    Returns:
        ``(loss, metrics)`` as :func:`~rlvr_fast.ops.policy_loss_from_logits` (with ``metrics["logp"]``, the
        detached [B, T] log-probs, and ``metrics["entropy_tokens"]`` when computed); gradients reach
        hidden, weight and bias.
        Masked positions still get a log-prob (their loss weight is 0); use ``response_mask``, not
        ``ignore_index``, to exclude tokens.
    """
    out = fused_linear_logprobs(hidden, weight, token_ids, bias=bias, temperature=temperature,
                                return_entropy=entropy_coef != 0, chunk_tokens=chunk_tokens, chunk_vocab=chunk_vocab)  # fmt: skip
    logp, entropy = out if entropy_coef != 0 else (out, None)
    try:
        loss_options.update(entropy=entropy, entropy_coef=entropy_coef)
        loss, metrics = policy_loss(logp, old_logp, advantages, response_mask, **loss_options)
    except ValueError as e:  # the log-probs are computed here: name the argument they come from
        name, _, rest = str(e).partition(": ")
        if name not in ("logp", "entropy"):
            raise
        raise ValueError(f"hidden: {rest} (the {name} computed from hidden, weight and bias)") from None
    metrics["logp"] = logp.detach()
    if entropy is not None:
        metrics["entropy_tokens"] = entropy.detach()
    return loss, metrics


# ----------------------------------------------------------------------------------------------
# The chunked algorithm: one driver, per-tile steps in torch (CPU, reference) or Triton (CUDA)
# ----------------------------------------------------------------------------------------------


def _tile(h: torch.Tensor, w: torch.Tensor, b: torch.Tensor | None) -> torch.Tensor:
    """Raw logits of one tile, h [n, H] @ w [v, H]^T (+ b [v]), in the inputs' dtype (one cuBLAS call)."""
    return torch.addmm(b, h, w.t()) if b is not None else h @ w.t()


def _stats_torch(z, ids, r, s, t, picked, v0, temperature, entropy):
    """Torch twin of ``kernels.fused_linear.tile_stats``: update (r, s, t, picked) in place from tile z."""
    x = z.float()
    if temperature != 1.0:
        x = x / temperature
    v = x.shape[1]
    m = torch.where(s > 0, r, -float("inf"))
    m_new = torch.maximum(m, x.amax(1))
    r_new = torch.where(m_new == -float("inf"), 0.0, m_new)
    alpha = torch.exp(r - r_new)
    d = x - r_new[:, None]
    e = torch.exp(d)
    if entropy:
        t.copy_((t + s * (r - r_new)) * alpha + (e * torch.where(e > 0, d, 0.0)).sum(1))
    s.copy_(s * alpha + e.sum(1))
    r.copy_(r_new)
    local = ids.long() - v0
    inside = (local >= 0) & (local < v)
    got = x.gather(1, local.clamp(0, v - 1)[:, None])[:, 0]
    picked.copy_(torch.where(inside, got, picked))


def _grad_torch(z, dz, ids, g, ge, lse, mean, v0, temperature):
    """Torch twin of ``kernels.fused_linear.tile_grad``: d(logits) of tile z into dz."""
    x = z.float()
    if temperature != 1.0:
        x = x / temperature
    v = x.shape[1]
    p = torch.exp(x - lse[:, None])
    d = p * (-g[:, None])
    if ge is not None:
        d += p * torch.where(p > 0, mean[:, None] - x, 0.0) * ge[:, None]  # a -inf logit has p = 0
    local = ids.long() - v0
    inside = (local >= 0) & (local < v)
    d.scatter_add_(1, local.clamp(0, v - 1)[:, None], (g * inside)[:, None])
    live = (g != 0) if ge is None else (g != 0) | (ge != 0)
    d = torch.where(live[:, None], d, 0.0)  # rows without gradient: exactly 0 (their logits may overflow)
    if temperature != 1.0:
        d /= temperature
    dz.copy_(d)


class _TileSteps(NamedTuple):
    """The per-tile steps of the chunked passes (signatures: the torch twins above)."""

    stats: Callable
    grad: Callable


_TORCH_STEPS = _TileSteps(stats=_stats_torch, grad=_grad_torch)


def _tile_steps(device: torch.device) -> _TileSteps:
    """The Triton kernels when the dispatch picks them, else the torch twins."""
    if select_backend("fused_linear_logprobs", device) == "triton":
        from ..kernels.fused_linear import tile_grad, tile_stats

        return _TileSteps(stats=tile_stats, grad=tile_grad)
    return _TORCH_STEPS


def fused_linear_logprobs_ref(
    hidden, weight, bias, token_ids, temperature, return_entropy, ignore_index, chunk_tokens, chunk_vocab
):
    """Chunked forward: hidden [N, H], weight [V, H], bias [V] | None, token_ids [N] ->
    ``(logp, entropy, lse, mean_z)`` float32 [N] each (entropy and mean_z empty unless asked).
    Tiles go through the torch twins; :func:`_fused_forward` with the Triton steps is the CUDA path."""
    return _fused_forward(hidden, weight, bias, token_ids, temperature, return_entropy, ignore_index,
                          chunk_tokens, chunk_vocab, _TORCH_STEPS)  # fmt: skip


def _fused_forward(hidden, weight, bias, token_ids, temperature, return_entropy, ignore_index, chunk_tokens,
                   chunk_vocab, steps: _TileSteps):  # fmt: skip
    N, V = hidden.shape[0], weight.shape[0]
    f32 = dict(dtype=torch.float32, device=hidden.device)
    r, s = torch.zeros(N, **f32), torch.zeros(N, **f32)
    t = torch.zeros(N, **f32)
    picked = torch.full((N,), float("nan"), **f32)
    ids = token_ids.contiguous()
    for v0 in range(0, V, chunk_vocab):
        v1 = min(V, v0 + chunk_vocab)
        w, b = weight[v0:v1], bias[v0:v1] if bias is not None else None
        for n0 in range(0, N, chunk_tokens):
            n1 = min(N, n0 + chunk_tokens)
            rows = slice(n0, n1)
            tile = _tile(hidden[rows], w, b)
            steps.stats(tile, ids[rows], r[rows], s[rows], t[rows], picked[rows], v0, temperature, return_entropy)
    log_s = s.log()
    lse = r + log_s
    keep = ids != ignore_index
    logp = torch.where(keep, picked - lse, 0.0)
    if not return_entropy:  # two distinct empties: a custom op's outputs may not alias
        return logp, torch.zeros(0, **f32), lse, torch.zeros(0, **f32)
    mean_z = r + t / s
    entropy = torch.where(keep, log_s - t / s, 0.0)
    return logp, entropy, lse, mean_z


def fused_linear_logprobs_backward_ref(
    grad_logp, grad_entropy, hidden, weight, bias, token_ids, lse, mean_z, temperature, ignore_index,
    chunk_tokens, chunk_vocab,
):  # fmt: skip
    """Chunked backward: ``(d_hidden [N, H], d_weight [V, H], d_bias [V] | None)`` in the inputs' dtypes.
    grad_entropy may be empty (no entropy requested). Tiles go through the torch twins."""
    return _fused_backward(grad_logp, grad_entropy, hidden, weight, bias, token_ids, lse, mean_z, temperature,
                           ignore_index, chunk_tokens, chunk_vocab, _TORCH_STEPS)  # fmt: skip


def _fused_backward(grad_logp, grad_entropy, hidden, weight, bias, token_ids, lse, mean_z, temperature,
                    ignore_index, chunk_tokens, chunk_vocab, steps: _TileSteps):  # fmt: skip
    N, V = hidden.shape[0], weight.shape[0]
    ids = token_ids.contiguous()
    # rows that are ignored or get no upstream gradient (masked by a loss) contribute exactly 0 whatever
    # their hidden state holds: selected, never multiplied (0 * NaN = NaN, also inside the matmuls)
    g, ge = grad_logp.float(), grad_entropy.float() if grad_entropy.numel() else None
    active = (ids != ignore_index) & ((g != 0) if ge is None else ((g != 0) | (ge != 0)))
    g = torch.where(active, g, 0.0).contiguous()
    ge = torch.where(active, ge, 0.0).contiguous() if ge is not None else None
    lse = torch.where(active, lse, 0.0)
    mean_z = torch.where(active, mean_z, 0.0) if ge is not None else mean_z
    d_hidden = torch.zeros(hidden.shape, dtype=torch.float32, device=hidden.device)
    d_weight = torch.empty_like(weight)
    d_bias = torch.empty_like(bias) if bias is not None else None
    for v0 in range(0, V, chunk_vocab):
        v1 = min(V, v0 + chunk_vocab)
        w, b = weight[v0:v1], bias[v0:v1] if bias is not None else None
        dw = torch.zeros(w.shape, dtype=torch.float32, device=w.device)
        db = torch.zeros(v1 - v0, dtype=torch.float32, device=w.device) if bias is not None else None
        for n0 in range(0, N, chunk_tokens):
            n1 = min(N, n0 + chunk_tokens)
            rows = slice(n0, n1)
            h = torch.where(active[rows, None], hidden[rows], 0.0)
            # d(logits) in the inputs' dtype, as an unfused lm_head backward rounds it
            dz = torch.empty(n1 - n0, v1 - v0, dtype=h.dtype, device=h.device)
            steps.grad(_tile(h, w, b), dz, ids[rows], g[rows], ge[rows] if ge is not None else None, lse[rows],
                       mean_z[rows] if ge is not None else None, v0, temperature)  # fmt: skip
            d_hidden[rows] += (dz @ w).float()
            dw += (dz.t() @ h).float()
            if db is not None:
                db += dz.float().sum(0)
        d_weight[v0:v1] = dw
        if d_bias is not None:
            d_bias[v0:v1] = db
    return d_hidden.to(hidden.dtype), d_weight, d_bias


# ----------------------------------------------------------------------------------------------
# Custom ops
# ----------------------------------------------------------------------------------------------


@torch.library.custom_op("rlvr_fast::fused_linear_logprobs", mutates_args=())
def _fused_linear_logprobs_op(
    hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, token_ids: torch.Tensor,
    temperature: float, return_entropy: bool, ignore_index: int, chunk_tokens: int, chunk_vocab: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    C.check_ids_in_range("token_ids", token_ids, weight.shape[0], ignore_index)
    chunk_tokens, chunk_vocab = _chunks(hidden, weight, chunk_tokens, chunk_vocab)
    with torch.no_grad():
        return _fused_forward(hidden, weight, bias, token_ids, temperature, return_entropy, ignore_index,
                              chunk_tokens, chunk_vocab, _tile_steps(hidden.device))  # fmt: skip


def _chunks(hidden, weight, chunk_tokens: int, chunk_vocab: int) -> tuple[int, int]:
    dt, dv = default_chunks(hidden.shape[0], weight.shape[0], hidden.device)
    return chunk_tokens or dt, chunk_vocab or dv


@_fused_linear_logprobs_op.register_fake
def _(hidden, weight, bias, token_ids, temperature, return_entropy, ignore_index, chunk_tokens, chunk_vocab):
    n = hidden.shape[0]
    f = dict(dtype=torch.float32, device=hidden.device)
    e = n if return_entropy else 0
    return hidden.new_empty(n, **f), hidden.new_empty(e, **f), hidden.new_empty(n, **f), hidden.new_empty(e, **f)


@torch.library.custom_op("rlvr_fast::fused_linear_logprobs_backward", mutates_args=())
def _fused_linear_backward_op(
    grad_logp: torch.Tensor, grad_entropy: torch.Tensor, hidden: torch.Tensor, weight: torch.Tensor,
    bias: torch.Tensor | None, token_ids: torch.Tensor, lse: torch.Tensor, mean_z: torch.Tensor, temperature: float,
    ignore_index: int, chunk_tokens: int, chunk_vocab: int,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    chunk_tokens, chunk_vocab = _chunks(hidden, weight, chunk_tokens, chunk_vocab)
    with torch.no_grad():
        steps = _tile_steps(hidden.device)
        dh, dw, db = _fused_backward(grad_logp, grad_entropy, hidden, weight, bias, token_ids, lse, mean_z,
                                     temperature, ignore_index, chunk_tokens, chunk_vocab, steps)  # fmt: skip
    return dh, dw, db if db is not None else weight.new_empty(0)


@_fused_linear_backward_op.register_fake
def _(grad_logp, grad_entropy, hidden, weight, bias, token_ids, lse, mean_z, temperature, ignore_index,
      chunk_tokens, chunk_vocab):  # fmt: skip
    return torch.empty_like(hidden), torch.empty_like(weight), weight.new_empty(bias.shape[0] if bias is not None else 0)


def _setup_context(ctx, inputs, output):
    hidden, weight, bias, token_ids, temperature, _ret_ent, ignore_index, chunk_tokens, chunk_vocab = inputs
    _, _, lse, mean_z = output
    ctx.save_for_backward(hidden, weight, bias, token_ids, lse, mean_z)
    ctx.temperature, ctx.ignore_index = temperature, ignore_index
    ctx.chunk_tokens, ctx.chunk_vocab = chunk_tokens, chunk_vocab


def _backward(ctx, grad_logp, grad_entropy, _grad_lse, _grad_mean_z):
    hidden, weight, bias, token_ids, lse, mean_z = ctx.saved_tensors
    if grad_logp is None:
        grad_logp = torch.zeros_like(lse)
    if grad_entropy is None or mean_z.numel() == 0:
        grad_entropy = lse.new_empty(0)
    dh, dw, db = torch.ops.rlvr_fast.fused_linear_logprobs_backward(
        grad_logp.contiguous(),
        grad_entropy.contiguous(),
        hidden,
        weight,
        bias,
        token_ids,
        lse,
        mean_z,
        temperature=ctx.temperature,
        ignore_index=ctx.ignore_index,
        chunk_tokens=ctx.chunk_tokens,
        chunk_vocab=ctx.chunk_vocab,
    )
    return dh, dw, (db if bias is not None else None), None, None, None, None, None, None


_fused_linear_logprobs_op.register_autograd(_backward, setup_context=_setup_context)
