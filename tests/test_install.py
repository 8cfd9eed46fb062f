"""The Makefile's install: pip's configured package sources handed to uv (constraints/pip_sources.py)."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "constraints" / "pip_sources.py"


def _uv_arguments():
    spec = importlib.util.spec_from_file_location("pip_sources", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.uv_arguments


def test_find_links_indexes_and_constraints_become_uv_options_each_once():
    config = "\n".join([
        ":env:.find-links='/opt/wheels'",
        "global.cert='/etc/ssl/certs/ca-certificates.crt'",
        "global.constraint='/etc/xdg/pip/constraints.txt'",
        "global.extra-index-url='file:///opt/pypi/simple file:///opt/pypi-more/simple'",
        "global.find-links='/opt/wheels'",
        "user.index-url='https://mirror.example/simple'",
    ])
    assert _uv_arguments()(config) == [
        "--find-links", "/opt/wheels", "--constraint", "/etc/xdg/pip/constraints.txt",
        "--extra-index-url", "file:///opt/pypi/simple", "--extra-index-url", "file:///opt/pypi-more/simple",
        "--index-url", "https://mirror.example/simple", "--index-strategy", "unsafe-best-match",
    ]


def test_no_configured_source_gives_no_option():
    assert _uv_arguments()("global.cert='/x'\n:env:.default-timeout='180'") == []
    result = subprocess.run([sys.executable, str(SCRIPT)], input="", capture_output=True, text=True, check=True)
    assert result.stdout.strip() == ""
