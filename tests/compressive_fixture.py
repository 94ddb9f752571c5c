"""Deterministic weights and clip shared by ``test_compressive_tokenizer.py`` and the script that ran
RLVR-World's own ``CompressiveVQModelFSQ`` (diffusers 0.27, commit e1b8b6f) on them to write
``tests/data/compressive_parity.pt`` (``docs/frame_tokenizers.md``, "compressive tokenizer parity").

Weights are a function of each key's name and shape only, so the fixture stores no weights: codes and
every 8th pixel of the decoded frames."""

from __future__ import annotations

import math
import zlib

import torch

# A 4-block config at RT-1 frame size (their detokenize hard-codes the 32x40 / 8x10 grids)
CONFIG = {
    "_class_name": "CompressiveVQModelFSQ",
    "in_channels": 3,
    "out_channels": 3,
    "down_block_types": ["DownEncoderBlock2D"] * 4,
    "up_block_types": ["UpDecoderBlock2D"] * 4,
    "block_out_channels": [32, 32, 32, 64],
    "layers_per_block": 1,
    "act_fn": "silu",
    "latent_channels": 8,
    "norm_num_groups": 32,
    "mid_block_add_attention": False,
    "vq_fsq_levels": 12,
    "dyn_fsq_levels": 12,
    "context_length": 1,
    "resolution": 256,
    "max_att_resolution": 32,
}


def deterministic_state_dict(shapes: dict[str, tuple[int, ...]]) -> dict[str, torch.Tensor]:
    """float64 tensors drawn from a generator seeded by each key's CRC32: fan-in-scaled weights, norm
    scales near 1, small biases and position embeddings (non-zero, unlike their zero init)."""
    out = {}
    for key, shape in shapes.items():
        g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
        x = torch.randn(shape, generator=g, dtype=torch.float64)
        if "norm" in key and key.endswith("weight"):
            x = 1.0 + 0.1 * x
        elif "pos_emb" in key or len(shape) == 1:
            x = 0.1 * x
        else:
            x = x / math.sqrt(math.prod(shape[1:]))
        out[key] = x
    return out


def deterministic_clip() -> torch.Tensor:
    """float64 [1, 3, 3, 256, 320] in [0, 1]: a smooth gradient plus noise (context frame, two future frames)."""
    g = torch.Generator().manual_seed(0)
    y = torch.linspace(0, 1, 256, dtype=torch.float64)[:, None]
    x = torch.linspace(0, 1, 320, dtype=torch.float64)[None, :]
    base = torch.stack([y * x, y.expand(256, 320), x.expand(256, 320)])[None, None] * 0.7
    return (base + 0.3 * torch.rand(1, 3, 3, 256, 320, generator=g, dtype=torch.float64)).clamp(0, 1)
