"""Video Synopsis Prompting, the caption side: which visual state each frame shows.

A synopsis' K states are keyframes (``keyframe_indices``); a frame between the keyframes of states
s and s + 1 is conditioned on a blend of the two (``interpolate_embeddings``), so its caption is
the state whose weight in that blend is larger: the nearer keyframe's, the later state at exactly
halfway. These are temporal captions that come free with every VSTAR clip.
"""

from __future__ import annotations

from collections.abc import Sequence

from vstar_model.vsp.embeddings import keyframe_indices


def frame_state_indices(num_states: int, num_frames: int) -> list[int]:
    """For each of ``num_frames`` frames, the index of the state it shows (see module docstring)."""
    keyframes = keyframe_indices(num_states, num_frames).tolist()
    if num_states == 1:
        return [0] * num_frames
    states, segment = [], 0
    for frame in range(num_frames):
        while segment < num_states - 2 and frame >= keyframes[segment + 1]:
            segment += 1
        start, end = keyframes[segment], keyframes[segment + 1]
        # Integer form of "blend weight (frame - start) / (end - start) < 1/2".
        states.append(segment if 2 * (frame - start) < end - start else segment + 1)
    return states


def frame_captions(states: Sequence[str], num_frames: int) -> list[str]:
    """The caption of every frame: the state it shows, ``num_frames`` strings."""
    return [states[index] for index in frame_state_indices(len(states), num_frames)]
