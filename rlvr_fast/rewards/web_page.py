"""Web-page state prediction reward: item F1 over the three sections of a predicted page diff.

Source: RLVR-World, ``lang_wm/verl/verl/utils/reward_score/web_agent.py`` (``parse_magento_log``,
``hungarian_match``, ``compute_score``; github.com/thuml/RLVR-World commit e1b8b6f), used for
``data_source == "web_agent"`` (WebArena world model, thuml/webarena-world-model-cot).

A prediction (and the gold ``reward_model.ground_truth``) is text with ``New items:``, ``Deleted
items:`` and ``Updated items:`` sections; each section's lines are a set of items, and the reward is
the item F1 micro-averaged over the three sections. Parsing rules, the scoring formula and the
departures: docs/rewards.md.
"""

from __future__ import annotations

import math
from collections import Counter
from typing import TYPE_CHECKING, Callable, Collection

if TYPE_CHECKING:
    from ..task import Example

SECTIONS: tuple[str, ...] = ("New items", "Deleted items", "Updated items")
_HEADERS = tuple((name + ":", name) for name in SECTIONS)

# RLVR-World's cost for two different items (identical items cost 0).
MISMATCH_COST = 10000.0
# hungarian_count refuses cost matrices larger than this many cells (a 2000 x 2000 solve).
MAX_CELLS = 4_000_000

CostFn = Callable[[str, str], float]


def exact_cost(gold_item: str, pred_item: str) -> float:
    """RLVR-World's item cost: 0 for identical strings, :data:`MISMATCH_COST` otherwise."""
    return 0.0 if gold_item == pred_item else MISMATCH_COST


def _parse(text: str, max_chars: int | None = None, max_lines: int | None = None) -> tuple[dict[str, set[str]], bool]:
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    sections: dict[str, set[str]] = {name: set() for name in SECTIONS}
    current: set[str] | None = None
    found = False
    if max_chars is not None:
        text = text[:max_chars]
    if max_lines is None:
        lines = text.split("\n")
    else:  # maxsplit keeps a huge text from being split in full; the unsplit remainder is dropped
        lines = text.split("\n", max_lines)[:max_lines]
    for raw in lines:
        line = raw.strip()
        if not line:
            continue
        for header, name in _HEADERS:
            if line.startswith(header):
                current = sections[name]
                found = True
                break
        else:
            if current is not None:
                current.add(line)
    return sections, found


