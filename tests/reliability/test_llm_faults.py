"""LLM faults inside the flow, from a fault-injecting OpenAI-compatible server on 127.0.0.1.

Every entry's prompt gets its own scripted replies, one per attempt (``max_retries=1``: two).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tasks.synopsize import LLMSettings
from tests.llm_server import (
    TEST_API_KEY,
    FakeLLMServer,
    delay,
    empty,
    malformed,
    ok,
    refusal,
    status,
    text,
)
from tests.reliability.conftest import run_flow
from vstar_data.manifest import list_runs, read_manifest, verify_manifest
from vstar_data.schemas import read_table

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("prefect_harness")]

CANDLE_STATES = ["a tall new candle", "a half-burnt candle", "a stub of wax"]
# catalog id → (prompt, replies for its two attempts, expected source, error fragment)
FAULTS = {
    "rate-limited": ("a candle burning down", [status(429), ok(CANDLE_STATES)], "llm", None),
    "server-error": ("a tree losing its leaves", [status(500)] * 2, "fallback", "server_error"),
    "timeout": ("a river freezing over", [delay(3)] * 2, "fallback", "timeout"),
    "malformed": ("a city skyline at dawn", [malformed()] * 2, "fallback", "malformed"),
    "too-many": ("a caterpillar becoming a butterfly", [ok([f"stage {i}" for i in range(9)])] * 2,
                 "fallback", "too_many_states"),
    "too-few": ("a glass filling with water", [ok(["", " "])] * 2, "fallback", "no_states"),
    "refusal": ("a sandcastle washed away", [refusal()] * 2, "fallback", "refusal"),
    "empty": ("bread dough rising", [empty()] * 2, "fallback", "empty"),
    # An answer that quotes the key: the recorded reason must not.
    "leaky": ("a volcano erupting", [text(f"As configured, key {TEST_API_KEY}, no states.")] * 2,
              "fallback", "[REDACTED]"),
}


def _catalog(tmp_path: Path, entries: dict[str, str]) -> Path:
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps([{"id": entry_id, "prompt": prompt} for entry_id, prompt in entries.items()]))
    return path


def _llm(server: FakeLLMServer, **overrides) -> LLMSettings:
    return LLMSettings(model=server.model, api_base=server.api_base, max_retries=1, timeout=1.5,
                       concurrency=len(FAULTS), **overrides)


def test_each_llm_fault_falls_back_to_the_plain_prompt_and_the_run_completes(
    llm_server, tiny_model_dir, tmp_path, caplog, capfd
):
    for prompt, replies, _, _ in FAULTS.values():
        llm_server.enqueue_for(prompt, *replies)
    root = tmp_path / "out"
    run_dir = run_flow(_catalog(tmp_path, {k: v[0] for k, v in FAULTS.items()}), str(root), tiny_model_dir,
                       llm=_llm(llm_server))

    synopses = {row["catalog_id"]: row for row in read_table(f"{run_dir}/synopses.parquet").to_pylist()}
    for entry_id, (prompt, _, source, reason) in FAULTS.items():
        row = synopses[entry_id]
        assert row["source"] == source, (entry_id, row["error"])
        if source == "fallback":
            assert row["states"] == [prompt] and reason in row["error"], (entry_id, row["error"])
    assert synopses["rate-limited"]["states"] == CANDLE_STATES  # the 429 was retried
    samples = read_table(f"{run_dir}/samples.parquet").to_pylist()
    assert sorted(s["catalog_id"] for s in samples) == sorted(FAULTS)  # rows lost: 0
    assert {s["status"] for s in samples} == {"ok"}
    assert read_manifest(run_dir)["failures"] == {
        "synopses_fallback": len(FAULTS) - 1, "synopses_failed": 0, "samples_failed": 0,
    }
    assert list_runs(str(root)).to_pylist()[0]["status"] == "ok"
    assert verify_manifest(run_dir) == []

    # The key went to the server and nowhere else: files, logs, Prefect's records of the run.
    assert all(TEST_API_KEY in r.headers.get("authorization", "") for r in llm_server.requests)
    for path in root.rglob("*"):
        if path.is_file():
            assert TEST_API_KEY.encode() not in path.read_bytes(), path
    out, err = capfd.readouterr()
    assert TEST_API_KEY not in caplog.text + out + err
    assert TEST_API_KEY not in _prefect_records()


def _prefect_records() -> str:
    """Everything Prefect's API holds about the runs so far: flow runs, task runs, artifacts."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        records = [*client.read_flow_runs(), *client.read_task_runs(), *client.read_artifacts()]
    assert records  # the search below must search something
    return "\n".join(record.model_dump_json() for record in records)


def test_on_failure_fail_leaves_out_that_entry_only(tiny_model_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", TEST_API_KEY)
    entries = {"doomed": "a tree losing its leaves", "melting": "an ice cube melting"}
    melting = ["an ice cube", "a puddle"]
    # Every request is refused as unauthorised, however often the entry is retried, but one.
    with FakeLLMServer(default=status(401)) as server:
        server.enqueue_for("ice cube", ok(melting))
        root = tmp_path / "out"
        run_dir = run_flow(_catalog(tmp_path, entries), str(root), tiny_model_dir,
                           llm=_llm(server, on_failure="fail"))

    synopses = {row["catalog_id"]: row for row in read_table(f"{run_dir}/synopses.parquet").to_pylist()}
    assert synopses["doomed"]["source"] == "failed"
    assert "SynopsisFailed" in synopses["doomed"]["error"] and "auth" in synopses["doomed"]["error"]
    assert synopses["melting"]["source"] == "llm" and synopses["melting"]["states"] == melting
    samples = read_table(f"{run_dir}/samples.parquet").to_pylist()
    assert [(s["catalog_id"], s["status"]) for s in samples] == [("melting", "ok")]
    assert read_manifest(run_dir)["failures"] == {
        "synopses_fallback": 0, "synopses_failed": 1, "samples_failed": 0,
    }
    run = list_runs(str(root)).to_pylist()[0]
    assert (run["status"], run["num_samples"], run["num_failed"]) == ("partial", 1, 0)
    assert verify_manifest(run_dir) == []
