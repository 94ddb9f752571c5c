"""The built-in synthetic text-game world: tiny kitchen states in RLVR-World's ByteSized32 format.

It is the world behind ``rlvr-fast demo``: short, fully deterministic transitions (lamps, heaters,
containers, food) that a ~1-3M parameter model can learn on a CPU in minutes, scored by the same code
as the real text-game data (:mod:`rlvr_fast.rewards.text_game`). States are RLVR-World's text-game
simulator JSON (``{"game_state": [object, ..., score]}``) and answers its state diffs, written with one
space between JSON tokens so a word-level tokenizer round-trips them; a hash of each (state, action)
pair picks its split. Objects, rules, text lengths and splits: docs/worlds.md.
"""

from __future__ import annotations

import hashlib
import json
import random
from typing import Any, Iterable, Iterator

from ..task import Example, RewardLimits
from .text import TextTask

__all__ = [
    "SyntheticTextGame",
    "build_tokenizer",
    "dumps",
    "gold_diff",
    "step",
    "synthetic_text_game_task",
]

LAMPS = ("red_lamp", "blue_lamp", "desk_lamp", "floor_lamp")
HEATERS = ("stove", "oven", "grill", "toaster")
CONTAINERS = ("box", "basket", "fridge", "cupboard", "drawer", "crate")
FOODS = (
    "red_apple",
    "green_apple",
    "bread",
    "egg",
    "potato",
    "carrot",
    "fish",
    "onion",
    "corn",
    "pie",
)
KIND_OF: dict[str, str] = {
    **{n: "lamp" for n in LAMPS},
    **{n: "heater" for n in HEATERS},
    **{n: "container" for n in CONTAINERS},
    **{n: "food" for n in FOODS},
}
_NAME_INDEX = {name: i for i, name in enumerate(KIND_OF)}  # fixed uuids for uuids="by_name"
MAX_TEMPERATURE = 5
COOKED_AT = 3
# Kind weights for sampling objects: food-heavy, since most interesting actions involve food.
_KIND_WEIGHTS = {"food": 0.4, "container": 0.25, "heater": 0.2, "lamp": 0.15}
_NAMES_BY_KIND = {"lamp": LAMPS, "heater": HEATERS, "container": CONTAINERS, "food": FOODS}
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<unk>")
_PROMPT_WORDS = (
    "state",
    "action",
    "diff",
    "look",
    "turn",
    "on",
    "off",
    "open",
    "close",
    "take",
    "put",
    "in",
    "heat",
    "eat",
)
_KEYS = (
    "game_state",
    "uuid",
    "name",
    "properties",
    "contains",
    "score",
    "gameOver",
    "gameWon",
    "modified",
    "removed",
    "is_on",
    "is_open",
    "temperature",
    "is_cooked",
)


# ----------------------------------------------------------------------------- serialisation


def dumps(obj: Any) -> str:
    """Serialise JSON with exactly one space between JSON tokens (keys keep insertion order).

    ``json.loads(dumps(x)) == x``; the single spaces make word-level tokenisation reversible.
    Strings must be plain words (no spaces, quotes or JSON punctuation).
    """
    if isinstance(obj, bool):
        return "true" if obj else "false"
    if isinstance(obj, int):
        return str(obj)
    if isinstance(obj, str):
        return f'"{obj}"'
    if isinstance(obj, dict):
        if not obj:
            return "{ }"
        return "{ " + " , ".join(f'"{k}" : {dumps(v)}' for k, v in obj.items()) + " }"
    if isinstance(obj, (list, tuple)):
        if not obj:
            return "[ ]"
        return "[ " + " , ".join(dumps(v) for v in obj) + " ]"
    raise TypeError(f"dumps: unsupported type {type(obj).__name__}")


def format_prompt(state: dict, action: str) -> str:
    """The model's input: ``state : <state json> action : <action> diff :``."""
    return f"state : {dumps(state)} action : {action} diff :"


# ----------------------------------------------------------------------------- rules


def _objects(state: dict) -> list[dict]:
    return state["game_state"][:-1]


