"""FSQ frame tokenizers (rlvr_fast.models.fsq, .frame_tokenizer, .cnn_fsq, .tiny_fsq) and their training
(rlvr_fast.trainer.train_tokenizer).

- the iVideoGPT-compatible ``CNNFSQTokenizer``: state-dict keys/shapes equal ``key_schema`` and the
  names diffusers gives ``CNNFSQModel256``; strict loads from files in diffusers' formats; 256x320 ->
  16x20 -> 256x320;
- FSQ against iVideoGPT's formulas and ``rlvr_fast.ops.fsq_codebook``;
- ``decode_latents(codes_to_latents(codes, tok.quantizer()))`` == ``decode_codes(codes)`` for both
  tokenizers;
- ``TinyFSQTokenizer`` trains on coloured squares (reconstruction MSE falls, deterministic per seed).
"""

from __future__ import annotations

import json
import math
import re
import time

import pytest
import torch

from rlvr_fast.models.cnn_fsq import CNNFSQConfig, CNNFSQTokenizer, key_schema
from rlvr_fast.models.fsq import FSQ, MAX_BLOCKS, MAX_CHANNELS, MAX_CODES
from rlvr_fast.models.tiny_fsq import TinyFSQConfig, TinyFSQTokenizer, tiny_key_schema
from rlvr_fast.trainer.train_tokenizer import train_tokenizer
from rlvr_fast.ops import codes_to_latents, fsq_codebook

# A narrow CNNFSQModel256 (same block structure, 4x downsampling) for the fast tests.
SMALL = CNNFSQConfig(block_out_channels=(32, 32, 64), layers_per_block=1, latent_channels=16, norm_num_groups=8)
# A small TinyFSQTokenizer that trains in a few seconds on 2 cores.
TINY_TEST = TinyFSQConfig(channels=(16, 32, 64), res_blocks=1, latent_channels=16)
LEVEL_SETS = [(7, 5, 5, 5, 5), (8, 5, 5, 5), (8, 6, 5), (8, 8, 8, 5, 5, 5)]


def seeded(cls, config, seed=0):
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls(config).eval()


def squares(n: int, size: int = 64, seed: int = 0) -> torch.Tensor:
    """[n, 3, size, size] in [0, 1]: a dark background colour and two coloured squares per frame."""
    g = torch.Generator().manual_seed(seed)
    x = torch.empty(n, 3, size, size)
    for i in range(n):
        x[i] = torch.rand(3, 1, 1, generator=g) * 0.5
        for _ in range(2):
            s = int(torch.randint(10, 24, (1,), generator=g))
            r, c = (int(v) for v in torch.randint(0, size - s, (2,), generator=g))
            x[i, :, r : r + s, c : c + s] = torch.rand(3, 1, 1, generator=g)
    return x


