"""The OpenAI-compatible server: shapes, streaming, bad input answered with 4xx JSON, and a
bounded localhost load test of concurrent streams (continuous batching, none lost)."""

import http.client
import json
import socket
import threading
import time
import urllib.error
import urllib.request

import pytest

from llm.config.serve import ServeConfig
from llm.inference import Engine, StopCriteria
from llm.inference.server import Server
from llm.tokenizers.byte import ByteTokenizer
from tests.inference.conftest import TINY

CFG = ServeConfig(port=0, max_concurrent=8, max_queue=64, max_prompt_tokens=36,
                  max_new_tokens=12, max_body_bytes=4096, request_timeout_s=120)  # fmt: skip


@pytest.fixture(scope="module")
def server(tiny_params):
    srv = Server(Engine(TINY, tiny_params, ByteTokenizer(), max_len=48), CFG, "tiny")
    srv.start()
    yield srv
    srv.close()


def request(server, method, path, body=None, raw=None, headers=None, timeout=120):
    conn = http.client.HTTPConnection(*server.address, timeout=timeout)
    data = raw if raw is not None else (None if body is None else json.dumps(body).encode())
    conn.request(method, path, body=data, headers=headers or {})
    resp = conn.getresponse()
    payload = resp.read()
    conn.close()
    return resp.status, resp.getheader("Content-Type"), payload


def sse_events(payload: bytes) -> list:
    lines = [ln for ln in payload.decode().split("\n\n") if ln]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(ln.removeprefix("data: ")) for ln in lines[:-1]]


def test_completion_matches_engine(server):
    prompt = "abc"
    status, _, payload = request(server, "POST", "/v1/completions",
                                 {"model": "tiny", "prompt": prompt, "max_tokens": 6,
                                  "temperature": 0})  # fmt: skip
    assert status == 200
    out = json.loads(payload)
    tok = server.engine.tokenizer
    want = server.engine.generate([[tok.bos_id, *tok.encode(prompt)]],
                                  stop=StopCriteria(6, (tok.eos_id,)))[0]  # fmt: skip
    assert out["object"] == "text_completion" and out["model"] == "tiny"
    assert out["choices"][0]["text"] == want.text
    assert out["choices"][0]["finish_reason"] == want.finish_reason
    assert out["usage"] == {"prompt_tokens": 4, "completion_tokens": len(want.token_ids),
                            "total_tokens": 4 + len(want.token_ids)}  # fmt: skip


def test_chat_stream_shape(server):
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "stream": True,
            "seed": 3, "stream_options": {"include_usage": True}}  # fmt: skip
    status, ctype, payload = request(server, "POST", "/v1/chat/completions", body)
    assert status == 200 and ctype == "text/event-stream"
    events = sse_events(payload)
    assert all(e["object"] == "chat.completion.chunk" for e in events)
    assert events[0]["choices"][0]["delta"]["role"] == "assistant"
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] <= 5
    assert events[-2]["choices"][0]["finish_reason"] in ("stop", "length")
    status, _, payload = request(server, "POST", "/v1/chat/completions", body | {"stream": False})
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-1])
    assert json.loads(payload)["choices"][0]["message"]["content"] == text  # same seed


BAD = [
    ("invalid JSON", {"raw": b"{not json"}, 400, "not valid JSON"),
    ("invalid UTF-8", {"raw": b'{"prompt": "\xff\xfe"}'}, 400, "UTF-8"),
    ("not an object", {"body": [1, 2]}, 400, "JSON object"),
    ("empty prompt", {"body": {"prompt": ""}}, 400, "prompt is empty"),
    ("wrong type", {"body": {"prompt": "a", "max_tokens": "5"}}, 400, "max_tokens must be"),
    ("bool for int", {"body": {"prompt": "a", "max_tokens": True}}, 400, "max_tokens must be"),
    ("unknown model", {"body": {"prompt": "a", "model": "gpt-9"}}, 404, "does not exist"),
    ("long prompt", {"body": {"prompt": "x" * 40}}, 400, "the limit is 36"),
    ("too many tokens", {"body": {"prompt": "a", "max_tokens": 13}}, 400, "must be in [1, 12]"),
    ("unknown field", {"body": {"prompt": "a", "tempreature": 1}}, 400, "unknown field"),
    ("unsupported n", {"body": {"prompt": "a", "n": 2}}, 400, "not supported"),
    ("bad top_p", {"body": {"prompt": "a", "top_p": 1.5}}, 400, "top_p"),
    ("bad messages", {"body": {"messages": [{"role": "bot", "content": "x"}]}}, 400, "role"),
    ("body too big", {"raw": b" " * 5000}, 413, "limit is 4096"),
    ("no route", {"body": {}, "path": "/v1/nothing"}, 404, "no route"),
]


