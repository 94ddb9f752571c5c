"""What the ops and their Triton kernels agree on: integer modes and output columns.

Plain Python with no Triton import, outside ``rlvr_fast.kernels``, so ``rlvr_fast.ops`` reads it at
import time while the kernels still load only when the Triton backend is first chosen. The kernels
turn these values into the ``tl.constexpr`` globals their jit functions compare with.
"""

from __future__ import annotations

from enum import IntEnum


class Partial(IntEnum):
    """Columns of the per-row partial sums [B, len(Partial)] that the policy-loss forward writes (torch
    and Triton alike): sums over the row's valid tokens, except the ratio's min and max."""

    LOSS = 0
    COUNT = 1
    PG_LOSS = 2
    CLIPFRAC = 3
    CLIPFRAC_LOWER = 4
    APPROX_KL = 5
    KL = 6
    RATIO = 7
    RATIO_MIN = 8
    RATIO_MAX = 9
    ENTROPY = 10


# The policy loss's KL estimators (formulas: rlvr_fast.ops.policy_loss) and the kernels' ``KL`` mode for
# each; mode 0 is no KL term.
KL_IDS = {"k1": 1, "k2": 2, "k3": 3, "abs": 4}


class Baseline(IntEnum):
    """How an advantage estimator turns its group's statistics into advantages (the kernel's mode)."""

    MEAN_STD = 0  # (r - mean) / (std + eps)
    MEAN = 1  # r - mean
    LEAVE_ONE_OUT = 2  # r - mean of the others = (r - mean) * n / (n - 1)
