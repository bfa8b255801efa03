"""A scripted stand-in for the Anthropic Messages API: a real HTTP server on 127.0.0.1.

The `anthropic` agent is tested through the official SDK talking HTTP to this server, so the tests cover what
really goes over the wire (headers, JSON bodies, retries on 529, malformed replies) with no network or key.
Each POST /v1/messages consumes the next scripted response; every request is recorded for assertions.
"""

from __future__ import annotations

import itertools
import json
import threading
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

MESSAGES_PATH = "/v1/messages"
_ids = itertools.count(1)


@dataclass
class ScriptedResponse:
    """One HTTP answer: a status, a body (a dict is sent as JSON, str/bytes as is) and extra headers."""

    status: int = 200
    body: dict[str, Any] | str | bytes = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    gate: threading.Event | None = None  # when set: the answer waits until the test opens it (at most 60 s)

    def encoded(self) -> bytes:
        if isinstance(self.body, bytes):
            return self.body
        if isinstance(self.body, str):
            return self.body.encode("utf-8")
        return json.dumps(self.body).encode("utf-8")


@dataclass
class RecordedRequest:
    """What one request carried: headers (lower-case names), the raw body and its JSON (None if not JSON)."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    json: Any


def usage(
    input_tokens: int = 0, output_tokens: int = 0, cache_creation: int = 0, cache_read: int = 0
) -> dict[str, int]:
    """A `usage` object as the API sends it."""
    return {
        "input_tokens": input_tokens,
        "output_tokens": output_tokens,
        "cache_creation_input_tokens": cache_creation,
        "cache_read_input_tokens": cache_read,
    }


def text_block(text: str) -> dict[str, Any]:
    return {"type": "text", "text": text}


def tool_use_block(name: str, tool_input: dict[str, Any], block_id: str | None = None) -> dict[str, Any]:
    return {
        "type": "tool_use",
        "id": block_id or f"toolu_fake{next(_ids):04d}",
        "name": name,
        "input": tool_input,
    }


def message(
    content: list[dict[str, Any]],
    stop_reason: str | None = None,
    usage_: dict[str, int] | None = None,
    model: str = "claude-fake",
) -> ScriptedResponse:
    """A 200 reply holding one Message; stop_reason is tool_use when a tool is called, else end_turn."""
    if stop_reason is None:
        stop_reason = "tool_use" if any(b.get("type") == "tool_use" for b in content) else "end_turn"
    body = {
        "id": f"msg_fake{next(_ids):04d}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": usage_ or usage(10, 5),
    }
    return ScriptedResponse(200, body, {"request-id": f"req_fake{next(_ids):04d}"})


def api_error(status: int, error_type: str, text: str, retry_after_ms: str | None = "1") -> ScriptedResponse:
    """An error reply in the API's format. `retry-after-ms` makes the SDK's retry wait ~1 ms, not seconds."""
    headers = {"retry-after-ms": retry_after_ms} if retry_after_ms is not None else {}
    body = {"type": "error", "error": {"type": error_type, "message": text}}
    return ScriptedResponse(status, body, headers)


def overloaded() -> ScriptedResponse:
    return api_error(529, "overloaded_error", "Overloaded")


def malformed(body: str = "<html>502 Bad Gateway</html> not json") -> ScriptedResponse:
    """A 200 whose body is not JSON (a broken proxy), sent with a JSON content type all the same."""
    return ScriptedResponse(200, body)


class FakeMessagesAPI:
    """The server. Use as a context manager; `url` is the base URL to give the SDK (ANTHROPIC_BASE_URL).

    When the script runs out, `default` answers (a 500 naming the problem unless set otherwise), so a test
    that makes more calls than it scripted fails with a clear message instead of hanging.
    """

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self.default = api_error(500, "api_error", "fake server: no scripted response left", None)
        self._script: deque[ScriptedResponse] = deque()
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler_class())
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.02},  # shutdown() waits for one poll: keep teardown quick
            name="fake-messages-api",
            daemon=True,
        )
        self._thread.start()

    @property
    def url(self) -> str:
        host, port = self._server.server_address[:2]
        return f"http://{host}:{port}"

    def enqueue(self, *responses: ScriptedResponse) -> None:
        with self._lock:
            self._script.extend(responses)

    @property
    def remaining(self) -> int:
        with self._lock:
            return len(self._script)

    def message_requests(self) -> list[dict[str, Any]]:
        """The JSON bodies of every POST /v1/messages, in order (retries included)."""
        return [r.json for r in self.requests if r.path == MESSAGES_PATH and r.method == "POST"]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> FakeMessagesAPI:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _next(self, request: RecordedRequest) -> ScriptedResponse:
        with self._lock:
            self.requests.append(request)
            if request.method != "POST" or request.path.split("?")[0] != MESSAGES_PATH:
                return api_error(404, "not_found_error", f"fake server: no route {request.path}", None)
            return self._script.popleft() if self._script else self.default

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        api = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - the http.server naming
                self._answer()

            def do_GET(self) -> None:  # noqa: N802
                self._answer()

            def _answer(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                try:
                    parsed = json.loads(body) if body else None
                except ValueError:
                    parsed = None
                headers = {k.lower(): v for k, v in self.headers.items()}
                reply = api._next(RecordedRequest(self.command, self.path, headers, body, parsed))
                if reply.gate is not None:
                    reply.gate.wait(timeout=60)
                payload = reply.encoded()
                self.send_response(reply.status)
                sent = {k.lower() for k in reply.headers}
                if "content-type" not in sent:
                    self.send_header("content-type", "application/json")
                for name, value in reply.headers.items():
                    self.send_header(name, value)
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - keep test output quiet
                return

        return Handler
