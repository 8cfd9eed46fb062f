import threading
import time

import pytest
from prefect import flow, task

from pydantic import ValidationError

from flows.produce import ProduceParameters
from tasks.generate import SampleJob
from tasks.jobs import ModelSettings, plan_jobs, submit_in_window
from vstar_data.catalog import CatalogEntry
from vstar_model.backbones.presets import get_preset


def test_at_most_window_runs_in_flight_and_results_in_item_order(prefect_harness):
    lock, running, peak = threading.Lock(), [0], [0]
    # With a window of 2 the first two items meet before going on: two are in flight at once
    # however the threads are scheduled (and a window that let only one run would time out here).
    meeting = {2: threading.Barrier(2, timeout=300)}
    window_of_this_run = [2]

    @task
    def work(item: int, offset: int) -> int:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        if item < 2 and window_of_this_run[0] in meeting:
            meeting[window_of_this_run[0]].wait()
        time.sleep(0.05 * (item % 3))  # finish out of order
        with lock:
            running[0] -= 1
        return item + offset

    @flow
    def windowed(window: int) -> list[int]:
        return [future.result() for future in submit_in_window(work, list(range(8)), window, 100)]

    assert windowed(2) == [100 + i for i in range(8)]
    assert peak[0] == 2
    peak[0], window_of_this_run[0] = 0, 1
    assert windowed(1) == [100 + i for i in range(8)]
    assert peak[0] == 1


def test_window_must_be_positive():
    with pytest.raises(ValueError, match="0"):
        submit_in_window(None, [1], 0)


def test_vsp_is_true_only_for_videos_conditioned_on_two_or_more_states():
    from flows.produce import ProduceParameters
    from tasks.jobs import plan_jobs
    from vstar_data.catalog import CatalogEntry

    entries = [
        CatalogEntry(id="moves", prompt="ice melting", synopsis=["an ice cube", "a puddle"]),
        CatalogEntry(id="one-state", prompt="a still lake", synopsis=["a still lake at noon"]),
        CatalogEntry(id="fell-back", prompt="a tree in autumn"),
    ]
    synopses = [
        {"catalog_id": "moves", "states": ["an ice cube", "a puddle"], "source": "catalog"},
        {"catalog_id": "one-state", "states": ["a still lake at noon"], "source": "catalog"},
        {"catalog_id": "fell-back", "states": ["a tree in autumn"], "source": "fallback"},
    ]
    parameters = ProduceParameters(catalog="c.yaml", variants=["vstar", "vsp", "baseline"])
    jobs = plan_jobs(entries, synopses, parameters)
    assert {(job.entry_id, job.variant): job.vsp for job in jobs} == {
        ("moves", "vstar"): True, ("moves", "vsp"): True, ("moves", "baseline"): False,
        ("one-state", "vstar"): False, ("one-state", "vsp"): False, ("one-state", "baseline"): False,
        ("fell-back", "vstar"): False, ("fell-back", "vsp"): False, ("fell-back", "baseline"): False,
    }


# --- settings: unset takes the preset's value, zero does not ------------------------------------


def _plan(model: ModelSettings, **entry) -> SampleJob:
    entries = [CatalogEntry(id="entry", prompt="a meadow", **entry)]
    synopses = [{"catalog_id": "entry", "states": ["snow", "flowers"], "source": "catalog"}]
    (job,) = plan_jobs(entries, synopses, ProduceParameters(catalog="catalog.yaml", model=model))
    return job


def test_unset_settings_take_the_presets_values():
    preset = get_preset("tiny")
    job = _plan(ModelSettings())
    assert (job.height, job.width, job.num_inference_steps, job.guidance_scale, job.fps) == (
        preset.height, preset.width, preset.num_inference_steps, preset.guidance_scale, preset.fps,
    )
    assert job.num_frames == preset.num_frames and job.tar == "64D1" and job.negative_prompt == ""


def test_guidance_scale_zero_is_kept_not_replaced_by_the_presets():
    assert get_preset("tiny").guidance_scale != 0
    assert _plan(ModelSettings(guidance_scale=0)).guidance_scale == 0.0
    assert _plan(ModelSettings(guidance_scale=0)).sampling().guidance_scale == 0.0
    settings = ModelSettings(guidance_scale=0.0, height=32, width=48, steps=3, fps=12)
    assert settings.for_preset(get_preset("tiny")) == {
        "height": 32, "width": 48, "num_inference_steps": 3, "guidance_scale": 0.0, "fps": 12,
    }


def test_an_entrys_empty_negative_prompt_overrides_the_runs():
    model = ModelSettings(negative_prompt="blurry, static")
    assert _plan(model).negative_prompt == "blurry, static"
    assert _plan(model, negative_prompt="").negative_prompt == ""


@pytest.mark.parametrize(
    ("field", "value"),
    [("height", 0), ("width", 0), ("steps", 0), ("fps", 0), ("guidance_scale", -1.0),
     ("guidance_scale", float("nan")), ("eta", 1.5)],
)
def test_settings_that_mean_nothing_are_refused_not_replaced(field, value):
    with pytest.raises(ValidationError, match=field):
        ModelSettings(**{field: value})
