"""Text-game reward (RLVR-World's ByteSized32 state prediction): answer extraction, RLVR-World's parse
(literal rewriting, json-repair, dirtyjson), hand-computed rewards with RLVR-World's quirks, and the data
loader on files in the real format."""

from __future__ import annotations

import copy
import json
import re
import sys

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from rlvr_fast.rewards import get_reward
from rlvr_fast.rewards import text_game as tg
from rlvr_fast.rewards._answer import ANSWER_MARKERS, extract_answer, parse_answer, rewrite_literals
from rlvr_fast.task import Example, Task
from rlvr_fast.worlds.text_game import load_text_game, text_game_task

# ---------------------------------------------------------------------------------------------------
# extract_answer


def test_extract_answer_marker_after_last_occurrence_stripped():
    assert extract_answer('x The final answer is: A The final answer is:  {"b": 1} \n') == '{"b": 1}'


def test_extract_answer_marker_order_beats_position():
    # "The final answer is:" is tried first even though "the final state is:" comes later in the text
    text = "The final answer is: A. Then the final state is: B"
    assert extract_answer(text) == "A. Then the final state is: B"
    assert extract_answer("the final game state is: {1}") == "{1}"


def test_extract_answer_last_json_fence():
    text = 'think ```json\n{"a": 11111111}\n``` more ```json\n  {"b": 22222222}  \n``` tail'
    assert extract_answer(text) == '{"b": 22222222}'


def test_extract_answer_short_fence_or_nothing_is_whole_text():
    short = 'x ```json\n{"a":1}\n``` '  # 7 characters inside: ignored
    assert extract_answer(short) == short
    assert extract_answer("  plain text  ") == "  plain text  "  # not stripped
    with pytest.raises(TypeError, match="text"):
        extract_answer(None)


_FENCE_RE = re.compile(r"```json\s*([\s\S]*?)\s*```", re.DOTALL)  # RLVR-World's pattern, as the oracle


def _regex_extract(text: str) -> str:
    matches = _FENCE_RE.findall(text)
    return text if not matches or len(matches[-1]) < 10 else matches[-1]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.sampled_from(["```json", "```", "`", "json", " ", "\n", "\xa0", "\x1c", "abcde", "{}"]),
        max_size=14,
    )
)
def test_extract_answer_fence_scan_matches_regex(tokens):
    text = "".join(tokens)
    assert extract_answer(text) == _regex_extract(text)


def test_extract_answer_many_unclosed_openers_is_linear():
    # the lazy regex rescans the rest of the text from every opener (quadratic); the scan does not
    text = "```json" * 150_000
    assert extract_answer(text) == text


# ---------------------------------------------------------------------------------------------------
# parse_answer: RLVR-World's dirtyjson.loads(json_repair.repair_json(...)) after the literal rewriting
#
# These cases pinned the hand-written parser (rewards/_json.py) until issue 16 replaced it with
# RLVR-World's libraries. Where RLVR-World parses differently, the expectation is now RLVR-World's value
# (json-repair 0.44.1, dirtyjson 1.0.8), computed from its code path and checked by running the two
# libraries; the comment says what the old parser returned.

PARSES = [
    ('{"a": 1, "b": [1, 2,],}', {"a": 1, "b": [1, 2]}),
    ("{'a': True, 'b': False, 'c': None}", {"a": True, "b": False, "c": None}),
    ("{modified: [], removed: [3,]}", {"modified": [], "removed": [3]}),
    # RLVR-World's value: json-repair reads on after the first value and returns every further
    # top-level value of another shape with it, as a list (was {"a": 1})
    ('Sure! Here it is: {"a": 1} Hope this helps {"b": 2}', [{"a": 1}, {"b": 2}]),
    ('```json\n{"a": [1, 2]}\n```', {"a": [1, 2]}),
    ('{"a": [1, 2', {"a": [1, 2]}),
    ('{"a": {"b": "trunc', {"a": {"b": "trunc"}}),
    # RLVR-World's value: a key cut before its value gets "" (was dropped: {"a": 1})
    ('{"a": 1, "b": ', {"a": 1, "b": ""}),
    ('{"a": 1, "b', {"a": 1}),
    # RLVR-World's value: the dangling backslash of a cut string is kept (was "x")
    ('{"a": "x\\', {"a": "x\\"}),
    # RLVR-World's value: json-repair's own string parser decodes only \" \\ \n \t \r \b, so a cut
    # \u escape stays as written (was "")
    ('{"a": "\\u00', {"a": "\\u00"}),
    ("[1 2 3]", [1, 2, 3]),
    ('{"a": 1 "b": 2}', {"a": 1, "b": 2}),
    # RLVR-World's value: the quote before the comma is read as part of the key (was {"b": 2})
    ('{"a", "b": 2}', {'a", "b': 2}),
    ('{"a": [1, 2}', {"a": [1, 2]}),  # } closes the list and the object
    ('{"a": {"b": 1]]}', {"a": {"b": 1}}),  # stray ] skipped
    ('{"a": "line\nbreak\ttab"}', {"a": "line\nbreak\ttab"}),
    ('{"a": .5, "b": 1., "c": +1, "d": -2e3}', {"a": 0.5, "b": 1.0, "c": 1, "d": -2000.0}),
    ("{'it': 'it\\'s \"quoted\"'}", {"it": 'it\'s "quoted"'}),
    # RLVR-World's value: \q makes json.loads fail, and json-repair's parser then keeps \u, \q and \/
    # as written (was "\U0001f600 \\q /")
    ('{"s": "\\ud83d\\ude00 \\q \\/"}', {"s": "\\ud83d\\ude00 \\q \\/"}),
    ('{"a": red}', {"a": "red"}),
    ("5", 5),
    ("  True ", True),
    # RLVR-World's value: json.loads refuses single quotes, and outside an object or array json-repair
    # reads only { and [, so a lone single-quoted string gives "" (was "single")
    ("'single'", ""),
]


@pytest.mark.parametrize("text, expected", PARSES)
def test_parse_answer_values(text, expected):
    assert parse_answer(text) == expected


