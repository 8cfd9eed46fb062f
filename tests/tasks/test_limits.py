import pytest

from tasks.limits import ensure_concurrency_limit


def test_limit_is_created_and_resized_against_a_server(prefect_harness):
    from prefect.client.orchestration import get_client

    assert ensure_concurrency_limit("vstar-test-gpu", 2) == "vstar-test-gpu"
    assert ensure_concurrency_limit("vstar-test-gpu", 3) == "vstar-test-gpu"
    with get_client(sync_client=True) as client:
        assert client.read_global_concurrency_limit_by_name("vstar-test-gpu").limit == 3


def test_no_limit_in_ephemeral_mode_where_dead_leases_never_expire(monkeypatch):
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings(restore_defaults={PREFECT_API_URL}):
        assert ensure_concurrency_limit("vstar-test-gpu", 1) is None


def test_zero_slots_is_an_error():
    with pytest.raises(ValueError, match="at least one slot, got 0"):
        ensure_concurrency_limit("x", 0)
