from __future__ import annotations

import json
import logging
import socket

import pytest

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
from vstar_model.vsp.llm import redact, synopsize, synopsize_many
from vstar_model.vsp.synopsis import TEMPLATE_VERSION, Synopsis, SynopsisError, build_messages

PROMPT = "A landscape transitioning from winter to spring"
STATES = [
    "A snowy field under a grey sky.",
    "Snow melting on a muddy field.",
    "A green meadow full of flowers.",
]


class RecordedSleeps(list):
    """Stands in for time.sleep: records each wait instead of waiting."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def sleeps() -> RecordedSleeps:
    return RecordedSleeps()


def call(server, sleeps, prompt=PROMPT, **kwargs):
    kwargs.setdefault("max_retries", 4)
    return synopsize(
        prompt, model=server.model, api_base=server.api_base, timeout=5, sleep=sleeps, **kwargs
    )


# -- redaction ----------------------------------------------------------------------------------


def test_redact_removes_every_secret_variable_and_long_pieces_of_it(monkeypatch):
    monkeypatch.setenv("AWS_SESSION_TOKEN", "IQoJb3JpZ2luX2VjEHoaCXVzLWVhc3QtMSJGMEQCIBu")
    monkeypatch.setenv("WATSONX_APIKEY", "wx-0123456789-abcdef")
    monkeypatch.setenv("PREFECT_API_AUTH_STRING", "admin:pa55w0rd-long")
    monkeypatch.setenv("TOKENIZERS_PARALLELISM", "false-not-a-secret")

    cleaned = redact(
        "token 2luX2VjEHoaCXVzLWVh, apikey 0123456789-abcdef, auth admin:pa55w0rd-long, "
        "short piece CIBu, setting false-not-a-secret"
    )

    assert cleaned == (
        "token [REDACTED], apikey [REDACTED], auth [REDACTED], short piece CIBu, setting false-not-a-secret"
    )


def test_redact_removes_key_env_values_key_shapes_and_given_secrets(monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", "anthropic-value-123456")
    monkeypatch.setenv("HF_TOKEN", "hf_abcdefghijkl")
    monkeypatch.setenv("VSTAR_DEBUG_TOKEN", "1")  # too short to be a key: left alone

    text_with_keys = (
        "key anthropic-value-123456, token hf_abcdefghijkl, sk-proj-AbCdEf0123456789, "
        "AIzaSyA1234567890abcdefghijklmn, header Bearer abc.def-ghi_jkl, custom s3cr3t-value, "
        "1 frame"
    )

    cleaned = redact(text_with_keys, secrets=["s3cr3t-value", None])

    for secret in [
        "anthropic-value-123456",
        "hf_abcdefghijkl",
        "sk-proj",
        "AIzaSy",
        "abc.def",
        "s3cr3t",
    ]:
        assert secret not in cleaned
    assert cleaned.count("[REDACTED]") == 6
    assert cleaned.endswith("1 frame")


# -- one prompt against the local server --------------------------------------------------------


def test_a_good_answer_becomes_a_synopsis_in_one_call(llm_server, sleeps):
    llm_server.enqueue(ok(STATES))

    result = call(llm_server, sleeps, max_states=6, num_frames=16)

    assert result == Synopsis(
        PROMPT, tuple(STATES), TEMPLATE_VERSION, llm_server.model, json.dumps({"states": STATES})
    )
    [request] = llm_server.requests
    assert request.headers["authorization"] == f"Bearer {TEST_API_KEY}"
    assert request.body["messages"] == build_messages(PROMPT, max_states=6)
    assert request.body["response_format"] == {"type": "json_object"}
    assert sleeps == []


def test_models_with_structured_output_are_sent_the_json_schema(llm_server, sleeps):
    llm_server.enqueue(ok(STATES))

    synopsize(PROMPT, model="openai/gpt-4o-mini", api_base=llm_server.api_base, sleep=sleeps)

    response_format = llm_server.requests[0].body["response_format"]
    assert response_format["type"] == "json_schema"
    assert response_format["json_schema"]["schema"]["required"] == ["states"]


@pytest.mark.parametrize("fault", [status(429), status(500), status(503)], ids=["429", "500", "503"])
def test_each_transport_fault_is_retried_after_a_backoff_then_the_good_answer_wins(llm_server, sleeps, fault):
    llm_server.enqueue(fault, ok(STATES))

    result = call(llm_server, sleeps, max_states=8)

    assert result.states == tuple(STATES)
    assert [r.reply_kind for r in llm_server.requests] == [fault.kind, "ok"]
    assert len(sleeps) == 1


@pytest.mark.parametrize(
    "fault, kind",
    [
        (malformed(), "malformed"),
        (empty(), "empty"),
        (refusal(), "refusal"),
        (ok(STATES * 3), "too_many_states"),
        (ok([]), "no_states"),
        (ok(["x" * 400]), "state_too_long"),
        (text("A snowy field.\n\nThen a meadow."), "malformed"),
    ],
    ids=["malformed", "empty", "refusal", "too-many", "too-few", "too-long", "prose"],
)
def test_an_unusable_answer_is_asked_again_at_once_saying_why(llm_server, sleeps, fault, kind):
    llm_server.enqueue(fault, ok(STATES))

    result = call(llm_server, sleeps, max_states=8)

    assert result.states == tuple(STATES)
    first, second = llm_server.requests
    assert second.body["messages"][: len(first.body["messages"])] == first.body["messages"]
    assert "cannot be used" in second.body["messages"][-1]["content"] and PROMPT in second.body["messages"][-1]["content"]
    assert sleeps == []  # the server answered: no backoff


@pytest.mark.parametrize("fault", [malformed(), refusal(), ok(STATES * 3)], ids=["malformed", "refusal", "too-many"])
def test_an_answer_unusable_twice_fails_without_transport_retries(llm_server, sleeps, fault):
    llm_server.enqueue(*[fault] * 5)

    with pytest.raises(SynopsisError, match=r"after 2 call\(s\)"):
        call(llm_server, sleeps, max_retries=4, max_states=8)

    assert len(llm_server.requests) == 2 and sleeps == []


def test_retries_back_off_exponentially_with_jitter(llm_server, sleeps):
    llm_server.enqueue(status(500), status(429), status(503), status(502), ok(STATES))

    call(llm_server, sleeps, backoff_s=0.1, max_backoff_s=10)

    assert len(sleeps) == 4
    for attempt, wait in enumerate(sleeps):
        assert 0.05 * 2**attempt <= wait <= 0.1 * 2**attempt, (attempt, wait)


def test_one_reask_and_transport_retries_are_counted_apart(llm_server, sleeps):
    llm_server.enqueue(status(500), malformed(), status(503), ok(STATES))

    assert call(llm_server, sleeps, max_retries=2).states == tuple(STATES)
    assert len(llm_server.requests) == 4 and len(sleeps) == 2


def test_every_wait_is_capped_even_a_longer_retry_after(llm_server, sleeps):
    llm_server.enqueue(status(500), status(500), status(429, retry_after_s=9), ok(STATES))

    call(llm_server, sleeps, backoff_s=1.0, max_backoff_s=0.5)

    assert sleeps == [0.5, 0.5, 0.5]


def test_retry_after_longer_than_the_backoff_is_waited(llm_server, sleeps):
    llm_server.enqueue(status(429, retry_after_s=0.7), ok(STATES))

    call(llm_server, sleeps, backoff_s=0.01, max_backoff_s=5)

    assert sleeps == [0.7]


def test_a_failure_that_persists_raises_after_the_last_retry(llm_server, sleeps):
    llm_server.enqueue(*[status(500)] * 3)

    with pytest.raises(SynopsisError, match=r"after 3 call\(s\), server_error") as caught:
        call(llm_server, sleeps, max_retries=2)

    assert caught.value.kind == "server_error"
    assert len(llm_server.requests) == 3 and len(sleeps) == 2
    assert caught.value.__cause__ is None and caught.value.__suppress_context__


def test_persistent_bad_answers_fail_with_the_validation_reason(llm_server, sleeps):
    llm_server.enqueue(ok(STATES), ok(STATES))

    with pytest.raises(SynopsisError, match=r"3 states, more than num_frames=2") as caught:
        call(llm_server, sleeps, max_retries=4, num_frames=2)

    assert caught.value.kind == "too_many_states"
    assert len(llm_server.requests) == 2


@pytest.mark.parametrize("code", [401, 403, 400])
def test_auth_and_request_errors_fail_at_once(llm_server, sleeps, code):
    llm_server.enqueue(status(code), ok(STATES))

    with pytest.raises(SynopsisError, match=r"after 1 call\(s\)") as caught:
        call(llm_server, sleeps)

    assert caught.value.kind == ("bad_request" if code == 400 else "auth")
    assert len(llm_server.requests) == 1 and sleeps == []


# The slow replies come a minute late and the client waits 3 s: a good answer needs far less on any
# machine, and a late one never arrives in time however fast the machine is.
CLIENT_TIMEOUT_S, LATE_S = 3, 60


def test_a_slow_server_times_out_and_is_retried(llm_server, sleeps):
    llm_server.enqueue(delay(LATE_S, ok(STATES)), ok(STATES))

    result = synopsize(
        PROMPT,
        model=llm_server.model,
        api_base=llm_server.api_base,
        timeout=CLIENT_TIMEOUT_S,
        max_retries=1,
        sleep=sleeps,
    )

    assert result.states == tuple(STATES)
    assert len(llm_server.requests) == 2 and len(sleeps) == 1


def test_a_server_that_always_times_out_fails_as_timeout(llm_server, sleeps):
    llm_server.enqueue(delay(LATE_S), delay(LATE_S))

    with pytest.raises(SynopsisError) as caught:
        synopsize(
            PROMPT,
            model=llm_server.model,
            api_base=llm_server.api_base,
            timeout=CLIENT_TIMEOUT_S,
            max_retries=1,
            sleep=sleeps,
        )

    assert caught.value.kind == "timeout"


def test_an_unreachable_server_is_retried_as_a_connection_error(sleeps, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", TEST_API_KEY)
    with FakeLLMServer() as gone:
        api_base = gone.api_base  # a loopback port that refuses connections once it stops

    with pytest.raises(SynopsisError) as caught:
        synopsize(PROMPT, model=gone.model, api_base=api_base, max_retries=2, sleep=sleeps)

    # litellm reports a refused connection as APIConnectionError or as a 500, by provider.
    assert caught.value.kind in {"connection", "server_error"}
    assert len(sleeps) == 2 and "Connection error" in str(caught.value)


# -- keys -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "answer",
    [
        f"Sure, and your key is {TEST_API_KEY}.",
        json.dumps({"states": [f"A field where someone wrote {TEST_API_KEY} in the snow.", "A green meadow."]}),
        json.dumps({"states": [f"snow spelling {TEST_API_KEY.removeprefix('sk-')}", "a meadow"]}),  # no prefix
        json.dumps({"states": [f"a sign reading {TEST_API_KEY[5:17]}", "a meadow"]}),  # a long piece of it
    ],
    ids=["prose", "in-a-state", "without-prefix", "piece"],
)
def test_an_answer_quoting_the_key_is_rejected_at_once_and_the_key_is_nowhere(llm_server, sleeps, caplog, answer):
    llm_server.enqueue(text(answer), ok(STATES))
    caplog.set_level(logging.DEBUG, logger="vstar_model")

    with pytest.raises(SynopsisError) as caught:
        call(llm_server, sleeps)

    assert caught.value.kind == "secret_echo" and len(llm_server.requests) == 1 and sleeps == []
    assert all(r.headers["authorization"] == f"Bearer {TEST_API_KEY}" for r in llm_server.requests)
    for output in (str(caught.value), repr(caught.value), caplog.text):
        assert TEST_API_KEY not in output and TEST_API_KEY[5:17] not in output


def test_a_call_error_naming_the_key_is_redacted(llm_server, sleeps, caplog):
    llm_server.enqueue(status(401))
    caplog.set_level(logging.DEBUG, logger="vstar_model")

    with pytest.raises(SynopsisError) as caught:
        call(llm_server, sleeps)

    assert "injected HTTP 401" in str(caught.value)
    assert TEST_API_KEY not in str(caught.value) + caplog.text


def test_api_key_env_names_where_a_custom_key_lives(llm_server, sleeps, monkeypatch):
    monkeypatch.setenv("MY_VLLM_SECRET", "custom-endpoint-secret-42")
    llm_server.enqueue(status(401))

    with pytest.raises(SynopsisError) as caught:
        call(llm_server, sleeps, api_key_env="MY_VLLM_SECRET")

    assert llm_server.requests[0].headers["authorization"] == "Bearer custom-endpoint-secret-42"
    assert "custom-endpoint-secret-42" not in str(caught.value)


def test_a_missing_key_variable_is_named_without_calling(llm_server, sleeps, monkeypatch):
    monkeypatch.delenv("MY_VLLM_SECRET", raising=False)

    with pytest.raises(ValueError, match="api_key_env='MY_VLLM_SECRET'"):
        call(llm_server, sleeps, api_key_env="MY_VLLM_SECRET")

    assert llm_server.requests == []


@pytest.mark.parametrize("option", ["api_key", "max_retries", "messages", "response_format"])
def test_completion_options_cannot_override_what_synopsize_controls(llm_server, sleeps, option):
    with pytest.raises(ValueError, match=option):
        call(llm_server, sleeps, completion_options={option: "x"})

    assert llm_server.requests == []


# -- litellm's mock (no HTTP at all) ----------------------------------------------------------


def test_litellm_mock_answers_are_parsed_like_real_ones(sleeps, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", TEST_API_KEY)
    answer = "```json\n" + json.dumps({"states": STATES}) + "\n```"

    result = synopsize(
        PROMPT, model="gpt-4o-mini", completion_options={"mock_response": answer}, sleep=sleeps
    )

    assert result.states == tuple(STATES) and result.llm_model == "gpt-4o-mini"


def test_litellm_mock_rate_limits_are_retried_until_the_limit(sleeps):
    with pytest.raises(SynopsisError) as caught:
        synopsize(
            PROMPT,
            model="gpt-4o-mini",
            max_retries=3,
            completion_options={"mock_response": "litellm.RateLimitError"},
            sleep=sleeps,
        )

    assert caught.value.kind == "rate_limited"
    assert len(sleeps) == 3


# -- many prompts -----------------------------------------------------------------------------


def test_many_prompts_keep_their_order_and_one_failure_stays_with_its_prompt(llm_server, sleeps):
    prompts = [f"a candle burning down, take {i}" for i in range(6)]
    llm_server.enqueue_for("take 3", status(401))

    results = synopsize_many(
        prompts,
        model=llm_server.model,
        api_base=llm_server.api_base,
        max_concurrency=3,
        sleep=sleeps,
    )

    assert isinstance(results[3], SynopsisError) and results[3].kind == "auth"
    for index, result in enumerate(results):
        if index != 3:
            assert isinstance(result, Synopsis) and result.prompt == prompts[index]
            assert all(
                prompts[index] in state for state in result.states
            )  # the server echoes the prompt


def test_many_prompts_never_exceed_the_concurrency_bound(llm_server, sleeps):
    llm_server.enqueue(*[delay(0.2, ok(STATES))] * 6)

    results = synopsize_many(
        [f"prompt {i}" for i in range(6)],
        model=llm_server.model,
        api_base=llm_server.api_base,
        max_concurrency=2,
        sleep=sleeps,
    )

    assert all(isinstance(r, Synopsis) for r in results)
    assert 1 <= llm_server.max_in_flight <= 2


def test_calls_in_separate_threads_share_one_bound(llm_server, sleeps):
    """Each Prefect task calls synopsize on its own thread: the bound must hold across them."""
    import threading

    llm_server.enqueue(*[delay(0.3, ok(STATES))] * 6)
    results = []
    threads = [
        threading.Thread(target=lambda i=i: results.append(call(llm_server, sleeps, prompt=f"prompt {i}",
                                                                max_concurrency=2)))
        for i in range(6)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(results) == 6 and 1 <= llm_server.max_in_flight <= 2


def test_latency_is_the_calls_own_not_the_wait_for_a_slot(llm_server, sleeps, monkeypatch):
    import threading
    import time

    from vstar_model.vsp import llm

    class ObservedSlot(threading.BoundedSemaphore):
        """The process's one LLM slot, saying when a call starts waiting for it."""

        def __init__(self):
            super().__init__(1)
            self.waited_for = threading.Event()

        def __enter__(self):
            if threading.current_thread() is not threading.main_thread():
                self.waited_for.set()
            return super().acquire()

    slot = ObservedSlot()
    monkeypatch.setitem(llm._slots, 1, slot)
    llm_server.enqueue(ok(STATES))
    slot.acquire()  # another call holds the only slot
    results = []
    caller = threading.Thread(target=lambda: results.append(call(llm_server, sleeps, max_concurrency=1)))
    caller.start()
    assert slot.waited_for.wait(timeout=600)
    time.sleep(0.5)  # the caller waits for the slot all this time
    released_at = time.perf_counter()
    slot.release()
    caller.join()
    done_at = time.perf_counter()

    [result] = results
    assert 0 < result.latency_seconds <= done_at - released_at  # the request started after the release


def test_many_prompts_check_arguments_before_any_call(llm_server):
    with pytest.raises(ValueError, match=r"prompts\[1\] is empty"):
        synopsize_many(
            ["a boy growing old", " "], model=llm_server.model, api_base=llm_server.api_base
        )
    with pytest.raises(ValueError, match="max_concurrency must be >= 1, got 0"):
        synopsize_many(["a boy growing old"], model=llm_server.model, max_concurrency=0)
    assert synopsize_many([], model=llm_server.model) == []
    assert llm_server.requests == []


def test_the_test_server_stops_by_itself_after_its_lifetime():
    server = FakeLLMServer(max_lifetime_s=0.05).start()

    assert server.stopped.wait(timeout=30)
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", server.port), timeout=1).close()
