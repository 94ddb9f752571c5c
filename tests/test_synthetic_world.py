"""The built-in synthetic text-game world and its word-level tokenizer."""

from __future__ import annotations

import importlib.util
import json
import pickle

import pytest

from rlvr_fast.task import Example, Task
from rlvr_fast.worlds.synthetic import (
    SyntheticTextGame,
    build_tokenizer,
    dumps,
    gold_diff,
    step,
    synthetic_text_game_task,
)

N_TRAIN, N_TEST = 5000, 1000


@pytest.fixture(scope="module")
def task() -> Task:
    return synthetic_text_game_task(seed=0, n_train=N_TRAIN, n_test=N_TEST)


@pytest.fixture(scope="module")
def examples(task: Task) -> list[Example]:
    return task.train + task.test


def _apply(state: dict, diff: dict) -> dict:
    """RLVR-World's diff application, written independently of the world's code."""
    modified = {o["uuid"]: o for o in diff["modified"]}
    removed = set(diff["removed"])
    objs = [modified.get(o["uuid"], o) for o in state["game_state"][:-1] if o["uuid"] not in removed]
    return {"game_state": objs + [diff["score"]]}


def _obj(uuid: int, name: str, contains: list[int] | None = None, **props) -> dict:
    return {"uuid": uuid, "name": name, "properties": props, "contains": contains or []}


def _state(*objs: dict, score: int = 0, over: bool = False, won: bool = False) -> dict:
    return {"game_state": [*objs, {"score": score, "gameOver": over, "gameWon": won}]}


# ----------------------------------------------------------------------------- data


def test_task_fields(task: Task) -> None:
    assert task.name == "synthetic_text_game"
    assert task.default_reward == "text_game/task"
    assert task.select_metric == "exact"
    assert len(task.train) == N_TRAIN and len(task.test) == N_TEST
    for split, exs in (("train", task.train), ("test", task.test)):
        for i, ex in enumerate(exs[:50]):
            assert ex.source == f"synthetic:{split}:{i}"
            assert set(ex.extra) == {"data_state", "data_action"}
            assert ex.prompt.endswith(f"action : {ex.extra['data_action']} diff :")
            assert json.loads(ex.prompt[len("state : ") : ex.prompt.index(" action : ")]) == json.loads(
                ex.extra["data_state"]
            )


def test_deterministic_per_seed() -> None:
    a = SyntheticTextGame(seed=3).splits(300, 100)
    b = SyntheticTextGame(seed=3).splits(300, 100)
    c = SyntheticTextGame(seed=4).splits(300, 100)
    assert a == b
    assert a[0] != c[0]


def test_distinct_and_no_overlap(task: Task, examples: list[Example]) -> None:
    keys = [(e.extra["data_state"], e.extra["data_action"]) for e in examples]
    assert len(set(keys)) == N_TRAIN + N_TEST  # thousands of distinct transitions, none repeated
    train = {(e.extra["data_state"], e.extra["data_action"]) for e in task.train}
    test = {(e.extra["data_state"], e.extra["data_action"]) for e in task.test}
    assert not train & test
    world = SyntheticTextGame(seed=0)
    for e in task.test[:200]:
        assert world.split_of(json.loads(e.extra["data_state"]), e.extra["data_action"]) == "test"
    # The split is a property of the pair, not of the seed: another seed never puts a test pair in train.
    other_train, _ = SyntheticTextGame(seed=1).splits(2000, 0)
    assert not {(e.extra["data_state"], e.extra["data_action"]) for e in other_train} & test


def test_gold_diffs_are_valid(examples: list[Example]) -> None:
    n_noop = n_removed = 0
    for e in examples:
        state, nxt, diff = json.loads(e.extra["data_state"]), json.loads(e.ground_truth), json.loads(e.answer)
        assert list(diff) == ["modified", "removed", "score"]
        assert _apply(state, diff) == nxt
        assert nxt == step(state, e.extra["data_action"])
        before = {o["uuid"] for o in state["game_state"][:-1]}
        after = {o["uuid"] for o in nxt["game_state"][:-1]}
        assert after <= before  # never adds objects
        assert list(nxt["game_state"][-1]) == ["score", "gameOver", "gameWon"]
        for o in state["game_state"][:-1] + diff["modified"]:
            assert list(o) == ["name", "uuid", "properties", "contains"]  # name first: see _with
        n_noop += not diff["modified"] and not diff["removed"] and nxt == state
        n_removed += bool(diff["removed"])
    # A mix of effects and no-ops.
    assert 0.1 < n_noop / len(examples) < 0.5
    assert n_removed > 100


