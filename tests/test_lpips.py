"""LPIPS-VGG16 v0.1 (rlvr_fast.models.lpips) against the formula written out in float64.

The weight files are random but written in the real formats: torchvision's vgg16 state dict (with
``classifier.*`` keys, which the loader must ignore) and the lpips package's ``v0.1/vgg.pth``.
"""

from __future__ import annotations

import math
import re

import pytest
import torch
import torch.nn.functional as F

from rlvr_fast.models.lpips import LPIPS, lpips_vgg16_schema

# Independent of the module's constants on purpose: the numbers from the lpips package / torchvision.
SHIFT = [-0.030, -0.088, -0.188]
SCALE = [0.458, 0.448, 0.450]
CONV_IDX = [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]
POOL_AFTER = {2, 7, 14, 21}  # conv indices followed (after their ReLU) by a 2x2 max pool
TAP_AFTER = {2, 7, 14, 21, 28}  # relu1_2, relu2_2, relu3_3, relu4_3, relu5_3


def random_weights(seed: int = 0) -> tuple[dict, dict]:
    """A torchvision-style vgg16 state dict and an lpips-style lin state dict, random."""
    g = torch.Generator().manual_seed(seed)
    vgg_schema, lin_schema = lpips_vgg16_schema()
    vgg = {}
    for k, shape in vgg_schema.items():
        if k.endswith(".weight"):
            fan_out = shape[0] * shape[2] * shape[3]
            vgg[k] = torch.randn(shape, generator=g) * math.sqrt(2.0 / fan_out)
        else:
            vgg[k] = torch.randn(shape, generator=g) * 0.01
    # torchvision's file also holds the classifier; small stand-ins under the real key names
    for k in ["classifier.0", "classifier.3", "classifier.6"]:
        vgg[f"{k}.weight"] = torch.randn(4, 8, generator=g)
        vgg[f"{k}.bias"] = torch.randn(4, generator=g)
    lin = {k: torch.rand(shape, generator=g) / shape[1] for k, shape in lin_schema.items()}
    return vgg, lin


@pytest.fixture(scope="module")
def weight_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("lpips")
    vgg, lin = random_weights()
    torch.save(vgg, d / "vgg16-397923af.pth")
    torch.save(lin, d / "vgg.pth")
    return d / "vgg16-397923af.pth", d / "vgg.pth", vgg, lin


@pytest.fixture(scope="module")
def model(weight_files):
    vgg_path, lin_path, _, _ = weight_files
    return LPIPS.from_files(vgg_path, lin_path)


def ref_taps(x: torch.Tensor, vgg: dict) -> list[torch.Tensor]:
    shift = torch.tensor(SHIFT, dtype=torch.float64).view(1, 3, 1, 1)
    scale = torch.tensor(SCALE, dtype=torch.float64).view(1, 3, 1, 1)
    h = (2 * x.double() - 1 - shift) / scale
    taps = []
    for i in CONV_IDX:
        weight, bias = vgg[f"features.{i}.weight"].double(), vgg[f"features.{i}.bias"].double()
        h = F.relu(F.conv2d(h, weight, bias, padding=1))
        if i in TAP_AFTER:
            taps.append(h / (torch.sqrt((h * h).sum(dim=1, keepdim=True)) + 1e-10))
        if i in POOL_AFTER:
            h = F.max_pool2d(h, kernel_size=2, stride=2)
    return taps


def ref_lpips(x0: torch.Tensor, x1: torch.Tensor, vgg: dict, lin: dict) -> torch.Tensor:
    """Float64 LPIPS of pairs (x0[i], x1[i]): 1x1 conv of squared tap differences, spatial mean, sum."""
    total = torch.zeros(x0.shape[0], dtype=torch.float64)
    for k, (a, b) in enumerate(zip(ref_taps(x0, vgg), ref_taps(x1, vgg))):
        w = lin[f"lin{k}.model.1.weight"].double()
        total += F.conv2d((a - b) ** 2, w).mean(dim=(1, 2, 3))
    return total


def frames(n: int, h: int = 32, w: int = 32) -> torch.Tensor:
    return torch.rand(n, 3, h, w)


# ---- the formula ----


@pytest.mark.parametrize("hw", [(32, 32), (48, 40)])
def test_matches_float64_formula(model, weight_files, hw):
    _, _, vgg, lin = weight_files
    pred, target = frames(3, *hw), frames(3, *hw)
    out = model(pred, target)
    assert out.dtype == torch.float32 and out.shape == (3,)
    ref = ref_lpips(pred, target, vgg, lin)
    assert (ref > 0).all()
    torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-7)