@pytest.mark.parametrize("case", BAD, ids=[c[0] for c in BAD])
def test_bad_requests_get_4xx_json(server, case):
    _, kw, want_status, want_text = case
    path = kw.get("path", "/v1/chat/completions" if "messages" in kw.get("body", {})
                  else "/v1/completions")  # fmt: skip
    status, ctype, payload = request(server, "POST", path, kw.get("body"), kw.get("raw"))
    assert status == want_status and ctype == "application/json"
    assert want_text in json.loads(payload)["error"]["message"]


def test_missing_content_length_and_health(server):
    conn = http.client.HTTPConnection(*server.address, timeout=30)
    conn.putrequest("POST", "/v1/completions")
    conn.endheaders()
    assert conn.getresponse().status == 411
    status, _, payload = request(server, "GET", "/health")
    assert status == 200 and json.loads(payload)["status"] == "ok"


def test_concurrent_streams_none_lost(server):
    """32 streaming clients at once against 8 rows: every stream completes, in bounded time."""
    n, results, errors = 32, {}, []
    steps_before = server.scheduler.steps

    def client(i):
        try:
            body = {"prompt": f"req {i}", "max_tokens": 8, "stream": True, "seed": i,
                    "temperature": 1.0}  # fmt: skip
            status, _, payload = request(server, "POST", "/v1/completions", body, timeout=120)
            assert status == 200
            events = sse_events(payload)
            results[i] = ("".join(e["choices"][0]["text"] for e in events),
                          events[-1]["choices"][0]["finish_reason"])  # fmt: skip
        except Exception as err:  # surfaced below
            errors.append((i, repr(err)))

    start = time.monotonic()
    threads = [threading.Thread(target=client, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=150)
    assert not errors and len(results) == n, errors
    assert time.monotonic() - start < 150
    assert all(reason in ("stop", "length") for _, reason in results.values())
    # continuous batching: 32 requests x <= 8 tokens took far fewer steps than one at a time
    assert server.scheduler.steps - steps_before < n * 8 // 2


def _post_urllib(server, path: str, data: bytes) -> tuple[int, dict]:
    """What an ordinary client (urllib: send the whole body, then read) gets back."""
    url = f"http://{server.address[0]}:{server.address[1]}{path}"
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.mark.parametrize(("path", "status", "text"), [
    ("/v1/completions", 413, "the limit is 4096"),
    ("/v1/nothing", 404, "no route POST /v1/nothing"),
])  # fmt: skip
def test_refusal_of_a_large_upload_reaches_the_client(server, path, status, text):
    """16 MB is more than the kernel buffers on both sides hold: a server that answers and
    closes without reading the body resets the connection and urllib sees a broken pipe."""
    got, body = _post_urllib(server, path, b" " * (16 << 20))
    assert got == status and text in body["error"]["message"]
    assert _post_urllib(server, "/v1/completions", b'{"prompt": "a", "max_tokens": 1}')[0] == 200


def test_refusal_is_sent_before_the_body_is_read(server):
    """A client that declares 1 GB and sends nothing reads the 413 at once; the server stops
    reading its body after DISCARD_BYTES or read_timeout_s, whichever comes first."""
    with socket.create_connection(server.address, timeout=30) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n"
                     % (1 << 30))  # fmt: skip
        start = time.monotonic()
        head = sock.recv(4096)
        assert time.monotonic() - start < CFG.read_timeout_s / 2
    assert head.startswith(b"HTTP/1.0 413 ") and b"Connection: close" in head


def test_unset_max_tokens_is_what_the_context_leaves_and_bad_sampling_names_its_field():
    """A default is not a request: without max_tokens a long prompt gets the room that is left
    (not a 400 about a max_tokens nobody sent); an impossible setting names its field."""
    from llm.inference import api

    limits = api.Limits("tiny", max_prompt_tokens=40, max_new_tokens=12, context=48)
    tok = ByteTokenizer()
    parsed = api.parse({"prompt": "x" * 39}, tok, limits, chat=False)  # 40 tokens with BOS
    assert parsed.stop.max_new_tokens == 8
    assert api.parse({"prompt": "x"}, tok, limits, chat=False).stop.max_new_tokens == 12
    with pytest.raises(api.ApiError, match="exceeds the context of 48") as info:
        api.parse({"prompt": "x" * 39, "max_tokens": 9}, tok, limits, chat=False)
    assert info.value.param == "max_tokens"
    with pytest.raises(api.ApiError, match=r"top_k=-1 must be >= 0") as info:
        api.parse({"prompt": "x", "top_k": -1}, tok, limits, chat=False)
    assert info.value.status == 400 and info.value.param == "top_k"
