"""LLM faults inside the flow, from a fault-injecting OpenAI-compatible server on 127.0.0.1.

Every entry's prompt gets its own scripted replies, one per call: a transport fault is retried once
(``max_retries=1``), an unusable answer is asked again once, an answer quoting the key not at all.
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
    # A minute late against a 5 s client timeout: times out however fast the machine is.
    "timeout": ("a river freezing over", [delay(60)] * 2, "fallback", "timeout"),
    "malformed": ("a city skyline at dawn", [malformed()] * 2, "fallback", "malformed"),
    "too-many": ("a caterpillar becoming a butterfly", [ok([f"stage {i}" for i in range(9)])] * 2,
                 "fallback", "too_many_states"),
    "too-few": ("a glass filling with water", [ok(["", " "])] * 2, "fallback", "no_states"),
    "refusal": ("a sandcastle washed away", [refusal()] * 2, "fallback", "refusal"),
    "empty": ("bread dough rising", [empty()] * 2, "fallback", "empty"),
    # Answers that quote the key, whole or without its prefix: rejected, and recorded without it.
    "leaky": ("a volcano erupting", [text(f"As configured, key {TEST_API_KEY}, no states.")],
              "fallback", "secret_echo"),
    "leaky-unprefixed": ("a glacier retreating",
                         [ok([f"ice carved with {TEST_API_KEY.removeprefix('sk-')}", "bare rock"])],
                         "fallback", "secret_echo"),
}


def _catalog(tmp_path: Path, entries: dict[str, str]) -> Path:
    path = tmp_path / "catalog.json"
    path.write_text(json.dumps([{"id": entry_id, "prompt": prompt} for entry_id, prompt in entries.items()]))
    return path


def _llm(server: FakeLLMServer, **overrides) -> LLMSettings:
    return LLMSettings(model=server.model, api_base=server.api_base, max_retries=1, timeout=5,
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
    # VSP only where the video really moved through the LLM's states.
    assert {s["catalog_id"]: s["vsp"] for s in samples} == {entry_id: entry_id == "rate-limited" for entry_id in FAULTS}
    assert read_manifest(run_dir)["failures"] == {
        "synopses_fallback": len(FAULTS) - 1, "synopses_failed": 0, "samples_failed": 0,
    }
    [run] = list_runs(str(root)).to_pylist()
    assert (run["status"], run["num_synopses_fallback"], run["num_synopses_failed"]) == ("degraded", len(FAULTS) - 1, 0)
    assert verify_manifest(run_dir) == []
    # Each fallback is said in the flow run's logs (what the Prefect UI shows), with its reason.
    fallbacks = [r.getMessage() for r in caplog.records
                 if r.name.startswith("prefect.task_runs") and "no LLM synopsis" in r.getMessage()]
    assert len(fallbacks) == len(FAULTS) - 1 and any("secret_echo" in m for m in fallbacks)

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
    assert (run["status"], run["num_samples"], run["num_failed"], run["num_synopses_failed"]) == ("partial", 1, 0, 1)
    assert verify_manifest(run_dir) == []


def test_llm_calls_never_exceed_the_concurrency_without_a_server_limit(tiny_model_dir, tmp_path, monkeypatch):
    """Prefect's ephemeral API has no global limit (tasks/limits.py): the client's own bound holds."""
    import flows.produce

    monkeypatch.setattr(flows.produce, "ensure_concurrency_limit", lambda name, slots: None)
    monkeypatch.setenv("OPENAI_API_KEY", TEST_API_KEY)
    entries = {f"entry-{i}": f"a candle burning down, take {i}" for i in range(30)}
    with FakeLLMServer(default=delay(0.3)) as server:
        run_dir = run_flow(_catalog(tmp_path, entries), str(tmp_path / "out"), tiny_model_dir,
                           llm=LLMSettings(model=server.model, api_base=server.api_base, concurrency=4, timeout=30),
                           variants=["vsp"], tar="off")
    assert len(server.requests) == 30 and 1 <= server.max_in_flight <= 4
    synopses = read_table(f"{run_dir}/synopses.parquet").to_pylist()
    assert {row["source"] for row in synopses} == {"llm"}
    # Each row's latency is its own call's (the server waits 0.3 s), not the wait for one of 4 slots
    # behind 26 others (which would reach several seconds).
    assert all(0.3 <= row["latency_seconds"] for row in synopses)