def test_parse_answer_container_types():
    # dirtyjson's containers are dict / list subclasses: RLVR-World's `type(x) == dict` tests are False
    # for them, and its comparisons fall back to ==, which gives the same answer
    value = parse_answer('{"a": [1, {"b": 2}]} trailing')
    assert isinstance(value, dict) and type(value) is not dict
    assert isinstance(value["a"], list) and type(value["a"]) is not list


def test_python_literals_rewritten_inside_strings_too():
    # RLVR-World's value: it replaces the words in the raw text, strings included (was "None",
    # "Trueblood": the old parser mapped them outside strings only)
    assert parse_answer("{'name': 'None', 'x': 'Trueblood', 'y': True}") == {
        "name": "null",
        "x": "trueblood",
        "y": True,
    }
    assert rewrite_literals('"None" NoneTrue False, Nonexistent') == '"null" nulltrue false, nullxistent'
    assert parse_answer('{"a": "\\u004eone"}') == {"a": "None"}  # an escape is no literal text: kept


@pytest.mark.parametrize("text, expected", [("", ""), ("   ", ""), ("no json here", ""), ("1 2", ""), ("'a' 'b'", "")])
def test_text_without_json_parses_to_empty_string(text, expected):
    # RLVR-World's value: json-repair returns "" when it finds no { or [ (these raised ValueError in the
    # old parser); "1 2" is no JSON for json.loads, and json-repair skips top-level numbers
    assert parse_answer(text) == expected


def test_unquoted_key_with_a_bracket():
    # RLVR-World's value: json-repair reads the key up to the colon, after the [ (raised ValueError before)
    assert parse_answer("{[1]: 2}") == {"1]": 2}


def test_parse_answer_bad_arguments():
    with pytest.raises(TypeError, match="text"):
        parse_answer(b"{}")
    with pytest.raises(TypeError, match="text"):
        rewrite_literals(None)
    # RLVR-World has no length cap: a text the old parser refused (max_chars) is parsed in full
    assert parse_answer("{}" + " " * 1_000_000) == {}


def _depth(value) -> int:
    depth = 0
    while isinstance(value, list):
        depth += 1
        value = value[0] if value else None
    return depth


@pytest.mark.parametrize("closed", [True, False])
def test_deep_nesting_raises_recursionerror_and_scores_zero(closed):
    # RLVR-World: json.loads (and json-repair's recursive parser) raise RecursionError, which its
    # compute_score turns into 0 (the old parser raised ValueError at max_depth, and built the value
    # iteratively with the cap lifted)
    text = "[" * 10_000 + ("]" * 10_000 if closed else "")
    for deep in (text, '{"a":' * 10_000 + "1"):
        with pytest.raises(RecursionError):
            parse_answer(deep)
        assert tg.metrics(deep, example()) == dict.fromkeys(tg.METRIC_NAMES, 0.0)


def test_moderate_nesting_parses():
    text = "[" * 50 + "]" * 50  # valid JSON, json.loads parses it
    assert _depth(parse_answer(text)) == 50


@pytest.fixture
def default_recursion_limit():
    # where json-repair gives up depends on the interpreter's recursion limit, and torch.compile raises it
    # to 2000 for the rest of the process (torch/_inductor/compile_fx.py); the values below are Python's
    # default 1000, a fresh interpreter's (RLVR-World's reward manager does not change it)
    old = sys.getrecursionlimit()
    sys.setrecursionlimit(1000)
    yield
    sys.setrecursionlimit(old)


def test_huge_inputs_rlvr_world_values(default_recursion_limit):
    # RLVR-World's values (the old parser refused the first two with max_depth / max_chars and parsed
    # the last to some list): deep nesting raises RecursionError, text without { or [ is ""
    for text in ("[" * 1_000_000, "[" * 1_000_001, "[" * 500 + "}" * 500_000):
        with pytest.raises(RecursionError):
            parse_answer(text)
    sys.setrecursionlimit(2000)  # torch.compile's: 500 levels now fit
    assert _depth(parse_answer("[" * 500 + "}" * 500_000)) == 500
    sys.setrecursionlimit(1000)
    assert parse_answer("{}" + " " * 100) == {}
    assert parse_answer("x" * 999_000) == ""
    # json-repair is pure Python and slower than the old parser: these two are 10x shorter than they
    # were (300_000 and 400_000 repeats) so the test stays under a second; the values are the same kind
    assert parse_answer('["' + "a\\\\" * 30_000) == ["a\\" * 30_000]  # truncated huge string
    assert parse_answer("[" + "1," * 40_000 + "]") == [1] * 40_000
    assert parse_answer("{" + "'k': None, " * 50_000) == {"k": None}
    assert parse_answer("}" * 500_000 + "[1]") == [1]  # stray closers are skipped


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4),
    max_leaves=20,
)


def _rewritten(value):
    """``value`` with RLVR-World's literal rewriting applied to every string, keys included."""
    if isinstance(value, str):
        return rewrite_literals(value)
    if isinstance(value, list):
        return [_rewritten(v) for v in value]
    if isinstance(value, dict):
        return {_rewritten(k): _rewritten(v) for k, v in value.items()}
    return value


@settings(max_examples=150, deadline=None)
@given(json_values, st.booleans())
def test_json_round_trips(value, ascii_only):
    # RLVR-World's value: valid JSON round-trips through json.loads, but with True / False / None
    # rewritten inside strings first (the old parser returned ``value`` itself)
    text = json.dumps(value, ensure_ascii=ascii_only)
    # a marker or a ```json block inside a string would cut the text first (extraction, tested above)
    assume(not any(m in text for m in ANSWER_MARKERS) and "```json" not in text)
    assert parse_answer(text) == _rewritten(value)


