"""Print pip's configured package sources as uv arguments (the Makefile installs with uv).

uv ignores pip's configuration, and this platform's CPU torch lives only in pip's find-links
folder: without them uv would resolve against PyPI alone (CUDA torch). Reads `pip config list`
(files and PIP_* variables alike) from standard input and prints find-links, index URLs and
constraint files as `uv pip install` options, each once.
"""

from __future__ import annotations

import shlex
import sys

OPTIONS = {"find-links": "--find-links", "index-url": "--index-url", "extra-index-url": "--extra-index-url",
           "constraint": "--constraint"}


def uv_arguments(pip_config: str) -> list[str]:
    """``pip config list`` lines (``global.find-links='/opt/wheels'``) → ``["--find-links", "/opt/wheels", ...]``."""
    sources: dict[tuple[str, str], None] = {}  # ordered, each once (a variable and a file may say the same)
    for line in pip_config.splitlines():
        key, _, value = line.partition("=")
        option = OPTIONS.get(key.rpartition(".")[2])
        for item in (" ".join(shlex.split(value)).split() if option else ()):
            sources[option, item] = None
    arguments = [word for source in sources for word in source]
    if arguments:
        arguments += ["--index-strategy", "unsafe-best-match"]  # pip's rule: the best version over all sources
    return arguments


if __name__ == "__main__":
    print(shlex.join(uv_arguments(sys.stdin.read())))
