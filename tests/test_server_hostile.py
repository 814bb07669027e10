"""Malformed and hostile requests, sent over raw sockets: each gets a 4xx (an ``{"error": ...}``
body where the app answers), never a 500, and the server keeps serving with no sequence left
running. The last test checks that over the whole battery."""

from __future__ import annotations

import json
import socket
import time
from typing import Any, Iterator

import httpx
import pytest

from conftest import SERVER_KV_MB as KV_MB
from conftest import SERVER_N_CTX as N_CTX
from support import wait_for
from pyengine.server import create_app
from pyengine.server.ops.limits import DEFAULT_MAX_BODY_BYTES
from pyengine.server.testing import HOST, ServerThread

SMALL = {"num_predict": 2}



@pytest.fixture(scope="module")
def server(tiny) -> Iterator[ServerThread]:
    app = create_app({"tiny": tiny}, n_ctx=N_CTX, kv_cache_mb=KV_MB, keep_alive=-1, api_key="")
    with ServerThread(app) as s:
        yield s


# -- raw HTTP -------------------------------------------------------------------------------


def request(method: str, path: str, body: bytes | None = None, **headers: str) -> bytes:
    """An HTTP/1.1 request that asks the server to close the connection after answering."""
    head = {"Host": "localhost", "Connection": "close", **headers}
    if body is not None and "Content-Length" not in head and "Transfer-Encoding" not in head:
        head["Content-Length"] = str(len(body))
    lines = [f"{method} {path} HTTP/1.1"] + [f"{k}: {v}" for k, v in head.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + (body or b"")


def parse_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    head, sep, body = raw.partition(b"\r\n\r\n")
    assert sep, f"no complete response: {raw[:200]!r}"
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    status = int(status_line.split(" ")[1])
    headers = {k.strip().lower(): v.strip()
               for k, _, v in (line.partition(":") for line in header_lines)}
    if headers.get("transfer-encoding") == "chunked":
        out, rest = b"", body
        while rest:
            size_text, _, rest = rest.partition(b"\r\n")
            size = int(size_text, 16)
            if size == 0:
                break
            out, rest = out + rest[:size], rest[size + 2:]
        body = out
    return status, headers, body


def exchange(server: ServerThread, data: bytes, timeout: float = 60) -> tuple[int, dict, bytes]:
    """Sends ``data`` and reads the answer until the server closes the connection."""
    with socket.create_connection((HOST, server.port), timeout=timeout) as sock:
        sock.sendall(data)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except ConnectionResetError:  # closed on bytes it did not read, after answering
            pass
    return parse_response(b"".join(chunks))


def post_json(server: ServerThread, path: str, body: Any, **headers: str) -> tuple[int, Any]:
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()
    status, _, data = exchange(server, request("POST", path, raw, **headers))
    return status, data


def assert_error(status: int, data: bytes, expected: int | tuple[int, ...] = 400) -> str:
    """A 4xx of the expected status with exactly ``{"error": "<message>"}``; the message."""
    assert status in ((expected,) if isinstance(expected, int) else expected), (status, data)
    body = json.loads(data)
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"], body
    return body["error"]


def stats(server: ServerThread) -> dict[str, int]:
    return httpx.get(server.url + "/api/pyengine/stats", timeout=10).json()["tiny:latest"]


def metric_samples(server: ServerThread) -> list[str]:
    return [line for line in httpx.get(server.url + "/metrics", timeout=10).text.splitlines()
            if not line.startswith("#")]


# -- malformed bodies -----------------------------------------------------------------------

MALFORMED = [
    b"{not json", b'{"model": "tiny",', b"", b"   \r\n", b"null", b"[1, 2]", b'"a string"',
    b"42", b"true", b"\xff\xfe\xfd", b'{"model": "tiny", "prompt": "\xff\xc0"}',
    b"[" * 100_000 + b"]" * 100_000,  # nested too deep for the parser
    b'{"model": "tiny", "options": ' + b'{"a": ' * 50_000 + b"1" + b"}" * 50_001,
    b'{"model": "tiny", "options": {"num_predict": 1' + b"0" * 5000 + b"}}",  # 5001 digits
    b'{"model": "tiny"} trailing', b"{'model': 'tiny'}", b'{"model": "tiny" "prompt": "x"}',
]


@pytest.mark.parametrize("path", ["/api/generate", "/api/chat", "/api/show"])
@pytest.mark.parametrize("body", MALFORMED, ids=range(len(MALFORMED)))
def test_malformed_bodies_get_400(server, path, body):
    status, data = post_json(server, path, body, **{"Content-Type": "application/json"})
    assert_error(status, data)


# -- wrong types ----------------------------------------------------------------------------

GENERATE_FIELDS = [
    ("model", 5), ("model", None), ("model", ["tiny"]), ("prompt", 5), ("prompt", ["x"]),
    ("suffix", 1), ("system", {}), ("template", 2), ("context", "abc"), ("context", [1.5]),
    ("context", {"a": 1}), ("context", ["1"]), ("raw", "yes"), ("raw", 1), ("images", "aGk="),
    ("images", [1]), ("options", [1]), ("options", "x"), ("stream", "yes"), ("stream", 1),
    ("keep_alive", []), ("keep_alive", {}), ("keep_alive", True), ("format", 5),
    ("format", [1]), ("think", 3), ("think", []), ("logprobs", "y"), ("top_logprobs", "3"),
    ("top_logprobs", 1.5), ("truncate", "no"), ("shift", 1),
]
CHAT_FIELDS = [
    ("model", 5), ("messages", "hi"), ("messages", {"role": "user"}), ("messages", [None]),
    ("messages", [1]), ("messages", [{"role": 1, "content": "x"}]),
    ("messages", [{"content": "x"}]), ("messages", [{"role": "user", "content": ["x"]}]),
    ("messages", [{"role": "user", "content": "x", "images": "aGk="}]),
    ("messages", [{"role": "user", "content": "x", "thinking": 1}]),
    ("messages", [{"role": "user", "content": "x", "tool_calls": "f"}]),
    ("messages", [{"role": "user", "content": "x", "tool_name": 1}]),
    ("tools", "x"), ("tools", [1]), ("options", [1]), ("stream", "yes"), ("keep_alive", []),
    ("format", 5), ("think", 3), ("logprobs", "y"), ("top_logprobs", "3"), ("truncate", "no"),
    ("shift", 1),
]
OPTION_TYPES = [
    ("num_predict", "5"), ("temperature", "hot"), ("top_k", []), ("top_p", {}), ("seed", "x"),
    ("stop", 3), ("stop", [1]), ("num_ctx", "1"), ("ignore_eos", "y"), ("repeat_last_n", "1"),
    ("min_p", "0"), ("repeat_penalty", True), ("presence_penalty", "0"),
    ("frequency_penalty", []), ("temperature", "NaN"),
]
USER = [{"role": "user", "content": "Hello"}]


def _base(path: str) -> dict[str, Any]:
    if path == "/api/generate":
        return {"model": "tiny", "prompt": "Hello", "options": SMALL}
    return {"model": "tiny", "messages": USER, "options": SMALL}


@pytest.mark.parametrize("path,field,value",
                         [("/api/generate", f, v) for f, v in GENERATE_FIELDS] +
                         [("/api/chat", f, v) for f, v in CHAT_FIELDS])
def test_wrong_field_types_get_400(server, path, field, value):
    status, data = post_json(server, path, {**_base(path), field: value})
    assert field in assert_error(status, data)


@pytest.mark.parametrize("path", ["/api/generate", "/api/chat"])
@pytest.mark.parametrize("option,value", OPTION_TYPES)
def test_wrong_option_types_get_400(server, path, option, value):
    status, data = post_json(server, path, {**_base(path), "options": {option: value}})
    assert option in assert_error(status, data)


# -- numbers out of range -------------------------------------------------------------------

OUT_OF_RANGE = [
    ("temperature", -1), ("temperature", 1e308), ("top_p", -0.5), ("top_p", 5), ("top_p", 0),
    ("top_k", -3), ("top_k", 10**12), ("num_predict", -7), ("num_predict", 10**12),
    ("num_predict", 1e308), ("num_predict", -1e308), ("num_ctx", 10**30), ("seed", 10**30),
    ("seed", -(10**30)), ("repeat_penalty", 0), ("repeat_penalty", -1),
    ("repeat_last_n", -5), ("repeat_last_n", 10**12), ("min_p", -1), ("min_p", 2),
    ("presence_penalty", -1000), ("frequency_penalty", 1e9),
]
NON_FINITE = [b"NaN", b"Infinity", b"-Infinity"]


@pytest.mark.parametrize("path", ["/api/generate", "/api/chat"])
@pytest.mark.parametrize("option,value", OUT_OF_RANGE)
def test_out_of_range_options_get_400(server, path, option, value):
    status, data = post_json(server, path, {**_base(path), "options": {option: value}})
    assert_error(status, data)


@pytest.mark.parametrize("option", ["temperature", "top_p", "num_predict", "seed", "num_ctx"])
@pytest.mark.parametrize("literal", NON_FINITE)
def test_non_finite_numbers_get_400(server, option, literal):
    # Python's parser accepts these non-JSON literals; the options must still refuse them.
    body = b'{"model": "tiny", "prompt": "x", "options": {"%s": %s}}' % (option.encode(), literal)
    status, data = post_json(server, "/api/generate", body)
    assert option in assert_error(status, data)


def test_nan_keep_alive_gets_400(server):
    status, data = post_json(server, "/api/chat",
                             b'{"model": "tiny", "messages": [], "keep_alive": NaN}')
    assert "keep_alive" in assert_error(status, data)


def test_absurd_but_valid_limits_end_at_the_context(server):
    # num_predict at its maximum stops when the context is full, not never.
    status, data = post_json(server, "/api/generate", {
        "model": "tiny", "prompt": "Hi", "stream": False,
        "options": {"num_predict": 2**31 - 1, "ignore_eos": True, "temperature": 0}})
    reply = json.loads(data)
    assert status == 200 and reply["done_reason"] == "length"
    # Every position of the context is used; the last token is sampled, not stored.
    assert reply["prompt_eval_count"] + reply["eval_count"] in (N_CTX, N_CTX + 1)
    # A context far beyond the model's, and a negative one (the default), are not errors.
    for num_ctx in (10**9, -5, 0):
        status, data = post_json(server, "/api/generate", {
            "model": "tiny", "prompt": "Hi", "stream": False,
            "options": {"num_ctx": num_ctx, "num_predict": 3, "ignore_eos": True}})
        assert status == 200 and json.loads(data)["eval_count"] == 3, data
    status, data = post_json(server, "/api/generate", {"model": "tiny", "prompt": "Hi",
                                                       "stream": False, "keep_alive": 1e308,
                                                       "options": SMALL})
    assert status == 200


# -- model names ----------------------------------------------------------------------------

HOSTILE_NAMES = ["nope", "../../etc/passwd", "..\\..\\windows\\win.ini", "/etc/passwd",
                 "tiny/../../../etc/passwd", "%2e%2e/%2e%2e/etc/passwd", "tiny:../../x",
                 "file:///etc/passwd", "tiny\x00", "\x00", "a" * 100_000, "tiny:latest:latest",
                 "   ", "../tiny", "~/tiny.gguf"]


@pytest.mark.parametrize("name", HOSTILE_NAMES, ids=range(len(HOSTILE_NAMES)))
@pytest.mark.parametrize("path", ["/api/generate", "/api/chat", "/api/show"])
def test_unknown_and_hostile_model_names_get_404(server, path, name):
    status, data = post_json(server, path, {**_base(path), "model": name})
    message = assert_error(status, data, 404)
    assert "not found" in message and "root:" not in message


@pytest.mark.parametrize("path", ["/api/generate", "/api/chat", "/api/show"])
def test_empty_model_gets_400(server, path):
    status, data = post_json(server, path, {**_base(path), "model": ""})
    assert_error(status, data)


# -- sizes ----------------------------------------------------------------------------------


def test_prompt_longer_than_the_context_gets_400(server):
    status, data = post_json(server, "/api/generate",
                             {"model": "tiny", "prompt": "hello " * 400, "options": SMALL})
    assert "context" in assert_error(status, data)
    status, data = post_json(server, "/api/chat", {"model": "tiny", "messages": USER * 2000})
    assert "context" in assert_error(status, data)
    # A large body under the limit reaches the route, which refuses it the same way.
    status, data = post_json(server, "/api/generate", {"model": "tiny", "prompt": "x" * 2**20})
    assert "context" in assert_error(status, data)


def test_huge_bodies_get_413(server):
    huge = json.dumps({"model": "tiny", "prompt": "x" * (20 * 2**20)}).encode()
    assert len(huge) > DEFAULT_MAX_BODY_BYTES
    # Sent whole with a length, the client reads a clean 413 afterwards.
    r = httpx.post(server.url + "/api/generate", content=huge, timeout=60)
    assert r.status_code == 413 and set(r.json()) == {"error"} and "too large" in r.json()["error"]

    def pieces() -> Iterator[bytes]:
        for start in range(0, len(huge), 2**20):
            yield huge[start:start + 2**20]

    r = httpx.post(server.url + "/api/chat", content=pieces(), timeout=60)  # chunked
    assert r.status_code == 413 and "too large" in r.json()["error"]
    # A length far too large is refused at once, before any of the body is read; so is one
    # that waits for a go-ahead before sending its body, as curl does.
    status, _, data = exchange(server, request("POST", "/api/generate", None,
                                               **{"Content-Length": str(2**40)}))
    assert "too large" in assert_error(status, data, 413)
    status, _, data = exchange(server, request("POST", "/api/generate", None,
                                               **{"Content-Length": str(len(huge)),
                                                  "Expect": "100-continue"}))
    assert "too large" in assert_error(status, data, 413)


# -- content types and methods --------------------------------------------------------------


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "multipart/form-data; boundary=xyz", "image/png",
                                          "application/json; charset=latin-1"])