def test_action_mix(examples: list[Example]) -> None:
    verbs = {e.extra["data_action"].split()[0] for e in examples}
    assert verbs == {"turn", "open", "close", "take", "put", "heat", "eat", "look"}


def test_token_lengths(task: Task, examples: list[Example]) -> None:
    tok = task.tokenizer
    prompt = [len(tok.encode(e.prompt)) for e in examples]
    answer = [len(tok.encode(e.answer)) for e in examples]
    assert max(prompt) <= 120 and sum(prompt) / len(prompt) <= 100
    assert max(answer) <= 60 and sum(answer) / len(answer) <= 45


def test_generation_is_fast() -> None:
    import time

    t = time.perf_counter()
    SyntheticTextGame(seed=7).splits(4000, 1000)
    assert time.perf_counter() - t < 5.0  # ~0.5 s on a CI core; loose bound against slow machines


# ----------------------------------------------------------------------------- rules


def test_rules_by_hand() -> None:
    lamp, stove = _obj(1, "red_lamp", is_on=False), _obj(2, "stove", is_on=True)
    apple = _obj(3, "red_apple", temperature=2, is_cooked=False)
    box = _obj(4, "box", [3], is_open=True)
    s = _state(lamp, stove, apple, box, score=1)

    assert step(s, "turn on red_lamp")["game_state"][0]["properties"] == {"is_on": True}
    assert step(s, "turn off red_lamp") == s  # already off
    assert step(s, "heat red_apple") == s  # inside a container
    taken = step(s, "take red_apple")
    assert taken["game_state"][3]["contains"] == []
    heated = step(taken, "heat red_apple")
    assert heated["game_state"][2]["properties"] == {"temperature": 3, "is_cooked": True}
    assert heated["game_state"][-1]["score"] == 2  # cooking scores
    assert step(step(heated, "turn off stove"), "heat red_apple") == step(heated, "turn off stove")
    assert step(heated, "put red_apple in box")["game_state"][3]["contains"] == [3]
    won = step(heated, "eat red_apple")
    assert [o["uuid"] for o in won["game_state"][:-1]] == [1, 2, 4]
    assert won["game_state"][-1] == {"score": 3, "gameOver": True, "gameWon": True}
    assert step(won, "turn on red_lamp") == won  # game over: nothing changes

    raw = step(s, "eat red_apple")  # reachable in the open box: box loses it too
    assert gold_diff(s, raw) == {
        "modified": [_obj(4, "box", [], is_open=True)],
        "removed": [3],
        "score": {"score": 0, "gameOver": False, "gameWon": False},
    }
    lost = step(_state(apple, score=0), "eat red_apple")
    assert lost["game_state"] == [{"score": -1, "gameOver": True, "gameWon": False}]

    closed = step(s, "close box")
    for a in ("eat red_apple", "take red_apple", "look", "open stove", "eat stove", "turn on box", "dance"):
        assert step(closed, a) == closed, a
    assert step(s, "eat red_apple") != s and step(s, "open box") == s


def test_gold_diff_rejects_added_objects() -> None:
    s = _state(_obj(1, "box", is_open=False))
    with pytest.raises(ValueError, match="adds objects"):
        gold_diff(s, _state(_obj(1, "box", is_open=False), _obj(2, "egg", temperature=0, is_cooked=False)))


