"""Token log-probabilities (and entropy) gathered from logits, with a fused backward.

Top to bottom: the public function, the chunked pure-PyTorch reference (CPU fallback and test
oracle), and the ``rlvr_fast::token_logprobs`` custom ops with their autograd formula. The Triton
kernels live in ``rlvr_fast.kernels.logprobs``.
"""

from __future__ import annotations

import math

import torch

from .. import _checks as C
from .._dispatch import use_triton
from ._rows import as_rows, row_blocks, rows_view

# The reference processes this many logits elements per block: bounded temporaries on CPU.
_REF_BLOCK_ELEMS = 1 << 21


def token_logprobs(
    logits: torch.Tensor,
    token_ids: torch.Tensor,
    *,
    temperature: float = 1.0,
    return_entropy: bool = False,
    ignore_index: int = -100,
    inplace_backward: bool = False,
    drop_last_position: bool = False,
):
    """Log-probability of each chosen token under ``softmax(logits / temperature)``, and its entropy.

    ``logp[i] = x[i, y_i] - logsumexp_j x[i, j]`` and ``H[i] = logsumexp_j x[i, j] - sum_j p[i, j] x[i, j]``
    with ``x = logits / temperature``, accumulated in float32 with an online logsumexp: the forward
    reads the logits once. Same numbers as verl's ``logprobs_from_logits`` / ``entropy_from_logits`` and
    TRL's ``selective_log_softmax`` / ``entropy_from_logits``.

    Backward (one pass that reads the logits once and writes the gradient once), from
    ``d logp_i / d x_ij = 1[j = y_i] - p_ij`` and ``d H_i / d x_ij = -p_ij (log p_ij + H_i)``::

        d logits_ij = (g_logp_i (1[j = y_i] - p_ij) - g_H_i p_ij (log p_ij + H_i)) / temperature

    Args:
        logits: [..., V] float32 / bfloat16 / float16; any strides whose last dim is unit-stride and
            whose leading dims form at most two non-collapsible runs (``logits[:, :-1]`` is read in
            place; other layouts are copied once).
        token_ids: int tensor of shape ``logits.shape[:-1]`` (one position fewer with
            ``drop_last_position``); ids in [0, V) or ``ignore_index``.
        temperature: positive; logits are divided by it (sampling temperature of the rollout).
        return_entropy: also return the entropy of each row.
        ignore_index: positions with this id give log-prob 0, entropy 0 and no gradient.
            Rows whose upstream gradients are exactly 0 (e.g. masked out by a loss) also get d(logits)
            exactly 0, even if their logits hold NaN/Inf.
        inplace_backward: write d(logits) into the logits buffer instead of a new tensor (saves one
            logits-sized allocation; the logits must not be needed afterwards; eager mode only).
        drop_last_position: ``logits`` are a causal LM's [..., T + 1, V] for ``token_ids`` [..., T]
            (position t scores token t; the last position predicts nothing). They are read as
            ``logits[..., :-1, :]`` in place and d(logits) is written once in their own layout, the last
            row 0. Prefer it to passing the view ``logits[:, :-1]``, for which autograd's slice backward
            zero-fills a [..., T + 1, V] gradient and copies this op's [..., T, V] one into it: one
            full write and one copy more (issue 20).

    Returns:
        ``logp`` float32 of shape ``token_ids.shape``, or ``(logp, entropy)`` with ``return_entropy``.
    """
    C.check_tensor("logits", logits, dtypes=(torch.float32, torch.bfloat16, torch.float16, torch.float64))
    C.check_tensor("token_ids", token_ids, dtypes=C.INT_DTYPES)
    if logits.dim() < 1 or logits.shape[-1] < 1:
        raise ValueError(f"logits: expected shape [..., V] with V >= 1, got {tuple(logits.shape)}")
    check_ids_shape(token_ids, logits, drop_last_position)
    C.check_same_device(logits=logits, token_ids=token_ids)
    _check_temperature(temperature)
    logp, entropy, _ = torch.ops.rlvr_fast.token_logprobs(
        logits, token_ids, float(temperature), bool(return_entropy), int(ignore_index), bool(inplace_backward)
    )
    return (logp, entropy) if return_entropy else logp


def is_shifted(logits: torch.Tensor, token_ids: torch.Tensor) -> bool:
    """True for causal-LM logits [..., T + 1, V] with ``token_ids`` [..., T]: position t's logits score
    token t and the last position predicts nothing (read as ``logits[..., :-1, :]``, its gradient 0)."""
    return (
        logits.dim() >= 2
        and token_ids.dim() >= 1
        and logits.shape[-2] == token_ids.shape[-1] + 1
        and logits.shape[:-2] == token_ids.shape[:-1]
    )


