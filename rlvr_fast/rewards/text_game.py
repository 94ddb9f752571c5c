"""Text-game (ByteSized32 / GPT-simulator) state-prediction rewards, as RLVR-World computes them.

Source: RLVR-World ``lang_wm/verl/verl/utils/reward_score/text_game.py`` (``compute_score_``,
``recover_game_state_from_partial``, ``evaluate``, ``get_state_diff_detail_v2``, ``compare_dict``;
github.com/thuml/RLVR-World commit e1b8b6f), used for ``data_source == "llm_simulator"``. Values match
its ``compute_score`` on every completion, quirks included: the answer is extracted, rewritten and
parsed as there, with the same libraries (json-repair, dirtyjson; ``rewards/_answer.py``).

A state is ``{"game_state": [object, ..., score]}``; the model answers with a diff
``{"modified": [objects], "removed": [uuids], "score": {...}}`` that :func:`apply_diff` applies to the
current state. ``task = 0.09 * item_acc + 0.01 * score_acc + 0.2 * exact + property_term`` (1.3 for a
perfect answer); ``binary = exact``. Scoring steps, the quirks reproduced and the departures:
docs/rewards.md.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ._answer import parse_answer

if TYPE_CHECKING:
    from ..task import Example

# Weights of RLVR-World's task-specific reward (compute_score_).
W_ITEM, W_SCORE, W_EXACT = 0.09, 0.01, 0.2

METRIC_NAMES = ("exact", "task", "item_acc", "score_acc", "property_acc", "parsed")

_SAME, _CHANGED, _DROPPED, _ADDED = 1, 0, 2, 3  # RLVR-World's per-property state codes


# ---------------------------------------------------------------------------------------------------
# Value comparison (RLVR-World's rules)


def _differs(a: Any, b: Any) -> bool:
    """RLVR-World's property comparison: list/tuple pairs in order, dict pairs key by key, else !=."""
    if type(a) in (list, tuple) and type(b) in (list, tuple):
        return list(a) != list(b)
    if type(a) is dict and type(b) is dict:
        return not _dicts_equal(a, b)
    return a != b


def _dicts_equal(d1: dict, d2: dict) -> bool:
    """RLVR-World's ``compare_dict``."""
    if len(d1) != len(d2):
        return False
    for key in d1:
        if key not in d2 or _differs(d1[key], d2[key]):
            return False
    return True


def _index(elements: Any) -> tuple[dict, Any]:
    """{uuid: object} and the score element of a game_state list (RLVR-World's
    ``make_state_for_comprison``). Elements are tested with ``in`` whatever their type, as there."""
    objects: dict = {}
    score: Any = {}
    for el in elements:
        if "uuid" in el:
            objects[el["uuid"]] = el
        elif "score" in el:
            score = el
    return objects, score


def _property_codes(objs_1: dict, objs_2: dict) -> list[tuple[Any, Any, int]]:
    """(uuid, key, code) for every property of the objects in both maps, in RLVR-World's order
    (``get_state_diff_detail_v2``'s ``modified`` list): keys of the first object (_SAME / _CHANGED /
    _DROPPED when the second lacks it), then keys only the second has (_ADDED), then ``contains``
    compared order-free. Raises on malformed objects, as there."""
    out: list[tuple[Any, Any, int]] = []
    for uuid, o1 in objs_1.items():
        if uuid not in objs_2:
            continue
        o2 = objs_2[uuid]
        p1, p2 = o1["properties"], o2["properties"]
        for key in p1:
            if key not in p2:
                out.append((uuid, key, _DROPPED))
            else:
                out.append((uuid, key, _CHANGED if _differs(p1[key], p2[key]) else _SAME))
        for key in p2:
            if key not in p1:
                out.append((uuid, key, _ADDED))
        same = sorted(o1.get("contains", [])) == sorted(o2.get("contains", []))
        out.append((uuid, "contains", _SAME if same else _CHANGED))
    return out


# ---------------------------------------------------------------------------------------------------
# States and diffs


