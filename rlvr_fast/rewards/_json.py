"""Answer extraction and tolerant JSON parsing for rewards that read JSON out of model text.

:func:`extract_answer` reproduces how RLVR-World cuts the answer out of a completion
(``lang_wm/verl/verl/utils/reward_score/text_game.py``, ``compute_score_``), in linear time.

:func:`loads_tolerant` is our own replacement for RLVR-World's ``dirtyjson.loads(repair_json(...))``:
strict :func:`json.loads` first, then a single-pass, non-recursive repairing parser. It never
``eval``-s anything and needs no third-party package. It is not a bit-for-bit copy of ``json_repair``:
on text that is not JSON the two may recover different values (see the function's docstring).
"""

from __future__ import annotations

import json
import re
from typing import Any

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


# ---------------------------------------------------------------------------------------------------
# Tolerant JSON

_WS = re.compile(r"\s*")
_DQ_RUN = re.compile(r'[^"\\]*')
_SQ_RUN = re.compile(r"[^'\\]*")
# a bare token: anything up to whitespace or JSON punctuation (numbers, literals, unquoted keys)
_BARE = re.compile(r"""[^\s{}\[\],:"']+""")
_INT = re.compile(r"[-+]?\d+")
# no nested quantifiers, so fullmatch backtracks at most linearly
_FLOAT = re.compile(r"[-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?")
_HEX = frozenset("0123456789abcdefABCDEF")
_ESCAPES = {'"': '"', "\\": "\\", "/": "/", "b": "\b", "f": "\f", "n": "\n", "r": "\r", "t": "\t", "'": "'"}
_LITERALS = {
    "true": True,
    "false": False,
    "null": None,
    "True": True,
    "False": False,
    "None": None,  # Python spellings, as RLVR-World maps them
    "NaN": float("nan"),
    "Infinity": float("inf"),
    "-Infinity": float("-inf"),  # what json.loads takes
}

DEFAULT_MAX_CHARS = 1_000_000
DEFAULT_MAX_DEPTH = 512


def loads_tolerant(text: str, max_chars: int = DEFAULT_MAX_CHARS, *, max_depth: int = DEFAULT_MAX_DEPTH) -> Any:
    """Parse JSON, repairing the common ways model output breaks it.

    Strict :func:`json.loads` is tried first. If it fails, one left-to-right pass repairs:

    - leading text before the first ``{`` or ``[`` and trailing text after the value that closes it
      (so ``Sure! {...} Hope this helps`` and ```` ```json {...} ``` ```` parse);
    - Python literals ``True`` / ``False`` / ``None`` outside strings (also ``NaN`` / ``Infinity``);
    - single-quoted strings (``\\'`` is an escape there), unquoted keys and bare words (taken as
      strings), raw control characters inside strings, unknown escapes (kept verbatim);
    - trailing and doubled commas, missing commas and colons;
    - truncation: an unterminated string is closed, a key left without a value is dropped, and every
      open bracket is closed; a closing bracket that matches an outer container closes the inner ones
      too, and one that matches nothing is skipped.

    Without any ``{`` / ``[`` the stripped text must be one scalar (number, literal or quoted string).

    Difference from RLVR-World, which runs ``answer.replace("True", "true")`` (and the same for
    ``False`` / ``None``) on the raw text before ``json_repair``: we map those words only outside
    strings, so a string value such as ``"None"`` or a name such as ``"Trueblood"`` is kept as
    written (RLVR-World would lower-case it and then mismatch the gold state).

    Cost is linear in ``len(text)``: every regex is a single character-class run, the repair pass
    keeps an explicit stack instead of recursing, and closing brackets pop amortised O(1).

    Args:
        text: str to parse.
        max_chars: longer texts raise ValueError before any parsing (bounds the time and memory a
            runaway generation can cost).
        max_depth: containers nested deeper raise ValueError, on both passes (deep values would
            break the recursive comparisons and ``repr`` of any consumer).
    Returns:
        the parsed value (dict, list, str, int, float, bool or None).
    Raises:
        TypeError: ``text`` is not a str.
        ValueError: too long, too deep, or nothing JSON-like to recover.
    """
    if not isinstance(text, str):
        raise TypeError(f"text: expected str, got {type(text).__name__}")
    _check_positive_int("max_chars", max_chars)
    _check_positive_int("max_depth", max_depth)
    if len(text) > max_chars:
        raise ValueError(f"text: {len(text)} characters, more than max_chars={max_chars}")
    try:
        value = json.loads(text)
    except (ValueError, RecursionError):  # RecursionError: the C scanner recurses per nesting level
        return _repair(text, max_depth)
    if _deeper_than(value, max_depth):
        raise ValueError(f"text: JSON nested deeper than max_depth={max_depth}")
    return value


