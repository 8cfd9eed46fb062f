"""The benchmarks' ``--device`` argument: checked when parsed, so a device this machine lacks is
argparse's one-line error (exit 2), not a traceback from the first tensor moved there."""

from __future__ import annotations

import argparse


def available_device(name: str) -> str:
    """``name`` if torch can run on that device here (argparse ``type=``)."""
    import torch

    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise argparse.ArgumentTypeError(str(error).splitlines()[0]) from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{name}: this torch ({torch.__version__}) sees no CUDA device")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(f"{name}: only {torch.cuda.device_count()} CUDA device(s) here")
    elif device.type != "cpu":
        raise argparse.ArgumentTypeError(f"{name}: the benchmarks run on cpu or cuda")
    return name