def _check_state(state: Any, name: str) -> tuple[list, dict]:
    """Validate a game state; return (objects, score object)."""
    elements = state.get("game_state") if isinstance(state, dict) else None
    if not isinstance(elements, list) or not elements:
        got = type(state).__name__ if elements is None else f"game_state of type {type(elements).__name__}"
        raise ValueError(f"{name}: expected {{'game_state': [object, ..., score]}} (non-empty), got {got}")
    *objects, score = elements
    if not isinstance(score, dict) or "uuid" in score or "score" not in score:
        raise ValueError(f"{name}: the last game_state element must be the score object, got {score!r:.80}")
    for i, obj in enumerate(objects):
        where = f"{name}: game_state[{i}]"
        if not isinstance(obj, dict):
            raise ValueError(f"{where}: expected an object dict, got {type(obj).__name__}")
        for field, kind in (("uuid", None), ("name", None), ("properties", dict), ("contains", list)):
            if field not in obj:
                raise ValueError(f"{where}: missing field {field!r}")
            if kind is not None and not isinstance(obj[field], kind):
                raise ValueError(f"{where}: {field!r} must be a {kind.__name__}, got {type(obj[field]).__name__}")
        try:
            hash(obj["uuid"])
            sorted(obj["contains"])  # RLVR-World sorts it; mixed types would fail every comparison
        except TypeError as e:
            raise ValueError(f"{where}: uuid must be hashable and contains sortable ({e})") from None
    return objects, score


def _recover(objects: Sequence, score: dict, diff: Any) -> list:
    """RLVR-World's ``recover_game_state_from_partial(..., has_score=True)`` on validated current
    ``objects`` / ``score``; ``diff`` may be anything the answer parsed to."""
    is_dict = isinstance(diff, dict)
    replace: dict = {}
    if is_dict and "modified" in diff:
        modified = diff["modified"]
        try:
            entries = iter(modified)
        except TypeError:  # not iterable (a number, null): nothing is modified
            entries = iter(())
        for entry in entries:
            try:
                replace[entry["uuid"]] = entry  # later entries win
            except (KeyError, TypeError):  # not a dict, no uuid, unhashable uuid: skipped
                pass
    has_removed = is_dict and "removed" in diff
    out = []
    for obj in objects:
        uuid = obj["uuid"]
        if has_removed and _is_removed(uuid, diff["removed"]):
            continue
        out.append(replace.get(uuid, obj))  # a modified entry with a new uuid is never added
    if is_dict and "score" in diff:
        new_score = diff["score"]
        try:
            out.append(new_score if len(new_score) > 0 else score)
        except TypeError:  # no len(): keep the current score
            out.append(score)
    return out


def _is_removed(uuid: Any, removed: Any) -> bool:
    # RLVR-World: `uuid in removed`, else `uuid == removed`; an `in` that raises (removed is a number,
    # or a string with an int uuid) removes nothing, == included.
    try:
        if uuid in removed:
            return True
    except TypeError:
        return False
    return uuid == removed


def apply_diff(state: Mapping[str, Any], diff: Mapping[str, Any], *, add_new: bool = False) -> dict:
    """The next state a diff describes, with RLVR-World's recovery rules (what the reward scores).

    Walks the current objects in order: an object whose uuid is in ``diff["removed"]`` (or equals it)
    is dropped; one whose uuid has a ``diff["modified"]`` entry is replaced by that entry whole (the
    last entry for a uuid wins); malformed entries are ignored. The score object comes last:
    ``diff["score"]`` if it has a length > 0, else the current one; with no ``"score"`` key at all
    the result has **no** score object.

    RLVR-World never appends ``modified`` entries with a uuid the current state lacks, so created
    objects vanish (default ``add_new=False``, the reward's view). ``add_new=True`` appends them, in
    diff order, before the score: then ``apply_diff(s, state_diff(s, t), add_new=True)`` equals
    ``t`` up to the order of the objects.

    Args:
        state: the current state, ``{"game_state": [object, ..., score]}``.
        diff: ``{"modified": [object], "removed": [uuid], "score": {...}}``; missing keys allowed.
        add_new: also add objects with new uuids.
    Returns:
        a new ``{"game_state": [...]}`` dict sharing object dicts with the inputs.
    """
    objects, score = _check_state(state, "state")
    if not isinstance(diff, Mapping):
        raise ValueError(f"diff: expected a dict with 'modified' / 'removed' / 'score', got {type(diff).__name__}")
    diff = dict(diff)
    elements = _recover(objects, score, diff)
    if add_new:
        known = {obj["uuid"] for obj in objects}
        new: dict = {}
        entries = diff.get("modified")
        for entry in entries if isinstance(entries, list) else ():
            if isinstance(entry, dict) and "uuid" in entry:
                try:
                    if entry["uuid"] not in known:
                        new[entry["uuid"]] = entry
                except TypeError:  # unhashable uuid, skipped as the recovery does
                    pass
        at = len(elements) - 1 if "score" in diff else len(elements)
        elements[at:at] = list(new.values())
    return {"game_state": elements}


