"""Storage faults through the flow: in-memory filesystems whose writes fail as scripted."""

from __future__ import annotations

import errno
from collections import Counter

import fsspec
import pytest
from fsspec.implementations.memory import MemoryFileSystem

from tests.reliability.conftest import run_flow
from vstar_data.manifest import list_runs, verify_manifest
from vstar_data.schemas import read_table
from vstar_data.storage import StorageError, list_files

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

CATALOG = """\
- id: dawn
  prompt: a city from night to dawn
  synopsis: [a dark city, a city at dawn]
- id: tide
  prompt: the tide coming in
  synopsis: [a wide beach, waves at the dunes]
"""


class _ScriptedMemoryFileSystem(MemoryFileSystem):
    """Memory files under its own protocol and store, counting write and read attempts per path."""

    attempts: Counter

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        cls.store, cls.pseudo_dirs, cls.attempts = {}, [""], Counter()  # not MemoryFileSystem's

    @classmethod
    def _strip_protocol(cls, path):
        return super()._strip_protocol(path.removeprefix(f"{cls.protocol}://") if isinstance(path, str) else path)

    def fault(self, operation: str, path: str) -> OSError | None:
        return None

    def pipe_file(self, path, value, *args, **kwargs):
        path = self._strip_protocol(path)
        self.attempts["write", path] += 1
        if error := self.fault("write", path):
            raise error
        return super().pipe_file(path, value, *args, **kwargs)

    def cat_file(self, path, *args, **kwargs):
        path = self._strip_protocol(path)
        self.attempts["read", path] += 1
        if error := self.fault("read", path):
            raise error
        return super().cat_file(path, *args, **kwargs)


class FlakyFileSystem(_ScriptedMemoryFileSystem):
    """The first attempt of every write and read fails with a connection reset."""

    protocol = "flaky"

    def fault(self, operation, path):
        if self.attempts[operation, path] == 1:
            return ConnectionResetError(errno.ECONNRESET, f"connection reset by peer (injected) on {path}")
        return None


class DeniedRunsFileSystem(_ScriptedMemoryFileSystem):
    """Writes under ``runs/`` are refused for good; the cache is writable."""

    protocol = "denied"

    def fault(self, operation, path):
        if operation == "write" and "/runs/" in path:
            return PermissionError(errno.EACCES, "access denied (injected)", path)
        return None


@pytest.fixture
def scripted_filesystems():
    for cls in (FlakyFileSystem, DeniedRunsFileSystem):
        fsspec.register_implementation(cls.protocol, cls, clobber=True)
        cls.store.clear()
        cls.pseudo_dirs[:] = [""]
        cls.attempts.clear()
    yield
    for cls in (FlakyFileSystem, DeniedRunsFileSystem):
        cls.store.clear()


@pytest.mark.usefixtures("scripted_filesystems")
def test_transient_faults_on_every_write_are_retried_and_the_run_completes(tiny_model_dir, tmp_path):
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(CATALOG)
    run_dir = run_flow(catalog, "flaky://nightly", tiny_model_dir)

    written = {path for operation, path in FlakyFileSystem.attempts if operation == "write"}
    assert any("/runs/" in path for path in written) and any("/cache/" in path for path in written)
    assert all(FlakyFileSystem.attempts["write", path] == 2 for path in written)  # one fault, one retry
    samples = read_table(f"{run_dir}/samples.parquet").to_pylist()  # each read faults once too
    assert sorted((s["catalog_id"], s["status"]) for s in samples) == [("dawn", "ok"), ("tide", "ok")]
    assert verify_manifest(run_dir) == []
    assert [r["status"] for r in list_runs("flaky://nightly").to_pylist()] == ["ok"]


@pytest.mark.usefixtures("scripted_filesystems")
def test_a_permanent_fault_fails_the_run_naming_path_and_cause(tiny_model_dir, tmp_path):
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(CATALOG)
    with pytest.raises(StorageError, match=r"write denied://nightly/runs/\S+/synopses\.parquet failed: "
                                           r"PermissionError: .*access denied"):
        run_flow(catalog, "denied://nightly", tiny_model_dir)
    # Storage gives up at the first PermissionError (a transient fault gets 4 attempts); only
    # Prefect's retries of the write task (3 attempts in all) try it again.
    denied = [n for (op, path), n in DeniedRunsFileSystem.attempts.items() if "/runs/" in path]
    assert denied and all(n <= 3 for n in denied)
    assert list_files("denied://nightly/runs") == {}
    assert len(list_runs("denied://nightly")) == 0