def _container_of(objs: list[dict], uuid: int) -> dict | None:
    for o in objs:
        if uuid in o["contains"]:
            return o
    return None


def _with(obj: dict, properties: dict | None = None, contains: list[int] | None = None) -> dict:
    """A copy of ``obj`` with updated properties / contains (never mutates ``obj``)."""
    return {
        "name": obj["name"],
        "uuid": obj["uuid"],
        "properties": {**obj["properties"], **(properties or {})},
        "contains": list(obj["contains"] if contains is None else contains),
    }


def _transition(state: dict, action: str) -> tuple[list[dict], list[int], dict]:
    """(modified objects, removed uuids, new score object) for ``action``; cheap on no-ops."""
    objs = _objects(state)
    score = state["game_state"][-1]
    noop: tuple[list[dict], list[int], dict] = ([], [], dict(score))
    if score["gameOver"]:
        return noop
    by_name = {o["name"]: o for o in objs}
    w = action.split()

    if len(w) == 3 and w[0] == "turn" and w[1] in ("on", "off"):
        x = by_name.get(w[2])
        want = w[1] == "on"
        if x is None or KIND_OF[x["name"]] not in ("lamp", "heater") or x["properties"]["is_on"] == want:
            return noop
        return [_with(x, {"is_on": want})], [], dict(score)

    if len(w) == 2 and w[0] in ("open", "close"):
        c = by_name.get(w[1])
        want = w[0] == "open"
        if c is None or KIND_OF[c["name"]] != "container" or c["properties"]["is_open"] == want:
            return noop
        return [_with(c, {"is_open": want})], [], dict(score)

    if len(w) == 2 and w[0] in ("take", "heat", "eat"):
        f = by_name.get(w[1])
        if f is None or KIND_OF[f["name"]] != "food":
            return noop
        c = _container_of(objs, f["uuid"])
        if w[0] == "take":
            if c is None or not c["properties"]["is_open"]:
                return noop
            return [_with(c, contains=[u for u in c["contains"] if u != f["uuid"]])], [], dict(score)
        if w[0] == "heat":
            t = f["properties"]["temperature"]
            heater_on = any(KIND_OF[o["name"]] == "heater" and o["properties"]["is_on"] for o in objs)
            if c is not None or not heater_on or t >= MAX_TEMPERATURE:
                return noop
            cooked = f["properties"]["is_cooked"] or t + 1 >= COOKED_AT
            gained = int(cooked and not f["properties"]["is_cooked"])
            new_score = {**score, "score": score["score"] + gained}
            return [_with(f, {"temperature": t + 1, "is_cooked": cooked})], [], new_score
        # eat
        if c is not None and not c["properties"]["is_open"]:
            return noop
        modified = [] if c is None else [_with(c, contains=[u for u in c["contains"] if u != f["uuid"]])]
        if f["properties"]["is_cooked"]:
            new_score = {"score": score["score"] + 1, "gameOver": True, "gameWon": True}
        else:
            s = score["score"] - 1
            new_score = {"score": s, "gameOver": s < 0, "gameWon": False}
        return modified, [f["uuid"]], new_score

    if len(w) == 4 and w[0] == "put" and w[2] == "in":
        f, c = by_name.get(w[1]), by_name.get(w[3])
        if (
            f is None
            or c is None
            or KIND_OF[f["name"]] != "food"
            or KIND_OF[c["name"]] != "container"
            or not c["properties"]["is_open"]
            or _container_of(objs, f["uuid"]) is not None
        ):
            return noop
        return [_with(c, contains=[*c["contains"], f["uuid"]])], [], dict(score)

    return noop


def step(state: dict, action: str) -> dict:
    """The next state after ``action`` (a new dict; ``state`` is not modified). Rules: docs/worlds.md."""
    modified, removed, score = _transition(state, action)
    new = {o["uuid"]: o for o in modified}
    gone = set(removed)
    objs = [new.get(o["uuid"], o) for o in _objects(state) if o["uuid"] not in gone]
    return {"game_state": [_with(o) for o in objs] + [score]}