def state_diff(curr_state: Mapping[str, Any], next_state: Mapping[str, Any]) -> dict:
    """The gold diff from ``curr_state`` to ``next_state``, the MLE answer.

    ``modified``: the objects of ``next_state`` (in its order) that are new or not ``==`` to the
    current object with their uuid (so a reordered ``contains`` counts as a change; harmless, the
    entry is the exact next object). ``removed``: uuids of current objects missing from
    ``next_state``. ``score``: the next score object, always in full (GPT-simulator writes ``{}``
    when the score is unchanged; the reward accepts both).

    Created objects are listed in ``modified``, as the task prompt asks, but RLVR-World's reward
    drops them (see :func:`apply_diff`): ``apply_diff(curr, state_diff(curr, next))`` equals
    ``next`` without its created objects, in the current state's order, and with ``add_new=True``
    equals ``next`` up to order.

    Args:
        curr_state, next_state: ``{"game_state": [object, ..., score]}``.
    Returns:
        ``{"modified": [object], "removed": [uuid], "score": {...}}`` (objects shared, not copied).
    """
    curr_objects, _ = _check_state(curr_state, "curr_state")
    next_objects, next_score = _check_state(next_state, "next_state")
    curr_by_uuid = {obj["uuid"]: obj for obj in curr_objects}
    next_uuids = {obj["uuid"] for obj in next_objects}
    modified = [obj for obj in next_objects if curr_by_uuid.get(obj["uuid"], None) != obj]
    removed = list(dict.fromkeys(obj["uuid"] for obj in curr_objects if obj["uuid"] not in next_uuids))
    return {"modified": modified, "removed": removed, "score": next_score}


# ---------------------------------------------------------------------------------------------------
# The reward


@dataclass(frozen=True)
class _Gold:
    """Everything about one example that does not depend on the completion (parsed once)."""

    objects: tuple  # current objects, in order
    score: dict  # current score object
    gold_objects: dict  # {uuid: gold object}
    gold_score: Any
    gold_stat: dict  # {uuid: {key: 1 changed, 0 same, "na" created}} (RLVR-World's gold_stat)


@functools.lru_cache(maxsize=4096)
def _prepare(data_state: str, ground_truth: str) -> _Gold:
    # Keyed on the two strings: rewards run n times per prompt on the same Example strings, whose
    # hashes Python caches, so a hit costs two dict probes. The cached objects are never mutated.
    states = []
    for name, text in (("data_state", data_state), ("ground_truth", ground_truth)):
        try:
            states.append(json.loads(text))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{name}: not a JSON game state ({e})") from None
    curr, gold = states
    objects, score = _check_state(curr, "data_state")
    _check_state(gold, "ground_truth")
    curr_objects, _ = _index(curr["game_state"])
    gold_objects, gold_score = _index(gold["game_state"])
    stat: dict = {}
    for uuid, obj in gold_objects.items():  # created objects: every property "na" (never counted)
        if uuid not in curr_objects:
            stat[uuid] = {"contains": 1, **dict.fromkeys(obj["properties"], "na")}
    for uuid, key, code in _property_codes(curr_objects, gold_objects):
        stat.setdefault(uuid, {})[key] = 0 if code == _SAME else 1
    return _Gold(tuple(objects), score, gold_objects, gold_score, stat)


def _gold_for(example: Example) -> _Gold:
    extra = example.extra
    where = f" ({example.source})" if example.source else ""
    if "data_state" not in extra:
        raise ValueError(f"example.extra: missing 'data_state'{where}")
    try:
        return _prepare(extra["data_state"], example.ground_truth)
    except ValueError as e:
        raise ValueError(f"example{where}: {e}") from None
    except TypeError:  # unhashable (not a str): lru_cache cannot key it
        raise ValueError(
            f"example{where}: data_state and ground_truth must be JSON strings, got "
            f"{type(extra['data_state']).__name__} and {type(example.ground_truth).__name__}"
        ) from None


def _evaluate(gold: _Gold, predicted: list) -> tuple[int, int, int, int, dict] | None:
    """RLVR-World's ``evaluate(..., evaluate_score=True)``: (errors, score errors, correct, correct
    score, predicted objects), or None where it returns -1 (any exception)."""
    try:
        pred_objects, pred_score = _index(predicted)
        errors = correct = 0
        for uuid, g in gold.gold_objects.items():
            if uuid not in pred_objects:
                errors += 1
                continue
            p = pred_objects[uuid]
            if "properties" not in p:
                errors += 1
            else:
                gp, pp = g["properties"], p["properties"]
                for key in gp:
                    if key not in pp or _differs(gp[key], pp[key]):
                        errors += 1
                    else:
                        correct += 1
            if "contains" not in p or sorted(g["contains"]) != sorted(p["contains"]):
                errors += 1
            else:
                correct += 1
        score_errors = score_correct = 0
        for key in gold.gold_score:
            if key not in pred_score or gold.gold_score[key] != pred_score[key]:
                score_errors += 1
            else:
                score_correct += 1
    except Exception:  # noqa: BLE001 - RLVR-World's bare except: any malformed prediction is -1
        return None
    return errors, score_errors, correct, score_correct, pred_objects