def check_ids_shape(token_ids: torch.Tensor, logits: torch.Tensor, drop_last_position: bool) -> None:
    """ValueError unless ``token_ids.shape`` is ``logits.shape[:-1]`` or, with ``drop_last_position``
    (causal-LM logits, :func:`is_shifted`), that with one position fewer. The custom ops tell the two
    apart by shape; the flag keeps an id tensor one position short by mistake an error."""
    if not drop_last_position:
        C.check_shape("token_ids", token_ids, logits.shape[:-1], "logits.shape[:-1]")
    elif not is_shifted(logits, token_ids):
        want = tuple(logits.shape[:-2]) + (logits.shape[-2] - 1,) if logits.dim() >= 2 else "[..., T]"
        raise ValueError(
            f"token_ids: expected shape {want} (logits [..., T + 1, V] with drop_last_position=True), "
            f"got {tuple(token_ids.shape)} for logits {tuple(logits.shape)}"
        )


def _check_temperature(temperature: float) -> None:
    if not isinstance(temperature, (int, float)) or not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature: expected a positive finite number, got {temperature!r}")


# ----------------------------------------------------------------------------------------------
# Reference
# ----------------------------------------------------------------------------------------------


def _compute_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.promote_types(dtype, torch.float32)


def _block_rows(V: int) -> int:
    return max(1, _REF_BLOCK_ELEMS // V)


def _scaled(src: torch.Tensor, temperature: float, dtype: torch.dtype, buf: torch.Tensor | None) -> torch.Tensor:
    """``src / temperature`` in ``dtype``: ``src`` itself when nothing changes, else written into ``buf``."""
    if src.dtype == dtype and temperature == 1.0:
        return src
    return torch.mul(src, 1.0 / temperature, out=buf[: src.shape[0]])


def token_logprobs_ref(
    logits: torch.Tensor, token_ids: torch.Tensor, temperature: float, return_entropy: bool, ignore_index: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Reference forward: ``(logp, entropy, lse)`` in ``promote(logits.dtype, float32)``.

    Shapes: logits [..., V], token_ids [...]; every output has ``token_ids.shape`` (``entropy`` is
    empty when not requested). Streams cache-sized blocks of rows through buffers allocated once, so
    the extra memory is O(block) and no pass over the logits allocates.
    """
    dtype = _compute_dtype(logits.dtype)
    logits, layout = as_rows(logits)
    V = logits.shape[-1]
    ids = token_ids.reshape(-1)
    n_rows = ids.shape[0]
    dev = logits.device
    logp = torch.zeros(n_rows, dtype=dtype, device=dev)
    lse = torch.zeros(n_rows, dtype=dtype, device=dev)
    ent = torch.zeros(n_rows if return_entropy else 0, dtype=dtype, device=dev)
    blk = min(_block_rows(V), max(n_rows, 1))
    need_copy = logits.dtype != dtype or temperature != 1.0
    buf_x = torch.empty(blk, V, dtype=dtype, device=dev) if need_copy else None
    buf_d = torch.empty(blk, V, dtype=dtype, device=dev)
    buf_e = torch.empty(blk, V, dtype=dtype, device=dev) if return_entropy else None
    for r0, n in row_blocks(layout, blk):
        x = _scaled(rows_view(logits, layout, r0, n), temperature, dtype, buf_x)
        rows = slice(r0, r0 + n)
        m = x.amax(-1)
        m = torch.where(torch.isinf(m), torch.zeros_like(m), m)  # rows of -inf must not give NaN
        d = torch.sub(x, m[:, None], out=buf_d[:n])
        if return_entropy:
            e = torch.exp(d, out=buf_e[:n])
            s = e.sum(-1)
            # sum_j e_j d_j (cascade-summed), with d = -inf (masked vocabulary) contributing 0 * finite = 0
            t = e.mul_(d.clamp_(min=-1e30)).sum(-1)
            ent[rows] = s.log() - t / s
        else:
            s = d.exp_().sum(-1)
        lse[rows] = m + s.log()
        tid = ids[rows]
        in_range = (tid >= 0) & (tid < V)
        picked = x.gather(1, torch.where(in_range, tid, 0)[:, None].long())[:, 0]
        # an id out of range (value checks disabled) yields NaN, like the kernel
        logp[rows] = torch.where(in_range, picked, float("nan")) - lse[rows]
    keep = ids != ignore_index
    logp = torch.where(keep, logp, 0.0)
    if return_entropy:
        ent = torch.where(keep, ent, 0.0)
    shape = token_ids.shape
    return logp.view(shape), ent.view(shape if return_entropy else (0,)), lse.view(shape)


def token_logprobs_backward_ref(
    grad_logp: torch.Tensor,
    grad_entropy: torch.Tensor | None,
    logits: torch.Tensor,
    token_ids: torch.Tensor,
    lse: torch.Tensor,
    entropy: torch.Tensor | None,
    temperature: float,
    ignore_index: int,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """Reference backward: d(logits) in ``logits.dtype`` (written into ``out`` when given).

    ``d x_ij = (g_i (1[j = y_i] - p_ij) - gH_i p_ij (log p_ij + H_i)) / temperature``.
    ``grad_entropy`` and ``entropy`` are both given or both None. ``out`` may be ``logits`` itself:
    each block is read before it is overwritten. Blocks go through reused buffers, or straight into
    ``out`` when it has the compute dtype.
    """
    dtype = _compute_dtype(logits.dtype)
    logits, layout = as_rows(logits)
    V = logits.shape[-1]
    dev = logits.device
    if out is None:
        out = torch.empty(logits.shape, dtype=logits.dtype, device=dev)
    ids = token_ids.reshape(-1)
    n_rows = ids.shape[0]
    # a row that is ignored or gets no upstream gradient (a masked token) contributes exactly 0,
    # whatever its logits hold: selected, not multiplied (0 * NaN = NaN)
    g = grad_logp.reshape(-1).to(dtype)
    active = g != 0
    if grad_entropy is not None:
        ge = grad_entropy.reshape(-1).to(dtype)
        active |= ge != 0
        ge = torch.where(active, ge / temperature, 0.0)
        H = torch.where(active, entropy.reshape(-1).to(dtype), 0.0)
    active &= ids != ignore_index
    g = torch.where(active, g / temperature, 0.0)
    if grad_entropy is not None:
        ge = torch.where(active, ge, 0.0)
    lse = torch.where(active, lse.reshape(-1).to(dtype), 0.0)
    tid_safe = torch.where((ids >= 0) & (ids < V), ids, 0).long()
    dst_all, dst_layout = as_rows(out)
    blk = min(_block_rows(V), max(n_rows, 1))
    need_copy = logits.dtype != dtype or temperature != 1.0
    buf_x = torch.empty(blk, V, dtype=dtype, device=dev) if need_copy else None
    buf_p = torch.empty(blk, V, dtype=dtype, device=dev)
    buf_w = torch.empty(blk, V, dtype=dtype, device=dev) if out.dtype != dtype else None
    for r0, n in row_blocks(layout, blk):
        x = _scaled(rows_view(logits, layout, r0, n), temperature, dtype, buf_x)
        rows = slice(r0, r0 + n)
        dst = rows_view(dst_all, dst_layout, r0, n)
        w = dst if buf_w is None else buf_w[:n]
        logp = torch.sub(x, lse[rows, None], out=w)
        p = torch.exp(logp, out=buf_p[:n])
        if grad_entropy is not None:  # w <- -gH p (log p + H) - g p
            logp.clamp_(min=-1e30).add_(H[rows, None]).mul_(p).mul_(-ge[rows, None])
            w.addcmul_(p, -g[rows, None])
        else:
            torch.mul(p, -g[rows, None], out=w)
        w.scatter_add_(1, tid_safe[rows, None], g[rows, None])
        w.masked_fill_(~active[rows, None], 0.0)
        if w is not dst:
            dst.copy_(w)
    if dst_all is not out:
        out.copy_(dst_all)
    return out


# ----------------------------------------------------------------------------------------------
# Custom ops
# ----------------------------------------------------------------------------------------------


@torch.library.custom_op("rlvr_fast::token_logprobs", mutates_args=())
def _token_logprobs_op(
    logits: torch.Tensor,
    token_ids: torch.Tensor,
    temperature: float,
    return_entropy: bool,
    ignore_index: int,
    inplace_backward: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    C.check_ids_in_range("token_ids", token_ids, logits.shape[-1], ignore_index)
    if is_shifted(logits, token_ids):
        logits = logits[..., :-1, :]  # read in place (two row runs)
    if use_triton("token_logprobs", logits):
        from ..kernels import logprobs as K

        x, layout = as_rows(logits)
        return K.logprobs_forward(x, layout, token_ids, temperature, return_entropy, ignore_index)
    logp, ent, lse = token_logprobs_ref(logits, token_ids, temperature, return_entropy, ignore_index)
    return logp.float(), ent.float(), lse.float()


@_token_logprobs_op.register_fake
def _(logits, token_ids, temperature, return_entropy, ignore_index, inplace_backward):
    logp = logits.new_empty(token_ids.shape, dtype=torch.float32)
    ent = logits.new_empty(token_ids.shape if return_entropy else (0,), dtype=torch.float32)
    return logp, ent, torch.empty_like(logp)


@torch.library.custom_op("rlvr_fast::token_logprobs_backward", mutates_args=())
def _token_logprobs_backward_op(
    grad_logp: torch.Tensor,
    grad_entropy: torch.Tensor | None,
    logits: torch.Tensor,
    token_ids: torch.Tensor,
    lse: torch.Tensor,
    entropy: torch.Tensor | None,
    temperature: float,
    ignore_index: int,
) -> torch.Tensor:
    out = torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)
    _shifted_backward_into(out, grad_logp, grad_entropy, logits, token_ids, lse, entropy, temperature, ignore_index)
    return out


def _shifted_backward_into(out, grad_logp, grad_entropy, logits, token_ids, lse, entropy, temperature, ignore_index):
    """d(logits) into ``out`` (logits' shape); for causal-LM logits the rows of the scored positions are
    written in place and the last position's row set to 0, so the parent's gradient is written exactly
    once (no [..., T, V] buffer for autograd's slice backward to zero-pad and copy)."""
    if is_shifted(logits, token_ids):
        out[..., -1, :].zero_()
        out, logits = out[..., :-1, :], logits[..., :-1, :]
    _backward_into(out, grad_logp, grad_entropy, logits, token_ids, lse, entropy, temperature, ignore_index)


@_token_logprobs_backward_op.register_fake
def _(grad_logp, grad_entropy, logits, token_ids, lse, entropy, temperature, ignore_index):
    return torch.empty(logits.shape, dtype=logits.dtype, device=logits.device)


@torch.library.custom_op("rlvr_fast::token_logprobs_backward_inplace", mutates_args=("logits",))
def _token_logprobs_backward_inplace_op(
    logits: torch.Tensor,
    grad_logp: torch.Tensor,
    grad_entropy: torch.Tensor | None,
    token_ids: torch.Tensor,
    lse: torch.Tensor,
    entropy: torch.Tensor | None,
    temperature: float,
    ignore_index: int,
) -> None:
    _shifted_backward_into(logits, grad_logp, grad_entropy, logits, token_ids, lse, entropy, temperature, ignore_index)


@_token_logprobs_backward_inplace_op.register_fake
def _(logits, grad_logp, grad_entropy, token_ids, lse, entropy, temperature, ignore_index):
    return None


def _backward_into(out, grad_logp, grad_entropy, logits, token_ids, lse, entropy, temperature, ignore_index):
    if grad_entropy is None:
        entropy = None
    if use_triton("token_logprobs_backward", logits):
        from ..kernels import logprobs as K

        x, layout = as_rows(logits)
        dst, dst_layout = as_rows(out)
        K.logprobs_backward(
            x, layout, dst, dst_layout, token_ids, grad_logp, grad_entropy, lse, entropy, temperature, ignore_index
        )
        if dst is not out:
            out.copy_(dst)
        return
    token_logprobs_backward_ref(
        grad_logp, grad_entropy, logits, token_ids, lse, entropy, temperature, ignore_index, out=out
    )


def logits_grad(
    logits, token_ids, lse, entropy, grad_logp, grad_entropy, temperature, ignore_index, inplace
) -> torch.Tensor:
    """d(logits) through the chosen backward op; shared by every op that reads logits."""
    if inplace:
        torch.ops.rlvr_fast.token_logprobs_backward_inplace(
            logits, grad_logp, grad_entropy, token_ids, lse, entropy, temperature, ignore_index
        )
        return logits
    return torch.ops.rlvr_fast.token_logprobs_backward(
        grad_logp, grad_entropy, logits, token_ids, lse, entropy, temperature, ignore_index
    )


def _setup_context(ctx, inputs, output):
    logits, token_ids, temperature, return_entropy, ignore_index, inplace_backward = inputs
    _, entropy, lse = output
    ctx.save_for_backward(logits, token_ids, lse, entropy if return_entropy else None)
    ctx.temperature, ctx.ignore_index, ctx.inplace = temperature, ignore_index, inplace_backward
    ctx.mark_non_differentiable(lse)
    ctx.set_materialize_grads(False)


def _backward(ctx, grad_logp, grad_entropy, _grad_lse):
    logits, token_ids, lse, entropy = ctx.saved_tensors
    if grad_logp is None and grad_entropy is None:
        return None, None, None, None, None, None
    if grad_logp is None:
        grad_logp = torch.zeros_like(lse)
    if entropy is None or grad_entropy is None:
        grad_entropy, entropy = None, None
    dlogits = logits_grad(
        logits, token_ids, lse, entropy, grad_logp, grad_entropy, ctx.temperature, ctx.ignore_index, ctx.inplace
    )
    return dlogits, None, None, None, None, None


_token_logprobs_op.register_autograd(_backward, setup_context=_setup_context)
