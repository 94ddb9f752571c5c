"""Video worlds: the built-in sprite world, RLVR-World's RT-1 npz episodes, and the action discretiser."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from rlvr_fast.worlds.rt1 import RT1_ACTION_NAMES, OXEEpisodes, compute_action_ranges, rt1_action_ranges
from rlvr_fast.worlds.sprite import Sprite, SpriteWorld, SpriteWorldConfig
from rlvr_fast.worlds.video import VideoExample, collate, discretize_actions, load_action_ranges

RED = (0.9, 0.2, 0.2)
GREEN = (0.2, 0.8, 0.3)


def _bbox(img: torch.Tensor, color: tuple[float, float, float]) -> tuple[int, int, int, int] | None:
    """(x0, y0, x1, y1) exclusive of the pixels of exactly ``color`` in a [3, H, W] frame."""
    hit = (img == torch.tensor(color, dtype=torch.float32)[:, None, None]).all(0)
    ys, xs = hit.nonzero(as_tuple=True)
    if not len(xs):
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def _overlap(a: Sprite, b: Sprite) -> bool:
    return a.x < b.x + b.size and b.x < a.x + a.size and a.y < b.y + b.size and b.y < a.y + a.size


# ----------------------------------------------------------------------------- sprite world: data


def test_shapes_dtypes_range() -> None:
    w = SpriteWorld()
    for split in ("train", "test"):
        ex = w.sample(3, split)
        assert isinstance(ex, VideoExample)
        assert ex.context.shape == (1, 3, 64, 64) and ex.target.shape == (1, 3, 64, 64)
        assert ex.actions.shape == (2, 2)
        for t in (ex.context, ex.target, ex.actions):
            assert t.dtype == torch.float32
        assert 0.0 <= float(ex.frames.min()) and float(ex.frames.max()) <= 1.0
        assert ex.source == f"sprite_world:{split}:3"
        assert ex.context_actions.shape == (1, 2) and ex.target_actions.shape == (1, 2)
    w = SpriteWorld(height=48, width=40, n_sprites=4, context_frames=2, predict_frames=3)
    ex = w.sample(0)
    assert ex.context.shape == (2, 3, 48, 40) and ex.target.shape == (3, 3, 48, 40) and ex.actions.shape == (5, 2)
    batch = collate([w.sample(i) for i in range(4)])
    assert batch["context"].shape == (4, 2, 3, 48, 40)
    assert batch["actions"].shape == (4, 5, 2) and batch["target"].shape == (4, 3, 3, 48, 40)


def test_deterministic_per_seed() -> None:
    a = [SpriteWorld(seed=5).sample(i) for i in range(20)]
    w = SpriteWorld(seed=5)
    b = [w.sample(i) for i in reversed(range(20))][::-1]  # random access order does not matter
    c = [SpriteWorld(seed=6).sample(i) for i in range(20)]
    for x, y in zip(a, b):
        assert torch.equal(x.frames, y.frames) and torch.equal(x.actions, y.actions)
        assert x.extra["episode_seed"] == y.extra["episode_seed"]
    assert any(not torch.equal(x.frames, y.frames) for x, y in zip(a, c))
    assert [e.source for e in SpriteWorld(seed=5).examples("test", 3)] == [f"sprite_world:test:{i}" for i in range(3)]


def test_heldout_split_disjoint() -> None:
    w = SpriteWorld(seed=0)
    train, test = w.splits(400, 100)
    assert len(train) == 400 and len(test) == 100
    key = lambda e: w.key(e.extra["states"][0], e.actions)
    train_keys, test_keys = {key(e) for e in train}, {key(e) for e in test}
    assert len(train_keys) == 400 and len(test_keys) == 100
    assert not train_keys & test_keys
    assert not {e.extra["episode_seed"] for e in train} & {e.extra["episode_seed"] for e in test}
    assert all(w.split_of(e.extra["states"][0], e.actions) == "test" for e in test)
    # other seeds never put a clip in the other split: the split depends only on the clip
    other_train, _ = SpriteWorld(seed=1).splits(400, 0)
    assert not {key(e) for e in other_train} & test_keys
    # the held-out share is close to test_fraction (0.1): 100 test clips among ~1000 candidates
    assert 600 <= w._next_candidate <= 1600


def test_learnable_signal() -> None:
    """Frames change (the model has to predict something) and every sprite is visible."""
    w = SpriteWorld()
    changed = 0
    for ex in w.examples("train", 50):
        changed += int(not torch.equal(ex.context[-1], ex.target[0]))
        assert _bbox(ex.context[0], RED) is not None
    assert changed >= 45


# ----------------------------------------------------------------------------- sprite world: rules


@pytest.mark.parametrize(
    "direction, expected",
    [("none", (30, 24)), ("up", (30, 20)), ("down", (30, 28)), ("left", (26, 24)), ("right", (34, 24))],
)
def test_controlled_sprite_follows_action(direction: str, expected: tuple[int, int]) -> None:
    w = SpriteWorld(n_sprites=1)
    state = (Sprite(0, 30, 24),)
    assert _bbox(w.render(state), RED) == (30, 24, 38, 32)
    nxt = w.step(state, w.action_vector(direction))
    assert (nxt[0].x, nxt[0].y) == expected
    x, y = expected
    assert _bbox(w.render(nxt), RED) == (x, y, x + 8, y + 8)  # the pixels moved, not just the state


def test_speeds_and_action_vectors() -> None:
    w = SpriteWorld(n_sprites=1, speeds=(2, 4))
    assert w.action_vector("up", 2).tolist() == [0.0, -2.0]
    assert w.action_vector(4).tolist() == [2.0, 0.0]
    assert w.step((Sprite(0, 30, 24),), w.action_vector("down", 4))[0].y == 28
    acts = torch.cat([e.actions for e in w.examples("train", 60)])
    assert set(map(tuple, acts.tolist())) <= {(0.0, 0.0)} | {(d * s, 0.0) for d in (-1, 1) for s in (2, 4)} | {
        (0.0, d * s) for d in (-1, 1) for s in (2, 4)
    }
    assert {abs(v) for v in acts.flatten().tolist()} == {0.0, 2.0, 4.0}
    with pytest.raises(ValueError, match="direction"):
        w.action_vector("jump")


def test_controlled_sprite_stops_at_walls() -> None:
    w = SpriteWorld(n_sprites=1)  # border 2 px; interior block at x 16..28, y 16..20 (64 x 64)
    assert w.step((Sprite(0, 4, 40),), w.action_vector("left"))[0].x == 2  # 2 px then the border
    assert w.step((Sprite(0, 2, 40),), w.action_vector("left"))[0].x == 2  # already touching
    assert w.step((Sprite(0, 52, 40),), w.action_vector("right"))[0].x == 54  # 62 - 8
    assert w.step((Sprite(0, 30, 3),), w.action_vector("up"))[0].y == 2
    nxt = w.step((Sprite(0, 20, 22),), w.action_vector("up"))  # interior block's lower edge is y = 20
    assert (nxt[0].x, nxt[0].y) == (20, 20)
    img = w.render(nxt)
    assert _bbox(img, RED) == (20, 20, 28, 28)
    assert (img[:, 19, 20:28] == 0.5).all()  # the wall row right above it is intact
    assert not w.wall_mask[20:28, 20:28].any()


def test_mover_bounces_off_walls() -> None:
    w = SpriteWorld(n_sprites=2)
    state = (Sprite(0, 50, 50), Sprite(1, 3, 30, -2, 2))
    nxt = w.step(state, w.action_vector("none"))
    assert nxt[1] == Sprite(1, 2, 32, 2, 2)  # 1 px left, then the border flips vx; y moves on
    img = w.render(nxt)
    assert _bbox(img, GREEN) == (2, 32, 8, 38)
    assert (img[:, 36:38, 6:8] == 1.0).all()  # the eye now sits in the bottom-right corner (heading +x, +y)
    after = w.step(nxt, w.action_vector("none"))
    assert after[1] == Sprite(1, 4, 34, 2, 2)


def test_sprite_collisions() -> None:
    w = SpriteWorld(n_sprites=2)
    # the controlled sprite stops at contact with another sprite
    state = (Sprite(0, 30, 24), Sprite(1, 40, 24, 2, -2))
    nxt = w.step(state, w.action_vector("right"))
    assert nxt[0].x == 32  # red spans x 32..40, green starts at 40
    assert nxt[1] == Sprite(1, 42, 22, 2, -2)  # then green moves on, unhindered
    # a mover blocked by a wall block on one axis bounces on that axis only
    nxt = w.step((Sprite(0, 2, 2), Sprite(1, 40, 25, 2, 2)), w.action_vector("none"))
    assert nxt[1] == Sprite(1, 42, 26, 2, -2)  # 1 px down, then block x 40..44 / y 32..48
    # a mover bounces off the controlled sprite
    state = (Sprite(0, 30, 24), Sprite(1, 39, 26, -2, -2))
    nxt = w.step(state, w.action_vector("none"))
    assert nxt[1] == Sprite(1, 38, 24, 2, -2)
    assert not _overlap(nxt[0], nxt[1])


def test_no_overlaps_over_many_steps() -> None:
    w = SpriteWorld(n_sprites=4, predict_frames=6)
    for ex in w.examples("train", 60):
        for state in ex.extra["states"]:
            for i, a in enumerate(state):
                assert not w.wall_mask[a.y : a.y + a.size, a.x : a.x + a.size].any()
                assert all(not _overlap(a, b) for b in state[i + 1 :])


def test_multistep_examples() -> None:
    w = SpriteWorld(context_frames=2, predict_frames=3)
    ex = w.sample(7)
    states = ex.extra["states"]
    assert len(states) == 5
    for t in range(4):
        assert w.step(states[t], ex.actions[t]) == states[t + 1]
    for t in range(2):
        assert torch.equal(ex.context[t], w.render(states[t]))
    for k in range(3):
        assert torch.equal(ex.target[k], w.render(states[2 + k]))
    assert torch.equal(ex.target_actions, ex.actions[2:])


def test_sprite_world_action_bins() -> None:
    w = SpriteWorld()
    assert w.action_ranges().tolist() == [[-4.0, 4.0], [-4.0, 4.0]]
    acts = torch.stack([w.action_vector(d) for d in ("none", "up", "down", "left", "right")])
    assert discretize_actions(acts, w.action_ranges()).tolist() == [
        [128, 128],
        [128, 0],
        [128, 255],
        [0, 128],
        [255, 128],
    ]


def test_config_errors() -> None:
    with pytest.raises(ValueError, match="n_sprites"):
        SpriteWorldConfig(n_sprites=5)
    with pytest.raises(ValueError, match="height and width"):
        SpriteWorld(height=16)
    with pytest.raises(ValueError, match="context_frames"):
        SpriteWorld(context_frames=0)
    with pytest.raises(ValueError, match="speeds"):
        SpriteWorld(speeds=(0,))
    with pytest.raises(ValueError, match="test_fraction"):
        SpriteWorld(test_fraction=1.0)
    with pytest.raises(ValueError, match="split"):
        SpriteWorld().sample(0, "val")
    with pytest.raises(IndexError, match="index"):
        SpriteWorld().sample(-1)
    with pytest.raises(ValueError, match="action"):
        SpriteWorld().step((Sprite(0, 30, 24),), [1.0, 2.0, 3.0])


# ----------------------------------------------------------------------------- discretiser


def _rlvr_world_discretize(actions: torch.Tensor, action_ranges: torch.Tensor, num_bins: int = 256):
    """``SimpleVideoProcessor._discretize_actions`` from RLVR-World's vid_wm/ivideogpt/ivideogpt/processor.py."""
    if actions.dim() == 3:
        b, t = actions.shape[:2]
        actions = actions.reshape(b * t, -1)
    else:
        b, t = None, None
    max_values, min_values = action_ranges[:, 1], action_ranges[:, 0]
    actions = torch.clip((actions - min_values) / (max_values - min_values + 1e-8), 0, 1)
    actions = torch.floor(actions * num_bins).to(torch.int32).clip(0, num_bins - 1)
    if b is not None and t is not None:
        actions = actions.reshape(b, t, *actions.shape[1:])
    return actions


