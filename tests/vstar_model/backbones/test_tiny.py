import json

import torch

from vstar_model.backbones.tiny import build_tiny_unet3d, save_tiny_animatediff, save_tiny_text_to_video


def test_tiny_model_is_saved_in_diffusers_layout(tiny_model_dir):
    index = json.loads((tiny_model_dir / "model_index.json").read_text())
    assert index["unet"] == ["diffusers", "UNet3DConditionModel"]
    for sub in ("unet", "vae", "text_encoder", "tokenizer", "scheduler"):
        assert (tiny_model_dir / sub).is_dir(), sub
    assert list((tiny_model_dir / "unet").glob("*.safetensors"))


def test_same_seed_same_weights_other_seed_differs():
    a, b, c = build_tiny_unet3d(3), build_tiny_unet3d(3), build_tiny_unet3d(4)
    pa, pb, pc = (torch.cat([p.flatten() for p in m.parameters()]) for m in (a, b, c))
    assert torch.equal(pa, pb)
    assert not torch.equal(pa, pc)


def test_saved_weights_are_deterministic(tmp_path):
    first = save_tiny_text_to_video(tmp_path / "a", seed=7)
    second = save_tiny_text_to_video(tmp_path / "b", seed=7)
    for sub in ("unet", "vae", "text_encoder"):
        (fa,) = (first / sub).glob("*.safetensors")
        (fb,) = (second / sub).glob("*.safetensors")
        assert fa.read_bytes() == fb.read_bytes(), sub


def test_tokenizer_loads_offline_and_round_trips(tiny_model_dir):
    from transformers import CLIPTokenizer

    tok = CLIPTokenizer.from_pretrained(tiny_model_dir / "tokenizer")
    ids = tok("a cat in the snow").input_ids
    assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
    assert tok.decode(ids, skip_special_tokens=True).replace(" ", "") == "acatinthesnow"


def test_tiny_animatediff_loads_as_unet_motion_model(tiny_animatediff_dir):
    from diffusers import MotionAdapter, UNet2DConditionModel, UNetMotionModel

    unet2d = UNet2DConditionModel.from_pretrained(tiny_animatediff_dir / "base" / "unet")
    adapter = MotionAdapter.from_pretrained(tiny_animatediff_dir / "motion_adapter")
    unet = UNetMotionModel.from_unet2d(unet2d, adapter)
    frames = 4
    text = torch.randn(2 * frames, 77, unet.config.cross_attention_dim)
    with torch.no_grad():
        out = unet(torch.randn(2, 4, frames, 8, 8), 10, encoder_hidden_states=text).sample
    assert out.shape == (2, 4, frames, 8, 8)
    assert any("motion_modules" in name for name in unet.attn_processors)


def test_animatediff_layout(tmp_path):
    root = save_tiny_animatediff(tmp_path, seed=0)
    assert (root / "base" / "model_index.json").exists()
    assert (root / "motion_adapter" / "config.json").exists()