def metrics(completion: str, example: Example) -> dict[str, float]:
    """All text-game metrics of one completion (the rules: docs/rewards.md).

    Args:
        completion: the model's text.
        example: an :class:`~rlvr_fast.worlds.Example` with ``ground_truth`` (JSON of the gold next
            state) and ``extra["data_state"]`` (JSON of the current state).
    Returns:
        dict of floats:

        - ``exact``: 1.0 iff item and score accuracy are both 1 (RLVR-World's binary reward);
        - ``task``: RLVR-World's task-specific reward,
          ``0.09 item_acc + 0.01 score_acc + 0.2 exact [+ property term]``, in [0, 1.3];
        - ``item_acc``, ``score_acc``: RLVR-World's two accuracies;
        - ``property_acc``: the property term where RLVR-World has one; where it has none (no
          changed pair could be compared, e.g. the gold changed nothing) it is ``exact``, so a
          perfect answer always gets 1 and a wrong one 0. Pairs with hallucinated keys are skipped;
        - ``parsed``: 1.0 iff the answer parsed to a dict with ``"modified"`` and ``"removed"``.

        Where RLVR-World returns 0 (unparsable answer, missing keys, malformed prediction) every
        value but ``parsed`` is 0.
    Raises:
        TypeError: ``completion`` is not a str.
        ValueError: the example is malformed (missing or invalid ``data_state`` / ``ground_truth``).
    """
    if not isinstance(completion, str):
        raise TypeError(f"completion: expected str, got {type(completion).__name__}")
    gold = _gold_for(example)
    out = dict.fromkeys(METRIC_NAMES, 0.0)
    try:
        pred = parse_answer(completion)
        if not ("modified" in pred and "removed" in pred):
            return out
    except Exception:  # noqa: BLE001 - RLVR-World's bare except: a parser error, or `in` on a number, is 0
        return out
    out["parsed"] = float(isinstance(pred, dict))
    try:
        predicted = _recover(gold.objects, gold.score, pred)
    except Exception:  # noqa: BLE001 - RLVR-World: any exception scores 0
        return out
    counts = _evaluate(gold, predicted)
    if counts is None:
        return out
    errors, score_errors, correct, score_correct, pred_objects = counts
    if correct + errors == 0 or score_correct + score_errors == 0:
        return out  # RLVR-World divides by zero here (a gold state without objects) and scores 0
    item_acc = correct / (correct + errors)
    score_acc = score_correct / (score_correct + score_errors)
    exact = int(item_acc == 1 and score_acc == 1)

    hits: list[bool] = []
    hallucinated = False
    try:
        pairs = _property_codes(gold.gold_objects, pred_objects)
    except Exception:  # noqa: BLE001 - RLVR-World: the property term is then left out
        pairs = []
    for uuid, key, code in pairs:
        stat = gold.gold_stat[uuid]
        if key not in stat:
            hallucinated = True  # RLVR-World: KeyError -> task reward 0
            continue
        if stat[key] == 1:
            hits.append(code == _SAME)
    # same operation order as RLVR-World, so the float sums match bit for bit
    task = item_acc * W_ITEM + score_acc * W_SCORE + W_EXACT * exact
    if hits:
        task = task + sum(hits) / len(hits)
    out.update(
        exact=float(exact),
        task=0.0 if hallucinated else float(task),
        item_acc=float(item_acc),
        score_acc=float(score_acc),
        property_acc=sum(hits) / len(hits) if hits else float(exact),
    )
    return out


def binary_reward(completion: str, example: Example) -> float:
    """RLVR-World's binary text-game reward: ``metrics(completion, example)["exact"]``."""
    return metrics(completion, example)["exact"]


def task_reward(completion: str, example: Example) -> float:
    """RLVR-World's task-specific text-game reward: ``metrics(completion, example)["task"]``
    (0.09 item acc + 0.01 score acc + 0.2 exact + changed-property accuracy; at most 1.3)."""
    return metrics(completion, example)["task"]


__all__ = ["apply_diff", "binary_reward", "metrics", "state_diff", "task_reward"]
