"""Web-page reward (RLVR-World web_agent item F1) and the web-page loader."""

from __future__ import annotations

import json
import math
import sys
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rlvr_fast.rewards import get_reward
from rlvr_fast.rewards import web_page as wp
from rlvr_fast.task import Example
from rlvr_fast.worlds.web_page import load_web_page, web_page_task

GOLD = """New items:
[1273] StaticText 'Vortex Running Shoes'
[1272] button 'Search'

Deleted items:
None

Updated items:
[1220] textbox '\\ue60c' focused: True required: False
"""


def ex(gold: str) -> Example:
    return Example(prompt="p", answer=gold, ground_truth=gold, source="t:1")


def doc(new=(), deleted=(), updated=()) -> str:
    parts = []
    for name, items in (("New items:", new), ("Deleted items:", deleted), ("Updated items:", updated)):
        parts.append("\n".join([name, *items]))
    return "\n\n".join(parts) + "\n"


# ---------------------------------------------------------------- parser


def test_parse_reference_example():
    s = wp.parse_sections(GOLD)
    assert s == {
        "New items": {"[1273] StaticText 'Vortex Running Shoes'", "[1272] button 'Search'"},
        "Deleted items": {"None"},  # RLVR-World keeps the literal None as an item
        "Updated items": {"[1220] textbox '\\ue60c' focused: True required: False"},
    }


def test_parse_missing_sections_and_preamble():
    s = wp.parse_sections("reasoning first\nstill thinking\nUpdated items:\n a \n\n\n b\n")
    assert s == {"New items": set(), "Deleted items": set(), "Updated items": {"a", "b"}}
    assert wp.parse_sections("") == {"New items": set(), "Deleted items": set(), "Updated items": set()}
    assert wp.parse_sections("no headers at all\nNone") == wp.parse_sections("")


def test_parse_header_trailing_text_is_dropped():
    # "Deleted items: None" opens the section but adds nothing (RLVR-World's startswith rule).
    s = wp.parse_sections("New items: [1] link 'x'\nDeleted items: None\n  Updated items:   extra\n[2] a")
    assert s == {"New items": set(), "Deleted items": set(), "Updated items": {"[2] a"}}


def test_parse_case_colon_and_reopened_sections():
    text = "new items:\nNew items\nNew items:\nx\nnew items:\nDeleted items:\ny\nNew items:\nz\nx"
    s = wp.parse_sections(text)
    # Lowercase / colon-less lines are items; a section seen twice keeps collecting; duplicates once.
    assert s["New items"] == {"x", "new items:", "z"}
    assert s["Deleted items"] == {"y"}


def test_parse_blank_and_whitespace_lines():
    s = wp.parse_sections("\r\nNew items:\r\n\t a\t\r\n   \n\r\n\u3000b\u3000\n")
    assert s["New items"] == {"a", "b"}


def test_parse_adversarial_strings():
    text = "New items:\n\x00\n\ufeffNew items:\n' OR 1=1 --\n{{x}}\n\\n\n"
    text += "\u202e" * 3 + "\na\x0bb\nc\u2028d"
    s = wp.parse_sections(text)
    # Only "\n" splits lines (\x0b, \u2028 stay inside items, as in RLVR-World); \ufeff is no whitespace.
    expected = {"\x00", "\ufeffNew items:", "' OR 1=1 --", "{{x}}", "\\n", "\u202e" * 3, "a\x0bb", "c\u2028d"}
    assert s["New items"] == expected


def test_parse_huge_output_is_read_in_full_and_fast():
    # RLVR-World's values: parse_magento_log reads the whole text. The reward capped it at 50_000 lines
    # and 1_000_000 characters before issue 16 (then: 49_999 items, and the line cut to its first
    # 999_989 characters); the caps are now opt-in only
    huge = "New items:\n" + "\n".join(f"[{i}] x" for i in range(200_000))
    t = time.perf_counter()
    s = wp.parse_sections(huge)
    assert time.perf_counter() - t < 2.0
    assert len(s["New items"]) == 200_000
    one_line = "New items:\n" + "y" * 5_000_000
    t = time.perf_counter()
    s = wp.parse_sections(one_line)
    assert time.perf_counter() - t < 2.0
    assert s["New items"] == {"y" * 5_000_000}
    assert wp.parse_sections("New items:\na\nb\nc", max_lines=3)["New items"] == {"a", "b"}
    assert wp.parse_sections("New items:\nabcdef", max_chars=14)["New items"] == {"abc"}
    t = time.perf_counter()
    assert 0.0 <= wp.f1_reward(huge, ex(GOLD)) <= 1.0
    assert time.perf_counter() - t < 2.0


