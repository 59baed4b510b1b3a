"""An OpenAI-compatible HTTP server on the standard library (`http.server`).

    POST /v1/completions        {"prompt": "...", "max_tokens": 32, "stream": true, ...}
    POST /v1/chat/completions   {"messages": [{"role": "user", "content": "..."}], ...}
    GET  /v1/models, GET /health

One thread per connection (`ThreadingHTTPServer`) parses and validates (`api.py`), then hands
the request to the continuous-batching `Scheduler`, which owns the model. Streaming answers
are server-sent events (`data: {chunk}` ... `data: [DONE]`) on a connection closed at the end.
Why the standard library: the API is four routes of JSON; a framework would add a dependency
and an event loop but no capability this needs, and threads blocking on a queue are enough
since the model work is serialised in the scheduler anyway.
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from llm.config.serve import ServeConfig
from llm.inference import api
from llm.inference.adapters import AdapterBank
from llm.inference.api import ApiError, Limits
from llm.inference.engine import Engine
from llm.inference.scheduler import Busy, Request, Scheduler

# At most this much of a refused request's body is read and dropped (within read_timeout_s)
# so that its client gets the answer; a larger upload is cut off and sees a reset instead.
DISCARD_BYTES = 64 << 20


class _HTTPServer(ThreadingHTTPServer):
    """The standard threading server with a listen backlog sized for bursts of clients.

    The default backlog (5) makes the kernel reset connections when dozens of clients connect
    at once, before any reaches the 429 logic; admission control is ours, not the socket's.
    """

    request_queue_size = 1024
    daemon_threads = True


class Server:
    """The model, its scheduler and the HTTP front end; `start()` serves in a thread."""

    def __init__(self, engine: Engine, cfg: ServeConfig, model_name: str,
                 adapters: AdapterBank | None = None):  # fmt: skip
        """`adapters`: named adapters on the engine's base, which must hold `adapters.base`
        (requests pick one by name, llm/inference/api.py)."""
        self.engine, self.cfg = engine, cfg
        names = adapters.names if adapters is not None else ()
        if model_name in names:
            raise ValueError(f"adapter name {model_name!r} is the base model's name; rename it")
        if adapters is not None and engine.params is not adapters.base:
            raise ValueError("the engine must hold the adapter bank's base weights")
        self.limits = Limits(model_name, cfg.max_prompt_tokens, cfg.max_new_tokens,
                             engine.max_len, names)  # fmt: skip
        weights = adapters.weights if adapters is not None else None
        self.scheduler = Scheduler(engine, cfg.max_concurrent, cfg.max_queue, weights)
        self.httpd = _HTTPServer((cfg.host, cfg.port), _handler_class(self))
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> tuple[str, int]:
        return self.httpd.server_address[:2]

    def start(self) -> None:
        self.scheduler.start()
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self._thread.start()

    def serve_forever(self) -> None:
        self.scheduler.start()
        self.httpd.serve_forever()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.scheduler.close()


def _handler_class(server: Server) -> type[BaseHTTPRequestHandler]:
    class Handler(_Handler):
        srv = server

    return Handler


class _Handler(BaseHTTPRequestHandler):
    srv: Server
    server_version = "llm-serve/0.1"

    def setup(self) -> None:
        super().setup()
        self.connection.settimeout(self.srv.cfg.read_timeout_s)

    def log_message(self, format: str, *args: Any) -> None:  # quiet: one line per error only
        pass

    def do_GET(self) -> None:
        if self.path == "/health":
            s = self.srv.scheduler
            self._json(200, {"status": "ok", "busy_rows": int(s.active.sum()),
                             "waiting": s.n_waiting, "steps": s.steps})  # fmt: skip
        elif self.path == "/v1/models":
            base = self.srv.limits.model_name
            models = [{"id": base, "object": "model", "owned_by": "llm"}]
            models += [{"id": name, "object": "model", "owned_by": "llm", "parent": base}
                       for name in self.srv.limits.adapters]  # fmt: skip
            self._json(200, {"object": "list", "data": models})
        else:
            self._error(ApiError(404, f"no route GET {self.path}"))

    def do_POST(self) -> None:
        routes = {"/v1/completions": False, "/v1/chat/completions": True}
        self._unread = 0  # body bytes the client declared and we have not read
        try:
            self._unread = self._content_length()
            if self.path not in routes:
                raise ApiError(404, f"no route POST {self.path}")
            body = api.decode_body(self._read_body())
            req = api.parse(body, self.srv.engine.tokenizer, self.srv.limits,
                            chat=routes[self.path])  # fmt: skip
            request = self.srv.scheduler.submit(
                Request(req.prompt_ids, req.sampling, req.stop, req.adapter)
            )
        except ApiError as err:
            return self._error(err)
        except Busy as err:
            return self._error(ApiError(429, f"server busy: {err}", code="rate_limit_exceeded"))
        (self._stream if req.stream else self._complete)(req, request)

    def _content_length(self) -> int:
        length = self.headers.get("Content-Length")
        if length is None:
            raise ApiError(411, "Content-Length header is required")
        try:
            n = int(length)
        except ValueError:
            raise ApiError(400, f"Content-Length {length!r} is not an integer") from None
        if n < 0:
            raise ApiError(400, f"Content-Length {n} is negative")
        return n

    def _read_body(self) -> bytes:
        n = self._unread
        if n > self.srv.cfg.max_body_bytes:
            raise ApiError(413, f"body of {n} bytes; the limit is {self.srv.cfg.max_body_bytes}")
        self._unread = 0
        try:
            raw = self.rfile.read(n)
        except TimeoutError:
            raise ApiError(408, "timed out reading the request body") from None
        if len(raw) != n:
            raise ApiError(400, f"body has {len(raw)} bytes, Content-Length says {n}")
        return raw

    def _complete(self, req: api.ParsedRequest, request: Request) -> None:
        rid = _id(req)
        try:
            parts, finish = [], None
            for event in request.events(self.srv.cfg.request_timeout_s):
                parts.append(event.text)
                finish = event.finish_reason or finish
        except Exception as err:
            return self._error(ApiError(500, str(err)))
        usage = _usage(req, request)
        self._json(200, api.completion_object(req, rid, "".join(parts), finish, usage, False))

    def _stream(self, req: api.ParsedRequest, request: Request) -> None:
        rid = _id(req)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        first = True
        try:
            for event in request.events(self.srv.cfg.request_timeout_s):
                if event.text or event.finish_reason is not None or first:
                    chunk = api.completion_object(req, rid, event.text, event.finish_reason,
                                                  None, True, first)  # fmt: skip
                    self._sse(chunk)
                    first = False
            if req.include_usage:
                usage = _usage(req, request)
                self._sse(api.completion_object(req, rid, "", None, usage, True)
                          | {"choices": []})  # fmt: skip
            self.wfile.write(b"data: [DONE]\n\n")
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError, TimeoutError):
            request.cancelled = True
        except Exception as err:
            request.cancelled = True
            self._sse(ApiError(500, str(err)).body())

    def _sse(self, obj: dict) -> None:
        self.wfile.write(b"data: " + json.dumps(obj).encode() + b"\n\n")
        self.wfile.flush()

    def _json(self, status: int, obj: dict, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def _error(self, err: ApiError) -> None:
        """Answers, then reads and drops the unread body (bounded) before the connection closes.

        Closing a socket with unread data makes the kernel send a reset, which destroys the
        answer in the client's buffer: a client still uploading (urllib, requests) would see a
        broken pipe instead of the 413. Reading the rest first lets it finish and read ours."""
        self.close_connection = True
        self._json(err.status, err.body(), {"Connection": "close"})
        self._discard(min(self._unread, DISCARD_BYTES), self.srv.cfg.read_timeout_s)

    def _discard(self, n: int, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        try:
            while n > 0 and time.monotonic() < deadline:
                chunk = self.rfile.read1(min(n, 1 << 16))
                if not chunk:
                    return
                n -= len(chunk)
        except OSError:  # the client gave up (reset) or stalled past read_timeout_s
            return


def _id(req: api.ParsedRequest) -> str:
    return ("chatcmpl-" if req.chat else "cmpl-") + uuid.uuid4().hex[:24]


def _usage(req: api.ParsedRequest, request: Request) -> dict[str, int]:
    p, c = len(req.prompt_ids), request.completion_tokens
    return {"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}


def wait_healthy(server: Server, timeout_s: float = 60.0) -> None:
    """Blocks until the scheduler thread runs (used by tests and the CLI)."""
    deadline = time.monotonic() + timeout_s
    while not server.scheduler._thread.is_alive():
        if time.monotonic() > deadline:
            raise TimeoutError("scheduler did not start")
        time.sleep(0.01)