def parse_sections(text: str, *, max_chars: int | None = None, max_lines: int | None = None) -> dict[str, set[str]]:
    """Split ``text`` into ``{"New items": {...}, "Deleted items": {...}, "Updated items": {...}}``.

    RLVR-World's ``parse_magento_log`` rules (docs/rewards.md); all three keys are always
    present. The whole text is read, as there (linear time); ``max_chars`` / ``max_lines`` (positive
    ints, default None: no cap) read only the first ``max_chars`` characters and, of those, the first
    ``max_lines`` lines. The rewards never cap.
    """
    for name, value in (("max_chars", max_chars), ("max_lines", max_lines)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be a positive int or None, got {value!r}")
    return _parse(text, max_chars, max_lines)[0]


def _check_strictness(strictness: float) -> float:
    if isinstance(strictness, bool) or not isinstance(strictness, (int, float)):
        raise TypeError(f"strictness must be a real number, got {type(strictness).__name__}")
    if math.isnan(strictness):
        raise ValueError("strictness must not be NaN")
    return float(strictness)


def match_count(
    gold: Collection[str], pred: Collection[str], *, strictness: float = 0.0, cost: CostFn | None = None
) -> int:
    """Number of gold/pred pairs matched by RLVR-World's ``hungarian_match(gold, pred, p=strictness)``.

    With ``cost=None`` (RLVR-World's 0 / 10000 cost) no assignment problem is solved, because the
    answer is known in closed form. Let k be the size of the (multiset) intersection of ``gold`` and
    ``pred``, n and m their sizes:

    - the zero-cost cells pair equal items. For sets each row and each column holds at most one zero,
      so the zeros already form a matching of size k; for multisets the zeros form one complete
      bipartite block per shared value, whose largest matching is min(count_gold, count_pred), and
      these sum to k. Either way no assignment contains more than k zeros and some contains exactly k
      (extend the k zeros to min(n, m) pairs with any free rows and columns).
    - a full assignment has min(n, m) pairs and costs 10000 * (min(n, m) - #zeros), so every optimal
      one contains exactly k zeros and min(n, m) - k cells of cost 10000.
    - counting pairs with cost <= p therefore gives 0 for p < 0, k for 0 <= p < 10000 and
      min(n, m) for p >= 10000 (and 0 when either side is empty).

    For sets (what :func:`parse_sections` returns) k is ``len(gold & pred)``. With a ``cost``
    function the scipy solve runs (:func:`hungarian_count`).
    """
    p = _check_strictness(strictness)
    if cost is not None:
        return hungarian_count(gold, pred, strictness=p, cost=cost)
    if not gold or not pred or p < 0.0:
        return 0
    if p >= MISMATCH_COST:
        return min(len(gold), len(pred))
    if isinstance(gold, (set, frozenset)) and isinstance(pred, (set, frozenset)):
        return len(gold & pred)
    return sum((Counter(gold) & Counter(pred)).values())


def hungarian_count(
    gold: Collection[str], pred: Collection[str], *, strictness: float = 0.0, cost: CostFn = exact_cost
) -> int:
    """RLVR-World's ``hungarian_match``: solve the gold x pred assignment (scipy
    ``linear_sum_assignment``) under ``cost`` and count assigned pairs with cost <= ``strictness``.

    The general path, for a fuzzy ``cost``. Items are sorted first so ties break the same way in
    every process. Raises ValueError if the matrix would exceed :data:`MAX_CELLS` cells.
    """
    p = _check_strictness(strictness)
    a, b = sorted(gold), sorted(pred)
    if not a or not b:
        return 0
    if len(a) * len(b) > MAX_CELLS:
        raise ValueError(
            f"cost matrix {len(a)} x {len(b)} exceeds MAX_CELLS={MAX_CELLS}; "
            "use match_count(cost=None) for exact matching"
        )
    import numpy as np
    from scipy.optimize import linear_sum_assignment

    matrix = np.array([[cost(x, y) for y in b] for x in a], dtype=np.float64)
    rows, cols = linear_sum_assignment(matrix)
    return int(np.count_nonzero(matrix[rows, cols] <= p))


def _f1(
    pred: dict[str, set[str]], gold: dict[str, set[str]], strictness: float, cost: CostFn | None
) -> dict[str, float]:
    matched = n_pred = n_gold = 0
    for name in SECTIONS:
        matched += match_count(gold[name], pred[name], strictness=strictness, cost=cost)
        n_gold += len(gold[name])
        n_pred += len(pred[name])
    precision = matched / n_pred if n_pred > 0 else 0.0
    recall = matched / n_gold if n_gold > 0 else 0.0
    # Same expression as RLVR-World (not 2*matched/(n_pred+n_gold)) so rewards agree to the last bit.
    f1 = 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0
    return {
        "precision": float(precision),
        "recall": float(recall),
        "f1": float(f1),
        "matched": matched,
        "n_pred": n_pred,
        "n_gold": n_gold,
    }


def item_f1(pred_text: str, gold_text: str, *, strictness: float = 0.0, cost: CostFn | None = None) -> dict:
    """Item precision / recall / F1 of ``pred_text`` against ``gold_text`` (RLVR-World
    ``compute_score``; formula in docs/rewards.md).

    Returns ``{"precision", "recall", "f1"}`` as floats and ``{"matched", "n_pred", "n_gold"}`` as
    ints, summed over the three sections. ``cost`` (default: exact match) plugs a fuzzy item cost
    into the Hungarian matching; pairs count as matched when their cost is <= ``strictness``.
    """
    if not isinstance(pred_text, str):
        raise TypeError(f"pred_text must be a str, got {type(pred_text).__name__}")
    if not isinstance(gold_text, str):
        raise TypeError(f"gold_text must be a str, got {type(gold_text).__name__}")
    p = _check_strictness(strictness)
    return _f1(parse_sections(pred_text), parse_sections(gold_text), p, cost)


def _gold(example: Example) -> str:
    gold = example.ground_truth
    if not isinstance(gold, str):
        where = f" ({example.source})" if example.source else ""
        raise TypeError(f"example.ground_truth must be a str{where}, got {type(gold).__name__}")
    return gold


def metrics(completion: str, example: Example) -> dict[str, float]:
    """Eval metrics for one completion: ``f1``, ``precision``, ``recall`` (see :func:`item_f1`) and
    ``parsed`` (1.0 if the completion contains at least one section header, else 0.0)."""
    if not isinstance(completion, str):
        raise TypeError(f"completion must be a str, got {type(completion).__name__}")
    pred, parsed = _parse(completion)
    scores = _f1(pred, parse_sections(_gold(example)), 0.0, None)
    return {
        "f1": scores["f1"],
        "precision": scores["precision"],
        "recall": scores["recall"],
        "parsed": 1.0 if parsed else 0.0,
    }


def f1_reward(completion: str, example: Example) -> float:
    """Registered as ``"web_page/f1"``: RLVR-World's web-agent reward, item F1 in [0, 1] with exact
    item matching (strictness 0)."""
    if not isinstance(completion, str):
        raise TypeError(f"completion must be a str, got {type(completion).__name__}")
    return item_f1(completion, _gold(example))["f1"]


__all__ = [
    "MAX_CELLS",
    "MISMATCH_COST",
    "SECTIONS",
    "exact_cost",
    "f1_reward",
    "hungarian_count",
    "item_f1",
    "match_count",
    "metrics",
    "parse_sections",
]
