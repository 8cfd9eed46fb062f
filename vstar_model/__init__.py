"""VSTAR for diffusers video models: Video Synopsis Prompting and Temporal Attention Regularization.

The method only: no Prefect, no LLM client imports at package import time. Read it by concept:

- :mod:`vstar_model.tar` — Temporal Attention Regularization (paper §3.4): the ΔA bands, the
  regularised attention, and the attention processors that install it (UNet temporal layers).
- :mod:`vstar_model.vsp` — Video Synopsis Prompting (§3.2): the LLM template and client, the
  interpolation of state embeddings over frames, and per-frame text conditioning.
- :mod:`vstar_model.backbones` — presets and loading of the text-to-video models, the tiny random
  models the tests use, and VideoCrafter2's UNet class.
- :mod:`vstar_model.sampling` — our single-pass sampling loops (DDIM with CFG, VSP and TAR).
- :mod:`vstar_model.evaluation` — inter-frame similarity (DreamSim), interval distributions, plots.
- :mod:`vstar_model.analysis` — temporal attention maps of real and generated videos (§3.3).
- :mod:`vstar_model.video` — reading clips and writing mp4s and frame strips.
"""

from vstar_model import _compat  # noqa: F401  (must precede any torchvision import)
