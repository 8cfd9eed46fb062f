"""VSP on a diffusion transformer: a processor on each block's attn2 gives each latent frame its own text."""

import pytest
import torch

from vstar_model.backbones.tiny_wan import build_tiny_wan_transformer
from vstar_model.vsp.dit import cross_attention_layers, frame_tokens, per_frame_text
from vstar_model.vsp.embeddings import interpolate_embeddings

FRAMES, TEXT = 9, 8


@pytest.fixture(scope="module")
def transformer():
    return build_tiny_wan_transformer(seed=0, num_layers=2)


def _latents(seed=0):
    return torch.randn(1, 4, FRAMES, 8, 8, generator=torch.Generator().manual_seed(seed))


def _text(seed, count=1):
    return torch.randn(count, TEXT, 32, generator=torch.Generator().manual_seed(seed))


def _call(transformer, latents, text):
    with torch.no_grad():
        return transformer(hidden_states=latents, timestep=torch.tensor([700]), encoder_hidden_states=text,
                           return_dict=False)[0]


def test_one_text_through_the_processor_is_bit_identical_to_diffusers(transformer):
    latents, text = _latents(), _text(1)
    native = _call(transformer, latents, text)
    with per_frame_text(transformer, TEXT):
        hooked = _call(transformer, latents, text)  # the unconditional branch: one negative embedding
    assert torch.equal(native, hooked)
    assert all(type(layer.processor).__name__ == "WanAttnProcessor" for layer in cross_attention_layers(transformer))


def test_identical_per_frame_texts_equal_plain_conditioning(transformer):
    latents, text = _latents(), _text(2)
    native = _call(transformer, latents, text)
    with per_frame_text(transformer, TEXT) as grid:
        per_frame = _call(transformer, latents, frame_tokens(text.expand(FRAMES, -1, -1)))
        assert (grid.frames, grid.height, grid.width) == (FRAMES, 4, 4)
    torch.testing.assert_close(per_frame, native, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(_call(transformer, latents, _text(3)), native)


def test_changing_only_the_last_state_changes_late_latent_frames_more(transformer):
    latents = _latents()
    first, last, other = _text(4), _text(5), _text(6)
    with per_frame_text(transformer, TEXT):
        base = _call(transformer, latents, frame_tokens(interpolate_embeddings(torch.cat([first, last]), FRAMES)))
        moved = _call(transformer, latents, frame_tokens(interpolate_embeddings(torch.cat([first, other]), FRAMES)))
    change = (base - moved).abs().mean(dim=(0, 1, 3, 4))  # per latent frame
    early, late = change[: FRAMES // 3].mean(), change[-(FRAMES // 3):].mean()
    assert late > 3 * early, change.tolist()
    assert change[-1] > change[0]


def test_the_grid_comes_from_the_transformers_own_call(transformer):
    with per_frame_text(transformer, TEXT):
        layer = cross_attention_layers(transformer)[0]
        hidden = torch.randn(1, FRAMES * 16, 64)
        with pytest.raises(ValueError, match="does not cover"):
            layer(hidden, torch.randn(1, TEXT, 64))  # no transformer call yet: no grid
        _call(transformer, _latents(), _text(1))
        with pytest.raises(ValueError, match="neither 8 .* nor 9×8"):
            layer(hidden, torch.randn(1, TEXT + 1, 64))
