"""iVideoGPT's compressive tokenizer (rlvr_fast.models.compressive): key schema, strict files, parity with
RLVR-World's own module, decoding through codes_to_latents, one context per group."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from compressive_fixture import CONFIG, deterministic_clip, deterministic_state_dict

from rlvr_fast.models.compressive import (
    CompressiveFSQConfig,
    CompressiveFSQTokenizer,
    ivideogpt_compressive_config,
    key_schema,
    tiny_compressive_config,
)

DATA = Path(__file__).parent / "data"
SMALL = CompressiveFSQConfig.from_dict(CONFIG)  # RT-1 frame size, narrow: the parity fixture's config


def _tiny(seed: int = 0) -> CompressiveFSQTokenizer:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        tok = CompressiveFSQTokenizer(tiny_compressive_config())
        for name, p in tok.named_parameters():  # non-zero position embeddings: their order matters
            if "pos_emb" in name:
                p.data.normal_(0, 0.1)
    return tok.eval()


def test_rt1_schema_is_rlvr_worlds_506_tensors():
    """Counts from RLVR-World's CompressiveVQModelFSQ built from ctx_vae256/config.json (diffusers 0.27)."""
    schema = key_schema(ivideogpt_compressive_config())
    assert len(schema) == 506
    assert sum(torch.Size(s).numel() for s in schema.values()) == 129_448_016
    assert schema["cond_encoder.cross_att_blocks.0.kv_pos_emb"] == (1280, 256)
    assert schema["cond_encoder.cross_att_blocks.1.att.in_proj_weight"] == (1536, 512)
    assert schema["cond_decoder.cross_att_blocks.0.q_pos_emb"] == (1280, 512)
    assert "cond_decoder.cross_att_blocks.1.q_pos_emb" not in schema
    assert schema["quant_linear.weight"] == (5, 1024) and schema["post_quant_linear.weight"] == (1024, 5)
    assert schema["decoder.up_blocks.3.resnets.2.conv2.weight"] == (128, 128, 3, 3)
    assert "encoder.mid_block.attentions.0.to_q.weight" not in schema
    assert "cond_encoder.mid_block.attentions.0.to_q.weight" in schema
    with torch.device("meta"):
        model = CompressiveFSQTokenizer()
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == schema
    cfg = model.config
    assert (cfg.context_grid, cfg.dynamics_grid, cfg.num_codes, cfg.num_context_codes) == (
        (32, 40),
        (8, 10),
        4375,
        4375,
    )


def test_parity_with_rlvr_worlds_module():
    """Codes and frames of RLVR-World's CompressiveVQModelFSQ on the same weights and clip, float64
    (tests/compressive_fixture.py; their tokenize / detokenize[:, 1:], every 8th pixel stored)."""
    ref = torch.load(DATA / "compressive_parity.pt", weights_only=True)
    tok = CompressiveFSQTokenizer(SMALL).double()
    tok.load_state_dict(deterministic_state_dict(key_schema(SMALL)), strict=True)
    tok.eval()
    ctx, codes = tok.encode(deterministic_clip())
    assert torch.equal(ctx.flatten(), ref["context_codes"].flatten())
    assert torch.equal(codes.flatten(), ref["codes"].flatten())
    with torch.no_grad():
        frames = tok.decode(ctx, codes, clamp=False)
    assert frames.shape == (1, 2, 3, 256, 320)
    torch.testing.assert_close(frames[..., ::8, ::8].float(), ref["frames"], rtol=0, atol=1e-6)