def test_parse_bad_arguments():
    with pytest.raises(TypeError, match="text"):
        wp.parse_sections(b"New items:")
    with pytest.raises(ValueError, match="max_lines"):
        wp.parse_sections("x", max_lines=0)


# ---------------------------------------------------------------- F1 against hand maths


def test_f1_perfect():
    r = wp.item_f1(GOLD, GOLD)
    assert (r["precision"], r["recall"], r["f1"]) == (1.0, 1.0, 1.0)
    assert (r["matched"], r["n_pred"], r["n_gold"]) == (4, 4, 4)


def test_f1_disjoint():
    r = wp.item_f1(doc(new=["a"], updated=["b"]), doc(new=["c"], deleted=["b"]))
    assert (r["precision"], r["recall"], r["f1"], r["matched"]) == (0.0, 0.0, 0.0, 0)


def test_f1_same_item_in_another_section_does_not_match():
    assert wp.item_f1(doc(deleted=["x"]), doc(new=["x"]))["f1"] == 0.0


def test_f1_partial():
    # 2 of 3 gold items, plus 1 extra: P = 2/3, R = 2/3, F1 = 2/3.
    r = wp.item_f1(doc(new=["a"], updated=["b", "z"]), doc(new=["a"], deleted=["c"], updated=["b"]))
    assert (r["matched"], r["n_pred"], r["n_gold"]) == (2, 3, 3)
    assert r["precision"] == pytest.approx(2 / 3) and r["recall"] == pytest.approx(2 / 3)
    assert r["f1"] == pytest.approx(2 / 3)
    # Unbalanced: 1 hit of 1 predicted, 4 gold -> P = 1, R = 1/4, F1 = 2/5.
    r = wp.item_f1(doc(new=["a"]), doc(new=["a", "b"], deleted=["c"], updated=["d"]))
    assert (r["precision"], r["recall"], r["f1"]) == (1.0, 0.25, pytest.approx(0.4))


def test_f1_duplicates_count_once():
    r = wp.item_f1(doc(new=["a", "a", " a"]), doc(new=["a", "a"]))
    assert (r["matched"], r["n_pred"], r["n_gold"], r["f1"]) == (1, 1, 1, 1.0)


def test_f1_empty_prediction_and_both_empty():
    assert wp.item_f1("", GOLD)["f1"] == 0.0
    assert wp.item_f1(doc(), GOLD)["f1"] == 0.0
    # RLVR-World scores both-empty as 0, not 1.
    r = wp.item_f1(doc(), doc())
    assert (r["precision"], r["recall"], r["f1"], r["n_pred"], r["n_gold"]) == (0.0, 0.0, 0.0, 0, 0)
    assert wp.item_f1("", "")["f1"] == 0.0


def test_f1_none_items_match_each_other():
    r = wp.item_f1(doc(new=["None"], deleted=["None"]), doc(new=["None"], deleted=["None"], updated=["u"]))
    assert (r["matched"], r["n_pred"], r["n_gold"]) == (2, 2, 3)


def test_strictness_semantics():
    pred, gold = doc(new=["a", "b", "c"]), doc(new=["a", "x"])
    assert wp.item_f1(pred, gold, strictness=-1.0)["matched"] == 0
    assert wp.item_f1(pred, gold, strictness=0.0)["matched"] == 1
    assert wp.item_f1(pred, gold, strictness=9999.0)["matched"] == 1
    assert wp.item_f1(pred, gold, strictness=10000.0)["matched"] == 2  # every assigned pair counts
    with pytest.raises(ValueError, match="NaN"):
        wp.item_f1(pred, gold, strictness=math.nan)
    with pytest.raises(TypeError, match="strictness"):
        wp.item_f1(pred, gold, strictness="0")


