"""How RLVR-World reads the JSON answer out of a text-game completion, step for step.

Source: RLVR-World ``lang_wm/verl/verl/utils/reward_score/text_game.py`` (``compute_score_``;
github.com/thuml/RLVR-World commit e1b8b6f). Three steps, each reproduced exactly:

1. :func:`extract_answer`: the text after the last final-answer marker, else the last long-enough
   ```` ```json ```` block, else the whole completion (a linear scan with the regex's result);
2. :func:`rewrite_literals`: ``True`` / ``False`` / ``None`` replaced by ``true`` / ``false`` /
   ``null`` in the raw text, inside strings too (``"None"`` becomes ``"null"``);
3. ``dirtyjson.loads(json_repair.repair_json(text))`` with both libraries' defaults, the versions
   current when RLVR-World's code was published (json-repair 0.44.1, dirtyjson 1.0.8; pinned in
   constraints.txt).

:func:`parse_answer` chains them and lets the libraries' exceptions through: RLVR-World's
``compute_score`` turns any of them into a reward of 0, and so do the rewards here. The quirks this
gives (what it does to a second JSON value, a missing colon, EOS text...): docs/rewards.md.
"""

from __future__ import annotations

from typing import Any

import dirtyjson
from json_repair import repair_json

#: RLVR-World's final-answer markers, in the order it tries them: the first one present wins.
ANSWER_MARKERS = (
    "The final answer is:",
    "the final answer is:",
    "The final state is:",
    "the final state is:",
    "The final game state is:",
    "the final game state is:",
)
_FENCE_OPEN = "```json"
_FENCE = "```"
_MIN_FENCED = 10  # RLVR-World ignores a last ```json block shorter than this


def extract_answer(text: str) -> str:
    """The answer part of a completion, exactly as RLVR-World extracts it.

    Rules (RLVR-World ``compute_score_``):

    1. the first marker of :data:`ANSWER_MARKERS` (in that order) that occurs in ``text`` wins; the
       answer is the text after its *last* occurrence, ``str.strip()``-ed;
    2. otherwise the content of the last fenced block matched by ``r'```json\\s*([\\s\\S]*?)\\s*```'``
       (``re.findall``), if it is at least 10 characters long;
    3. otherwise the whole ``text``, unchanged.

    The fenced-block search is a hand-written scan with the same result as that regex (tests compare
    them), but linear: the lazy regex rescans to the end of the text from every unclosed opener.

    Args:
        text: the completion (str).
    Returns:
        str, the answer text.
    """
    if not isinstance(text, str):
        raise TypeError(f"text: expected str, got {type(text).__name__}")
    for marker in ANSWER_MARKERS:
        # rfind == split(marker)[-1]: no marker can overlap itself (none has a border), so the last
        # occurrence is also the last of split's non-overlapping ones.
        at = text.rfind(marker)
        if at >= 0:
            return text[at + len(marker) :].strip()
    block = _last_json_fence(text)
    if block is None or len(block) < _MIN_FENCED:
        return text
    return block


def _last_json_fence(text: str) -> str | None:
    """Content of the last ```json block as ``re.findall(r'```json\\s*([\\s\\S]*?)\\s*```')`` sees it.

    After an opener the regex skips whitespace greedily, then the lazy group stops at the first
    whitespace run followed by ``` (the group's own trailing whitespace is left out); findall resumes
    after that closing fence. An opener with no ``` after it ends the search: any later opener would
    itself contain ``` and have closed it.
    """
    last = None
    pos = 0
    n = len(text)
    while True:
        start = text.find(_FENCE_OPEN, pos)
        if start < 0:
            return last
        j = start + len(_FENCE_OPEN)
        while j < n and text[j].isspace():  # str.isspace and re's \s agree on str patterns
            j += 1
        close = text.find(_FENCE, j)
        if close < 0:
            return last
        last = text[j:close].rstrip()
        pos = close + len(_FENCE)


#: RLVR-World's rewriting of Python literals, applied to the raw answer text in this order.
LITERAL_REWRITES = (("True", "true"), ("False", "false"), ("None", "null"))


def rewrite_literals(text: str) -> str:
    """``text`` with every ``True`` / ``False`` / ``None`` replaced by ``true`` / ``false`` / ``null``.

    Plain substring replacement, as RLVR-World does before parsing: inside strings and words too
    (``"None"`` -> ``"null"``, ``"Trueblood"`` -> ``"trueblood"``, ``"Nonexistent"`` -> ``"nullxistent"``).
    No replacement creates another match, so the order does not matter.

    Args:
        text: str.
    Returns:
        str of the same length (each replacement has its original's length).
    """
    if not isinstance(text, str):
        raise TypeError(f"text: expected str, got {type(text).__name__}")
    for old, new in LITERAL_REWRITES:
        text = text.replace(old, new)
    return text


def parse_answer(completion: str) -> Any:
    """The value RLVR-World's ``compute_score_`` scores for ``completion``:
    ``dirtyjson.loads(repair_json(rewrite_literals(extract_answer(completion))))``.

    ``repair_json`` runs with its defaults (``json.loads`` first; on a ``JSONDecodeError`` its own
    repairing parser; the result re-serialised with ``ensure_ascii=True``), then ``dirtyjson.loads``
    reads that string. Objects come back as ``dirtyjson``'s ``AttributedDict`` (a ``dict`` subclass),
    arrays as ``AttributedList`` (a ``list`` subclass); text with nothing JSON-like in it comes back
    as ``""``, and several top-level values as a list of them.

    Args:
        completion: the model's text (str).
    Returns:
        the parsed value: dict, list, str, int, float, bool or None.
    Raises:
        TypeError: ``completion`` is not a str.
        Exception: whatever the two libraries raise (e.g. RecursionError on deep nesting); the
            rewards score any of them 0, as RLVR-World does.
    """
    return dirtyjson.loads(repair_json(rewrite_literals(extract_answer(completion))))


__all__ = ["ANSWER_MARKERS", "LITERAL_REWRITES", "extract_answer", "parse_answer", "rewrite_literals"]
