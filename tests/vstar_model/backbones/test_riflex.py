import math

import pytest
import torch

from vstar_model.backbones.riflex import (
    apply_riflex,
    intrinsic_period,
    riflex_frequencies,
    rope_frequencies,
)
from vstar_model.backbones.tiny_wan import build_tiny_wan_transformer


def test_wan_intrinsic_frequency_has_the_period_riflex_uses():
    # Wan 1.3B/14B: head dim 128 → 44 temporal channels; k = 6 repeats after ~51 latent frames.
    assert intrinsic_period(44, 6) == 51
    assert intrinsic_period(12, 2) == 29  # the tiny Wan's (head dim 32 → 12 temporal channels)


def test_only_frequency_k_changes_and_only_past_its_period():
    trained = rope_frequencies(44)
    assert torch.equal(riflex_frequencies(44, 41, k=6), trained)  # 161 frames: within one period
    longer = riflex_frequencies(44, 61, k=6)  # 241 frames
    changed = (longer != trained).nonzero().flatten().tolist()
    assert changed == [5]
    assert longer[5].item() == pytest.approx(0.9 * 2 * math.pi / 61)
    assert 61 * longer[5].item() < 2 * math.pi  # the whole clip within one period: no repetition


def test_bad_index_is_refused():
    with pytest.raises(ValueError, match="k=7 is outside 1…6"):
        intrinsic_period(12, 7)


def _forward(transformer, frames):
    latents = torch.randn(1, 4, frames, 4, 4, generator=torch.Generator().manual_seed(0))
    text = torch.randn(1, 8, transformer.config.text_dim, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        return transformer(hidden_states=latents, timestep=torch.tensor([500]), encoder_hidden_states=text,
                           return_dict=False)[0]


def test_apply_riflex_rewrites_one_channel_pair_of_the_rope_and_restores_it():
    transformer = build_tiny_wan_transformer()
    rope = transformer.rope
    before = rope.freqs_cos.clone(), rope.freqs_sin.clone()
    with apply_riflex(transformer, 41, k=2) as changed:
        assert changed
        differs = (rope.freqs_cos != before[0]).any(dim=0).nonzero().flatten().tolist()
        assert differs == [2, 3]  # frequency 2's pair in the temporal block; height and width untouched
        assert rope.freqs_cos[7, 2].item() == pytest.approx(math.cos(7 * 0.9 * 2 * math.pi / 41), abs=1e-6)
    assert torch.equal(rope.freqs_cos, before[0]) and torch.equal(rope.freqs_sin, before[1])


def test_riflex_changes_long_clips_and_leaves_short_ones_as_trained():
    transformer = build_tiny_wan_transformer()
    short, long = _forward(transformer, 9), _forward(transformer, 41)
    with apply_riflex(transformer, 9, k=2) as changed:
        assert not changed
        assert torch.equal(_forward(transformer, 9), short)
    with apply_riflex(transformer, 41, k=2):
        assert not torch.allclose(_forward(transformer, 41), long)