def test_discretize_hand_computed_bins_and_edges() -> None:
    ranges = torch.tensor([[-1.0, 1.0], [0.0, 10.0], [0.0, 256.0]])
    acts = torch.tensor(
        [
            [-1.0, 0.0, 0.0],  # min -> bin 0
            [1.0, 10.0, 256.0],  # max -> last bin (x = 1 -> 256, clipped to 255)
            [0.0, 5.0, 1.0],  # middle -> 128; 1/256 of the range -> bin 1
            [0.5, 2.5, 2.5],  # 0.75 * 256 = 192; 0.25 * 256 = 64; floor(2.5) = 2
            [-2.0, 11.0, 255.9],  # out of range: clamped to the end bins (RLVR-World)
        ]
    )
    bins = discretize_actions(acts, ranges)
    assert bins.dtype == torch.int64
    assert bins.tolist() == [[0, 0, 0], [255, 255, 255], [128, 128, 1], [192, 64, 2], [0, 255, 255]]
    assert discretize_actions(acts, ranges, num_bins=4).tolist() == [
        [0, 0, 0],
        [3, 3, 3],
        [2, 2, 0],
        [3, 1, 0],
        [0, 3, 3],
    ]
    with pytest.raises(ValueError, match="dim 0"):
        discretize_actions(acts, ranges, out_of_range="error")
    assert discretize_actions(acts[:4], ranges, out_of_range="error").tolist() == bins[:4].tolist()
    # numpy float64 input (what the converter's files hold) is cast to float32 first, like RLVR-World
    assert discretize_actions(acts.double().numpy(), ranges.numpy()).tolist() == bins.tolist()


