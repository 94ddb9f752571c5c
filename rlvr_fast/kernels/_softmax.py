"""The online softmax step shared by the row kernels (``logprobs``, ``fused_linear``)."""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def online_softmax_step(x, m, r, s, t, ENTROPY: tl.constexpr):
    """Fold one block ``x`` (float32, -inf on padded lanes) into the running statistics.

    m: running max; r: the shift actually used (m, or 0 while every logit so far is -inf);
    s = sum exp(x - r); t = sum exp(x - r) (x - r), relative to r so the entropy never cancels against
    the max (``e * d`` -> 0 where ``e`` underflows: padded lanes and -inf logits hold d = -inf).
    Returns the updated ``(m, r, s, t)``; ``t`` is left as is unless ``ENTROPY``.
    """
    m_new = tl.maximum(m, tl.max(x, axis=0))
    r_new = tl.where(m_new == -float("inf"), 0.0, m_new)
    alpha = tl.exp(r - r_new)
    d = x - r_new
    e = tl.exp(d)
    if ENTROPY:
        t = (t + s * (r - r_new)) * alpha + tl.sum(e * tl.where(e > 0, d, 0.0), axis=0)
    s = s * alpha + tl.sum(e, axis=0)
    return m_new, r_new, s, t