def test_python_spelling_of_a_value():
    # The old test ran the old repair pass alone on repr(value); RLVR-World has no such pass, so
    # these are its values for two Python spellings, computed through json-repair's parser
    value = {"a": [1, 2.5, None], "b": {"c": True, "d": "x y"}}
    assert parse_answer(repr(value)) == value
    assert parse_answer("['']") == []  # RLVR-World's value: json-repair drops an empty string in a list


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.text(alphabet=st.sampled_from(list("{}[],:\"'\\ \nab1-.eTrueNoneFalsu")) | st.characters(), max_size=60))
def test_random_text_never_raises_from_the_rewards(text):
    # parse_answer may raise what the libraries raise; the rewards score that 0, as RLVR-World's
    # bare except does (the old parser raised only ValueError)
    m = tg.metrics(text, example())
    assert set(m) == set(tg.METRIC_NAMES) and 0.0 <= m["task"] <= 1.3 and m["exact"] in (0.0, 1.0)


@settings(max_examples=40, deadline=None)
@given(st.dictionaries(st.text(max_size=5), json_values, max_size=4))
def test_every_prefix_of_json_is_scored(value):
    text = json.dumps(value)[:400]  # truncation is what a token limit does to an answer
    for cut in range(len(text) + 1):
        assert tg.binary_reward(text[:cut], example()) in (0.0, 1.0)


# ---------------------------------------------------------------------------------------------------
# rewards: a hand-checked example

SCORE0 = {"score": 0, "gameOver": False, "gameWon": False}
SCORE1 = {"score": 1, "gameOver": False, "gameWon": False}


def obj(uuid, name, contains=(), **props):
    return {"uuid": uuid, "name": name, "properties": props, "contains": list(contains)}


CURR = {
    "game_state": [
        obj(1, "jar", [2], isOpen=False, temperature=20),
        obj(2, "apple", isCooked=False),
        obj(3, "knife", sharp=True),
        SCORE0,
    ]
}
# "open jar": one property changes and the score goes up
OPENED = {
    "game_state": [
        obj(1, "jar", [2], isOpen=True, temperature=20),
        CURR["game_state"][1],
        CURR["game_state"][2],
        SCORE1,
    ]
}


def example(curr=CURR, nxt=OPENED):
    return Example(
        prompt="p",
        answer="",
        ground_truth=json.dumps(nxt),
        extra={"data_state": json.dumps(curr), "data_action": "open jar"},
    )


def answer(modified, removed=(), score=SCORE1, **extra):
    diff = {"modified": modified, "removed": list(removed), "score": score, **extra}
    if score is None:
        del diff["score"]
    return "Reasoning... The final answer is: " + json.dumps(diff)


# 7 item checks: jar isOpen, temperature, contains; apple isCooked, contains; knife sharp, contains.
# 3 score keys.


def test_perfect_answer():
    m = tg.metrics(answer([obj(1, "jar", [2], isOpen=True, temperature=20)]), example())
    task = pytest.approx(0.09 + 0.01 + 0.2 + 1.0)
    ones = {"item_acc": 1.0, "score_acc": 1.0, "property_acc": 1.0, "parsed": 1.0}
    assert m == {"exact": 1.0, "task": task, **ones}
    assert m["task"] == pytest.approx(1.3)


def test_the_loader_answer_is_perfect():
    ex = example()
    gold = json.dumps(tg.state_diff(CURR, OPENED))
    assert tg.binary_reward(gold, ex) == 1.0
    assert tg.task_reward(gold, ex) == pytest.approx(1.3)


def test_one_wrong_changed_property():
    m = tg.metrics(answer([obj(1, "jar", [2], isOpen=False, temperature=20)]), example())
    assert m["item_acc"] == pytest.approx(6 / 7) and m["score_acc"] == 1.0 and m["exact"] == 0.0
    assert m["property_acc"] == 0.0
    assert m["task"] == pytest.approx(0.09 * 6 / 7 + 0.01)


def test_wrong_unchanged_property_costs_item_acc_only():
    m = tg.metrics(answer([obj(1, "jar", [2], isOpen=True, temperature=25)]), example())
    assert m["item_acc"] == pytest.approx(6 / 7) and m["property_acc"] == 1.0
    assert m["task"] == pytest.approx(0.09 * 6 / 7 + 0.01 + 1.0)


def test_wrong_score():
    jar = obj(1, "jar", [2], isOpen=True, temperature=20)
    m = tg.metrics(answer([jar], score={"score": 2, "gameOver": False, "gameWon": False}), example())
    assert m["item_acc"] == 1.0 and m["score_acc"] == pytest.approx(2 / 3) and m["exact"] == 0.0
    assert m["task"] == pytest.approx(0.09 + 0.01 * 2 / 3 + 1.0)
    # an empty score keeps the current one (score 0: 2 of 3 keys right) ...
    assert tg.metrics(answer([jar], score={}), example())["score_acc"] == pytest.approx(2 / 3)
    # ... but no "score" key leaves the state without a score object (RLVR-World quirk)
    m = tg.metrics(answer([jar], score=None), example())
    assert m["score_acc"] == 0.0 and m["task"] == pytest.approx(0.09 + 1.0)


@pytest.mark.parametrize(
    "completion",
    [
        'The final answer is: {"modified": []}',  # no "removed"
        'The final answer is: {"removed": [], "score": {}}',
        "I do not know.",
        "The final answer is: 42",  # `in` on a number raises: 0
        "",
        "The final answer is: " + "[" * 100_000,
    ],
)
def test_missing_keys_and_garbage_score_zero(completion):
    m = tg.metrics(completion, example())
    assert m == dict.fromkeys(tg.METRIC_NAMES, 0.0)
    assert tg.binary_reward(completion, example()) == 0.0 and tg.task_reward(completion, example()) == 0.0


def test_hallucinated_property_zeroes_task_but_not_binary():
    # RLVR-World: gold_stat[uuid]["color"] raises KeyError -> compute_score returns 0; the binary
    # reward is computed before that lookup and only checks gold keys
    m = tg.metrics(answer([obj(1, "jar", [2], isOpen=True, temperature=20, color="red")]), example())
    assert m["exact"] == 1.0 and m["task"] == 0.0 and m["property_acc"] == 1.0


