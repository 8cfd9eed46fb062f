"""VSTAR for diffusers video models: Video Synopsis Prompting and Temporal Attention Regularization.

The method only: no Prefect, no LLM client imports at package import time.
"""

from vstar_model import _compat  # noqa: F401  (must precede any torchvision import)
