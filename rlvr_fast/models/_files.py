"""Reading weight files from local paths, shared by the LPIPS network and the video tokenizers.

Nothing here downloads: a missing file is an error that says what the file should be and where it
normally comes from; a file whose keys or shapes differ from the expected schema is refused with every
problem listed at once (never a silent partial load).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch


def read_state_dict(path, help_text: str) -> dict[str, torch.Tensor]:
    """A flat ``{key: tensor}`` from a .pth/.pt (torch.load, weights only) or .safetensors file.

    A missing file raises FileNotFoundError, one that cannot be read (truncated, empty, garbage) or
    that is not a flat dict of tensors raises ValueError; both name the file and what it should be.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"no file at {str(p)!r}: expected {help_text}")
    try:
        if p.suffix == ".safetensors":
            from safetensors.torch import load_file

            sd = load_file(str(p), device="cpu")
        else:
            sd = torch.load(p, map_location="cpu", weights_only=True)
    except (FileNotFoundError, PermissionError, IsADirectoryError):
        raise
    except Exception as e:  # noqa: BLE001 - truncated, empty or garbage files raise many types
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ValueError(f"{str(p)!r}: cannot read the file ({reason}): expected {help_text}") from None
    if not isinstance(sd, Mapping) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise ValueError(f"{str(p)!r}: expected a flat state dict of tensors ({help_text}), got {type(sd).__name__}")
    return dict(sd)


def check_against_schema(
    sd: Mapping[str, torch.Tensor],
    schema: Mapping[str, tuple[int, ...]],
    path,
    help_text: str,
    ignore_prefixes: tuple[str, ...] = (),
) -> None:
    """Raise ValueError listing every missing key, unexpected key and wrong shape at once."""
    missing = [k for k in schema if k not in sd]
    unexpected = [k for k in sd if k not in schema and not k.startswith(ignore_prefixes)]
    wrong = [
        f"{k}: expected {schema[k]}, got {tuple(sd[k].shape)}"
        for k in schema
        if k in sd and tuple(sd[k].shape) != schema[k]
    ]
    not_float = [f"{k}: {sd[k].dtype}" for k in schema if k in sd and not sd[k].is_floating_point()]
    problems = []
    if missing:
        problems.append(f"missing keys {missing}")
    if unexpected:
        problems.append(f"unexpected keys {unexpected}")
    if wrong:
        problems.append(f"wrong shapes [{'; '.join(wrong)}]")
    if not_float:
        problems.append(f"non-float tensors [{'; '.join(not_float)}]")
    if problems:
        raise ValueError(f"{str(path)!r} is not {help_text}: " + ", ".join(problems))