def test_property_the_gold_dropped_is_counted_not_a_quirk():
    # a key the current object has but the gold dropped is a changed pair: predicting it is wrong, not 0
    nxt = copy.deepcopy(OPENED)
    del nxt["game_state"][0]["properties"]["temperature"]
    m = tg.metrics(answer([obj(1, "jar", [2], isOpen=True, temperature=20)]), example(nxt=nxt))
    assert m["exact"] == 1.0 and m["property_acc"] == 0.5
    assert m["task"] == pytest.approx(0.09 + 0.01 + 0.2 + 0.5)


def test_contains_is_order_free():
    nxt = copy.deepcopy(OPENED)
    nxt["game_state"][0]["contains"] = [2, 3]
    jar = obj(1, "jar", [3, 2], isOpen=True, temperature=20)
    m = tg.metrics(answer([jar]), example(nxt=nxt))
    assert m["exact"] == 1.0 and m["task"] == pytest.approx(1.3)
    jar["contains"] = [2]
    m = tg.metrics(answer([jar]), example(nxt=nxt))
    assert m["item_acc"] == pytest.approx(6 / 7) and m["property_acc"] == 0.5  # isOpen right, contains wrong


EATEN = {"game_state": [obj(1, "jar", [], isOpen=False, temperature=20), CURR["game_state"][2], SCORE0]}


def test_removed_objects():
    ex = example(nxt=EATEN)
    jar = obj(1, "jar", [], isOpen=False, temperature=20)
    # 5 item checks: jar isOpen, temperature, contains; knife sharp, contains
    m = tg.metrics(answer([jar], removed=[2], score=SCORE0), ex)
    assert m["exact"] == 1.0 and m["task"] == pytest.approx(1.3)
    # RLVR-World only checks gold objects: keeping the eaten apple costs nothing
    assert tg.metrics(answer([jar], removed=[], score=SCORE0), ex)["exact"] == 1.0
    # removing a gold object is a missing object: 1 error instead of its 2 checks
    m = tg.metrics(answer([jar], removed=[2, 3], score=SCORE0), ex)
    assert m["item_acc"] == pytest.approx(3 / 4) and m["exact"] == 0.0
    assert m["task"] == pytest.approx(0.09 * 3 / 4 + 0.01 + 1.0)


def test_created_objects_are_dropped_so_exact_is_impossible():
    # RLVR-World never appends a modified object with a new uuid: the gold diff itself misses it
    sliced = {
        "game_state": [
            obj(1, "jar", [4], isOpen=False, temperature=20),
            CURR["game_state"][2],
            obj(4, "apple slice", isCooked=False),
            SCORE0,
        ]
    }
    ex = example(nxt=sliced)
    gold = tg.state_diff(CURR, sliced)
    assert [o["uuid"] for o in gold["modified"]] == [1, 4] and gold["removed"] == [2]
    m = tg.metrics(json.dumps(gold), ex)
    # jar 3 + knife 2 checks right, the slice is a missing object
    assert m["exact"] == 0.0 and m["item_acc"] == pytest.approx(5 / 6)
    assert m["task"] == pytest.approx(0.09 * 5 / 6 + 0.01 + 1.0)


def test_list_answer_naming_the_keys_is_scored():
    # RLVR-World tests the keys with `in`: a list holding both words passes, the state stays the
    # current one without a score object
    m = tg.metrics('The final answer is: ["modified", "removed"]', example())
    assert m["parsed"] == 0.0 and m["exact"] == 0.0
    assert m["item_acc"] == pytest.approx(6 / 7) and m["score_acc"] == 0.0
    assert m["task"] == pytest.approx(0.09 * 6 / 7)


def test_malformed_prediction_scores_zero_or_drops_property_term():
    # unsortable contains: RLVR-World's evaluate fails -> 0
    bad = obj(1, "jar", [2, "x"], isOpen=True, temperature=20)
    assert tg.metrics(answer([bad]), example())["task"] == 0.0
    # no "properties": one item error for the jar's two properties (5 / 6), and the property-by-property
    # diff fails so its term is left out
    m = tg.metrics(answer([{"uuid": 1, "name": "jar", "contains": [2]}]), example())
    assert m["item_acc"] == pytest.approx(5 / 6) and m["task"] == pytest.approx(0.09 * 5 / 6 + 0.01)
    # True == 1 and 1.0 == 1 in Python, so RLVR-World accepts them
    assert tg.metrics(answer([obj(1, "jar", [2.0], isOpen=1, temperature=20.0)]), example())["exact"] == 1.0


def test_no_change_transition():
    same = copy.deepcopy(CURR)
    m = tg.metrics(answer([], score=SCORE0), example(nxt=same))
    # no changed pair: RLVR-World leaves the property term out; property_acc falls back to exact
    assert m["exact"] == 1.0 and m["task"] == pytest.approx(0.3) and m["property_acc"] == 1.0


def test_python_literals_in_answer():
    text = (
        "The final answer is: {'modified': [{'uuid': 1, 'name': 'jar', 'properties': {'isOpen': True, "
        "'temperature': 20}, 'contains': [2]}], 'removed': [], "
        "'score': {'score': 1, 'gameOver': False, 'gameWon': False},}"
    )
    assert tg.metrics(text, example())["exact"] == 1.0


def test_truncated_answer_is_scored_as_far_as_it_goes():
    full = answer([obj(1, "jar", [2], isOpen=True, temperature=20)])
    cut = full[: full.index('"score"')]  # "modified" and "removed" survived, the score did not
    m = tg.metrics(cut, example())
    assert m["parsed"] == 1.0 and m["item_acc"] == 1.0 and m["score_acc"] == 0.0


# ---------------------------------------------------------------------------------------------------
# rewards on broken answers: RLVR-World's values (issue 16)
#
# Each expectation is RLVR-World's compute_score for the string, derived by hand from its code path:
# extraction, the literal rewriting, json-repair 0.44.1 (what it returns for the broken JSON is said in
# the comment, checked by running it), dirtyjson, then the scoring arithmetic on the fixture above
# (7 item checks, 3 score keys; the only changed pair is the jar's isOpen).

