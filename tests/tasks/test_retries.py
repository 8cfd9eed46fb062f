"""How many times each failure class is attempted, counted through the real Prefect tasks.

A permanent failure (NaN latents, a storage fault storage gave up on, an LLM synopsis that failed
under ``on_failure="fail"``) is attempted once: Prefect's retry would fail the same way, and for
the LLM multiply its calls. What may pass on a second try (a CUDA crash, out of memory once other
videos on the GPU have finished) gets the task's retry. Transient storage faults are retried inside
storage, within one task attempt. Only the delay between Prefect's attempts is set to 0 here.
"""

from __future__ import annotations

import errno
from collections import Counter
from types import SimpleNamespace

import fsspec
import pytest
import torch
from fsspec.implementations.memory import MemoryFileSystem
from prefect import flow

from tasks import generate
from tasks.generate import SampleJob, generate_sample
from tasks.synopsize import LLMSettings, synopsize_entry
from tests.llm_server import status
from vstar_data.catalog import CatalogEntry
from vstar_data.runs import RunPaths, new_run_id
from vstar_data.storage import DEFAULT_RETRY
from vstar_model.sampling import GeneratedVideo

pytestmark = pytest.mark.usefixtures("prefect_harness")


class ScriptedFileSystem(MemoryFileSystem):
    """Memory files under ``scripted://``; ``fault(path, attempt)`` may return an error to raise
    on a write or a copy, and every attempt is counted per target path."""

    protocol = "scripted"
    store, pseudo_dirs = {}, [""]  # not MemoryFileSystem's
    attempts: Counter = Counter()
    fault = staticmethod(lambda path, attempt: None)

    @classmethod
    def _strip_protocol(cls, path):
        return super()._strip_protocol(path.removeprefix("scripted://") if isinstance(path, str) else path)

    def pipe_file(self, path, value, *args, **kwargs):
        path = self._strip_protocol(path)
        self.attempts[path] += 1
        if error := self.fault(path, self.attempts[path]):
            raise error
        return super().pipe_file(path, value, *args, **kwargs)

    def cp_file(self, path1, path2, **kwargs):  # the run's copies of cached files, server-side
        path2 = self._strip_protocol(path2)
        self.attempts[path2] += 1
        if error := self.fault(path2, self.attempts[path2]):
            raise error
        return super().cp_file(path1, path2, **kwargs)


@pytest.fixture
def scripted_storage():
    fsspec.register_implementation("scripted", ScriptedFileSystem, clobber=True)
    ScriptedFileSystem.store.clear()
    ScriptedFileSystem.pseudo_dirs[:] = [""]
    ScriptedFileSystem.attempts.clear()
    yield ScriptedFileSystem
    ScriptedFileSystem.fault = staticmethod(lambda path, attempt: None)
    ScriptedFileSystem.store.clear()


@pytest.fixture
def generations(monkeypatch):
    """Counts generation attempts; ``failures`` lists what each attempt raises (None: succeeds)."""
    attempts = SimpleNamespace(count=0, failures=[])

    def generate_video(model, states, config, **kwargs):
        attempts.count += 1
        failure = attempts.failures[attempts.count - 1] if attempts.count <= len(attempts.failures) else None
        if failure is not None:
            raise failure
        frames = torch.zeros(config.num_frames, config.height, config.width, 3, dtype=torch.uint8)
        return GeneratedVideo(frames=frames, states=list(states), seed=kwargs["seed"])

    # The model itself does not matter here: what happens after generation raised does.
    monkeypatch.setattr(generate, "cached_backbone", lambda *a, **kw: SimpleNamespace(device="cpu", revision=None))
    monkeypatch.setattr(generate, "generate_video", generate_video)
    return attempts


def _job(tiny_model_dir) -> SampleJob:
    return SampleJob(
        entry_id="kettle", prompt="a kettle", states=["a kettle"], synopsis_source="catalog", seed=0,
        model="tiny", model_path=str(tiny_model_dir), num_frames=2, height=64, width=64,
        num_inference_steps=1, guidance_scale=9.0, fps=8, tar="off", vsp=False,
    )


def _run(task, *args) -> bool:
    """Run ``task`` in a flow (retry delays 0); whether it ended completed."""
    quick = task.with_options(retry_delay_seconds=0)

    @flow
    def one_task() -> bool:
        return quick(*args, return_state=True).is_completed()

    return one_task()


@pytest.mark.parametrize(
    ("failures", "attempts", "completed"),
    [
        ([FloatingPointError("denoising produced non-finite latents (NaN/Inf)")], 1, False),
        ([torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")] * 5, 2, False),
        ([torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")], 2, True),
        ([RuntimeError("CUDA error: unspecified launch failure")], 2, True),
    ],
    ids=["nan-latents", "oom-every-time", "oom-once", "cuda-crash-once"],
)
def test_generation_attempts_per_failure_class(tiny_model_dir, tmp_path, generations, failures, attempts, completed):
    generations.failures = failures
    run = RunPaths(str(tmp_path / "out"), new_run_id())
    assert _run(generate_sample, _job(tiny_model_dir), run) is completed
    assert generations.count == attempts


def test_a_permanent_storage_fault_is_attempted_once(tiny_model_dir, scripted_storage, generations):
    scripted_storage.fault = staticmethod(
        lambda path, attempt: PermissionError(errno.EACCES, "access denied (injected)", path)
    )
    assert _run(generate_sample, _job(tiny_model_dir), RunPaths("scripted://out", new_run_id())) is False
    assert generations.count == 1  # no second generation for a fault that cannot pass
    assert list(scripted_storage.attempts.values()) == [1]  # storage gave up at once too


@pytest.mark.parametrize(("faults", "writes", "completed"), [(1, 2, True), (99, DEFAULT_RETRY.attempts, False)],
                         ids=["once", "every-time"])
def test_transient_storage_faults_are_retried_by_storage_within_one_task_attempt(
    tiny_model_dir, scripted_storage, generations, faults, writes, completed
):
    """A connection reset on the first file written: retried by storage (``DEFAULT_RETRY.attempts`` tries in all); if
    they all fail, the task fails without Prefect generating the video again."""
    failing = {}

    def fault(path, attempt):
        failing.setdefault("path", path)
        if path == failing["path"] and attempt <= faults:
            return ConnectionResetError(errno.ECONNRESET, "connection reset by peer (injected)")
        return None

    scripted_storage.fault = staticmethod(fault)
    assert _run(generate_sample, _job(tiny_model_dir), RunPaths("scripted://out", new_run_id())) is completed
    assert generations.count == 1
    assert scripted_storage.attempts[failing["path"]] == writes
    others = [n for path, n in scripted_storage.attempts.items() if path != failing["path"]]
    assert others == ([1] * 4 if completed else [])  # strip, cache record, the run's two copies


@pytest.mark.parametrize(("on_failure", "completed"), [("fail", False), ("fallback", True)])
def test_a_failing_llm_is_called_max_retries_plus_one_times_not_again_by_prefect(
    llm_server, tmp_path, on_failure, completed
):
    llm_server.default = status(500)
    llm = LLMSettings(model=llm_server.model, api_base=llm_server.api_base, max_retries=1, timeout=5,
                      on_failure=on_failure)
    entry = CatalogEntry(id="leaves", prompt="a tree losing its leaves")
    assert _run(synopsize_entry, entry, True, llm, 16, str(tmp_path)) is completed
    assert len(llm_server.requests) == 2
