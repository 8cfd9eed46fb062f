"""Synopses made by an LLM inside the flow: real HTTP to a local OpenAI-compatible server."""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.produce import produce_dataset
from tasks.evaluate import EvaluationSettings
from tasks.jobs import ModelSettings
from tasks.synopsize import LLMSettings
from tests.llm_server import TEST_API_KEY, ok, status
from vstar_data.schemas import read_table

pytestmark = pytest.mark.usefixtures("prefect_harness")

CATALOG = """\
- id: ice-melting
  prompt: an ice cube melting on a plate
- id: server-down
  prompt: a tree losing its leaves in autumn
- id: brought-own
  prompt: bread rising
  synopsis: [raw dough in a bowl, dough doubled in size]
"""


def test_llm_states_condition_the_videos_failures_fall_back_and_the_key_leaks_nowhere(
    llm_server, tiny_model_dir, tmp_path, caplog, capfd
):
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(CATALOG)
    melting = ["a solid ice cube on a plate", "a half-melted ice cube in a puddle", "a puddle of water on a plate"]
    llm_server.enqueue_for("ice cube", ok(melting))
    llm_server.enqueue_for("losing its leaves", *[status(500)] * 2)  # every attempt fails
    root = tmp_path / "out"
    kwargs = dict(
        catalog=str(catalog),
        output_root=str(root),
        frames=8,
        model=ModelSettings(path=str(tiny_model_dir), steps=1),
        llm=LLMSettings(model=llm_server.model, api_base=llm_server.api_base, max_retries=1, timeout=10),
        evaluation=EvaluationSettings(metric="pixel_cosine"),
    )
    run_dir = produce_dataset(**kwargs)

    synopses = {row["catalog_id"]: row for row in read_table(f"{run_dir}/synopses.parquet").to_pylist()}
    assert synopses["ice-melting"]["source"] == "llm" and synopses["ice-melting"]["states"] == melting
    assert synopses["ice-melting"]["template_version"] and synopses["ice-melting"]["llm_model"] == llm_server.model
    assert synopses["server-down"]["source"] == "fallback"
    assert synopses["server-down"]["states"] == ["a tree losing its leaves in autumn"]
    assert "server_error" in synopses["server-down"]["error"]
    assert synopses["brought-own"]["source"] == "catalog"
    samples = {row["catalog_id"]: row for row in read_table(f"{run_dir}/samples.parquet").to_pylist()}
    assert samples["ice-melting"]["states"] == melting and samples["ice-melting"]["status"] == "ok"
    assert samples["server-down"]["status"] == "ok"  # the run goes on with the plain prompt

    # The key went to the server, and nowhere else.
    assert any(TEST_API_KEY in r.headers.get("authorization", "") for r in llm_server.requests)
    for path in Path(root).rglob("*"):
        if path.is_file():
            assert TEST_API_KEY.encode() not in path.read_bytes(), path
    out, err = capfd.readouterr()
    assert TEST_API_KEY not in caplog.text + out + err

    # A second run reuses the cached synopsis: no new request for the ice cube.
    asked = sum("ice cube" in str(r.body) for r in llm_server.requests)
    llm_server.enqueue_for("losing its leaves", *[status(500)] * 2)
    produce_dataset(**kwargs)
    assert sum("ice cube" in str(r.body) for r in llm_server.requests) == asked