def test_fuzzy_cost_plugs_into_hungarian():
    def prefix_cost(a: str, b: str) -> float:
        return 0.0 if a == b else (0.5 if a[:3] == b[:3] else wp.MISMATCH_COST)

    pred, gold = doc(new=["[1] link 'a'", "[2] btn"]), doc(new=["[1] link 'b'", "[2] btn", "[3] x"])
    assert wp.item_f1(pred, gold)["matched"] == 1
    assert wp.item_f1(pred, gold, strictness=0.5, cost=prefix_cost)["matched"] == 2
    assert wp.item_f1(pred, gold, strictness=0.0, cost=prefix_cost)["matched"] == 1


def test_hungarian_refuses_huge_matrix():
    big = {str(i) for i in range(2001)}
    with pytest.raises(ValueError, match="MAX_CELLS"):
        wp.hungarian_count(big, big)
    assert wp.match_count(big, big) == 2001  # the exact path has no such limit


items = st.sampled_from(["a", "b", "c", "d", "None", "[1] link 'x'", "[2] button ''", "e", "f"])
strictness = st.sampled_from([0.0, 0.5, 1.0, -0.5, 9999.0, 10000.0, 1e9])


@settings(max_examples=300, deadline=None)
@given(st.frozensets(items, max_size=9), st.frozensets(items, max_size=9), strictness)
def test_fast_path_equals_hungarian_on_sets(gold, pred, p):
    fast = wp.match_count(gold, pred, strictness=p)
    assert fast == wp.hungarian_count(gold, pred, strictness=p)
    assert fast == wp.match_count(gold, pred, strictness=p, cost=wp.exact_cost)
    if 0 <= p < wp.MISMATCH_COST:
        assert fast == len(gold & pred)


@settings(max_examples=200, deadline=None)
@given(st.lists(items, max_size=10), st.lists(items, max_size=10), strictness)
def test_fast_path_equals_hungarian_on_multisets(gold, pred, p):
    assert wp.match_count(gold, pred, strictness=p) == wp.hungarian_count(gold, pred, strictness=p)


headers = st.sampled_from(["New items:", "Deleted items:", "Updated items: x", "", "  "])
lines = st.one_of(items, headers, st.text(max_size=8))


@settings(max_examples=200, deadline=None)
@given(st.lists(lines, max_size=30), st.lists(lines, max_size=30))
def test_item_f1_properties(pred_lines, gold_lines):
    pred, gold = "\n".join(pred_lines), "\n".join(gold_lines)
    r = wp.item_f1(pred, gold)
    assert 0.0 <= r["f1"] <= 1.0 and 0 <= r["matched"] <= min(r["n_pred"], r["n_gold"])
    # F1 is symmetric in pred / gold, and equals 2*matched/(n_pred+n_gold) when anything matched.
    assert wp.item_f1(gold, pred)["f1"] == pytest.approx(r["f1"])
    if r["matched"]:
        assert r["f1"] == pytest.approx(2 * r["matched"] / (r["n_pred"] + r["n_gold"]))
    assert r["f1"] == wp.item_f1(pred, gold, cost=wp.exact_cost)["f1"]


# ---------------------------------------------------------------- metrics / reward entry points


def test_metrics_and_registered_reward():
    reward = get_reward("web_page/f1")
    assert reward is wp.f1_reward
    cot = "<think>\nThe click opens the menu.\n</think>\n" + GOLD
    assert reward(cot, ex(GOLD)) == 1.0
    m = wp.metrics(cot, ex(GOLD))
    assert m == {"f1": 1.0, "precision": 1.0, "recall": 1.0, "parsed": 1.0}
    m = wp.metrics("I cannot tell.", ex(GOLD))
    assert m == {"f1": 0.0, "precision": 0.0, "recall": 0.0, "parsed": 0.0}
    assert wp.metrics("Deleted items:\n", ex(GOLD))["parsed"] == 1.0


def test_reasoning_lines_after_a_header_count_as_items():
    # The whole completion is parsed, as in RLVR-World: a header inside the reasoning leaks items.
    cot = "<think>\nUpdated items: maybe the textbox\nthe textbox gets focus\n</think>\n" + GOLD
    r = wp.item_f1(cot, GOLD)
    assert r["n_pred"] == 4 + 2 and r["matched"] == 4  # "the textbox gets focus" and "</think>" leak