def test_features_are_unit_normalised_taps(model, weight_files):
    _, _, vgg, _ = weight_files
    x = frames(2, 48, 40)
    taps = model.features(x)
    assert [tuple(t.shape) for t in taps] == [
        (2, 64, 48, 40),
        (2, 128, 24, 20),
        (2, 256, 12, 10),
        (2, 512, 6, 5),
        (2, 512, 3, 2),
    ]
    for got, want in zip(taps, ref_taps(x, vgg)):
        assert got.dtype == torch.float32
        torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-6)


def test_group_size_equals_repeated_targets(model, weight_files):
    _, _, vgg, lin = weight_files
    pred, target = frames(6), frames(2)
    grouped = model(pred, target, group_size=3)
    flat = model(pred, target.repeat_interleave(3, dim=0), group_size=1)
    torch.testing.assert_close(grouped, flat, rtol=1e-6, atol=1e-8)
    ref = ref_lpips(pred, target.repeat_interleave(3, dim=0), vgg, lin)
    torch.testing.assert_close(grouped.double(), ref, rtol=1e-5, atol=1e-7)


def test_targets_go_through_the_network_once(model):
    batches = []
    handle = model.vgg[0].register_forward_hook(lambda m, args, out: batches.append(args[0].shape[0]))
    try:
        model(frames(6), frames(2), group_size=3)
        model(frames(6), frames(2), group_size=3, chunk_size=4)
    finally:
        handle.remove()
    assert batches == [2, 6, 2, 4, 2]


def test_identical_images_give_zero(model):
    x = frames(4)
    assert model(x, x).abs().max().item() <= 1e-7
    # a group whose predictions all equal the target
    t = frames(2)
    assert model(t.repeat_interleave(2, dim=0), t, group_size=2).abs().max().item() <= 1e-7


def test_different_images_positive(model):
    out = model(frames(4), frames(4))
    assert (out > 0).all()


@pytest.mark.parametrize("chunk_size", [1, 2, 4, 5, 7, 100])
def test_chunking_changes_nothing(model, chunk_size):
    pred, target = frames(6), frames(2)
    whole = model(pred, target, group_size=3)
    chunked = model(pred, target, group_size=3, chunk_size=chunk_size)
    torch.testing.assert_close(chunked, whole, rtol=1e-6, atol=1e-8)


def test_random_init_is_seeded_frozen_and_eval():
    torch.manual_seed(1)
    a = LPIPS()
    torch.manual_seed(1)
    b = LPIPS()
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert not p.requires_grad, name
        assert torch.equal(p, q), name
    assert not a.training
    assert all((lin.weight >= 0).all() for lin in a.lins)  # like the trained v0.1 weights
    assert (a(frames(2), frames(2)) > 0).all()


def test_from_files_keeps_global_rng_and_loads_exactly(weight_files):
    vgg_path, lin_path, vgg, lin = weight_files
    state = torch.random.get_rng_state()
    m = LPIPS.from_files(vgg_path, lin_path)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert torch.equal(m.vgg[28].weight, vgg["features.28.weight"])
    assert torch.equal(m.lins[4].weight, lin["lin4.model.1.weight"])
    assert not any(p.requires_grad for p in m.parameters()) and not m.training


def test_safetensors_and_dtype(tmp_path, model, weight_files):
    from safetensors.torch import save_file

    _, lin_path, vgg, _ = weight_files
    save_file(vgg, str(tmp_path / "vgg16.safetensors"))
    m = LPIPS.from_files(tmp_path / "vgg16.safetensors", lin_path, dtype=torch.float64)
    assert m.vgg[0].weight.dtype == torch.float64
    pred, target = frames(2), frames(2)
    out = m(pred, target)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, model(pred, target), rtol=1e-5, atol=1e-7)


def test_bf16_inputs_accepted(model):
    pred, target = frames(2), frames(2)
    out = model(pred.bfloat16(), target.bfloat16())
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, model(pred.bfloat16().float(), target.bfloat16().float()))


def test_empty_batch(model):
    out = model(torch.rand(0, 3, 32, 32), torch.rand(0, 3, 32, 32), group_size=4)
    assert out.shape == (0,) and out.dtype == torch.float32


# ---- files ----


def test_missing_file_names_path_and_source(tmp_path, weight_files):
    vgg_path, lin_path, _, _ = weight_files
    with pytest.raises(FileNotFoundError, match=r"nope\.pth.*vgg16-397923af\.pth"):
        LPIPS.from_files(tmp_path / "nope.pth", lin_path)
    with pytest.raises(FileNotFoundError, match=r"gone\.pth.*lpips/weights/v0\.1/vgg\.pth"):
        LPIPS.from_files(vgg_path, tmp_path / "gone.pth")


