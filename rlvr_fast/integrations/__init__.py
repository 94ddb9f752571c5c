"""Glue between the fused ops and other libraries' models and trainers (imported on use).

``rlvr_fast.integrations.hf``: Hugging Face causal LMs, response log-probs and the policy loss through
the backbone and :func:`~rlvr_fast.ops.fused_linear_logprobs`, without the [B, R, V] logits.
"""