def test_decode_equals_the_training_pass_and_groups_share_one_context():
    tok = _tiny()
    clips = torch.rand(3, 4, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        rec, ctx, codes = tok(clips)
        assert (ctx.shape, codes.shape) == ((3, 16, 16), (3, 3, 8, 8))
        assert torch.equal(tok.encode(clips)[1], codes)
        torch.testing.assert_close(tok.decode(ctx, codes, clamp=False), rec[:, 1:], rtol=0, atol=2e-5)
        # one context decoded per clip for r = 3 frames == each frame decoded with its own copy of it
        one_by_one = torch.cat(
            [tok.decode(ctx[i : i + 1], codes[i : i + 1, j : j + 1]) for i in range(3) for j in range(3)]
        )
        torch.testing.assert_close(tok.decode(ctx, codes).flatten(0, 1), one_by_one.flatten(0, 1), rtol=0, atol=2e-5)
        assert 0 <= float(tok.decode(ctx, codes).min()) and float(tok.decode(ctx, codes).max()) <= 1


def test_decoding_ignores_rlvr_worlds_context_offset_only_when_told():
    """RLVR-World passes context ids still offset by 4375; FSQ digits wrap, so they decode the same. Here
    context codes must be un-offset: an offset one is refused, naming the range."""
    tok = CompressiveFSQTokenizer(SMALL).eval()
    ctx = torch.zeros(1, 32, 40, dtype=torch.long)
    with pytest.raises(IndexError, match=r"context_codes.*\[0, 4375\)"):
        tok.decode(ctx + 4375, torch.zeros(1, 1, 8, 10, dtype=torch.long))
    with pytest.raises(IndexError, match=r"codes.*\[0, 4375\)"):
        tok.decode(ctx, torch.full((1, 1, 8, 10), 4375))
    with pytest.raises(ValueError, match=r"codes: expected \[1, r, \(8, 10\)\]"):
        tok.decode(ctx, torch.zeros(1, 1, 16, 20, dtype=torch.long))
    with pytest.raises(ValueError, match=r"frames: expected \[B, 1 \+ F, 3, 256, 320\]"):
        tok.encode(torch.rand(1, 1, 3, 256, 320))


def test_from_pretrained_diffusers_directory_strict(tmp_path):
    from safetensors.torch import save_file

    sd = {k: v.float() for k, v in deterministic_state_dict(key_schema(SMALL)).items()}
    d = tmp_path / "ctx_tokenizer"
    d.mkdir()
    save_file(sd, str(d / "diffusion_pytorch_model.safetensors"))
    (d / "config.json").write_text(
        json.dumps(
            {
                **CONFIG,
                "_class_name": "VQModel",
                "_diffusers_version": "0.25.0.dev0",
                "lookup_from_codebook": True,
                "force_upcast": True,
                "sample_size": 32,
                "scaling_factor": 0.18215,
            }
        )
    )
    tok = CompressiveFSQTokenizer.from_pretrained(d)
    assert tok.config == SMALL and not tok.training
    assert all(torch.equal(tok.state_dict()[k], v) for k, v in sd.items())
    again = CompressiveFSQTokenizer.from_pretrained(tok.save_pretrained(tmp_path / "again"))
    assert all(torch.equal(again.state_dict()[k], v) for k, v in sd.items())
    assert json.loads((tmp_path / "again" / "config.json").read_text())["_class_name"] == "CompressiveVQModelFSQ"

    bad = dict(sd)
    del bad["cond_decoder.cross_att_blocks.0.kv_pos_emb"]
    bad["quant_linear.weight"] = torch.zeros(5, 512)
    bad["cond_encoder.cross_att_blocks.9.q_pos_emb"] = torch.zeros(1)
    save_file(bad, str(tmp_path / "bad.safetensors"))
    with pytest.raises(ValueError) as e:
        CompressiveFSQTokenizer.from_pretrained(tmp_path / "bad.safetensors", config=SMALL)
    msg = str(e.value)
    assert "missing keys ['cond_decoder.cross_att_blocks.0.kv_pos_emb']" in msg
    assert "unexpected keys ['cond_encoder.cross_att_blocks.9.q_pos_emb']" in msg
    assert "quant_linear.weight: expected (5, 128), got (5, 512)" in msg  # 8 latent channels x 4x4


def test_config_from_dict_checks():
    rt1 = json.loads(
        json.dumps({**CONFIG, "block_out_channels": [128, 256, 256, 512], "latent_channels": 64, "layers_per_block": 2})
    )
    assert CompressiveFSQConfig.from_dict(rt1) == ivideogpt_compressive_config()
    with pytest.raises(ValueError, match="not CompressiveVQModelFSQ"):
        CompressiveFSQConfig.from_dict({"_class_name": "CNNFSQModel256"})
    with pytest.raises(ValueError, match=r"unknown CompressiveVQModelFSQ arguments \['foo'\]"):
        CompressiveFSQConfig.from_dict({"foo": 1})
    with pytest.raises(ValueError, match="context_length: only 1 context frame"):
        CompressiveFSQConfig.from_dict({"context_length": 2})
    with pytest.raises(ValueError, match="multiples of downsample x patch_size = 32"):
        CompressiveFSQConfig(frame_size=(240, 320))
    with pytest.raises(ValueError, match="multiple of norm_num_groups=32 and of 32"):
        CompressiveFSQConfig(block_out_channels=(16, 32))
    with pytest.raises(ValueError, match="get_fsq_levels"):
        CompressiveFSQConfig(vq_fsq_levels=3)


def test_tiny_variant_trains_on_sprite_clips_and_beats_the_frame_mean():
    """train_tokenizer on 1 + 2 frame sprite clips; held-out future frames decoded from (context codes, 64
    codes each). Measured on 2 CPU cores (40 steps, ~20 s): MSE 0.0097; each real frame's own mean colour
    scores 0.0277 and copying the context frame 0.0090 (300 steps of 1 + 3 frames, batch 8: 0.0021)."""
    from rlvr_fast.trainer.train_tokenizer import train_tokenizer
    from rlvr_fast.worlds.sprite import SpriteWorld

    world = SpriteWorld(context_frames=1, predict_frames=2, seed=0)

    def clips(split, n):
        return torch.stack([torch.cat([ex.context, ex.target]) for ex in world.examples(split, n)])

    train, test = clips("train", 512), clips("test", 64)
    result = train_tokenizer(train, 40, lr=3e-3, seed=0, progress=False, config=tiny_compressive_config(), batch_size=4)
    tok = result.tokenizer
    assert not tok.training and isinstance(tok, CompressiveFSQTokenizer)
    with torch.no_grad():
        pred = tok.decode(*tok.encode(test))
    real = test[:, 1:]
    mse = float((pred - real).square().mean())
    frame_mean = float((real - real.mean(dim=(3, 4), keepdim=True)).square().mean())
    assert mse < 0.5 * frame_mean, (mse, frame_mean)
    with pytest.raises(ValueError, match="channels_last: not supported"):
        train_tokenizer(train, 1, progress=False, config=tiny_compressive_config(), channels_last=True)
    with pytest.raises(ValueError, match=r"frames: expected .*5"):
        train_tokenizer(train[:, 0], 1, progress=False, config=tiny_compressive_config())


def test_sub_clips_keep_the_context_and_draw_future_frames_per_clip():
    """train_tokenizer(future_frames=k): every step's clip is its context frame + k of its future frames,
    in order, drawn per clip (the loss of a compressive tokenizer is a mean over future frames, each
    decoded from the context alone); the draw follows the seed."""
    from rlvr_fast.trainer import train_tokenizer as T

    # frame j of clip i is filled with the value 10 * i + j: which frames a sub-clip holds can be read off
    x = (torch.arange(6)[:, None] * 10 + torch.arange(8)[None]).float()[:, :, None, None, None].expand(6, 8, 3, 2, 2)
    a = T._sub_clips(x, 3, torch.Generator().manual_seed(0))
    b = T._sub_clips(x, 3, torch.Generator().manual_seed(0))
    assert a.shape == (6, 4, 3, 2, 2) and torch.equal(a, b)
    ids = a[:, :, 0, 0, 0].long()
    assert torch.equal(ids[:, 0], torch.arange(6) * 10)  # the context frame always first
    frames = ids[:, 1:] - (torch.arange(6) * 10)[:, None]
    assert ((frames >= 1) & (frames <= 7)).all() and (frames.diff(dim=1) > 0).all()  # distinct, in order
    assert len({tuple(r) for r in frames.tolist()}) > 1  # drawn per clip

    seen = []
    real = T.CompressiveFSQTokenizer.forward

    def spy(self, clips):
        seen.append(clips.shape[1])
        return real(self, clips)

    world_clips = torch.randint(0, 255, (4, 5, 3, 64, 64), dtype=torch.uint8)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(T.CompressiveFSQTokenizer, "forward", spy)
        T.train_tokenizer(world_clips, 2, progress=False, config=tiny_compressive_config(), future_frames=1)
        T.train_tokenizer(world_clips, 1, progress=False, config=tiny_compressive_config())
    assert seen == [2, 2, 5]
    with pytest.raises(ValueError, match="future_frames: expected a non-negative int"):
        T.train_tokenizer(world_clips, 1, progress=False, config=tiny_compressive_config(), future_frames=-1)