JAR_OPEN = obj(1, "jar", [2], isOpen=True, temperature=20)
GOLD_JSON = json.dumps({"modified": [JAR_OPEN], "removed": [], "score": SCORE1})
GOLD_TEXT = "Reasoning... The final answer is: " + GOLD_JSON
WRONG_JSON = GOLD_JSON.replace('"isOpen": true', '"isOpen": false')  # same shape, isOpen wrong
EOS = "<\uff5cend\u2581of\u2581sentence\uff5c>"  # DeepSeek-R1's EOS text, as verl decodes it


def rlvr_task(item_acc, score_acc, property_term=None):
    """RLVR-World's task reward, in its operation order (so floats agree to the last bit)."""
    exact = int(item_acc == 1 and score_acc == 1)
    base = item_acc * 0.09 + score_acc * 0.01 + 0.2 * exact
    return base if property_term is None else base + property_term


def assert_rlvr(completion, binary, task, ex=None):
    ex = example() if ex is None else ex
    assert tg.binary_reward(completion, ex) == binary
    assert tg.task_reward(completion, ex) == task


def test_rlvr_task_helper_matches_the_perfect_answer():
    assert rlvr_task(1, 1, 1.0) == 1.3 == tg.task_reward(GOLD_TEXT, example())


def test_second_json_value_after_the_answer():
    # json-repair returns [answer, {"note": 1}] (different shapes): "modified" in a list is False -> 0
    assert_rlvr(GOLD_TEXT + ' {"note": 1}', 0.0, 0.0)
    # a second value of the same shape replaces the first (json-repair's ObjectComparer): the last wins
    assert_rlvr("The final answer is: " + WRONG_JSON + "\n" + GOLD_JSON, 1.0, 1.3)
    # isOpen wrong: item 6/7, score 3/3, the changed pair wrong (term 0)
    assert_rlvr("The final answer is: " + GOLD_JSON + "\n" + WRONG_JSON, 0.0, rlvr_task(6 / 7, 1, 0.0))


def test_removed_with_a_lone_comma():
    # json-repair skips "," and "]" inside the list and reads on: "removed" becomes
    # ['score": {"score', 1, "gameOver", false, "gameWon", false] and there is no "score" key. uuid 1 is in
    # that list, so the jar is removed: 1 error for it, apple and knife 4 right -> item 4/5; no score
    # object -> score 0/3; no changed pair left to compare -> no property term
    text = GOLD_TEXT.replace('"removed": []', '"removed": [,]')
    assert_rlvr(text, 0.0, rlvr_task(4 / 5, 0))
    assert rlvr_task(4 / 5, 0) == 0.072


@pytest.mark.parametrize(
    "old, new", [('"isOpen"', 'isOpen"'), ('"name": "jar"', '"name": jar"'), ('"removed"', 'removed"')]
)
def test_missing_opening_quote_is_repaired(old, new):
    # json-repair reads the unquoted word up to the stray quote: the answer parses as the gold diff
    assert_rlvr(GOLD_TEXT.replace(old, new), 1.0, 1.3)


def test_missing_colon():
    # json-repair steps over the character after the key as if it were the colon: "isOpen" true -> "rue"
    # (isOpen wrong: item 6/7, changed pair wrong)
    assert_rlvr(GOLD_TEXT.replace('"isOpen": true', '"isOpen" true'), 0.0, rlvr_task(6 / 7, 1, 0.0))
    # "temperature" 20 -> 0 (an unchanged property wrong: item 6/7, the changed pair right)
    assert_rlvr(GOLD_TEXT.replace('"temperature": 20', '"temperature" 20'), 0.0, rlvr_task(6 / 7, 1, 1.0))
    # "removed" [] -> the key runs on to the next colon ('removed" [], "score'): no "removed" key -> 0
    assert_rlvr(GOLD_TEXT.replace('"removed": []', '"removed" []'), 0.0, 0.0)


def test_missing_bracket():
    # no ] after modified: the list swallows "removed" and the score, no "removed" key -> 0
    assert_rlvr(GOLD_TEXT.replace('}], "removed"', '}, "removed"'), 0.0, 0.0)
    # no [ before modified: "modified" is the jar dict, iterating it gives keys (no uuid): nothing is
    # modified, the jar stays closed -> item 6/7, score 3/3, changed pair wrong
    assert_rlvr(GOLD_TEXT.replace('"modified": [', '"modified": '), 0.0, rlvr_task(6 / 7, 1, 0.0))
    # no } after the jar: "removed" and "score" land inside the jar -> no top-level "removed" -> 0
    assert_rlvr(GOLD_TEXT.replace("[2]}]", "[2]]"), 0.0, 0.0)
    # no final }: closed at the end
    assert_rlvr(GOLD_TEXT[:-1], 1.0, 1.3)


LABELLED_CURR = copy.deepcopy(CURR)
LABELLED_CURR["game_state"][0]["properties"]["label"] = "None"
LABELLED_OPENED = copy.deepcopy(OPENED)
LABELLED_OPENED["game_state"][0]["properties"]["label"] = "None"


def test_literal_rewriting_inside_strings():
    # the gold jar has the string label "None"; an answer copying it exactly is rewritten to "null"
    # before parsing, so the label is wrong: 8 item checks, 7 right; the changed pair (isOpen) right
    ex = example(LABELLED_CURR, LABELLED_OPENED)
    jar = obj(1, "jar", [2], isOpen=True, temperature=20, label="None")
    assert_rlvr(answer([jar]), 0.0, rlvr_task(7 / 8, 1, 1.0), ex)
    assert rlvr_task(7 / 8, 1, 1.0) == 1.08875
    # writing null instead gives the same (None != "None")
    assert_rlvr(answer([jar]).replace('"None"', "null"), 0.0, rlvr_task(7 / 8, 1, 1.0), ex)