def gold_diff(state: dict, next_state: dict) -> dict:
    """The gold answer of a transition: :func:`rlvr_fast.rewards.text_game.state_diff`, refusing a
    next state that adds objects (RLVR-World's reward drops them, so no answer to it could be exact)."""
    from ..rewards.text_game import state_diff  # imported on use, as the metrics below are

    diff = state_diff(state, next_state)
    before = {o["uuid"] for o in _objects(state)}
    added = sorted(o["uuid"] for o in diff["modified"] if o["uuid"] not in before)
    if added:
        raise ValueError(f"gold_diff: next_state adds objects {added}; RLVR-World's reward would drop them")
    return diff


# ----------------------------------------------------------------------------- the world


class SyntheticTextGame:
    """Seeded generator of distinct (state, action) transitions with a hash-based held-out split.

    seed:          RNG seed; the same arguments always give the same examples.
    min_objects, max_objects: objects per state (the score object not counted).
    max_uuid:      uuids are drawn without replacement from ``1..max_uuid`` (``uuids="random"``).
    uuids:         ``"random"`` (per state, as in ByteSized32) or ``"by_name"``: every object name has a
                   fixed uuid (its catalogue index + 1). Copying a random uuid needs an induction
                   (look-up-and-copy) circuit that a model of the demo's size does not learn within a
                   CPU-minutes budget; with ``by_name`` the world's dynamics are what is left to learn.
    p_effect:      probability that the sampled action changes the state (if any action would).
    p_game_over:   probability that a state is already over (then every action is a no-op).
    test_fraction: share of the (state, action) hash space that belongs to the held-out split.
    """

    def __init__(
        self,
        seed: int = 0,
        min_objects: int = 2,
        max_objects: int = 3,
        max_uuid: int = 12,
        p_effect: float = 0.75,
        p_game_over: float = 0.05,
        test_fraction: float = 0.25,
        uuids: str = "random",
    ) -> None:
        if uuids not in ("random", "by_name"):
            raise ValueError(f"uuids must be 'random' or 'by_name', got {uuids!r}")
        if not 1 <= min_objects <= max_objects:
            raise ValueError(f"need 1 <= min_objects <= max_objects, got {min_objects}, {max_objects}")
        if max_objects > len(KIND_OF):
            raise ValueError(f"max_objects must be <= {len(KIND_OF)}, got {max_objects}")
        if max_uuid < max_objects:
            raise ValueError(f"max_uuid must be >= max_objects ({max_objects}), got {max_uuid}")
        for name, p in (("p_effect", p_effect), ("p_game_over", p_game_over)):
            if not 0.0 <= p <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {p}")
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
        self.seed = seed
        self.min_objects = min_objects
        self.max_objects = max_objects
        self.max_uuid = max_uuid
        self.p_effect = p_effect
        self.p_game_over = p_game_over
        self.test_fraction = test_fraction
        self.uuids = uuids

    # -- sampling

    def sample_state(self, rng: random.Random) -> dict:
        """A random consistent state (foods may sit in containers; names and uuids distinct)."""
        k = rng.randint(self.min_objects, self.max_objects)
        kinds = list(_KIND_WEIGHTS)
        weights = list(_KIND_WEIGHTS.values())
        names: list[str] = []
        while len(names) < k:
            name = rng.choice(_NAMES_BY_KIND[rng.choices(kinds, weights)[0]])
            if name not in names:
                names.append(name)
        if self.uuids == "by_name":
            uuids = [_NAME_INDEX[name] + 1 for name in names]
        else:
            uuids = rng.sample(range(1, self.max_uuid + 1), k)
        objs = []
        for name, uuid in zip(names, uuids):
            kind = KIND_OF[name]
            if kind in ("lamp", "heater"):
                props: dict[str, Any] = {"is_on": rng.random() < 0.5}
            elif kind == "container":
                props = {"is_open": rng.random() < 0.5}
            else:
                t = rng.randint(0, MAX_TEMPERATURE - 1)
                props = {"temperature": t, "is_cooked": t >= COOKED_AT}
            # name before uuid: a causal model copies an object's uuid by finding its name, so the name
            # must come first (JSON key order carries no meaning for the reward)
            objs.append({"name": name, "uuid": uuid, "properties": props, "contains": []})
        containers = [o for o in objs if KIND_OF[o["name"]] == "container"]
        if containers:
            for o in objs:
                if KIND_OF[o["name"]] == "food" and rng.random() < 0.4:
                    rng.choice(containers)["contains"].append(o["uuid"])
        over = rng.random() < self.p_game_over
        won = over and rng.random() < 0.5
        points = rng.randint(0, 2) - (1 if over and not won else 0)  # a lost game ended below 0
        score = {"score": points, "gameOver": over, "gameWon": won}
        return {"game_state": [*objs, score]}

    @staticmethod
    def candidate_actions(state: dict) -> list[str]:
        """Every action that names objects of the state (valid or not), plus ``look``."""
        objs = _objects(state)
        acts = ["look"]
        containers = [o["name"] for o in objs if KIND_OF[o["name"]] == "container"]
        for o in objs:
            n, kind = o["name"], KIND_OF[o["name"]]
            if kind in ("lamp", "heater"):
                acts += [f"turn on {n}", f"turn off {n}"]
            elif kind == "container":
                acts += [f"open {n}", f"close {n}"]
            else:
                acts += [f"take {n}", f"heat {n}", f"eat {n}"] + [f"put {n} in {c}" for c in containers]
        return acts

    def sample_action(self, state: dict, rng: random.Random) -> str:
        """An action for ``state``: one that changes something with probability ``p_effect``."""
        acts = self.candidate_actions(state)
        effect, noop = [], []
        for a in acts:
            m, r, s = _transition(state, a)
            (effect if (m or r or s != state["game_state"][-1]) else noop).append(a)
        pool = effect if effect and (not noop or rng.random() < self.p_effect) else noop
        # Verb first, then object: otherwise verbs with many variants (turn, put) crowd out heat/take.
        verb = rng.choice(sorted({a.split()[0] for a in pool}))
        return rng.choice([a for a in pool if a.split()[0] == verb])

    # -- splits

    @staticmethod
    def key(state: dict, action: str) -> str:
        """Canonical string of a (state, action) pair (what distinctness and the split use)."""
        return json.dumps(state, sort_keys=True, separators=(",", ":")) + "|" + action

    def split_of(self, state: dict, action: str) -> str:
        """``"test"`` or ``"train"`` by a fixed hash of :meth:`key` (independent of the seed)."""
        h = hashlib.blake2b(self.key(state, action).encode(), digest_size=8).digest()
        return "test" if int.from_bytes(h, "big") / 2.0**64 < self.test_fraction else "train"

    def pairs(self) -> Iterator[tuple[dict, str]]:
        """Endless seeded stream of (state, action) pairs (may repeat; callers dedupe)."""
        rng = random.Random(self.seed)
        while True:
            state = self.sample_state(rng)
            yield state, self.sample_action(state, rng)

    def example(self, state: dict, action: str, source: str = "") -> Example:
        """The :class:`Example` for one transition."""
        nxt = step(state, action)
        return Example(
            prompt=format_prompt(state, action),
            answer=dumps(gold_diff(state, nxt)),
            ground_truth=json.dumps(nxt),
            extra={"data_state": json.dumps(state), "data_action": action},
            source=source,
        )

    def splits(self, n_train: int, n_test: int, max_draws: int | None = None) -> tuple[list[Example], list[Example]]:
        """``n_train`` / ``n_test`` distinct examples; no (state, action) pair is in both splits."""
        if n_train < 0 or n_test < 0:
            raise ValueError(f"n_train and n_test must be >= 0, got {n_train}, {n_test}")
        max_draws = max_draws if max_draws is not None else 20 * (n_train + n_test) + 1000
        out: dict[str, list[Example]] = {"train": [], "test": []}
        want = {"train": n_train, "test": n_test}
        seen: set[str] = set()
        for draws, (state, action) in enumerate(self.pairs()):
            if len(out["train"]) >= n_train and len(out["test"]) >= n_test:
                break
            if draws >= max_draws:
                raise ValueError(
                    f"only {len(out['train'])} train / {len(out['test'])} test distinct transitions found "
                    f"in {max_draws} draws (asked for {n_train} / {n_test}); widen the world "
                    "(max_objects, max_uuid) or raise max_draws"
                )
            k = self.key(state, action)
            if k in seen:
                continue
            seen.add(k)
            split = self.split_of(state, action)
            if len(out[split]) < want[split]:
                out[split].append(self.example(state, action, f"synthetic:{split}:{len(out[split])}"))
        return out["train"], out["test"]

    # -- vocabulary

    def vocabulary(self) -> list[str]:
        """Every word the world's prompts and answers can contain (for the tokenizer)."""
        words = ["{", "}", "[", "]", ":", ",", "true", "false", *_PROMPT_WORDS]
        words += [f'"{k}"' for k in _KEYS] + [f'"{n}"' for n in KIND_OF] + list(KIND_OF)
        # Scores span -1 (lost) .. 3 (start at 2, +1); uuids 1..max_uuid; temperatures 0..5.
        words += [str(i) for i in range(-1, max(self.max_uuid, len(KIND_OF), MAX_TEMPERATURE, 3) + 1)]
        return words