def test_reward_bad_input():
    with pytest.raises(TypeError, match="completion"):
        wp.f1_reward(None, ex(GOLD))
    with pytest.raises(TypeError, match="ground_truth.*t:1"):
        wp.metrics("x", Example(prompt="p", answer="", ground_truth=None, source="t:1"))


# ---------------------------------------------------------------- RLVR-World's values on broken answers
#
# Expectations derived by hand from RLVR-World's web_agent.compute_score (parse_magento_log, then item F1
# with exact matching; the web reward parses no JSON and rewrites no literals). GOLD has 4 items.

EOS = "<\uff5cend\u2581of\u2581sentence\uff5c>"  # DeepSeek-R1's EOS text, as verl decodes it


def rlvr_f1(matched, n_pred, n_gold):
    """RLVR-World's F1, in its operation order."""
    precision = matched / n_pred if n_pred > 0 else 0
    recall = matched / n_gold if n_gold > 0 else 0
    return 2 * precision * recall / (precision + recall) if precision + recall > 0 else 0


def test_eos_text_appended():
    # GOLD ends with a newline: the EOS is a line of its own, an extra item of "Updated items"
    assert wp.f1_reward(GOLD + EOS, ex(GOLD)) == rlvr_f1(4, 5, 4) == 2 * 0.8 * 1.0 / 1.8
    # glued to the last item, it makes that item miss (and counts as a predicted item)
    assert wp.f1_reward(GOLD.rstrip("\n") + EOS, ex(GOLD)) == rlvr_f1(3, 4, 4) == 0.75


def test_code_fences():
    # the opening fence comes before any header (ignored); the closing one is an item of the last section
    assert wp.f1_reward("```\n" + GOLD + "```", ex(GOLD)) == rlvr_f1(4, 5, 4)
    assert wp.f1_reward("```text\n" + GOLD + "```\n" + EOS, ex(GOLD)) == rlvr_f1(4, 6, 4)


def test_literal_words_are_not_rewritten():
    # "True" and "None" are compared as written: the gold copied exactly is perfect, "true" misses
    assert wp.f1_reward(GOLD, ex(GOLD)) == 1.0
    assert wp.f1_reward(GOLD.replace("focused: True", "focused: true"), ex(GOLD)) == rlvr_f1(3, 4, 4)


@pytest.mark.parametrize(
    "old, new",
    [
        ("[1272] button 'Search'", "[1272] button Search'"),  # a missing opening quote
        ("[1273] StaticText", "[1273 StaticText"),  # a missing bracket
        ("[1272] button 'Search'", "[1272] button 'Search'\n[1272] button 'Search'"),  # a repeated item
    ],
)
def test_broken_items(old, new):
    broken = GOLD.replace(old, new)
    matched = 4 if new.count("[1272]") == 2 else 3  # a repeated item is one item of the set
    n_pred = 4
    assert wp.f1_reward(broken, ex(GOLD)) == rlvr_f1(matched, n_pred, 4)


def test_missing_colon_in_a_header():
    # "Deleted items" without its colon is no header: it and "None" become items of "New items"
    # (4 predicted there, 2 right), "Deleted items" stays empty (its gold None missed); Updated 1 of 1
    broken = GOLD.replace("Deleted items:", "Deleted items")
    assert wp.f1_reward(broken, ex(GOLD)) == rlvr_f1(3, 5, 4)
    assert rlvr_f1(3, 5, 4) == 2 * 0.6 * 0.75 / 1.35


def test_second_answer_after_the_first():
    # a repeated answer adds nothing (sets); a second, different one adds its items to the same sections
    assert wp.f1_reward(GOLD + "\n" + GOLD, ex(GOLD)) == 1.0
    second = GOLD + "\nNew items:\n[9] link 'x'\n"
    assert wp.f1_reward(second, ex(GOLD)) == rlvr_f1(4, 5, 4)


# ---------------------------------------------------------------- loader


