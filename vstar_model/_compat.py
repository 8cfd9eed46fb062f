"""Make ``import torchvision`` work when its compiled extension cannot load.

The registry only ships CUDA builds of torchvision; on a CPU build of torch the extension fails to
load and torchvision's own import then dies with ``operator torchvision::nms does not exist``,
taking diffusers, transformers and dreamsim down with it. Registering the two op *schemas* (no
kernels) before torchvision's first import is enough for transforms and models to work; only the
C++ detection ops stay unavailable. Nothing is done when the real extension loads.
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import torch

_fragment: torch.library.Library | None = None


def _extension_loads() -> bool:
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return True  # torchvision absent: nothing to fix
    for folder in spec.submodule_search_locations:
        for lib in Path(folder).glob("_C.*"):
            try:
                torch.ops.load_library(str(lib))
                return True
            except (OSError, RuntimeError):
                return False
    return False


def ensure_torchvision_importable() -> None:
    global _fragment
    if "torchvision" in sys.modules or _fragment is not None or _extension_loads():
        return
    _fragment = torch.library.Library("torchvision", "FRAGMENT")
    for op in ("nms", "qnms"):
        _fragment.define(f"{op}(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")


ensure_torchvision_importable()