def random_state_dict(schema, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {k: torch.randn(shape, generator=g) * 0.05 for k, shape in schema.items()}


# ----------------------------------------------------------------------------------------------
# iVideoGPT state-dict layout
# ----------------------------------------------------------------------------------------------


def test_module_state_dict_matches_key_schema():
    with torch.device("meta"):
        model = CNNFSQTokenizer()
    got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    schema = key_schema()
    assert set(got) == set(schema), set(got) ^ set(schema)
    assert got == schema
    # names and shapes diffusers gives CNNFSQModel256() (levels [7,5,5,5,5], 64 latent channels)
    expect = {
        "encoder.conv_in.weight": (128, 3, 3, 3),
        "encoder.down_blocks.0.resnets.0.norm1.weight": (128,),
        "encoder.down_blocks.0.downsamplers.0.conv.weight": (128, 128, 3, 3),
        "encoder.down_blocks.1.resnets.0.conv_shortcut.weight": (256, 128, 1, 1),
        "encoder.down_blocks.4.resnets.1.conv2.weight": (768, 768, 3, 3),
        "encoder.mid_block.attentions.0.group_norm.weight": (768,),
        "encoder.mid_block.attentions.0.to_q.weight": (768, 768),
        "encoder.mid_block.attentions.0.to_out.0.bias": (768,),
        "encoder.mid_block.resnets.1.conv1.weight": (768, 768, 3, 3),
        "encoder.conv_norm_out.weight": (768,),
        "encoder.conv_out.weight": (64, 768, 3, 3),
        "quant_linear.weight": (5, 64, 1, 1),
        "post_quant_linear.weight": (64, 5, 1, 1),
        "post_quant_linear.bias": (64,),
        "decoder.conv_in.weight": (768, 64, 3, 3),
        "decoder.mid_block.attentions.0.to_v.weight": (768, 768),
        "decoder.up_blocks.0.resnets.0.norm1.weight": (768,),
        "decoder.up_blocks.0.resnets.0.conv_shortcut.weight": (512, 768, 1, 1),
        "decoder.up_blocks.1.upsamplers.0.conv.weight": (256, 256, 3, 3),
        "decoder.up_blocks.4.resnets.1.conv2.weight": (128, 128, 3, 3),
        "decoder.up_blocks.4.upsamplers.0.conv.weight": (128, 128, 3, 3),
        "decoder.conv_norm_out.weight": (128,),
        "decoder.conv_out.weight": (3, 128, 3, 3),
    }
    for k, shape in expect.items():
        assert schema[k] == shape, k
    absent = [
        "encoder.down_blocks.4.downsamplers.0.conv.weight",  # the last down block does not downsample
        "decoder.up_blocks.0.upsamplers.0.conv.weight",  # the first up block does not upsample
        "decoder.up_blocks.0.resnets.2.conv1.weight",  # layers_per_block resnets, not + 1
        "encoder.mid_block.attentions.0.query.weight",  # old diffusers name
    ]
    assert not [k for k in absent if k in schema]
    assert not [k for k in schema if k.startswith("dynamics_quantize")]  # FSQ has no parameters
    assert len(schema) == 256


def test_random_state_dict_roundtrips_strict():
    schema = key_schema()
    sd = random_state_dict(schema)
    with torch.random.fork_rng(devices=[]):
        model = CNNFSQTokenizer()
    model.load_state_dict(sd, strict=True)
    out = model.state_dict()
    assert all(torch.equal(out[k], sd[k]) for k in schema)

    missing = dict(sd)
    del missing["decoder.up_blocks.2.upsamplers.0.conv.weight"]
    with pytest.raises(RuntimeError, match=r"Missing key\(s\).*decoder\.up_blocks\.2\.upsamplers\.0\.conv\.weight"):
        model.load_state_dict(missing, strict=True)
    wrong = dict(sd, **{"decoder.not_a_layer.weight": torch.zeros(1)})
    with pytest.raises(RuntimeError, match=r"Unexpected key\(s\).*decoder\.not_a_layer\.weight"):
        model.load_state_dict(wrong, strict=True)


def _diffusers_config(cfg: CNNFSQConfig, fsq_levels=None) -> dict:
    d = cfg.to_dict()
    d.pop("mid_block_add_attention")  # not an argument of CNNFSQModel256
    d.update(_diffusers_version="0.29.2", resolution=256, fsq_levels=fsq_levels or list(cfg.fsq_levels))
    return d


def test_from_pretrained_diffusers_directory(tmp_path):
    from safetensors.torch import save_file

    sd = random_state_dict(key_schema(SMALL), seed=1)
    (tmp_path / "config.json").write_text(json.dumps(_diffusers_config(SMALL, fsq_levels=12)))
    save_file(sd, str(tmp_path / "diffusion_pytorch_model.safetensors"))
    state = torch.random.get_rng_state()
    model = CNNFSQTokenizer.from_pretrained(tmp_path)
    assert torch.equal(torch.random.get_rng_state(), state)  # built on meta: no draws
    assert model.config == SMALL and model.fsq_levels == (7, 5, 5, 5, 5)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in sd.items())
    assert model.dynamics_quantize._basis.tolist() == [1, 7, 35, 175, 875]  # buffers refilled after to_empty
    frames = torch.rand(2, 3, 32, 48)
    codes = model.encode(frames)
    assert codes.shape == (2, 8, 12) and codes.dtype == torch.int64

    # save_pretrained writes the same format back
    again = CNNFSQTokenizer.from_pretrained(model.save_pretrained(tmp_path / "copy"))
    assert torch.equal(again.encode(frames), codes)