def test_discretize_matches_rlvr_world() -> None:
    g = torch.Generator().manual_seed(0)
    ranges = rt1_action_ranges()
    lo, hi = ranges[:, 0], ranges[:, 1]
    acts = lo + (hi - lo) * (torch.rand(4, 6, 13, generator=g) * 1.4 - 0.2)  # 20 % out of range each side
    acts[0, 0], acts[0, 1] = lo, hi
    ours = discretize_actions(acts, ranges)
    assert ours.shape == (4, 6, 13)
    assert torch.equal(ours, _rlvr_world_discretize(acts, ranges).long())
    flat = acts.reshape(-1, 13)
    assert torch.equal(discretize_actions(flat, ranges), _rlvr_world_discretize(flat, ranges).long())
    assert ours[0, 0].tolist() == [0] * 13 and ours[0, 1].tolist() == [255] * 13


def test_discretize_errors() -> None:
    ranges = rt1_action_ranges()
    with pytest.raises(ValueError, match=r"\[\.\.\., 13\].*got \(2, 7\)"):
        discretize_actions(torch.zeros(2, 7), ranges)
    with pytest.raises(ValueError, match="finite"):
        discretize_actions(torch.full((1, 13), float("nan")), ranges)
    with pytest.raises(ValueError, match=r"\[D, 2\]"):
        discretize_actions(torch.zeros(2, 13), ranges.T)
    with pytest.raises(ValueError, match="min > max"):
        discretize_actions(torch.zeros(1, 2), torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    with pytest.raises(ValueError, match="out_of_range"):
        discretize_actions(torch.zeros(1, 13), ranges, out_of_range="wrap")


def test_rt1_ranges_and_loading(tmp_path) -> None:
    ranges = rt1_action_ranges()
    assert ranges.shape == (13, 2) and ranges.dtype == torch.float32 and len(RT1_ACTION_NAMES) == 13
    assert ranges[7:10].tolist() == [[0.0, 1.0]] * 3  # terminate_episode
    path = tmp_path / "frac_action_ranges.pth"
    torch.save(ranges, path)  # the format summarize_action_ranges.py writes
    assert torch.equal(load_action_ranges(path), ranges)
    bad = tmp_path / "bad.pth"
    torch.save(torch.zeros(13, 3), bad)
    with pytest.raises(ValueError, match=r"bad\.pth.*\[D, 2\]"):
        load_action_ranges(bad)
    (tmp_path / "junk.pth").write_text("not a tensor")
    with pytest.raises(ValueError, match="junk.pth"):
        load_action_ranges(tmp_path / "junk.pth")
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        load_action_ranges(tmp_path / "missing.pth")
    flat = ranges.clone()
    flat[4] = torch.tensor([1.0, 1.0])  # min == max: 1.0 would go to bin 0 and 1.0001 to bin 255
    torch.save(flat, tmp_path / "flat.pth")
    with pytest.raises(ValueError, match=r"flat\.pth: expected min < max.*min == max in action dims \[4\]"):
        load_action_ranges(tmp_path / "flat.pth")


# ----------------------------------------------------------------------------- RT-1 npz episodes


def _rt1_actions(t: int, rng: np.random.Generator) -> np.ndarray:
    """[t, 13] float64 exactly as the converter builds them: the RT-1 action dict's values (sorted keys,
    float32 fields and the int32 ``terminate_episode`` one-hot) concatenated per step."""
    rows = []
    for _ in range(t):
        parts = {
            "base_displacement_vector": rng.uniform(-0.3, 0.3, 2).astype(np.float32),
            "base_displacement_vertical_rotation": rng.uniform(-0.005, 0.003, 1).astype(np.float32),
            "gripper_closedness_action": rng.choice([-1.0, 0.0, 1.0], 1).astype(np.float32),
            "rotation_delta": rng.uniform(-1.5, 1.5, 3).astype(np.float32),
            "terminate_episode": np.eye(3, dtype=np.int32)[rng.integers(0, 3)],
            "world_vector": rng.uniform(-2.0, 2.0, 3).astype(np.float32),
        }
        rows.append(np.concatenate([parts[k] for k in parts]))
    return np.array(rows)


def _write_episode(path, t: int, seed: int, h: int = 8, w: int = 10, **override) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    arrays = {"image": rng.integers(0, 256, (t, h, w, 3), dtype=np.uint8), "action": _rt1_actions(t, rng)}
    arrays.update(override)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez_compressed(path, **arrays)
    return arrays


@pytest.fixture
def episodes(tmp_path):
    """Three converter-format episodes: train_eps_00000000 (T=6), ..01 (T=3), ..02 (T=7)."""
    root = tmp_path / "RT-1_processed"
    root.mkdir()
    data = {}
    for i, t in enumerate((6, 3, 7)):
        path = root / f"train_eps_{i:08d}.npz"
        data[str(path)] = _write_episode(path, t, seed=i)
    return root, data


def test_npz_format_and_example_counts(episodes) -> None:
    root, data = episodes
    ds = OXEEpisodes(root)  # RLVR-World single-step: 4 context frames, 1 predicted
    files = sorted(data)
    assert data[files[0]]["action"].dtype == np.float64 and data[files[0]]["action"].shape == (6, 13)
    assert ds.files("test") == [files[0]] and ds.files("train") == files[1:]  # sorted index % 100 == 0
    assert ds.action_dim == 13
    assert ds.num_examples("test") == 2  # T = 6, window of 5 -> starts 0, 1
    assert ds.num_examples("train") == 1 + 3 == len(ds)  # T = 3 -> one padded; T = 7 -> 3
    ex = ds.sample(1, "test")
    frames, actions = data[files[0]]["image"], data[files[0]]["action"]
    want = torch.from_numpy(frames[1:6]).permute(0, 3, 1, 2).float() / 255
    assert ex.context.shape == (4, 3, 8, 10) and ex.target.shape == (1, 3, 8, 10) and ex.actions.shape == (5, 13)
    assert ex.context.dtype == ex.target.dtype == ex.actions.dtype == torch.float32
    assert torch.equal(ex.context, want[:4]) and torch.equal(ex.target, want[4:])
    assert torch.equal(ex.actions, torch.from_numpy(actions[1:6]).float())
    assert ex.source == f"{files[0]}:1" and ex.extra["frame_indices"] == [1, 2, 3, 4, 5]
    short = ds.sample(0, "train")  # T = 3 < 5: the last frame and action repeat
    assert short.extra["frame_indices"] == [0, 1, 2, 2, 2]
    assert torch.equal(short.target[0], short.context[2]) and torch.equal(short.actions[4], short.actions[2])
    assert [e.extra["start"] for e in ds.examples("train")] == [0, 0, 1, 2]
    with pytest.raises(IndexError, match="train has 4 examples"):
        ds.sample(4, "train")
    batch = collate(list(ds.examples("test")))
    assert batch["context"].shape == (2, 4, 3, 8, 10)


def test_npz_multistep_frame_step_stride(episodes) -> None:
    root, data = episodes
    ds = OXEEpisodes(
        root, context_frames=1, predict_frames=2, frame_step=2, stride=2, split_rule="hash", test_fraction=0.5
    )
    assert sorted(ds.files("train") + ds.files("test")) == sorted(data)
    assert not set(ds.files("train")) & set(ds.files("test"))
    path = sorted(data)[2]  # T = 7, span (1 + 2 - 1) * 2 + 1 = 5 -> starts 0, 2
    split = "train" if path in ds.files("train") else "test"
    exs = [e for e in ds.examples(split) if e.extra["file"] == path]
    assert [e.extra["frame_indices"] for e in exs] == [[0, 2, 4], [2, 4, 6]]
    assert exs[1].context.shape == (1, 3, 8, 10) and exs[1].target.shape == (2, 3, 8, 10)
    assert torch.equal(exs[1].actions, torch.from_numpy(data[path]["action"][[2, 4, 6]]).float())


def test_npz_action_bins(tmp_path) -> None:
    rng = np.random.default_rng(0)
    actions = _rt1_actions(5, rng)
    actions[:, 3] = [-1.0, 0.0, 1.0, 2.0, -3.0]  # gripper, range [-1, 1]
    actions[:, 7:10] = [[0, 0, 1], [1, 0, 0], [0, 1, 0], [0, 0, 1], [0, 0, 1]]  # terminate, range [0, 1]
    actions[0, 10:13] = [r[0] for r in rt1_action_ranges()[10:13].tolist()]  # world_vector at its minima
    actions[1, 10:13] = [r[1] for r in rt1_action_ranges()[10:13].tolist()]  # and maxima
    _write_episode(tmp_path / "train_eps_00000000.npz", 5, seed=0, action=actions)
    ds = OXEEpisodes(tmp_path)
    assert torch.equal(ds.action_ranges(), rt1_action_ranges())  # D = 13 -> RLVR-World's RT-1 ranges
    ex = ds.sample(0, "test")
    bins = discretize_actions(ex.actions, ds.action_ranges())
    assert bins[:, 3].tolist() == [0, 128, 255, 255, 0]
    assert bins[:, 7:10].tolist() == [[0, 0, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255], [0, 0, 255]]
    assert bins[0, 10:13].tolist() == [0, 0, 0] and bins[1, 10:13].tolist() == [255, 255, 255]
    assert torch.equal(bins, _rlvr_world_discretize(torch.Tensor(actions), rt1_action_ranges()).long())


def test_npz_resize_and_layouts(tmp_path) -> None:
    sub = tmp_path / "fractal20220817_data"  # the layout iVideoGPT's loader reads
    sub.mkdir()
    img = np.zeros((5, 16, 20, 3), dtype=np.uint8)
    img[..., 0] = 255
    img[..., 1] = 51
    _write_episode(sub / "train_eps_00000000.npz", 5, seed=0, image=img)
    ds = OXEEpisodes(tmp_path, resize=(8, 10))
    ex = ds.sample(0, "test")
    assert ex.context.shape == (4, 3, 8, 10) and ex.target.shape == (1, 3, 8, 10)
    assert torch.allclose(ex.frames[:, 0], torch.ones(5, 8, 10)) and torch.allclose(
        ex.frames[:, 1], torch.full((5, 8, 10), 0.2)
    )
    assert torch.equal(ex.frames[:, 2], torch.zeros(5, 8, 10))
    frames, actions = ds.load_episode(ds.files("test")[0])
    assert frames.shape == (5, 3, 8, 10) and actions.shape == (5, 13) and actions.dtype == torch.float32
    assert OXEEpisodes(tmp_path, max_episodes=0).num_examples("test") == 0


def test_npz_other_action_dims(tmp_path) -> None:
    for i in range(2):
        _write_episode(
            tmp_path / f"ep{i}.npz", 4, seed=i, action=np.arange(8, dtype=np.float32).reshape(4, 2) * (i + 1)
        )
    ds = OXEEpisodes(tmp_path, context_frames=1, predict_frames=1)
    assert ds.action_dim == 2
    assert ds.action_ranges().tolist() == [[0.0, 12.0], [1.0, 14.0]]  # min / max over all episodes
    assert torch.equal(compute_action_ranges(tmp_path), ds.action_ranges())
    with pytest.raises(ValueError, match="action_ranges: 13 dims.*2-dim"):
        OXEEpisodes(tmp_path, action_ranges=rt1_action_ranges()).action_ranges()
    _write_episode(tmp_path / "ep2.npz", 4, seed=2)  # 13-dim actions among 2-dim ones
    with pytest.raises(ValueError, match=r"ep2\.npz: 'action' has 13 dims"):
        OXEEpisodes(tmp_path, split_rule="hash", test_fraction=0.001).num_examples("train")


def test_npz_errors(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        OXEEpisodes(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match="no .npz episode files"):
        OXEEpisodes(tmp_path)
    cases = {
        "no_action.npz": {"action": None},
        "no_image.npz": {"image": None, "rgb": np.zeros((4, 8, 10, 3), np.uint8)},
        "float_frames.npz": {"image": np.zeros((4, 8, 10, 3), np.float32)},
        "gray.npz": {"image": np.zeros((4, 8, 10), np.uint8)},
        "short_actions.npz": {"action": np.zeros((3, 13))},
    }
    messages = {
        "no_action.npz": r"no_action\.npz: missing key 'action' \(keys: \['image'\]\)",
        "no_image.npz": r"no_image\.npz: missing key 'image' \(keys: \['action', 'rgb'\]\)",
        "float_frames.npz": r"float_frames\.npz: key 'image' must be uint8 \[T, H, W, 3\]",
        "gray.npz": r"gray\.npz: key 'image' must be uint8",
        "short_actions.npz": r"short_actions\.npz: expected one action per frame.*4 frames.*3 actions",
    }
    for name, override in cases.items():
        d = tmp_path / name[:-4]
        d.mkdir()
        _write_episode(d / name, 4, seed=0, **override)
        with pytest.raises(ValueError, match=messages[name]):
            OXEEpisodes(d).num_examples("test")
    d = tmp_path / "junk"
    d.mkdir()
    (d / "ep.npz").write_bytes(b"not a zip file")
    with pytest.raises(ValueError, match=r"ep\.npz: not an \.npz archive"):
        OXEEpisodes(d).num_examples("test")
    _write_episode(d / "ep.npz", 4, seed=0)
    ds = OXEEpisodes(d)
    assert ds.num_examples("test") == 1
    os.remove(d / "ep.npz")
    with pytest.raises(FileNotFoundError, match=r"ep\.npz"):
        ds.sample(0, "test")
    with pytest.raises(ValueError, match="split_rule"):
        OXEEpisodes(tmp_path / "gray", split_rule="random")
    with pytest.raises(ValueError, match="resize"):
        OXEEpisodes(tmp_path / "gray", resize=(8,))
