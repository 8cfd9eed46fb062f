"""A scripted, fault-injecting OpenAI-compatible chat server on 127.0.0.1 for tests.

It answers ``POST /v1/chat/completions`` with replies taken, one per request, from queues the test
fills: first a queue for requests whose last user message contains a given text (so concurrent
requests for different prompts get deterministic replies), then a shared queue, then the default
reply. Every request is recorded with its headers and JSON body.

    with FakeLLMServer() as server:
        server.enqueue(status(429), ok(["a snowy field", "a green meadow"]))
        synopsize("winter to spring", model=server.model, api_base=server.api_base)
        assert server.requests[0].headers["authorization"] == "Bearer sk-test..."
"""

from __future__ import annotations

import json
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MODEL_NAME = "vstar-test-llm"
TEST_API_KEY = (
    "sk-vstar-test-0123456789abcdef"  # shaped like a real key, so redaction must catch it
)


@dataclass(frozen=True)
class Reply:
    """What the server does with one request: wait ``delay_s``, then answer ``status``.

    A 200 answer carries ``content`` (or, when it is a callable, ``content(request_body)``) as the
    assistant message; any other status carries an OpenAI-style error body.
    """

    kind: str
    status: int = 200
    content: str | Callable[[dict[str, Any]], str] | None = None
    delay_s: float = 0.0
    headers: tuple[tuple[str, str], ...] = ()


def ok(states: Sequence[str]) -> Reply:
    """A well-formed answer with these states (any number: also how to send a wrong K)."""
    return Reply("ok", content=json.dumps({"states": list(states)}))


def text(content: str) -> Reply:
    """A 200 answer whose assistant message is exactly ``content`` (prose, fences, lists...)."""
    return Reply("text", content=content)


def malformed() -> Reply:
    """A 200 answer whose JSON is cut off mid-way."""
    return Reply("malformed", content='{"states": ["a snowy field under a grey sky", "a fie')


def refusal() -> Reply:
    return Reply("refusal", content="I'm sorry, but I can't help with that request.")


def empty() -> Reply:
    return Reply("empty", content="")


def status(code: int, *, retry_after_s: float | None = None) -> Reply:
    """An HTTP error answer (429, 500, 401, ...), optionally with a ``Retry-After`` header."""
    headers = () if retry_after_s is None else (("Retry-After", f"{retry_after_s:g}"),)
    return Reply(f"status-{code}", status=code, headers=headers)


def delay(seconds: float, then: Reply | None = None) -> Reply:
    """Wait ``seconds`` before answering like ``then`` (by default an echo_states answer)."""
    base = then or echo_states()
    return Reply(f"delay-{base.kind}", base.status, base.content, seconds, base.headers)


def echo_states(num_states: int = 2) -> Reply:
    """A valid answer built from the request's last user message, so answers differ per prompt."""

    def content(body: dict[str, Any]) -> str:
        message = " ".join(last_user_message(body).split())
        return json.dumps({"states": [f"state {i + 1} of {message}" for i in range(num_states)]})

    return Reply("echo", content=content)


def last_user_message(body: dict[str, Any]) -> str:
    user_messages = [m for m in body.get("messages", []) if m.get("role") == "user"]
    return str(user_messages[-1].get("content", "")) if user_messages else ""


_ERROR_TYPES = {401: "invalid_api_key", 429: "rate_limit_exceeded"}


@dataclass(frozen=True)
class RecordedRequest:
    path: str
    headers: dict[str, str]  # lower-cased names
    body: dict[str, Any]
    reply_kind: str


@dataclass
class _Script:
    shared: deque[Reply] = field(default_factory=deque)
    by_text: dict[str, deque[Reply]] = field(default_factory=dict)