# ----------------------------------------------------------------------------- tokenizer


def build_tokenizer(texts: Iterable[str]):
    """A word-level ``transformers.PreTrainedTokenizerFast`` over the words of ``texts``.

    Words are split on whitespace and JSON punctuation (``{}[]:,``), quoted strings stay one token
    (``"red_apple"``); decoding joins tokens with single spaces, so ``decode(encode(t)) == t`` for
    every text written by :func:`dumps`/:func:`format_prompt`. Ids 0-3 are ``<pad> <bos> <eos>
    <unk>``, set as pad/bos/eos/unk. No special tokens are added by ``encode``; append ``<eos>``
    yourself. Vocabulary ids are sorted, so the same word set always gives the same ids.
    """
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    pre = pre_tokenizers.Sequence(
        [pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Split(Regex(r"[{}\[\]:,]"), "isolated")]
    )
    words: set[str] = set()
    for t in texts:
        words.update(w for w, _ in pre.pre_tokenize_str(t))
    words -= set(SPECIAL_TOKENS)
    vocab = {w: i for i, w in enumerate([*SPECIAL_TOKENS, *sorted(words)])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre
    # No decoder: tokenizers then joins tokens with one space, which is exactly our serialisation.
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        clean_up_tokenization_spaces=False,  # the default clean-up would glue " ," into ","
    )