def _check_positive_int(name: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")


def _deeper_than(value: Any, max_depth: int) -> bool:
    """True if ``value`` has containers nested more than ``max_depth`` deep (iterative)."""
    todo = [(value, 1)]
    while todo:
        v, depth = todo.pop()
        if isinstance(v, dict):
            children = v.values()
        elif isinstance(v, list):
            children = v
        else:
            continue
        if depth > max_depth:
            return True
        todo.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return False


_NO_KEY = object()


class _Frame:
    """One open container of the repair pass; ``key`` is the object key awaiting its value."""

    __slots__ = ("key", "value")

    def __init__(self, value: dict | list):
        self.value = value
        self.key: Any = _NO_KEY


def _repair(text: str, max_depth: int) -> Any:
    n = len(text)
    starts = [i for i in (text.find("{"), text.find("[")) if i >= 0]
    if not starts:
        return _lone_scalar(text)
    pos = min(starts)
    stack: list[_Frame] = []
    open_dicts = 0  # how many dicts / lists are open, so a closer that matches nothing costs O(1)
    open_lists = 0

    def finish(value: Any) -> bool:
        """Hand a completed value to the enclosing container; True when it is the root."""
        if not stack:
            return True
        top = stack[-1]
        if isinstance(top.value, list):
            top.value.append(value)
        elif top.key is _NO_KEY:
            if not isinstance(value, str):
                raise ValueError(f"text: a {type(value).__name__} cannot be an object key")
            top.key = value
        else:
            top.value[top.key] = value
            top.key = _NO_KEY
        return False

    def close() -> Any:
        nonlocal open_dicts, open_lists
        frame = stack.pop()
        if isinstance(frame.value, dict):
            open_dicts -= 1
        else:
            open_lists -= 1
        return frame.value  # a key still waiting for its value is dropped

    while True:
        pos = _WS.match(text, pos).end()
        if pos >= n:
            break
        c = text[pos]
        if c == "{" or c == "[":
            if len(stack) >= max_depth:
                raise ValueError(f"text: JSON nested deeper than max_depth={max_depth}")
            if c == "{":
                stack.append(_Frame({}))
                open_dicts += 1
            else:
                stack.append(_Frame([]))
                open_lists += 1
            pos += 1
        elif c == "}" or c == "]":
            pos += 1
            want = dict if c == "}" else list
            if (open_dicts if want is dict else open_lists) == 0:
                continue  # matches nothing open: stray, skip it
            while True:  # close inner containers left open, up to the matching one
                frame_type = type(stack[-1].value)
                value = close()
                if finish(value):
                    return value
                if frame_type is want:
                    break
        elif c == ",":
            pos += 1
            if stack and stack[-1].key is not _NO_KEY:  # {"a", "b": 1}: "a" had no value
                stack[-1].key = _NO_KEY
        elif c == ":":
            pos += 1
        elif c == '"' or c == "'":
            value, pos = _string(text, pos)
            if finish(value):
                return value
        else:
            m = _BARE.match(text, pos)
            token = m.group()
            pos = m.end()
            top = stack[-1]  # the root is a container, so one is open here
            if isinstance(top.value, dict) and top.key is _NO_KEY:
                top.key = token  # unquoted key, kept as written
            else:
                finish(_bare_value(token))
    # truncated: close whatever is still open
    value = None
    while stack:
        value = close()
        if finish(value):
            break
    return value


def _lone_scalar(text: str) -> Any:
    """Text with no container: accept exactly one scalar (quoted string, number or literal)."""
    s = text.strip()
    if not s:
        raise ValueError("text: empty, no JSON value")
    if s[0] in "\"'":
        value, end = _string(s, 0)
        if end == len(s):
            return value
        raise ValueError("text: no JSON object or array, and more than one scalar")
    m = _BARE.match(s)  # None when s starts with punctuation such as ","
    if m is not None and m.end() == len(s):
        value = _bare_value(s)
        if not isinstance(value, str):
            return value
    raise ValueError("text: no JSON value found")


def _bare_value(token: str) -> Any:
    """An unquoted token: literal, number, or else the token itself as a string."""
    if token in _LITERALS:
        return _LITERALS[token]
    if _INT.fullmatch(token):
        try:
            return int(token)
        except ValueError:  # longer than sys.get_int_max_str_digits(): json.loads refuses it too
            return float(token)
    if _FLOAT.fullmatch(token):
        return float(token)
    return token


def _string(text: str, pos: int) -> tuple[str, int]:
    """Parse the quoted string starting at ``text[pos]`` (``"`` or ``'``); return (value, end).

    An unterminated string runs to the end of the text (truncated output).
    """
    quote = text[pos]
    run = _DQ_RUN if quote == '"' else _SQ_RUN
    n = len(text)
    parts: list[str] = []
    i = pos + 1
    while True:
        m = run.match(text, i)
        parts.append(m.group())
        i = m.end()
        if i >= n:
            return "".join(parts), n
        if text[i] == quote:
            return "".join(parts), i + 1
        # a backslash
        if i + 1 >= n:
            return "".join(parts), n  # dangling backslash of a truncated string
        e = text[i + 1]
        if e in _ESCAPES:
            parts.append(_ESCAPES[e])
            i += 2
        elif e == "u":
            if i + 6 > n:
                return "".join(parts), n  # truncated \\uXX
            code = _hex4(text, i + 2)
            if code is None:
                parts.append("\\u")  # not an escape: keep it verbatim
                i += 2
                continue
            i += 6
            # a surrogate pair is one character, as json.loads decodes it
            if 0xD800 <= code < 0xDC00 and text.startswith("\\u", i) and i + 6 <= n:
                low = _hex4(text, i + 2)
                if low is not None and 0xDC00 <= low < 0xE000:
                    code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                    i += 6
            parts.append(chr(code))
        else:
            parts.append("\\" + e)  # unknown escape: keep it verbatim
            i += 2


def _hex4(text: str, at: int) -> int | None:
    digits = text[at : at + 4]
    if len(digits) == 4 and all(d in _HEX for d in digits):  # int(_, 16) would also take "+1_a"
        return int(digits, 16)
    return None


__all__ = ["ANSWER_MARKERS", "extract_answer", "loads_tolerant"]
