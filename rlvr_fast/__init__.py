"""rlvr_fast: fast RL-from-verifiable-rewards post-training of world models.

``import rlvr_fast`` is lean: it registers the custom ops but initialises no CUDA context and imports
neither Triton nor the compiled extension (those load on first use).
"""

__version__ = "0.1.0"

from . import ops  # noqa: E402  (registers torch.ops.rlvr_fast.*)
from .ops import *  # noqa: E402,F401,F403

__all__ = ["ops", "__version__", *ops.__all__]
