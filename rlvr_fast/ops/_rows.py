"""Row addressing for ``[..., V]`` tensors whose leading dims may not collapse (e.g. ``logits[:, :-1]``).

Kernels and the chunked reference address row ``r`` of the flattened leading dims as
``(r // inner) * stride_outer + (r % inner) * stride_inner``, which covers every view with at most two
non-collapsible leading dims without a copy.
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class RowLayout(NamedTuple):
    outer: int
    inner: int
    stride_outer: int
    stride_inner: int


def row_layout(x: torch.Tensor) -> RowLayout | None:
    """Describe the rows of ``x`` [..., V] (last dim unit-stride) as ``outer x inner``; None if impossible."""
    if x.stride(-1) != 1 and x.shape[-1] != 1:
        return None
    merged: list[tuple[int, int]] = []  # (size, stride) outermost first, size-1 dims dropped
    for size, stride in zip(x.shape[:-1], x.stride()[:-1]):
        if size == 1:
            continue
        if merged and merged[-1][1] == stride * size:
            merged[-1] = (merged[-1][0] * size, stride)
        else:
            merged.append((size, stride))
    if not merged:
        return RowLayout(1, 1, 0, 0)  # no leading dims, or all of size 1: a single row
    if len(merged) == 1:
        return RowLayout(1, merged[0][0], 0, merged[0][1])
    if len(merged) == 2:
        return RowLayout(merged[0][0], merged[1][0], merged[0][1], merged[1][1])
    return None


def as_rows(x: torch.Tensor) -> tuple[torch.Tensor, RowLayout]:
    """Return ``x`` (copied only if its layout cannot be addressed) and its row layout."""
    layout = row_layout(x)
    if layout is None:
        x = x.contiguous()
        layout = row_layout(x)
    return x, layout


def row_blocks(layout: RowLayout, max_rows: int):
    """Yield ``(first_row, n)`` blocks of at most ``max_rows`` rows that never cross an outer index."""
    for o in range(layout.outer):
        for start in range(0, layout.inner, max_rows):
            yield o * layout.inner + start, min(max_rows, layout.inner - start)


def rows_view(x: torch.Tensor, layout: RowLayout, first: int, n: int) -> torch.Tensor:
    """View [n, V] of rows ``first .. first + n - 1`` of ``x``; they must share one outer index."""
    o, i = divmod(first, layout.inner)
    assert i + n <= layout.inner, "row block crosses an outer index"
    offset = x.storage_offset() + o * layout.stride_outer + i * layout.stride_inner
    return x.as_strided((n, x.shape[-1]), (layout.stride_inner, 1), offset)