def row(i: int, gold: str = GOLD, **over):
    r = {
        "data_source": "web_agent",
        "prompt": [{"role": "user", "content": f"URL: http://x/{i}\nCURRENT ACTION: click [{i}]"}],
        "ability": "web",
        "reward_model": {"style": "rule", "ground_truth": gold},
        "extra_info": {"split": "train", "index": i},
        "question": f"q{i}",
        "answer": f"<think>r{i}</think>\n{gold}",
    }
    r.update(over)
    return r


def write_jsonl(path, rows):
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n", encoding="utf-8")
    return path


def write_parquet(path, rows):
    import pandas as pd

    pd.DataFrame(rows).to_parquet(path)
    return path


@pytest.mark.parametrize("kind", ["jsonl", "parquet", "json"])
def test_loader_reads_real_format(tmp_path, kind):
    rows = [row(i) for i in range(3)]
    path = tmp_path / f"train.{kind}"
    if kind == "jsonl":
        write_jsonl(path, rows)
    elif kind == "parquet":
        write_parquet(path, rows)
    else:
        path.write_text(json.dumps(rows), encoding="utf-8")
    out = load_web_page(path)
    assert len(out) == 3
    e = out[1]
    assert e.prompt == "URL: http://x/1\nCURRENT ACTION: click [1]"
    assert e.ground_truth == GOLD
    assert e.answer == f"<think>r1</think>\n{GOLD}"  # the SFT response column, the MLE target
    assert dict(e.extra) == {"split": "train", "index": 1}
    assert e.source == (f"{path}:2" if kind == "jsonl" else f"{path}:1")
    assert wp.f1_reward(GOLD, e) == 1.0
    assert [x.prompt for x in load_web_page(path, limit=2)] == [x.prompt for x in out[:2]]
    assert load_web_page(str(path), limit=0) == []


def test_loader_json_lines_in_dot_json_and_blank_lines(tmp_path):
    path = tmp_path / "d.json"
    path.write_text("\n" + json.dumps(row(0)) + "\n\n" + json.dumps(row(1)) + "\n", encoding="utf-8")
    assert [e.source for e in load_web_page(path)] == [f"{path}:2", f"{path}:4"]


@pytest.mark.parametrize("kind", ["jsonl", "parquet"])
def test_loader_answer_is_the_sft_response_else_the_ground_truth(tmp_path, kind):
    # RLVR-World's SFT run reads the same files with data.response_key=answer
    rows = [row(0), row(1), row(2), row(3)]
    del rows[1]["answer"]
    rows[2]["answer"] = None
    rows[3]["answer"] = "  \n"
    path = tmp_path / f"d.{kind}"
    write_jsonl(path, rows) if kind == "jsonl" else write_parquet(path, rows)
    got = load_web_page(path)
    assert [e.answer for e in got] == [f"<think>r0</think>\n{GOLD}", GOLD, GOLD, GOLD]
    assert all(e.ground_truth == GOLD for e in got)
    rows[1]["answer"] = ["not", "text"]
    with pytest.raises(ValueError, match=r"d\.jsonl:2: field 'answer' must be a str, got a list of 2"):
        load_web_page(write_jsonl(tmp_path / "d.jsonl", rows))


def test_loader_parquet_without_pyarrow_names_the_install(tmp_path, monkeypatch):
    path = write_parquet(tmp_path / "d.parquet", [row(0)])
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # import fails
    with pytest.raises(ImportError, match=r"pip install pyarrow .*rlvr_fast\[data\]"):
        load_web_page(path)


