"""TAR's fused CPU kernel (``cpu_kernel.cpp``), built for this machine the first time it is needed.

:func:`vstar_model.tar.attention.tar_attention` runs it for float32 CPU tensors; it computes what
``tar_attention_probs(...) @ value`` does, with SDPA's own float32 exp (``exp_u20``), in one parallel
pass. Built by ``torch.utils.cpp_extension.load`` (the system's C++ compiler and ninja, ~30 s once;
the library is cached in torch's extensions directory, ``TORCH_EXTENSIONS_DIR`` to move it), with
the vector instructions torch itself dispatches to on this CPU. Where it cannot be built, TAR runs
in eager PyTorch instead, correct and slower, and the reason is logged once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import sys
import threading
import time
from pathlib import Path
from types import ModuleType

import torch

logger = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("cpu_kernel.cpp")
# The flags ATen compiles its own kernels with for each capability torch reports.
_CAPABILITY_FLAGS = {
    "AVX512": ["-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512",
               "-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma"],
    "AVX2": ["-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2", "-mavx2", "-mfma"],
}

# A build takes ~30 s; a lock this old belongs to a build that died.
STALE_LOCK_SECONDS = 600

_lock = threading.Lock()
_loaded: dict[str, ModuleType | None] = {}


def _ensure_ninja_on_path() -> None:
    # torch's builder runs `ninja` from PATH; the `ninja` wheel's binary is not on it when the
    # venv's python is run without activating the venv.
    if shutil.which("ninja") is None:
        try:
            import ninja
        except ImportError:
            return
        os.environ["PATH"] = f"{ninja.BIN_DIR}{os.pathsep}{os.environ.get('PATH', '')}"


def load_kernel() -> ModuleType | None:
    """The compiled kernel module (its ``tar_attention``), or ``None`` where it cannot be built.

    Thread-safe; builds at most once per process (torch's builder locks across processes).
    """
    with _lock:
        capability = torch.backends.cpu.get_cpu_capability()
        if capability not in _loaded:
            _loaded[capability] = _build(capability)
        return _loaded[capability]


def _build_directory(name: str) -> Path:
    """Torch's extensions directory, per Python and torch version (a new torch rebuilds), with a
    lock older than any build removed: torch's builder waits for its lock file without end, and
    a process killed mid-build (SIGKILL, a lost machine) leaves it behind."""
    from torch.utils import cpp_extension

    root = os.environ.get("TORCH_EXTENSIONS_DIR") or cpp_extension.get_default_build_root()
    version = f"py{sys.version_info.major}{sys.version_info.minor}_torch{torch.__version__}"
    directory = Path(root) / version / name
    directory.mkdir(parents=True, exist_ok=True)
    lock = directory / "lock"
    with contextlib.suppress(FileNotFoundError):
        if time.time() - lock.stat().st_mtime > STALE_LOCK_SECONDS:
            logger.warning("removing a stale build lock %s", lock)
            lock.unlink()
    return directory


def _build(capability: str) -> ModuleType | None:
    from torch.utils import cpp_extension

    _ensure_ninja_on_path()
    flags = _CAPABILITY_FLAGS.get(capability, [])
    name = f"vstar_tar_cpu_{capability.lower().replace(' ', '_')}"
    logger.info("loading vstar's fused CPU TAR kernel %s (compiled on its first use on a machine, ~30 s)", name)
    try:
        build_directory = _build_directory(name)
        return cpp_extension.load(
            name=name,
            sources=[str(SOURCE)],
            build_directory=str(build_directory),
            extra_cflags=["-O3", "-fopenmp", *flags],
            # libtorch_cpu's OpenMP runtime (same soname) serves the kernel's parallel region.
            extra_ldflags=["-fopenmp"],
        )
    except Exception as error:  # no compiler, no ninja, a failed build: eager TAR still works
        lines = str(error).strip().splitlines() or [type(error).__name__]
        reason = next((line.strip() for line in lines if "error:" in line), lines[-1].strip())
        logger.warning("vstar's fused CPU TAR kernel could not be built (%s); TAR on CPU runs in "
                       "eager PyTorch, slower", reason)
        return None


if __name__ == "__main__":  # `python -m vstar_model.tar.cpu_kernel`: build it now (make venv does)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    kernel = load_kernel()
    print(f"TAR's fused CPU kernel: {kernel.__file__}" if kernel else "TAR's fused CPU kernel: not built, eager TAR")