def test_eos_text_appended():
    # json.loads fails on the trailing text; json-repair parses the object and finds no { or [ in the
    # EOS text (top-level letters are skipped), so the value is the gold diff
    assert_rlvr(GOLD_TEXT + EOS, 1.0, 1.3)
    assert_rlvr(GOLD_JSON + EOS, 1.0, 1.3)
    # ... but it goes through json-repair's parser, which does not decode \u escapes: json.dumps's
    # "caf\u00e9" stays as written and the label misses (item 7/8, changed pair right)
    curr, nxt = copy.deepcopy(LABELLED_CURR), copy.deepcopy(LABELLED_OPENED)
    curr["game_state"][0]["properties"]["label"] = nxt["game_state"][0]["properties"]["label"] = "caf\u00e9"
    ex = example(curr, nxt)
    jar = obj(1, "jar", [2], isOpen=True, temperature=20, label="caf\u00e9")
    assert "\\u00e9" in answer([jar])
    assert_rlvr(answer([jar]), 1.0, 1.3, ex)  # without EOS json.loads decodes it
    assert_rlvr(answer([jar]) + EOS, 0.0, rlvr_task(7 / 8, 1, 1.0), ex)
    unescaped = "The final answer is: " + json.dumps(
        {"modified": [jar], "removed": [], "score": SCORE1}, ensure_ascii=False
    )
    assert_rlvr(unescaped + EOS, 1.0, 1.3, ex)


def test_code_fences():
    assert_rlvr("Reasoning.\n```json\n" + GOLD_JSON + "\n```", 1.0, 1.3)
    assert_rlvr("Reasoning.\n```json\n" + GOLD_JSON + "\n```" + EOS, 1.0, 1.3)
    # a fence without "json": the whole text is parsed; json-repair skips the backticks around the object
    assert_rlvr("Reasoning.\n```\n" + GOLD_JSON + "\n```", 1.0, 1.3)
    # the last ```json block wins
    assert_rlvr("```json\n" + WRONG_JSON + "\n```\nfixed:\n```json\n" + GOLD_JSON + "\n```", 1.0, 1.3)
    # a last block under 10 characters is ignored: the whole text has two values -> a list -> 0
    assert_rlvr("```json\n" + GOLD_JSON + "\n```\n```json\n{}\n```", 0.0, 0.0)


def test_bad_examples_and_completions_raise():
    with pytest.raises(ValueError, match="data_state"):
        tg.metrics("x", Example(prompt="", answer="", ground_truth=json.dumps(OPENED)))
    with pytest.raises(ValueError, match="ground_truth"):
        tg.metrics("x", Example(prompt="", answer="", ground_truth="{oops", extra={"data_state": json.dumps(CURR)}))
    broken = {"game_state": [{"name": "jar", "properties": {}, "contains": []}, SCORE0]}
    with pytest.raises(ValueError, match=r"game_state\[0\]: missing field 'uuid'"):
        tg.metrics("x", example(nxt=broken))
    with pytest.raises(ValueError, match="score object"):
        tg.metrics("x", example(nxt={"game_state": [obj(1, "jar")]}))
    with pytest.raises(TypeError, match="completion"):
        tg.metrics(None, example())


def test_examples_are_parsed_once():
    ex = example()
    tg.metrics("x", ex)
    before = tg._prepare.cache_info().hits
    for _ in range(5):
        tg.metrics("x", ex)
    assert tg._prepare.cache_info().hits == before + 5


def test_registry_resolves_the_rewards():
    assert get_reward("text_game/binary") is tg.binary_reward
    assert get_reward("text_game/task") is tg.task_reward


# ---------------------------------------------------------------------------------------------------
# apply_diff / state_diff


def test_apply_diff_rules():
    jar = obj(1, "jar", [], isOpen=True)
    got = tg.apply_diff(CURR, {"modified": [jar, obj(9, "new")], "removed": [2], "score": SCORE1})
    assert got == {"game_state": [jar, CURR["game_state"][2], SCORE1]}  # uuid 9 dropped
    got = tg.apply_diff(CURR, {"modified": [jar, obj(9, "new")], "removed": [2], "score": SCORE1}, add_new=True)
    assert [o.get("uuid") for o in got["game_state"]] == [1, 3, 9, None]
    # RLVR-World's `in` on an int raises, so removed=2 removes nothing; removed="…" with int uuids neither
    assert len(tg.apply_diff(CURR, {"removed": 2, "score": {}})["game_state"]) == 4
    assert tg.apply_diff(CURR, {"removed": [2], "score": {}})["game_state"][-1] == SCORE0  # empty score: current
    assert tg.apply_diff(CURR, {"removed": [2]})["game_state"][-1] == CURR["game_state"][2]  # no score at all
    with pytest.raises(ValueError, match="diff"):
        tg.apply_diff(CURR, [])
    with pytest.raises(ValueError, match="state"):
        tg.apply_diff({"objects": []}, {})


def _by_uuid(state):
    return {o["uuid"]: o for o in state["game_state"][:-1]}, state["game_state"][-1]


@settings(max_examples=100, deadline=None)
@given(st.data())
def test_state_diff_then_apply_diff_round_trips(data):
    uuids = st.integers(0, 8)

    def objects():
        return st.dictionaries(
            uuids,
            st.tuples(
                st.dictionaries(st.sampled_from("abc"), st.integers(0, 2), max_size=3),
                st.lists(uuids, max_size=3),
            ),
            max_size=5,
        )

    def state(objs):
        score = {"score": data.draw(st.integers(0, 3)), "gameOver": False, "gameWon": False}
        return {"game_state": [obj(u, f"o{u}", c, **p) for u, (p, c) in objs.items()] + [score]}

    curr, nxt = state(data.draw(objects())), state(data.draw(objects()))
    diff = tg.state_diff(curr, nxt)
    assert _by_uuid(tg.apply_diff(curr, diff, add_new=True)) == _by_uuid(nxt)
    kept, score = _by_uuid(tg.apply_diff(curr, diff))
    assert score == nxt["game_state"][-1]
    assert kept == {u: o for u, o in _by_uuid(nxt)[0].items() if u in _by_uuid(curr)[0]}


# ---------------------------------------------------------------------------------------------------
# loader