def test_from_pretrained_renames_deprecated_attention_and_reports_bad_keys(tmp_path):
    sd = random_state_dict(key_schema(SMALL), seed=2)
    old = dict(sd)
    for new, name in [("to_q", "query"), ("to_k", "key"), ("to_v", "value"), ("to_out.0", "proj_attn")]:
        for t in ("weight", "bias"):
            old[f"decoder.mid_block.attentions.0.{name}.{t}"] = old.pop(f"decoder.mid_block.attentions.0.{new}.{t}")
    torch.save(old, tmp_path / "old.bin")
    model = CNNFSQTokenizer.from_pretrained(tmp_path / "old.bin", config=SMALL)
    assert torch.equal(
        model.decoder.mid_block.attentions[0].to_out[0].weight,
        sd["decoder.mid_block.attentions.0.to_out.0.weight"],
    )

    bad = dict(sd)
    del bad["encoder.conv_out.bias"]
    bad["post_quant_linear.weight"] = torch.zeros(16, 4, 1, 1)
    bad["extra.weight"] = torch.zeros(1)
    torch.save(bad, tmp_path / "bad.pt")
    with pytest.raises(ValueError) as e:
        CNNFSQTokenizer.from_pretrained(tmp_path / "bad.pt", config=SMALL)
    msg = str(e.value)
    assert "missing keys ['encoder.conv_out.bias']" in msg and "unexpected keys ['extra.weight']" in msg
    assert "post_quant_linear.weight: expected (16, 5, 1, 1), got (16, 4, 1, 1)" in msg
    # the default (iVideoGPT) config does not fit SMALL's weights: every mismatch is listed
    with pytest.raises(ValueError, match="wrong shapes"):
        CNNFSQTokenizer.from_pretrained(tmp_path / "old.bin")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(FileNotFoundError, match="diffusion_pytorch_model.safetensors"):
        CNNFSQTokenizer.from_pretrained(tmp_path / "empty_dir")
    with pytest.raises(FileNotFoundError, match="no file or directory"):
        CNNFSQTokenizer.from_pretrained(tmp_path / "nothing_here")


def test_config_from_dict_checks():
    d = _diffusers_config(CNNFSQConfig(), fsq_levels=12)
    assert CNNFSQConfig.from_dict(d) == CNNFSQConfig()
    with pytest.raises(ValueError, match="CompressiveVQModelFSQ"):
        CNNFSQConfig.from_dict(dict(d, _class_name="CompressiveVQModelFSQ"))
    with pytest.raises(ValueError, match="norm_type"):
        CNNFSQConfig.from_dict(dict(d, norm_type="spatial"))
    with pytest.raises(ValueError, match="unknown CNNFSQModel256 arguments \\['foo'\\]"):
        CNNFSQConfig.from_dict(dict(d, foo=1))
    with pytest.raises(ValueError, match="get_fsq_levels"):
        CNNFSQConfig(fsq_levels=11)
    with pytest.raises(ValueError, match="norm_num_groups"):
        CNNFSQConfig(block_out_channels=(48, 64))


# ----------------------------------------------------------------------------------------------
# Shapes at RLVR-World's resolution
# ----------------------------------------------------------------------------------------------


