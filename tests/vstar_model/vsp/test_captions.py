"""Per-frame captions from a synopsis: the state each frame shows."""

from __future__ import annotations

import pytest

from vstar_model.vsp.captions import frame_captions, frame_state_indices


def test_each_frame_gets_the_state_of_its_nearer_keyframe_by_hand():
    # K = 3, N = 9: keyframes 0, 4, 8; frames 2 and 6 sit exactly halfway and take the later state.
    assert frame_captions(["A", "B", "C"], 9) == ["A", "A", "B", "B", "B", "B", "C", "C", "C"]
    # K = 2, N = 4: keyframes 0 and 3; frame 1 is 1/3 of the way (A), frame 2 is 2/3 (B).
    assert frame_captions(["A", "B"], 4) == ["A", "A", "B", "B"]
    assert frame_captions(["only"], 3) == ["only"] * 3
    assert frame_state_indices(4, 4) == [0, 1, 2, 3]


def test_keyframes_show_their_own_state():
    from vstar_model.vsp.embeddings import keyframe_indices

    for states, frames in [(3, 16), (4, 16), (5, 64), (8, 9)]:
        shown = frame_state_indices(states, frames)
        assert [shown[k] for k in keyframe_indices(states, frames).tolist()] == list(range(states))
        assert shown == sorted(shown) and len(shown) == frames


def test_fewer_frames_than_states_is_an_error():
    with pytest.raises(ValueError, match="each state needs a frame"):
        frame_captions(["a", "b", "c"], 2)