@pytest.mark.parametrize("damage", ["truncated", "empty", "garbage"])
def test_unreadable_file_names_path(tmp_path, weight_files, damage):
    vgg_path, lin_path, _, _ = weight_files
    for which, path in (("vgg", vgg_path), ("lin", lin_path)):
        data = path.read_bytes()
        bad = tmp_path / f"{which}_{damage}.pth"
        contents = {"truncated": data[: len(data) // 2], "empty": b"", "garbage": b"\x00garbage" * 50}
        bad.write_bytes(contents[damage])
        args = (bad, lin_path) if which == "vgg" else (vgg_path, bad)
        with pytest.raises(ValueError, match=re.escape(f"{str(bad)!r}: cannot read the file (")) as e:
            LPIPS.from_files(*args)
        assert ("vgg16-397923af.pth" if which == "vgg" else "lpips/weights/v0.1/vgg.pth") in str(e.value)


def test_wrong_vgg_file(tmp_path, weight_files):
    _, lin_path, vgg, _ = weight_files
    bad = dict(vgg)
    del bad["features.0.bias"]
    bad["features.2.weight"] = torch.zeros(64, 64, 5, 5)
    bad["features.30.weight"] = torch.zeros(1)
    torch.save(bad, tmp_path / "vgg.pth")
    with pytest.raises(ValueError) as e:
        LPIPS.from_files(tmp_path / "vgg.pth", lin_path)
    msg = str(e.value)
    assert "features.0.bias" in msg and "features.2.weight" in msg and "(64, 64, 5, 5)" in msg
    assert "features.30.weight" in msg and "classifier" not in msg  # classifier.* keys are ignored


def test_wrong_lin_file(tmp_path, weight_files):
    vgg_path, _, _, lin = weight_files
    bad = dict(lin)
    bad["lin3.model.1.weight"] = torch.zeros(1, 256, 1, 1)
    del bad["lin4.model.1.weight"]
    torch.save(bad, tmp_path / "lin.pth")
    with pytest.raises(ValueError, match=r"lin4\.model\.1\.weight.*lin3\.model\.1\.weight"):
        LPIPS.from_files(vgg_path, tmp_path / "lin.pth")
    # a whole-model state dict (keys without the lpips layout) is refused, not half-loaded
    torch.save({f"lins.{k}.weight": v for k, v in enumerate(lin.values())}, tmp_path / "other.pth")
    with pytest.raises(ValueError, match="missing keys.*unexpected keys"):
        LPIPS.from_files(vgg_path, tmp_path / "other.pth")


def test_not_a_state_dict(tmp_path, weight_files):
    vgg_path, _, _, _ = weight_files
    torch.save([torch.zeros(1)], tmp_path / "list.pth")
    with pytest.raises(ValueError, match="flat state dict"):
        LPIPS.from_files(vgg_path, tmp_path / "list.pth")


# ---- arguments ----


def test_bad_arguments(model):
    p, t = frames(4), frames(2)
    with pytest.raises(ValueError, match="group_size.*divisor.*B=4"):
        model(p, t, group_size=3)
    with pytest.raises(ValueError, match="group_size: expected a positive int"):
        model(p, t, group_size=0)
    with pytest.raises(TypeError, match="group_size"):
        model(p, t, group_size=2.0)
    with pytest.raises(ValueError, match=r"target: expected B / group_size = 4"):
        model(p, t, group_size=1)
    with pytest.raises(ValueError, match="pred: expected RGB"):
        model(torch.rand(4, 1, 32, 32), t, group_size=2)
    with pytest.raises(ValueError, match="target: expected RGB"):
        model(p, torch.rand(2, 4, 32, 32), group_size=2)
    with pytest.raises(ValueError, match="pred: expected a 4-d tensor"):
        model(torch.rand(3, 32, 32), t)
    with pytest.raises(TypeError, match="pred: expected dtype"):
        model((p * 255).to(torch.uint8), t, group_size=2)
    with pytest.raises(TypeError, match="target: expected a torch.Tensor"):
        model(p, t.numpy(), group_size=2)
    with pytest.raises(ValueError, match="target: expected the same H, W"):
        model(p, frames(2, 32, 48), group_size=2)
    with pytest.raises(ValueError, match="H, W >= 16"):
        model(frames(4, 8, 32), frames(2, 8, 32), group_size=2)
    with pytest.raises(ValueError, match="chunk_size"):
        model(p, t, group_size=2, chunk_size=0)