def test_loader_optional_fields(tmp_path):
    r = row(0)
    del r["extra_info"], r["data_source"]
    r["prompt"] = "plain prompt"
    (e,) = load_web_page(write_jsonl(tmp_path / "d.jsonl", [r]))
    assert e.prompt == "plain prompt" and dict(e.extra) == {}


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda r: r.pop("prompt"), "missing field 'prompt'"),
        (lambda r: r.pop("reward_model"), "missing field 'reward_model'"),
        (lambda r: r["reward_model"].pop("ground_truth"), "missing field 'reward_model.ground_truth'"),
        (lambda r: r["reward_model"].update(ground_truth=3), "'reward_model.ground_truth' must be a str"),
        (lambda r: r.update(reward_model="x"), "'reward_model' must be an object"),
        (lambda r: r.update(prompt=[]), "'prompt' must be a list with one"),
        (lambda r: r.update(prompt=[{"role": "system", "content": "s"}]), r"'prompt\[0\].role' must be"),
        (lambda r: r.update(prompt=[{"role": "user"}]), r"'prompt\[0\].content' must be a str"),
        (lambda r: r.update(data_source="llm_simulator"), "'data_source' is 'llm_simulator'"),
        (lambda r: r.update(extra_info=[1]), "'extra_info' must be an object"),
    ],
)
def test_loader_bad_row_names_file_line_and_field(tmp_path, change, message):
    bad = row(1)
    change(bad)
    path = write_jsonl(tmp_path / "d.jsonl", [row(0), bad])
    with pytest.raises(ValueError, match=f"d.jsonl:2: .*{message}"):
        load_web_page(path)


def test_loader_bad_parquet_row_names_row(tmp_path):
    good, bad = row(0), row(1)
    bad["reward_model"] = {"style": "rule", "ground_truth": None}
    path = write_parquet(tmp_path / "d.parquet", [good, bad])
    with pytest.raises(ValueError, match=r"d\.parquet:1: missing field 'reward_model\.ground_truth'"):
        load_web_page(path)


def test_loader_unreadable_files_name_file_and_line(tmp_path):
    from rlvr_fast.worlds._files import DataFileError

    good = [json.dumps(row(i)).encode() for i in range(2)]
    (tmp_path / "utf.jsonl").write_bytes(b"\n".join([*good, b'{"question": "\xc3\x28"}']) + b"\n")
    with pytest.raises(DataFileError, match=r"utf\.jsonl:3: not UTF-8 \(invalid continuation byte"):
        load_web_page(tmp_path / "utf.jsonl")
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000, encoding="utf-8")
    with pytest.raises(DataFileError, match=r"deep\.json: invalid JSON \(nested too deep to parse\)"):
        load_web_page(tmp_path / "deep.json")
    data = write_parquet(tmp_path / "d.parquet", [row(0), row(1)]).read_bytes()
    (tmp_path / "cut.parquet").write_bytes(data[: len(data) - 10])
    with pytest.raises(DataFileError, match=r"cut\.parquet: not a readable parquet file \(.*magic bytes"):
        load_web_page(tmp_path / "cut.parquet")


def test_loader_bad_files(tmp_path, caplog):
    (tmp_path / "bad.jsonl").write_text(json.dumps(row(0)) + "\n{not json\n", encoding="utf-8")
    with pytest.raises(ValueError, match="bad.jsonl:2: invalid JSON"):
        load_web_page(tmp_path / "bad.jsonl")
    (tmp_path / "list.jsonl").write_text("[1, 2]\n", encoding="utf-8")
    with pytest.raises(ValueError, match="list.jsonl:1: expected an object"):
        load_web_page(tmp_path / "list.jsonl")
    (tmp_path / "empty.jsonl").write_text("\n", encoding="utf-8")
    with pytest.raises(ValueError, match="no rows"):
        load_web_page(tmp_path / "empty.jsonl")
    with pytest.raises(ValueError, match=r"\.parquet, \.jsonl or \.json"):
        load_web_page(tmp_path / "d.csv")
    with pytest.raises(ValueError, match="limit"):
        load_web_page(tmp_path / "bad.jsonl", limit=-1)
    path = write_jsonl(tmp_path / "nohdr.jsonl", [row(0, gold="just text")])
    with caplog.at_level("WARNING"):
        assert len(load_web_page(path)) == 1
    assert "none of the headers" in caplog.text and "nohdr.jsonl:1" in caplog.text


def test_web_page_task(tmp_path):
    train = write_parquet(tmp_path / "train.parquet", [row(i) for i in range(4)])
    test = write_jsonl(tmp_path / "test.jsonl", [row(i) for i in range(2)])
    task = web_page_task(train, test, limit=3)
    assert (task.name, task.default_reward, task.select_metric) == ("web_page", "web_page/f1", "f1")
    assert (len(task.train), len(task.test)) == (3, 2)
    assert task.metrics is wp.metrics
    assert task.metrics(GOLD, task.test[0])["f1"] == 1.0