def test_dumps_is_json() -> None:
    x = {"a": [1, {"b": True, "c": []}, {}], "d": "egg", "e": -1, "f": False}
    want = '{ "a" : [ 1 , { "b" : true , "c" : [ ] } , { } ] , "d" : "egg" , "e" : -1 , "f" : false }'
    assert dumps(x) == want
    assert json.loads(dumps(x)) == x


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(min_objects=0),
        dict(min_objects=3, max_objects=2),
        dict(max_uuid=2),
        dict(p_effect=1.5),
        dict(test_fraction=0.0),
    ],
)
def test_bad_world_arguments(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        SyntheticTextGame(**kwargs)


def test_too_few_distinct_transitions_raises() -> None:
    with pytest.raises(ValueError, match="distinct transitions"):
        SyntheticTextGame(min_objects=1, max_objects=1, max_uuid=1).splits(100_000, 0, max_draws=20_000)


# ----------------------------------------------------------------------------- tokenizer


def test_tokenizer_round_trip_all_texts(task: Task, examples: list[Example]) -> None:
    tok = task.tokenizer
    specials = (tok.pad_token, tok.bos_token, tok.eos_token, tok.unk_token)
    assert specials == ("<pad>", "<bos>", "<eos>", "<unk>")
    assert [tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id] == [0, 1, 2, 3]
    texts = [t for e in examples for t in (e.prompt, e.answer)]
    ids = tok(texts)["input_ids"]
    assert all(tok.unk_token_id not in row for row in ids)
    assert tok.batch_decode(ids) == texts
    assert tok.decode(ids[0] + [tok.eos_token_id], skip_special_tokens=True) == texts[0]


def test_tokenizer_splits_compact_json(task: Task, examples: list[Example]) -> None:
    tok = task.tokenizer
    e = examples[0]
    compact = json.dumps(json.loads(e.answer), separators=(",", ":"))
    assert tok.encode(compact) == tok.encode(e.answer)
    assert json.loads(tok.decode(tok.encode(compact))) == json.loads(e.answer)


def test_tokenizer_covers_other_seeds_and_sizes(task: Task) -> None:
    # Built from the world's vocabulary, not from the sampled texts.
    tok = task.tokenizer
    train, test = SyntheticTextGame(seed=11).splits(500, 500)
    for e in train + test:
        assert tok.unk_token_id not in tok.encode(e.prompt + " " + e.answer)


def test_tokenizer_save_reload_and_pickle(task: Task, examples: list[Example], tmp_path) -> None:
    from transformers import PreTrainedTokenizerFast

    tok = task.tokenizer
    tok.save_pretrained(tmp_path)
    for other in (PreTrainedTokenizerFast.from_pretrained(tmp_path), pickle.loads(pickle.dumps(tok))):
        assert other.get_vocab() == tok.get_vocab()
        assert other.pad_token_id == 0 and other.eos_token_id == 2
        for e in examples[:200]:
            assert other.encode(e.prompt) == tok.encode(e.prompt)
            assert other.decode(other.encode(e.answer)) == e.answer


def test_build_tokenizer_is_deterministic() -> None:
    a = build_tokenizer(["b a { } : ,", "c"])
    b = build_tokenizer(["c", "a b , : { }"])
    assert a.get_vocab() == b.get_vocab()
    assert a.decode(a.encode("a b zzz")) == "a b <unk>"


# ----------------------------------------------------------------------------- reward


@pytest.mark.skipif(
    importlib.util.find_spec("rlvr_fast.rewards.text_game") is None,
    reason="rlvr_fast.rewards.text_game not written yet",
)
def test_gold_answers_score_exact(task: Task, examples: list[Example]) -> None:
    for e in examples[::10]:
        m = task.metrics(e.answer, e)
        assert m["exact"] == 1.0, (e.source, m)
        assert m["parsed"] == 1.0
    # A wrong diff (drop every modification) is not exact when something did change.
    changed = [e for e in examples if json.loads(e.answer)["modified"]][:50]
    for e in changed:
        bad = json.loads(e.answer)
        bad["modified"] = []
        assert task.metrics(dumps(bad), e)["exact"] == 0.0


def test_uuids_by_name_are_fixed_per_object_and_still_distinct() -> None:
    world = SyntheticTextGame(seed=0, uuids="by_name")
    train, test = world.splits(3000, 300)
    seen: dict[str, int] = {}
    for ex in train + test:
        for obj in json.loads(ex.extra["data_state"])["game_state"][:-1]:
            assert seen.setdefault(obj["name"], obj["uuid"]) == obj["uuid"]
    assert len(seen) > 10 and len(set(seen.values())) == len(seen)
    assert len({ex.prompt for ex in train}) == len(train)  # distinct transitions remain
    tok = synthetic_text_game_task(seed=0, n_train=50, n_test=10, uuids="by_name").tokenizer
    assert all(tok.unk_token_id not in tok(ex.prompt + " " + ex.answer)["input_ids"] for ex in train[:200])
    with pytest.raises(ValueError, match="uuids must be"):
        SyntheticTextGame(uuids="sequential")
