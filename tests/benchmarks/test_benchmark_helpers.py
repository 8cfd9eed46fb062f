"""The benchmarks' --device check."""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

from devices import available_device  # noqa: E402


def test_cpu_is_an_available_device():
    assert available_device("cpu") == "cpu"


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a CUDA device")
def test_a_missing_cuda_device_is_a_one_line_argparse_error():
    with pytest.raises(argparse.ArgumentTypeError, match="sees no CUDA device") as error:
        available_device("cuda")
    assert "\n" not in str(error.value)


def test_an_unknown_device_is_a_one_line_argparse_error():
    for name in ("gpu", "mps"):
        with pytest.raises(argparse.ArgumentTypeError) as error:
            available_device(name)
        assert "\n" not in str(error.value)


def test_a_benchmark_given_a_device_it_lacks_exits_2_without_a_traceback():
    result = subprocess.run([sys.executable, str(BENCHMARKS / "tar_attention_grid.py"), "--device", "gpu"],
                            capture_output=True, text=True)
    assert result.returncode == 2
    assert "argument --device" in result.stderr and "Traceback" not in result.stderr