# ----------------------------------------------------------------------------- task


def _text_game_metrics(completion: str, example: Example) -> dict[str, float]:
    # Imported on use: keeps this module importable without the reward module's dependencies.
    from ..rewards.text_game import metrics

    return metrics(completion, example)


def synthetic_text_game_task(
    seed: int = 0,
    n_train: int = 4000,
    n_test: int = 500,
    *,
    uuids: str = "random",
    reward: str | None = None,
    limits: RewardLimits = RewardLimits(),
    **world_kwargs: Any,
) -> TextTask:
    """The ``synthetic_text_game`` task: world splits, text-game metrics and the world's tokenizer.

    ``uuids`` and ``world_kwargs`` go to :class:`SyntheticTextGame` (``min_objects``, ``max_objects``,
    ...). The tokenizer covers the world's whole vocabulary, so held-out texts never hit ``<unk>``.
    Reward ``"text_game/task"`` (or ``reward``).
    """
    world = SyntheticTextGame(seed=seed, uuids=uuids, **world_kwargs)
    train, test = world.splits(n_train, n_test)
    return TextTask(
        "synthetic_text_game",
        train,
        test,
        metrics=_text_game_metrics,
        default_reward="text_game/task",
        select_metric="exact",
        tokenizer=build_tokenizer([" ".join(world.vocabulary())]),
        reward=reward,
        limits=limits,
    )
