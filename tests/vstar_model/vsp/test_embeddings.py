from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

from vstar_model.vsp.embeddings import interpolate_embeddings, keyframe_indices


def reference_keyframes(num_states: int, num_frames: int) -> list[int]:
    """floor(k (N-1) / (K-1)) in exact rational arithmetic (the authors' truncation)."""
    if num_states == 1:
        return [0]
    return [math.floor(Fraction(k * (num_frames - 1), num_states - 1)) for k in range(num_states)]


def reference_interpolation(states: torch.Tensor, num_frames: int) -> torch.Tensor:
    """Frame by frame, in float64: blend the two states whose keyframes enclose the frame."""
    keyframes = reference_keyframes(states.shape[0], num_frames)
    frames = []
    for frame in range(num_frames):
        if states.shape[0] == 1:
            frames.append(states[0].double())
            continue
        k = max(i for i in range(len(keyframes) - 1) if keyframes[i] <= frame)
        t = (frame - keyframes[k]) / (keyframes[k + 1] - keyframes[k])
        frames.append((1 - t) * states[k].double() + t * states[k + 1].double())
    return torch.stack(frames)


@pytest.mark.parametrize("num_states", [1, 2, 3, 4, 5, 7, 12])
def test_keyframes_follow_the_formula_for_every_frame_count_up_to_300(num_states):
    for num_frames in range(num_states, 301):
        indices = keyframe_indices(num_states, num_frames)
        assert indices.dtype == torch.long
        assert indices.tolist() == reference_keyframes(num_states, num_frames), (
            num_states,
            num_frames,
        )


@pytest.mark.parametrize("num_states", [2, 3, 5, 8, 16])
def test_keyframes_start_at_zero_end_at_last_frame_and_strictly_increase(num_states):
    for num_frames in (num_states, num_states + 1, 127, 128, 129, 255, 256, 300):
        indices = keyframe_indices(num_states, num_frames)
        assert indices[0] == 0 and indices[-1] == num_frames - 1
        assert bool((indices[1:] > indices[:-1]).all()), (num_states, num_frames)


def test_keyframes_truncate_as_the_authors_do():
    # The example: states at 0, 9.4, 18.8, 28.2, 37.6, 47; rounding would give 0, 9, 19, 28, 38, 47.
    assert keyframe_indices(6, 48).tolist() == [0, 9, 18, 28, 37, 47]
    # K=3, N=6: the middle state sits at 2.5 and goes to frame 2.
    assert keyframe_indices(3, 6).tolist() == [0, 2, 5]


@pytest.mark.parametrize("num_states", [2, 3, 4, 5, 6, 7, 8])
def test_keyframes_equal_the_authors_linspace_cast_up_to_127_frames(num_states):
    """Their ``torch.linspace(0, N - 1, K)`` cast to int8, where int8 does not wrap yet."""
    for num_frames in range(num_states, 128):
        authors = torch.linspace(0, num_frames - 1, num_states).to(torch.int8)
        assert keyframe_indices(num_states, num_frames).tolist() == authors.tolist(), num_frames


def test_keyframes_past_frame_127_do_not_wrap():
    # int8 would make the last keyframes of 200 frames negative (-107, -57).
    assert keyframe_indices(5, 200).tolist() == [0, 49, 99, 149, 199]
    assert keyframe_indices(8, 100_000).tolist() == [k * 99_999 // 7 for k in range(8)]


def test_keyframes_reject_fewer_frames_than_states():
    with pytest.raises(ValueError, match=r"num_frames=3.*num_states=4"):
        keyframe_indices(4, 3)
    with pytest.raises(ValueError, match="num_states"):
        keyframe_indices(0, 8)


@pytest.mark.parametrize(
    ("num_states", "num_frames"), [(2, 2), (2, 16), (3, 16), (4, 17), (5, 64), (6, 300)]
)
def test_frames_equal_their_state_exactly_at_keyframes_and_blend_linearly_between(
    num_states, num_frames
):
    generator = torch.Generator().manual_seed(num_states * 1000 + num_frames)
    states = torch.randn(num_states, 7, 5, generator=generator)

    frames = interpolate_embeddings(states, num_frames)

    assert frames.shape == (num_frames, 7, 5) and frames.dtype == states.dtype
    for k, frame in enumerate(keyframe_indices(num_states, num_frames).tolist()):
        assert torch.equal(frames[frame], states[k]), (k, frame)
    torch.testing.assert_close(
        frames.double(), reference_interpolation(states, num_frames), rtol=1e-6, atol=1e-6
    )


def test_frames_between_two_keyframes_move_at_a_constant_rate():
    states = torch.stack(
        [torch.zeros(3, 4), torch.ones(3, 4)]
    )  # one segment: 0 -> 1 over 11 frames

    frames = interpolate_embeddings(states, 11)

    steps = frames[1:] - frames[:-1]
    torch.testing.assert_close(steps, torch.full_like(steps, 0.1))


def test_a_single_state_gives_independent_copies_for_every_frame():
    states = torch.randn(1, 77, 16)

    frames = interpolate_embeddings(states, 24)

    assert frames.shape == (24, 77, 16)
    assert all(torch.equal(frame, states[0]) for frame in frames)
    frames[0].zero_()
    assert not torch.equal(states[0], frames[0]), "the result must not be a view of the input"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float64])
def test_low_and_high_precision_states_keep_their_dtype_and_exact_keyframes(dtype):
    states = torch.randn(3, 4, 8).to(dtype)

    frames = interpolate_embeddings(states, 9)

    assert frames.dtype == dtype
    for k, frame in enumerate(keyframe_indices(3, 9).tolist()):
        assert torch.equal(frames[frame], states[k])
    torch.testing.assert_close(
        frames.double(),
        reference_interpolation(states, 9),
        rtol=1e-2 if dtype != torch.float64 else 1e-12,
        atol=1e-2,
    )


def test_interpolation_rejects_too_few_frames_and_shapeless_states():
    with pytest.raises(ValueError, match=r"num_frames=2.*num_states=3"):
        interpolate_embeddings(torch.zeros(3, 4, 8), 2)
    with pytest.raises(ValueError, match="shape"):
        interpolate_embeddings(torch.zeros(3), 8)