def test_ivideogpt_shapes_256x320_and_quantizer_path():
    model = seeded(CNNFSQTokenizer, None)
    frames = torch.rand(1, 3, 256, 320, generator=torch.Generator().manual_seed(0))
    codes = model.encode(frames)
    assert codes.shape == (1, 16, 20) and codes.dtype == torch.int64
    assert 0 <= int(codes.min()) and int(codes.max()) < 4375 == model.num_codes
    q = model.quantizer()
    assert q.num_codes == 4375 and q.channels == 64
    with torch.no_grad():
        latents = codes_to_latents(codes, q)
        assert latents.shape == (1, 64, 16, 20)
        torch.testing.assert_close(latents, model.code_latents(codes), rtol=0, atol=1e-5)
        raw = model.decode_codes(codes, clamp=False)
        via_table = model.decode_latents(latents, clamp=False)
    assert raw.shape == (1, 3, 256, 320)
    torch.testing.assert_close(via_table, raw, rtol=1e-4, atol=1e-4)
    with torch.no_grad():
        clamped = model.decode_latents(latents)
    assert float(clamped.min()) >= 0.0 and float(clamped.max()) <= 1.0
    torch.testing.assert_close(clamped, raw.clamp(0, 1), rtol=1e-4, atol=1e-4)


def test_bad_inputs():
    model = seeded(CNNFSQTokenizer, SMALL)
    with pytest.raises(ValueError, match="multiples of 4"):
        model.encode(torch.rand(1, 3, 30, 32))
    with pytest.raises(ValueError, match=r"frames: expected \[N, 3, H, W\]"):
        model.encode(torch.rand(1, 1, 32, 32))
    with pytest.raises(TypeError, match="frames"):
        model.encode(torch.zeros(1, 3, 32, 32, dtype=torch.uint8))
    with pytest.raises(IndexError, match=r"codes: expected values in \[0, 4375\)"):
        model.decode_codes(torch.full((1, 2, 2), 4375))
    with pytest.raises(IndexError, match=r"codes: expected values in \[0, 4375\)"):
        model.decode_codes(torch.full((1, 2, 2), -1))
    with pytest.raises(TypeError, match="codes"):
        model.decode_codes(torch.zeros(1, 2, 2))
    with pytest.raises(ValueError, match="latents: expected \\[N, 16, h, w\\]"):
        model.decode_latents(torch.zeros(1, 5, 2, 2))
    with pytest.raises(ValueError, match="chunk_size"):
        model.encode(torch.rand(1, 3, 32, 32), chunk_size=0)