class FakeLLMServer:
    """Threaded OpenAI-compatible server on 127.0.0.1 with an OS-chosen port.

    Use it as a context manager. It also stops by itself after ``max_lifetime_s`` so a leaked
    server cannot outlive a test run; its threads are daemons and never block interpreter exit.
    """

    def __init__(self, default: Reply | None = None, *, max_lifetime_s: float = 600.0) -> None:
        self.default = default or echo_states()
        self._script = _Script()
        self._requests: list[RecordedRequest] = []
        self._lock = threading.Lock()
        self._in_flight = 0
        self.max_in_flight = 0
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._lifetime = threading.Timer(max_lifetime_s, self.stop)
        self._lifetime.daemon = True
        self._stopping = False
        self.stopped = threading.Event()  # set once the port is closed

    # -- addresses ---------------------------------------------------------------------------
    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def api_base(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def model(self) -> str:
        """The litellm model string that reaches this server through the OpenAI provider."""
        return f"openai/{MODEL_NAME}"

    # -- scripting ---------------------------------------------------------------------------
    def enqueue(self, *replies: Reply) -> None:
        """Queue replies for the next requests, whatever their prompt."""
        with self._lock:
            self._script.shared.extend(replies)

    def enqueue_for(self, prompt_text: str, *replies: Reply) -> None:
        """Queue replies for requests whose last user message contains ``prompt_text``."""
        with self._lock:
            self._script.by_text.setdefault(prompt_text, deque()).extend(replies)

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._requests)

    def _next_reply(self, body: dict[str, Any]) -> Reply:
        message = last_user_message(body)
        with self._lock:
            for prompt_text, queue in self._script.by_text.items():
                if queue and prompt_text in message:
                    return queue.popleft()
            if self._script.shared:
                return self._script.shared.popleft()
        return self.default

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> FakeLLMServer:
        self._thread.start()
        self._lifetime.start()
        return self

    def stop(self) -> None:
        with self._lock:
            if self._stopping:
                return
            self._stopping = True
        self._lifetime.cancel()
        if self._thread.is_alive():  # shutdown() would wait forever for a loop never started
            self._httpd.shutdown()
        self._httpd.server_close()
        self.stopped.set()

    def __enter__(self) -> FakeLLMServer:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    # -- HTTP --------------------------------------------------------------------------------
    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
                pass

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length)
                try:
                    body = json.loads(raw or b"{}")
                except json.JSONDecodeError:
                    body = {"_unparsed": raw.decode("utf-8", "replace")}
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    self._send(
                        404, {"error": {"message": f"no route {self.path}", "type": "not_found"}}
                    )
                    return
                reply = server._next_reply(body)
                with server._lock:
                    server._requests.append(
                        RecordedRequest(
                            self.path,
                            {k.lower(): v for k, v in self.headers.items()},
                            body,
                            reply.kind,
                        )
                    )
                    server._in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server._in_flight)
                try:
                    time.sleep(reply.delay_s)
                    self._answer(reply, body)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up first (a timeout test): nothing to answer
                finally:
                    with server._lock:
                        server._in_flight -= 1

            def _answer(self, reply: Reply, body: dict[str, Any]) -> None:
                if reply.status != 200:
                    error = {
                        "message": f"injected HTTP {reply.status}",
                        "type": _ERROR_TYPES.get(reply.status, "server_error"),
                        "code": reply.status,
                    }
                    self._send(reply.status, {"error": error}, reply.headers)
                    return
                content = reply.content(body) if callable(reply.content) else reply.content
                completion = {
                    "id": f"chatcmpl-test-{len(server._requests)}",
                    "object": "chat.completion",
                    "created": int(time.time()),
                    "model": body.get("model", MODEL_NAME),
                    "choices": [
                        {
                            "index": 0,
                            "message": {"role": "assistant", "content": content},
                            "finish_reason": "stop",
                        }
                    ],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
                }
                self._send(200, completion, reply.headers)

            def _send(
                self, code: int, payload: dict[str, Any], headers: Sequence[tuple[str, str]] = ()
            ) -> None:
                data = json.dumps(payload).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                for name, value in headers:
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

        return Handler