def test_json_is_read_whatever_the_content_type(server, content_type):
    headers = {"Content-Type": content_type} if content_type else {}
    status, data = post_json(server, "/api/generate",
                             {"model": "tiny", "prompt": "Hi", "stream": False, "options": SMALL},
                             **headers)
    assert status == 200 and json.loads(data)["done"] is True
    status, data = post_json(server, "/api/generate", b"model=tiny&prompt=hi", **headers)
    assert_error(status, data)


@pytest.mark.parametrize("method,path", [
    ("GET", "/api/generate"), ("PUT", "/api/generate"), ("DELETE", "/api/chat"),
    ("PATCH", "/api/chat"), ("GET", "/api/show"), ("POST", "/api/tags"), ("POST", "/health"),
    ("POST", "/metrics"), ("DELETE", "/"), ("FOO", "/api/generate"), ("OPTIONS", "/api/chat"),
])
def test_wrong_methods_get_405(server, method, path):
    status, _, data = exchange(server, request(method, path, b"{}"))
    assert_error(status, data, 405)


@pytest.mark.parametrize("data", [
    b"\x00\x01\x02 garbage\r\n\r\n", b"GET /\r\n\r\n",
    b"POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
    b"POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n\r\n",
    b"POST /api/generate HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    b"GET /api/\x00tags HTTP/1.1\r\nHost: x\r\n\r\n",
], ids=["garbage", "no-version", "length", "negative", "chunk", "nul"])
def test_broken_http_gets_400_from_the_http_layer(server, data):
    status, _, _ = exchange(server, data)
    assert status == 400