def rlvr_row(i, curr=CURR, nxt=OPENED, split="test"):
    """One row as RLVR-World's process_jsonl.py writes it."""
    return {
        "data_source": "llm_simulator",
        "prompt": [{"role": "user", "content": f"You are a simulator... state {i}\nPlease make sure to ..."}],
        "ability": "next state prediction",
        "reward_model": {"style": "rule", "ground_truth": json.dumps(nxt)},
        "extra_info": {"split": split, "index": i, "data_state": json.dumps(curr), "data_action": "open jar"},
    }


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_load_jsonl(tmp_path):
    path = write_jsonl(tmp_path / "test.jsonl", [rlvr_row(0), rlvr_row(1, nxt=EATEN, split="train")])
    exs = load_text_game(path)
    assert len(exs) == 2
    ex = exs[0]
    assert ex.prompt.startswith("You are a simulator... state 0")
    assert ex.ground_truth == json.dumps(OPENED)
    assert dict(ex.extra) == {"data_state": json.dumps(CURR), "data_action": "open jar"}
    assert ex.source == f"{path}:1" and exs[1].source == f"{path}:2"
    assert json.loads(ex.answer) == tg.state_diff(CURR, OPENED)
    for e in exs:  # the MLE target is a perfect answer
        assert tg.task_reward(e.answer, e) == pytest.approx(1.3)
    assert [e.source for e in load_text_game(path, split="train")] == [f"{path}:2"]
    assert len(load_text_game(path, limit=1)) == 1


def test_load_parquet_and_json_match_jsonl(tmp_path):
    import pandas as pd

    rows = [rlvr_row(i) for i in range(3)]
    pd.DataFrame(rows).to_parquet(tmp_path / "test.parquet")
    (tmp_path / "test.json").write_text(json.dumps(rows))
    ref = load_text_game(write_jsonl(tmp_path / "test.jsonl", rows))
    for name in ("test.parquet", "test.json"):
        got = load_text_game(tmp_path / name)
        assert [(e.prompt, e.answer, e.ground_truth, dict(e.extra)) for e in got] == [
            (e.prompt, e.answer, e.ground_truth, dict(e.extra)) for e in ref
        ]
        assert got[2].source == f"{tmp_path / name}:2"  # 0-based rows


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_answer_is_the_sft_response_else_the_gold_diff(tmp_path, kind):
    import pandas as pd

    cot = "Opening the jar changes isOpen.\nThe final answer is: " + json.dumps(tg.state_diff(CURR, OPENED))
    rows = [rlvr_row(0), rlvr_row(1), rlvr_row(2), rlvr_row(3)]
    rows[0]["answer"] = cot
    rows[2]["answer"] = None
    rows[3]["answer"] = ""
    path = tmp_path / f"d.{kind}"
    write_jsonl(path, rows) if kind == "jsonl" else pd.DataFrame(rows).to_parquet(path)
    got = load_text_game(path)
    diff = json.dumps(tg.state_diff(CURR, OPENED))
    assert [e.answer for e in got] == [cot, diff, diff, diff]
    assert all(e.ground_truth == json.dumps(OPENED) for e in got)
    assert tg.task_reward(got[0].answer, got[0]) == pytest.approx(1.3)  # the reward reads past the reasoning
    rows[1]["answer"] = {"modified": []}
    message = f"{tmp_path / 'd.jsonl'}:2: field 'answer' must be a str"
    with pytest.raises(ValueError, match=re.escape(message)):
        load_text_game(write_jsonl(tmp_path / "d.jsonl", rows))


def test_plain_string_prompt(tmp_path):
    row = rlvr_row(0)
    row["prompt"] = "just text"
    assert load_text_game(write_jsonl(tmp_path / "a.jsonl", [row]))[0].prompt == "just text"


def _without(row, dotted):
    row = copy.deepcopy(row)
    *parents, last = dotted.split(".")
    target = row
    for p in parents:
        target = target[p]
    del target[last]
    return row


@pytest.mark.parametrize(
    "field",
    [
        "prompt",
        "reward_model",
        "reward_model.ground_truth",
        "extra_info",
        "extra_info.data_state",
        "extra_info.data_action",
    ],
)
def test_missing_field_names_file_line_and_field(tmp_path, field):
    path = write_jsonl(tmp_path / "bad.jsonl", [rlvr_row(0), _without(rlvr_row(1), field)])
    with pytest.raises(ValueError, match=re.escape(f"{path}:2: missing field '{field}'")):
        load_text_game(path)