# ----------------------------------------------------------------------------------------------
# FSQ
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("levels", LEVEL_SETS)
def test_fsq_codes_roundtrip(levels):
    fsq = FSQ(levels)
    k = math.prod(levels)
    idx = torch.arange(k)
    centred = fsq.indices_to_codes(idx)  # [K, D]
    torch.testing.assert_close(centred, fsq_codebook(levels).float(), rtol=0, atol=0)

    # pre-activations whose bound() hits each level exactly quantize back to the same code
    lv = torch.tensor(levels, dtype=torch.float64)
    half_l = (lv - 1) * (1 + 1e-3) / 2
    offset = torch.where(torch.tensor(levels) % 2 == 0, 0.5, 0.0).double()
    shift = torch.atanh(offset / half_l)
    q = centred.double() * (lv // 2)  # integer level values
    z = (torch.atanh((q + offset) / half_l) - shift).float()
    zhat, codes = fsq.quantize(z)
    assert torch.equal(codes, idx)
    torch.testing.assert_close(zhat, centred, rtol=0, atol=0)

    # iVideoGPT's codes_to_indices: float32 ((zhat * half + half) * basis).sum().to(int32)
    half = torch.tensor(levels, dtype=torch.int32) // 2
    basis = torch.cumprod(torch.tensor([1, *levels[:-1]]), dim=0, dtype=torch.int32)
    theirs = ((zhat * half + half) * basis).sum(dim=-1).to(torch.int32)
    assert torch.equal(theirs.long(), codes)

    # channel-first module call, as CNNFSQModel256 uses it
    zhat4, codes4 = fsq(z.T.reshape(1, len(levels), 1, k))
    assert torch.equal(codes4.flatten(), idx) and zhat4.shape == (1, len(levels), 1, k)


def test_fsq_straight_through_gradient():
    fsq = FSQ((8, 5, 5, 5))
    z = torch.randn(6, 4, generator=torch.Generator().manual_seed(0), requires_grad=True)
    zhat, _ = fsq.quantize(z)
    (zhat * torch.arange(1.0, 5.0)).sum().backward()
    z2 = z.detach().clone().requires_grad_(True)
    (fsq.bound(z2) / torch.tensor([4.0, 2.0, 2.0, 2.0]) * torch.arange(1.0, 5.0)).sum().backward()
    torch.testing.assert_close(z.grad, z2.grad)  # rounding is the identity for gradients
    assert float(z.grad.abs().min()) > 0


def test_fsq_rounds_in_float32_under_autocast():
    fsq = FSQ((7, 5, 5, 5, 5))
    z = torch.randn(2, 5, 3, 3, generator=torch.Generator().manual_seed(0))
    ref_hat, ref_codes = fsq(z)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        zhat, codes = fsq(z.bfloat16())
    assert zhat.dtype == torch.bfloat16
    assert torch.equal(codes, fsq(z.bfloat16().float())[1])
    assert ref_codes.shape == codes.shape == (2, 3, 3) and ref_hat.dtype == torch.float32


# ----------------------------------------------------------------------------------------------
# codes_to_latents path, both tokenizers
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls,config", [(CNNFSQTokenizer, SMALL), (TinyFSQTokenizer, TINY_TEST)])
def test_decode_latents_of_table_equals_decode_codes(cls, config):
    model = seeded(cls, config)
    k = model.num_codes
    codes = torch.randint(0, k, (3, 4, 5), generator=torch.Generator().manual_seed(1))
    codes[0, 0, :] = torch.tensor([0, k - 1, 1, k - 2, k // 2])
    q = model.quantizer()
    assert q is model.quantizer()  # built once
    with torch.no_grad():
        latents = codes_to_latents(codes.to(torch.int32), q)
        torch.testing.assert_close(latents, model.code_latents(codes), rtol=0, atol=1e-5)
        a = model.decode_codes(codes, clamp=False)
        b = model.decode_latents(latents, clamp=False)
        c = model.decode_latents(codes_to_latents(codes, q, memory_format=torch.channels_last), clamp=False)
        chunked = model.decode_codes(codes, clamp=False, chunk_size=2)
    f = model.downsample_factor
    assert a.shape == (3, 3, 4 * f, 5 * f)
    torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(c, a, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(chunked, a, rtol=1e-5, atol=1e-5)
    # the table follows in-place parameter updates
    with torch.no_grad():
        model.post_quant_linear.bias.add_(1.0)
    torch.testing.assert_close(codes_to_latents(codes, q), model.code_latents(codes).detach(), rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------------------------
# The small tokenizer
# ----------------------------------------------------------------------------------------------


def test_tiny_tokenizer_shapes_schema_and_files(tmp_path):
    model = seeded(TinyFSQTokenizer, None)
    assert model.downsample_factor == 8 and model.num_codes == 1000
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == tiny_key_schema()
    frames = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    codes = model.encode(frames)
    assert codes.shape == (2, 8, 8) and codes.dtype == torch.int64
    with torch.no_grad():
        out = model.decode_codes(codes)
    assert out.shape == (2, 3, 64, 64) and float(out.min()) >= 0 and float(out.max()) <= 1
    loaded = TinyFSQTokenizer.from_pretrained(model.save_pretrained(tmp_path / "tiny"))
    assert loaded.config == model.config
    assert torch.equal(loaded.encode(frames), codes)
    assert json.loads((tmp_path / "tiny" / "config.json").read_text())["_class_name"] == "TinyFSQTokenizer"
    with pytest.raises(ValueError, match="not TinyFSQTokenizer"):
        TinyFSQTokenizer.from_pretrained(seeded(CNNFSQTokenizer, SMALL).save_pretrained(tmp_path / "cnn"))


def test_train_tokenizer_reduces_reconstruction_error():
    frames = squares(32)
    init = seeded(TinyFSQTokenizer, TINY_TEST)  # train_tokenizer's init under the same seed

    def mse(model):
        with torch.no_grad():
            return float((model.decode_codes(model.encode(frames)) - frames).square().mean())

    state = torch.random.get_rng_state()
    result = train_tokenizer(frames, 80, lr=1e-3, seed=0, progress=False, config=TINY_TEST, batch_size=8)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global generator is left alone
    assert len(result.losses) == 80 and all(math.isfinite(v) for v in result.losses)
    assert not result.tokenizer.training
    before, after = mse(init), mse(result.tokenizer)
    frame_mean = float((frames - frames.mean(dim=(2, 3), keepdim=True)).square().mean())
    # Measured on 2 CPU cores: before 0.114 (the fresh decoder outputs zeros), after 0.0177 (6.4x);
    # seeds 1 and 2 give 0.0174 and 0.0191. Predicting each frame's mean colour scores 0.0202, so the
    # codes carry the squares, not just the background.
    assert before / after > 4.0, (before, after)
    assert after < 1.1 * frame_mean, (after, frame_mean)
    assert sum(result.losses[-10:]) < 0.5 * sum(result.losses[:10])  # measured 0.28


def test_train_tokenizer_is_deterministic_and_accepts_iterables():
    frames = squares(12, seed=3)
    kw = {"progress": False, "config": TINY_TEST, "batch_size": 4}
    a = train_tokenizer(frames, 4, lr=1e-3, seed=5, **kw)
    b = train_tokenizer(frames, 4, lr=1e-3, seed=5, **kw)
    c = train_tokenizer(frames, 4, lr=1e-3, seed=6, **kw)
    assert a.losses == b.losses and a.losses != c.losses
    sa, sb = a.tokenizer.state_dict(), b.tokenizer.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)

    # uint8 batches from a re-iterable; continue training an existing tokenizer in place
    batches = [(frames[i : i + 4] * 255).round().to(torch.uint8) for i in range(0, 12, 4)]
    d = train_tokenizer(batches, 5, seed=0, progress=False, tokenizer=a.tokenizer)
    assert d.tokenizer is a.tokenizer and len(d.losses) == 5
    with pytest.raises(ValueError, match="ran out after 3 batches"):
        train_tokenizer(iter(batches), 5, seed=0, progress=False, config=TINY_TEST)


def test_train_tokenizer_bf16_autocast_channels_last_smoke():
    frames = squares(4, seed=4)
    r = train_tokenizer(
        frames, 2, seed=0, progress=False, config=TINY_TEST, autocast_dtype=torch.bfloat16, channels_last=True
    )
    assert all(math.isfinite(v) for v in r.losses)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        codes = r.tokenizer.encode(frames.contiguous(memory_format=torch.channels_last))
        out = r.tokenizer.decode_latents(
            codes_to_latents(codes, r.tokenizer.quantizer(), dtype=torch.bfloat16, memory_format=torch.channels_last)
        )
    assert codes.shape == (4, 8, 8) and out.shape == (4, 3, 64, 64)


# ----------------------------------------------------------------------------------------------
# Unreadable files and oversized configs
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cut", ["empty", "truncated"])
def test_from_pretrained_unreadable_weights_names_file(tmp_path, cut):
    d = seeded(TinyFSQTokenizer, TINY_TEST).save_pretrained(tmp_path / "tiny")
    weights = d / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(b"" if cut == "empty" else data[: len(data) // 2])
    with pytest.raises(ValueError, match=re.escape(f"{str(weights)!r}: cannot read the file (")):
        TinyFSQTokenizer.from_pretrained(d)
    garbage = tmp_path / "w.pth"
    garbage.write_bytes(b"not a torch file" * 8)
    with pytest.raises(ValueError, match=re.escape(f"{str(garbage)!r}: cannot read the file (")):
        CNNFSQTokenizer.from_pretrained(garbage)


def test_from_pretrained_bad_config_json_names_file(tmp_path):
    d = seeded(TinyFSQTokenizer, TINY_TEST).save_pretrained(tmp_path / "tiny")
    cfg = d / "config.json"
    good = cfg.read_bytes()
    cfg.write_bytes(b"\xff\xfe" + good)
    message = f"{str(cfg)!r}: not UTF-8 (invalid start byte at byte 0)"
    with pytest.raises(ValueError, match=re.escape(message)):
        TinyFSQTokenizer.from_pretrained(d)
    cfg.write_text("{not json")
    with pytest.raises(ValueError, match=re.escape(f"{str(cfg)!r}: invalid JSON (")):
        TinyFSQTokenizer.from_pretrained(d)
    cfg.write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match=re.escape(f"{str(cfg)!r}: invalid JSON (nested too deep")):
        CNNFSQTokenizer.from_pretrained(d)
    cfg.write_text("[1, 2]")
    with pytest.raises(TypeError, match=re.escape(f"{str(cfg)!r}: config: expected a mapping")):
        TinyFSQTokenizer.from_pretrained(d)
    cfg.write_bytes(good)
    assert TinyFSQTokenizer.from_pretrained(d).config == TINY_TEST


_TOO_BIG = [
    (TinyFSQTokenizer, "res_blocks", 100_000, "res_blocks: a block count must be <= 64, got 100000"),
    (TinyFSQTokenizer, "latent_channels", 10**6, f"latent_channels: a width must be <= {MAX_CHANNELS}"),
    (TinyFSQTokenizer, "channels", [16] * 9, "channels: at most 8 entries, got 9"),
    (TinyFSQTokenizer, "fsq_levels", [1024, 1024, 2], f"fsq_levels: at most {MAX_CODES} codes"),
    (CNNFSQTokenizer, "layers_per_block", 100_000, "layers_per_block: a block count must be <= 64"),
    (CNNFSQTokenizer, "block_out_channels", [32, 10**5], "block_out_channels: a width must be <= 8192"),
]


@pytest.mark.parametrize("cls, key, value, message", _TOO_BIG)
def test_from_pretrained_bounds_config_sizes_before_building(tmp_path, cls, key, value, message):
    config = TINY_TEST if cls is TinyFSQTokenizer else SMALL
    d = seeded(cls, config).save_pretrained(tmp_path / "m")
    cfg = d / "config.json"
    cfg.write_text(json.dumps(dict(json.loads(cfg.read_text()), **{key: value})))
    start = time.perf_counter()
    owner = cls._config_class.__name__
    with pytest.raises(ValueError, match=re.escape(f"{str(cfg)!r}: {owner}.{message}")):
        cls.from_pretrained(d)
    assert time.perf_counter() - start < 5.0  # the 100000-block config took > 40 s before


def test_config_sizes_at_the_bounds_are_accepted():
    assert TinyFSQConfig(res_blocks=MAX_BLOCKS, fsq_levels=(1024, 1024)).num_codes == MAX_CODES
    cfg = CNNFSQConfig(block_out_channels=(32, MAX_CHANNELS), layers_per_block=MAX_BLOCKS)
    assert (cfg.block_out_channels, cfg.layers_per_block) == ((32, 8192), 64)