def test_huge_headers_are_refused(server):
    data = b"GET /api/version HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 2**20 + b"\r\n\r\n"
    with socket.create_connection((HOST, server.port), timeout=10) as sock:
        try:
            sock.sendall(data)
            answer = sock.recv(65536)
        except (ConnectionResetError, BrokenPipeError):  # closed on bytes it would not read
            answer = b""
    assert answer == b"" or answer.startswith(b"HTTP/1.1 400 "), answer[:100]
    assert httpx.get(server.url + "/api/version").status_code == 200


# -- clients that misbehave on the wire -----------------------------------------------------


def _count(server: ServerThread, status: str) -> int:
    return sum(int(float(line.rsplit(" ", 1)[1])) for line in metric_samples(server)
               if line.startswith("pyengine_http_requests_total") and f'status="{status}"' in line)


def test_half_a_body_then_disconnect(server):
    before = _count(server, "499")
    body = json.dumps({"model": "tiny", "prompt": "Hello " * 50, "options": SMALL}).encode()
    with socket.create_connection((HOST, server.port), timeout=10) as sock:
        sock.sendall(request("POST", "/api/generate", body[:len(body) // 2],
                             **{"Content-Length": str(len(body))}))
    with socket.create_connection((HOST, server.port), timeout=10) as sock:
        sock.sendall(request("POST", "/api/chat", None, **{"Transfer-Encoding": "chunked"}) +
                     b"10\r\n" + b"{" * 16 + b"\r\n")
    # Both are dropped (499: the client left before an answer) and nothing was generated.
    assert wait_for(lambda: _count(server, "499") == before + 2)
    s = stats(server)
    assert s["running"] == 0 and s["waiting"] == 0


def test_silent_and_stalled_clients_do_not_block_others(server):
    stalled = []
    for data in (b"", b"POST /api/gen", b"POST /api/generate HTTP/1.1\r\nHost: x\r\n",
                 request("POST", "/api/generate", b'{"model":', **{"Content-Length": "500"})):
        sock = socket.create_connection((HOST, server.port), timeout=10)
        if data:
            sock.sendall(data)
        stalled.append(sock)
    try:
        start = time.monotonic()
        status, data = post_json(server, "/api/chat", {"model": "tiny", "messages": USER,
                                                       "stream": False, "options": SMALL})
        assert status == 200 and json.loads(data)["done"] is True
        assert time.monotonic() - start < 10
        assert httpx.get(server.url + "/health").json() == {"status": "ok"}
    finally:
        for sock in stalled:
            sock.close()


# -- afterwards -----------------------------------------------------------------------------


def test_the_server_is_healthy_after_the_battery(server):
    status, data = post_json(server, "/api/generate", {"model": "tiny", "prompt": "Hello",
                                                       "stream": False, "options": SMALL})
    assert status == 200 and json.loads(data)["eval_count"] == 2
    s = stats(server)
    assert s["running"] == 0 and s["waiting"] == 0 and s["kv_pages_used"] == 0
    assert s["failed"] == 0
    # No request of the whole battery was answered with a server error.
    assert [line for line in metric_samples(server) if 'status="5' in line] == []


# -- problems found here and fixed -----------------------------------------------------------


def test_unclosed_template_actions_are_refused_fast(tiny):
    with ServerThread(create_app({"tiny": tiny}, n_ctx=N_CTX, kv_cache_mb=KV_MB,
                                 api_key="")) as s:
        t0 = time.perf_counter()
        status, data = post_json(s, "/api/generate",
                                 {"model": "tiny", "prompt": "x", "template": "{{" * 10000})
        assert_error(status, data)
        assert time.perf_counter() - t0 < 2  # was quadratic: seconds with the loop blocked


def test_context_token_beyond_int64_gets_400(tiny):
    with ServerThread(create_app({"tiny": tiny}, n_ctx=N_CTX, kv_cache_mb=KV_MB,
                                 api_key="")) as s:
        status, data = post_json(s, "/api/generate",
                                 {"model": "tiny", "prompt": "x", "context": [10**30]})
        assert_error(status, data)
