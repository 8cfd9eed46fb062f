import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests import network_guard


def test_prefect_home_is_temporary():
    home = Path(os.environ["PREFECT_HOME"])
    assert not str(home).startswith(str(Path.home() / ".prefect"))
    from prefect.settings import PREFECT_HOME

    assert Path(PREFECT_HOME.value()) == home


@pytest.mark.parametrize(
    "address", [("93.184.216.34", 80), ("10.0.0.1", 443), ("2606:2800:220:1::", 80), ("example.com", 80)]
)
def test_non_loopback_addresses_are_refused(address):
    family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
    with pytest.raises(network_guard.NetworkAccessError, match="loopback"):
        network_guard.check_address(family, address)


def test_guard_is_installed_on_socket_and_resolver():
    # Checked first so that a missing guard fails here instead of sending anything.
    assert socket.socket.connect is network_guard._guarded_connect
    assert socket.socket.connect_ex is network_guard._guarded_connect_ex
    with pytest.raises(network_guard.NetworkAccessError):
        socket.getaddrinfo("huggingface.co", 443)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        # Refused by the guard before the kernel sees it (so no packet can leave).
        with pytest.raises(network_guard.NetworkAccessError):
            s.connect(("203.0.113.9", 9))
        with pytest.raises(network_guard.NetworkAccessError):
            s.connect_ex(("203.0.113.9", 9))
    finally:
        s.close()


def test_loopback_connections_work():
    server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    client = socket.create_connection(server.getsockname(), timeout=5)
    client.close()
    server.close()


def test_vstar_model_import_pulls_no_orchestration_or_llm_client():
    code = "import sys, vstar_model; print('prefect' in sys.modules, 'litellm' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_offline_environment():
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] == "True"
    assert os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] == "false"


def test_the_pipeline_imports_diffusers_only_to_generate():
    """A resumed run loads no model: importing the flows and CLI must not pull in diffusers (seconds)."""
    code = "import sys, flows.produce, vstar_cli; print('diffusers' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False"]
