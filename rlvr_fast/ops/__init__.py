"""Public functional API: every op is a torch.library custom op (``torch.ops.rlvr_fast.*``).

Importing this package registers the ops; it never initialises CUDA and never imports Triton
(kernels are imported on first use by the Triton backend).
"""

from .advantages import group_advantages, group_advantages_ref
from .fused_linear import fused_linear_logprobs, fused_linear_policy_loss
from .fused_linear_ops import default_chunks, fused_linear_logprobs_backward_ref, fused_linear_logprobs_ref
from .logprobs import token_logprobs, token_logprobs_backward_ref, token_logprobs_ref
from .pixel_metrics import (
    aggregate_frames,
    pixel_metrics,
    pixel_metrics_ref,
    scatter_sequence_reward,
    scatter_sequence_reward_ref,
)
from .policy_loss import AGG_MODES, KL_TYPES, policy_loss, policy_loss_from_logits
from .policy_loss_reference import METRICS, policy_loss_backward_ref, policy_loss_ref
from .video import (
    Quantizer,
    VideoTokenLayout,
    codes_to_latents,
    codes_to_latents_ref,
    fsq_codebook,
    unpack_video_tokens,
    unpack_video_tokens_ref,
)

__all__ = [
    "group_advantages",
    "group_advantages_ref",
    "token_logprobs",
    "token_logprobs_ref",
    "token_logprobs_backward_ref",
    "fused_linear_logprobs",
    "fused_linear_logprobs_ref",
    "fused_linear_logprobs_backward_ref",
    "fused_linear_policy_loss",
    "default_chunks",
    "policy_loss",
    "policy_loss_ref",
    "policy_loss_backward_ref",
    "policy_loss_from_logits",
    "AGG_MODES",
    "KL_TYPES",
    "METRICS",
    "VideoTokenLayout",
    "Quantizer",
    "fsq_codebook",
    "unpack_video_tokens",
    "unpack_video_tokens_ref",
    "codes_to_latents",
    "codes_to_latents_ref",
    "pixel_metrics",
    "pixel_metrics_ref",
    "aggregate_frames",
    "scatter_sequence_reward",
    "scatter_sequence_reward_ref",
]