def test_bad_rows_raise_with_location(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text(json.dumps(rlvr_row(0)) + "\n\n{not json\n")
    with pytest.raises(ValueError, match=re.escape(f"{path}:3: invalid JSON")):
        load_text_game(path)
    broken = {"game_state": [{"uuid": 1, "name": "jar", "properties": [], "contains": []}, SCORE0]}
    path = write_jsonl(tmp_path / "bad2.jsonl", [rlvr_row(0, curr=broken)])
    with pytest.raises(ValueError, match=re.escape(f"{path}:1: extra_info.data_state: game_state[0]: 'properties'")):
        load_text_game(path)
    row = rlvr_row(0)
    row["data_source"] = "web_agent"
    with pytest.raises(ValueError, match="data_source"):
        load_text_game(write_jsonl(tmp_path / "bad3.jsonl", [row]))
    with pytest.raises(ValueError, match="extra_info.split"):
        load_text_game(write_jsonl(tmp_path / "bad4.jsonl", [_without(rlvr_row(0), "extra_info.split")]), split="test")
    with pytest.raises(ValueError, match="path"):
        load_text_game(tmp_path / "data.csv")
    with pytest.raises(ValueError, match="limit"):
        load_text_game(path, limit=-1)


def test_parquet_bad_row_names_row(tmp_path):
    import pandas as pd

    rows = [rlvr_row(0), rlvr_row(1)]
    rows[1]["reward_model"] = {"style": "rule", "ground_truth": None}
    pd.DataFrame(rows).to_parquet(tmp_path / "bad.parquet")
    with pytest.raises(
        ValueError,
        match=re.escape(f"{tmp_path / 'bad.parquet'}:1: missing field 'reward_model.ground_truth'"),
    ):
        load_text_game(tmp_path / "bad.parquet")


def test_unreadable_files_raise_data_file_error_naming_file_and_line(tmp_path):
    from rlvr_fast.worlds._files import DataFileError

    good = [json.dumps(rlvr_row(i)).encode() for i in range(2)]
    bad_utf8 = tmp_path / "bad_utf8.jsonl"
    bad_utf8.write_bytes(b"\n".join([*good, b'{"prompt": "caf\xe9 \xff"}']) + b"\n")
    with pytest.raises(DataFileError, match=re.escape(f"{bad_utf8}:3: not UTF-8 (invalid")):
        load_text_game(bad_utf8)
    garbage = tmp_path / "garbage.json"
    garbage.write_bytes(bytes(range(255, -1, -1)) * 20)  # starts 0xff: never valid in UTF-8
    with pytest.raises(DataFileError, match=re.escape(f"{garbage}:1: not UTF-8")):
        load_text_game(garbage)
    # A JSON array whose bad byte is on line 3 names that line too.
    array = tmp_path / "array.json"
    array.write_bytes(b"[\n" + good[0] + b',\n"\xff"\n]')
    with pytest.raises(DataFileError, match=re.escape(f"{array}:3: not UTF-8")):
        load_text_game(array)
    # json.loads raises RecursionError (not a ValueError) for input nested this deep.
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(DataFileError, match=re.escape(f"{deep}: invalid JSON (nested too deep to parse)")):
        load_text_game(deep)
    deep_lines = tmp_path / "deep.jsonl"
    deep_lines.write_text(json.dumps(rlvr_row(0)) + "\n" + "[" * 100_000 + "]" * 100_000 + "\n")
    with pytest.raises(DataFileError, match=re.escape(f"{deep_lines}:2: invalid JSON (nested too deep")):
        load_text_game(deep_lines)
    # A state string nested too deep is reported by row and field, not as a RecursionError.
    row = rlvr_row(0)
    row["extra_info"]["data_state"] = "[" * 100_000 + "]" * 100_000
    deep_state = write_jsonl(tmp_path / "deep_state.jsonl", [row])
    with pytest.raises(ValueError, match=re.escape(f"{deep_state}:1: extra_info.data_state or")):
        load_text_game(deep_state)


def test_truncated_and_fake_parquet_raise_data_file_error(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    from rlvr_fast.worlds._files import DataFileError, iter_rows

    fake = tmp_path / "fake.parquet"
    fake.write_text("this is not a parquet file\n")
    with pytest.raises(DataFileError, match=re.escape(f"{fake}: not a readable parquet file (")):
        load_text_game(fake)
    whole = tmp_path / "whole.parquet"
    pq.write_table(pa.table({"x": list(range(1000))}), whole)
    data = whole.read_bytes()
    truncated = tmp_path / "truncated.parquet"
    truncated.write_bytes(data[: len(data) // 2])  # the footer (and its magic bytes) is gone
    with pytest.raises(DataFileError, match=re.escape(f"{truncated}: not a readable parquet file (")):
        load_text_game(truncated)
    # Footer intact, column data cut out: the error comes while reading rows and names the first one.
    assert [row["x"] for _, row in iter_rows(whole)] == list(range(1000))
    gutted = tmp_path / "gutted.parquet"
    gutted.write_bytes(data[:100] + data[150:])
    with pytest.raises(DataFileError, match=re.escape(f"{gutted}:0: unreadable parquet data")):
        list(iter_rows(gutted))


def test_text_game_task(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [rlvr_row(i, split="train") for i in range(3)])
    test = write_jsonl(tmp_path / "test.jsonl", [rlvr_row(i) for i in range(2)])
    task = text_game_task(train, test)
    assert isinstance(task, Task)
    assert (task.name, len(task.train), len(task.test)) == ("text_game", 3, 2)
    assert (task.default_reward, task.select_metric, task.metrics) == ("text_game/task", "exact", tg.metrics)
    assert task.metrics(task.test[0].answer, task.test[0])["exact"] == 1.0


def test_eval_needs_only_the_held_out_file(tmp_path, capsys):
    """`rlvr-fast eval` of a text-game checkpoint reads data.test_path only; training still needs both."""
    from rlvr_fast.cli import main
    from rlvr_fast.models import tiny_llama
    from rlvr_fast.trainer.config import ConfigError, ModelConfig, load_config
    from rlvr_fast.worlds.synthetic import synthetic_text_game_task

    tok = synthetic_text_game_task(seed=0, n_train=4, n_test=2).tokenizer
    torch.manual_seed(0)
    model = tiny_llama(ModelConfig(hidden_size=32, num_layers=1, num_heads=2, intermediate_size=64), tok)
    ckpt = tmp_path / "ckpt"
    model.save_pretrained(ckpt)
    tok.save_pretrained(ckpt)
    test = write_jsonl(tmp_path / "test.jsonl", [rlvr_row(i) for i in range(3)])
    args = ["data.world=text_game", f"data.test_path={test}", "rollout.max_new_tokens=4", "trainer.progress=false"]
    assert main(["eval", "--checkpoint", str(ckpt), *args, f"trainer.out_dir={tmp_path / 'eval'}"]) == 0
    printed = capsys.readouterr().out
    metrics = json.loads(printed[printed.index("{") :])
    assert {"exact", "task", "property_acc"} <= set(metrics)
    assert all(0.0 <= metrics[k] <= 1.0 for k in ("exact", "task", "property_acc"))
    # a training config still needs the training file, and eval still needs the held-out one
    with pytest.raises(ConfigError, match=r"set data\.train_path and data\.test_path"):
        load_config(None, [*args, f"model.path={ckpt}"])
    with pytest.raises(ConfigError, match=r"set data\.test_path \(eval reads only the held-out file\)"):
        load_config(None, ["data.world=text_game", f"model.path={ckpt}"], for_eval=True)
