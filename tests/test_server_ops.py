"""The server's operational layer over real HTTP: /metrics, /health, the queue limit, CORS and
the bearer token, in process and through ``pyengine serve`` flags."""

from __future__ import annotations

import json
import math
import re
from typing import Any, Callable, Iterator

import httpx
import ollama
import openai
import pytest

from conftest import SERVER_KV_MB as KV_MB
from conftest import SERVER_N_CTX as N_CTX
from support import wait_for
from pyengine.errors import PyEngineError
from pyengine.server import create_app
from pyengine.server.ops.exposition import Exposition
from pyengine.server.ops.limits import BUSY_MESSAGE, DEFAULT_MAX_QUEUE, resolve_max_queue
from pyengine.server.ops.metrics import EngineLedger
from pyengine.server.ops.security import DEFAULT_ORIGINS, resolve_api_key, resolve_origins
from pyengine.server.testing import ServerThread

ODD = 'odd"na\\me'  # a model name that needs escaping in a label value
KEY = "s3cret-Key_123"




@pytest.fixture(scope="module")
def server(tiny) -> Iterator[ServerThread]:
    app = create_app({"tiny": tiny, ODD: tiny}, n_ctx=N_CTX, kv_cache_mb=KV_MB, keep_alive=-1,
                     max_queue=None, origins=None, api_key="")
    with ServerThread(app) as s:
        yield s


@pytest.fixture
def fresh_server(tiny, long_model) -> Iterator[Callable[..., ServerThread]]:
    started: list[ServerThread] = []

    def start(**options: Any) -> ServerThread:
        options.setdefault("api_key", "")
        app = create_app({"tiny": tiny, "long": long_model}, n_ctx=N_CTX, kv_cache_mb=KV_MB,
                         **options)
        started.append(ServerThread(app).start())
        return started[-1]

    yield start
    for s in started:
        s.stop()


# -- parsing the exposition format ----------------------------------------------------------

_SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)")
_LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\\n]|\\[\\"n])*)"(?:,|$)')
_UNESCAPE = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}

Key = tuple[str, frozenset]


def parse_labels(text: str) -> dict[str, str]:
    labels: dict[str, str] = {}
    pos = 0
    while pos < len(text):
        m = _LABEL.match(text, pos)
        assert m is not None, f"bad labels {text!r} at {pos}"
        labels[m.group(1)] = re.sub(r'\\[\\"n]', lambda e: _UNESCAPE[e.group(0)], m.group(2))
        pos = m.end()
    return labels


def parse_exposition(text: str) -> tuple[dict[Key, float], dict[str, str]]:
    """Samples ((name, labels) -> value) and types; asserts the format as it goes."""
    assert text.endswith("\n")
    helps: dict[str, str] = {}
    types: dict[str, str] = {}
    samples: dict[Key, float] = {}
    for line in text.splitlines():
        assert line, "no blank lines"
        if line.startswith("# HELP "):
            name, _, help_text = line[7:].partition(" ")
            assert name not in helps and help_text
            helps[name] = help_text
        elif line.startswith("# TYPE "):
            name, kind = line[7:].split(" ")
            assert name in helps and name not in types and kind in ("counter", "gauge")
            types[name] = kind
        else:
            m = _SAMPLE.fullmatch(line)
            assert m is not None, f"bad sample line {line!r}"
            name = m.group(1)
            assert name in types, f"{name} has no TYPE before its samples"
            key = (name, frozenset(parse_labels(m.group(2) or "").items()))
            assert key not in samples, f"repeated sample {line!r}"
            value = float(m.group(3))
            assert not math.isnan(value)
            if types[name] == "counter":
                assert name.endswith("_total") and value >= 0
            samples[key] = value
    assert set(helps) == set(types)
    return samples, types


def scrape(url: str, **kwargs: Any) -> dict[Key, float]:
    r = httpx.get(url + "/metrics", timeout=10, **kwargs)
    assert r.status_code == 200
    assert r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return parse_exposition(r.text)[0]


def value(samples: dict[Key, float], name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def per_model(samples: dict[Key, float], name: str, model: str) -> dict[str, float]:
    """``state`` -> value of a family's samples for ``model``."""
    return {dict(k[1]).get("state", ""): v for k, v in samples.items()
            if k[0] == name and dict(k[1]).get("model") == model}


# -- /metrics -------------------------------------------------------------------------------


def test_exposition_escapes_labels_and_help():
    out = Exposition()
    out.family("x_total", "counter", "a \\ help\nline", [({"l": 'a"b\\c\nd'}, 3)])
    out.family("y", "gauge", "nan and inf", [({"k": "1"}, math.inf), ({"k": "2"}, 0.5)])
    text = out.text()
    assert '# HELP x_total a \\\\ help\\nline' in text
    assert 'x_total{l="a\\"b\\\\c\\nd"} 3.0' in text
    assert 'y{k="1"} +Inf' in text and 'y{k="2"} 0.5' in text
    samples, types = parse_exposition(text)
    assert samples[("x_total", frozenset({("l", 'a"b\\c\nd')}))] == 3
    assert types == {"x_total": "counter", "y": "gauge"}
    with pytest.raises(ValueError):
        out.family("x_total", "counter", "twice")
    with pytest.raises(ValueError):
        out.family("z", "gauge", "bad label", [({"__reserved": "v"}, 1)])
    with pytest.raises(ValueError):
        out.family("w", "counter", "a counter's name ends in _total")


def test_metrics_format_and_counters_grow(server):
    before = scrape(server.url)
    r = httpx.post(server.url + "/api/generate", timeout=60,
                   json={"model": "tiny", "prompt": "Count the stars", "stream": False,
                         "options": {"temperature": 0, "num_predict": 9, "ignore_eos": True}})
    assert r.status_code == 200
    reply = r.json()
    httpx.get(server.url + "/api/nowhere/../etc")  # an unmatched path
    after = scrape(server.url)

    route = {"method": "POST", "route": "/api/generate", "status": "200"}
    assert value(after, "pyengine_http_requests_total", **route) == \
        value(before, "pyengine_http_requests_total", **route) + 1
    unmatched = {"method": "GET", "route": "unmatched", "status": "404"}
    assert value(after, "pyengine_http_requests_total", **unmatched) >= 1
    # The raw path never becomes a label: labels stay bounded whatever clients send.
    assert not any("etc" in dict(k[1]).get("route", "") for k in after)

    model = {"model": "tiny:latest"}
    prompt = value(after, "pyengine_prompt_tokens_total", **model) - \
        value(before, "pyengine_prompt_tokens_total", **model)
    decoded = value(after, "pyengine_decode_tokens_total", **model) - \
        value(before, "pyengine_decode_tokens_total", **model)
    assert prompt == reply["prompt_eval_count"] > 0
    assert decoded == reply["eval_count"] - 1 == 8  # the last token is sampled, not run
    for name in ("pyengine_steps_total", "pyengine_step_sequences_total",
                 "pyengine_prefix_query_tokens_total"):
        assert value(after, name, **model) > value(before, name, **model), name
    assert value(after, "pyengine_sequences_ended_total", reason="finished", **model) == \
        value(before, "pyengine_sequences_ended_total", reason="finished", **model) + 1
    # Every counter of the first scrape is still there, and none went down.
    for key, v in before.items():
        if key[0].endswith("_total"):
            assert after.get(key, -1) >= v, key

    # KV gauges of the loaded model, consistent with each other and with the engine's stats.
    pages = per_model(after, "pyengine_kv_pages", "tiny:latest")
    assert set(pages) == {"used", "free", "cached"}
    total = value(after, "pyengine_kv_pages_capacity", **model)
    assert total > 0 and pages["used"] + pages["free"] + pages["cached"] == total
    page_bytes = value(after, "pyengine_kv_page_bytes", **model)
    kv_bytes = per_model(after, "pyengine_kv_bytes", "tiny:latest")
    assert all(kv_bytes[s] == pages[s] * page_bytes for s in pages)
    assert value(after, "pyengine_kv_capacity_bytes", **model) == total * page_bytes
    stats = httpx.get(server.url + "/api/pyengine/stats").json()["tiny:latest"]
    assert stats["kv_pages_total"] == total and stats["kv_page_bytes"] == page_bytes
    assert value(after, "pyengine_batch_size_mean", **model) == \
        value(after, "pyengine_step_sequences_total", **model) / \
        value(after, "pyengine_steps_total", **model)
    assert per_model(after, "pyengine_sequences", "tiny:latest") == {"running": 0, "waiting": 0}
    assert value(after, "pyengine_models_loaded") >= 1
    assert value(after, "pyengine_max_queue") == DEFAULT_MAX_QUEUE
    assert value(after, "pyengine_requests_in_flight") == 0
    assert value(after, "pyengine_http_requests_in_flight") == 1  # this scrape


def test_metrics_escape_model_names_and_survive_unloads(server):
    body = {"model": ODD, "prompt": "Hi", "stream": False,
            "options": {"num_predict": 4, "ignore_eos": True}}
    r = httpx.post(server.url + "/api/generate", json=body, timeout=60)
    assert r.status_code == 200
    loaded = scrape(server.url)
    name = ODD + ":latest"
    assert value(loaded, "pyengine_decode_tokens_total", model=name) >= 3
    assert per_model(loaded, "pyengine_kv_pages", name)  # parsed back through the escapes
    raw = httpx.get(server.url + "/metrics").text
    assert 'model="odd\\"na\\\\me:latest"' in raw

    # Unloading the model drops its gauges; its counters stay, and grow with the next load.
    r = httpx.post(server.url + "/api/generate", json={**body, "keep_alive": 0}, timeout=60)
    assert r.status_code == 200
    assert wait_for(lambda: not any(m["name"] == name for m in
                                    httpx.get(server.url + "/api/ps").json()["models"]))
    unloaded = scrape(server.url)
    assert per_model(unloaded, "pyengine_kv_pages", name) == {}
    for counter in ("pyengine_decode_tokens_total", "pyengine_prompt_tokens_total",
                    "pyengine_steps_total"):
        assert value(unloaded, counter, model=name) > value(loaded, counter, model=name)
    assert value(unloaded, "pyengine_decode_tokens_total", model=name) == \
        value(loaded, "pyengine_decode_tokens_total", model=name) + 3
    r = httpx.post(server.url + "/api/generate", json=body, timeout=60)  # loads it again
    reloaded = scrape(server.url)
    assert value(reloaded, "pyengine_decode_tokens_total", model=name) == \
        value(unloaded, "pyengine_decode_tokens_total", model=name) + 3


class _FakeEngine:
    def __init__(self) -> None:
        self.counts = {"decode_tokens": 0, "steps": 0}
        self.closed = False

    def stats(self) -> dict[str, int]:
        if self.closed:
            raise PyEngineError("the engine is closed")
        return dict(self.counts)


class _Loaded:
    def __init__(self, name: str, engine: _FakeEngine) -> None:
        self.name, self.engine = name, engine


def test_engine_ledger_keeps_counters_monotonic_across_reloads():
    ledger = EngineLedger()
    first = _FakeEngine()
    first.counts.update(decode_tokens=5, steps=2)
    ledger.observe([_Loaded("m", first)])
    first.counts.update(decode_tokens=7, steps=3)
    ledger.observe([])  # unloaded but not yet closed: read one last time
    first.closed = True
    assert ledger.totals()["m"]["decode_tokens"] == 7
    second = _FakeEngine()
    second.counts.update(decode_tokens=1, steps=1)
    assert ledger.observe([_Loaded("m", second)]) == {"m": second.counts}
    assert ledger.totals()["m"]["decode_tokens"] == 8 and ledger.totals()["m"]["steps"] == 4
    # An engine closed before it could be read again keeps its last reading.
    second.counts["decode_tokens"] = 4
    ledger.observe([_Loaded("m", second)])
    second.closed = True
    ledger.observe([_Loaded("m", second)])
    assert ledger.totals()["m"]["decode_tokens"] == 11
    # One dropped without a last look (garbage collected) keeps its last reading too.
    third = _FakeEngine()
    third.counts["decode_tokens"] = 2
    ledger.observe([_Loaded("m", third)])
    del third
    assert ledger.totals()["m"]["decode_tokens"] == 13


# -- /health --------------------------------------------------------------------------------


def test_health_is_ok_and_loads_nothing(fresh_server):
    s = fresh_server()
    r = httpx.get(s.url + "/health")
    assert r.status_code == 200 and r.json() == {"status": "ok"}
    assert httpx.head(s.url + "/health").status_code == 200
    assert httpx.get(s.url + "/api/ps").json() == {"models": []}
    assert value(scrape(s.url), "pyengine_models_loaded") == 0


# -- the queue limit ------------------------------------------------------------------------

HOLD = {"temperature": 0, "num_predict": 2500, "num_ctx": 32768, "ignore_eos": True}


def test_queue_limit_refuses_with_503_and_recovers(fresh_server):
    s = fresh_server(max_queue=2, keep_alive=-1)
    assert httpx.post(s.url + "/api/generate", timeout=60,
                      json={"model": "long", "prompt": ""}).status_code == 200  # load first
    story = {"model": "long", "prompt": "Tell a story", "options": HOLD}
    chat = {"model": "long", "messages": [{"role": "user", "content": "Hi"}], "options": HOLD}
    with httpx.Client(timeout=60) as c1, httpx.Client(timeout=60) as c2, \
            c1.stream("POST", s.url + "/api/generate", json=story) as r1, \
            c2.stream("POST", s.url + "/api/chat", json=chat) as r2:
        lines1, lines2 = r1.iter_lines(), r2.iter_lines()
        assert json.loads(next(lines1))["done"] is False
        assert json.loads(next(lines2))["done"] is False

        # Both places are taken: generation requests get Ollama's 503, whatever the route,
        # in the error shape of the API called.
        for path in ("/api/generate", "/api/chat", "/api/embed"):
            busy = httpx.post(s.url + path, json={"model": "tiny", "prompt": "x"})
            assert busy.status_code == 503, path
            assert busy.json() == {"error": BUSY_MESSAGE}
        for path in ("/v1/chat/completions", "/v1/completions", "/v1/embeddings"):
            busy = httpx.post(s.url + path, json={"model": "tiny", "prompt": "x"})
            assert busy.status_code == 503, path
            error = busy.json()["error"]
            assert error["message"] == BUSY_MESSAGE and error["type"] == "server_error"
        with pytest.raises(ollama.ResponseError) as e:
            ollama.Client(host=s.url).generate(model="tiny", prompt="x")
        assert e.value.status_code == 503 and "maximum pending requests" in e.value.error
        with pytest.raises(openai.InternalServerError) as oe:
            openai.OpenAI(base_url=s.url + "/v1", api_key="none", max_retries=0) \
                .chat.completions.create(model="tiny", messages=[{"role": "user",
                                                                   "content": "x"}])
        assert oe.value.status_code == 503 and BUSY_MESSAGE in oe.value.message
        # Other routes are not limited.
        assert httpx.get(s.url + "/api/tags").status_code == 200
        assert httpx.get(s.url + "/health").status_code == 200
        held = scrape(s.url)
        assert value(held, "pyengine_requests_in_flight") == 2
        assert value(held, "pyengine_requests_rejected_total") == 8
        assert value(held, "pyengine_http_requests_total", method="POST",
                     route="/api/generate", status="503") == 2

        # The streams admitted first run to their end undisturbed.
        for lines in (lines1, lines2):
            records = [json.loads(line) for line in lines]
            last = records[-1]
            assert last["done"] is True and last["done_reason"] == "length"
            assert last["eval_count"] == HOLD["num_predict"]
    assert wait_for(lambda: value(scrape(s.url), "pyengine_requests_in_flight") == 0)
    ok = httpx.post(s.url + "/api/generate", timeout=60,
                    json={"model": "tiny", "prompt": "x", "stream": False,
                          "options": {"num_predict": 3}})
    assert ok.status_code == 200 and ok.json()["done"] is True


def test_queue_place_is_freed_when_a_client_leaves(fresh_server):
    s = fresh_server(max_queue=1, keep_alive=-1)
    with httpx.stream("POST", s.url + "/api/generate", timeout=60,
                      json={"model": "long", "prompt": "Hi",
                            "options": {**HOLD, "num_predict": -1}}) as r:
        lines = r.iter_lines()  # kept: a dropped line iterator closes the connection
        assert json.loads(next(lines))["done"] is False
        assert httpx.post(s.url + "/api/chat", json={"model": "tiny"}).status_code == 503
    # Leaving the block dropped the connection mid-stream.
    assert wait_for(lambda: value(scrape(s.url), "pyengine_requests_in_flight") == 0)
    r = httpx.post(s.url + "/api/chat", timeout=60,
                   json={"model": "tiny", "messages": [{"role": "user", "content": "x"}],
                         "stream": False, "options": {"num_predict": 2}})
    assert r.status_code == 200
    stats = httpx.get(s.url + "/api/pyengine/stats").json()["long:latest"]
    assert stats["running"] == 0 and stats["cancelled"] == 1


def test_max_queue_settings(monkeypatch, tiny):
    assert resolve_max_queue(None, {}) == DEFAULT_MAX_QUEUE == 512
    assert resolve_max_queue(None, {"OLLAMA_MAX_QUEUE": "7"}) == 7
    assert resolve_max_queue(None, {"OLLAMA_MAX_QUEUE": "7", "PYENGINE_MAX_QUEUE": " '3' "}) == 3
    assert resolve_max_queue(9, {"PYENGINE_MAX_QUEUE": "3"}) == 9
    for bad in ({"PYENGINE_MAX_QUEUE": "many"}, {"PYENGINE_MAX_QUEUE": "0"},
                {"PYENGINE_MAX_QUEUE": "-1", "OLLAMA_MAX_QUEUE": "4"}):
        with pytest.raises(ValueError, match="PYENGINE_MAX_QUEUE"):
            resolve_max_queue(None, bad)
    # Ollama ignores a bad OLLAMA_MAX_QUEUE (with a warning), and so does this server.
    for bad in ("many", "0", "-2", "1.5"):
        assert resolve_max_queue(None, {"OLLAMA_MAX_QUEUE": bad}) == DEFAULT_MAX_QUEUE
    for bad in (0, -3, True, 2.5):
        with pytest.raises(ValueError):
            resolve_max_queue(bad, {})
    monkeypatch.setenv("PYENGINE_MAX_QUEUE", "5")
    assert create_app({"tiny": tiny}).state.ops_settings.max_queue == 5
    assert create_app({"tiny": tiny}, max_queue=2).state.ops_settings.max_queue == 2
    monkeypatch.setenv("PYENGINE_MAX_QUEUE", "zero")
    with pytest.raises(ValueError):
        create_app({"tiny": tiny})


# -- CORS -----------------------------------------------------------------------------------

ALLOWED = ["http://localhost", "http://localhost:3000", "https://127.0.0.1:8443",
           "http://0.0.0.0:80", "https://localhost", "app://obsidian.md", "tauri://localhost",
           "file://", "vscode-webview://1a2b3c", "HTTP://LOCALHOST:5173"]
DISALLOWED = ["http://evil.example", "http://localhost.evil.example", "https://127.0.0.1.nip.io",
              "http://192.168.1.10:3000", "null", "chrome-extension://abcdef"]


def test_cors_allows_local_origins_only(server):
    for origin in ALLOWED:
        r = httpx.get(server.url + "/api/version", headers={"Origin": origin})
        assert r.status_code == 200
        assert r.headers.get("access-control-allow-origin") == origin, origin
        assert "Origin" in r.headers.get("vary", "")
    for origin in DISALLOWED:
        r = httpx.get(server.url + "/api/version", headers={"Origin": origin})
        # Still answered (CORS is the browser's to enforce) but without the header.
        assert r.status_code == 200
        assert "access-control-allow-origin" not in r.headers, origin
    assert "access-control-allow-origin" not in httpx.get(server.url + "/api/version").headers


def test_cors_preflight(server):
    preflight = {"Origin": "http://localhost:5173", "Access-Control-Request-Method": "POST",
                 "Access-Control-Request-Headers": "content-type, authorization, "
                                                   "x-stainless-os"}
    r = httpx.options(server.url + "/api/chat", headers=preflight)
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "http://localhost:5173"
    assert "POST" in r.headers["access-control-allow-methods"]
    allowed = r.headers["access-control-allow-headers"].lower()
    assert "authorization" in allowed and "content-type" in allowed
    assert int(r.headers["access-control-max-age"]) > 0

    r = httpx.options(server.url + "/api/chat", headers={**preflight, "Origin": "http://evil.io"})
    assert r.status_code == 400 and "access-control-allow-origin" not in r.headers
    r = httpx.options(server.url + "/api/chat",
                      headers={**preflight, "Access-Control-Request-Headers": "x-evil"})
    assert r.status_code == 400


def test_cors_origins_extend_the_defaults(fresh_server, monkeypatch):
    monkeypatch.setenv("PYENGINE_ORIGINS", "https://from-env.test")
    monkeypatch.setenv("OLLAMA_ORIGINS", "https://ollama-env.test")  # PYENGINE_ORIGINS wins
    s = fresh_server(origins=["https://app.example.com", "https://*.example.org"])
    for origin in ("https://app.example.com", "https://a.example.org", "https://from-env.test",
                   "http://localhost:8080"):
        r = httpx.get(s.url + "/health", headers={"Origin": origin})
        assert r.headers.get("access-control-allow-origin") == origin, origin
    for origin in ("https://example.com", "https://ollama-env.test", "http://example.org"):
        r = httpx.get(s.url + "/health", headers={"Origin": origin})
        assert "access-control-allow-origin" not in r.headers, origin

    monkeypatch.delenv("PYENGINE_ORIGINS")
    s = fresh_server(origins="*")
    r = httpx.get(s.url + "/health", headers={"Origin": "https://anything.example"})
    assert r.headers["access-control-allow-origin"] == "*"


def test_origin_settings():
    assert resolve_origins(None, {}) == list(DEFAULT_ORIGINS)
    assert "http://localhost:*" in DEFAULT_ORIGINS and "tauri://*" in DEFAULT_ORIGINS
    got = resolve_origins(["a://x, b://y", " 'c://z' "], {"OLLAMA_ORIGINS": "d://w,,"})
    assert got[:4] == ["a://x", "b://y", "c://z", "d://w"] and got[4:] == list(DEFAULT_ORIGINS)
    assert resolve_origins("e://v", {"PYENGINE_ORIGINS": "f://u", "OLLAMA_ORIGINS": "d://w"})[:2] \
        == ["e://v", "f://u"]


# -- the bearer token -----------------------------------------------------------------------


def test_api_key_guards_everything_but_liveness(fresh_server):
    s = fresh_server(api_key=KEY, keep_alive=-1)
    for path in ("/api/tags", "/api/version", "/metrics", "/api/ps", "/api/pyengine/stats"):
        r = httpx.get(s.url + path)
        assert r.status_code == 401 and r.json() == {"error": "unauthorized"}, path
        assert r.headers["www-authenticate"] == "Bearer"
    for header in ("Bearer wrong", f"Bearer {KEY}x", f"Bearer {KEY[:-1]}", f"Basic {KEY}",
                   "Bearer", KEY, f"Bearer  {KEY.lower()}"):
        r = httpx.get(s.url + "/api/tags", headers={"Authorization": header})
        assert r.status_code == 401, header
    r = httpx.post(s.url + "/api/generate", json={"model": "tiny", "prompt": "x"})
    assert r.status_code == 401 and r.json() == {"error": "unauthorized"}

    good = {"Authorization": f"Bearer {KEY}"}
    assert httpx.get(s.url + "/api/tags", headers=good).status_code == 200
    assert httpx.get(s.url + "/api/tags",
                     headers={"Authorization": f"bearer {KEY}"}).status_code == 200
    assert scrape(s.url, headers=good)  # /metrics with the key
    # Liveness stays open, and so do CORS preflights (browsers send them without credentials).
    assert httpx.get(s.url + "/").text == "Ollama is running"
    assert httpx.get(s.url + "/health").json() == {"status": "ok"}
    r = httpx.options(s.url + "/api/chat",
                      headers={"Origin": "http://localhost:3000",
                               "Access-Control-Request-Method": "POST",
                               "Access-Control-Request-Headers": "authorization,content-type"})
    assert r.status_code == 200
    # A refusal still carries CORS headers, so a browser page can read the 401.
    r = httpx.get(s.url + "/api/tags", headers={"Origin": "http://localhost:3000"})
    assert r.status_code == 401
    assert r.headers["access-control-allow-origin"] == "http://localhost:3000"

    # The official client, with the header.
    client = ollama.Client(host=s.url, headers=good)
    assert [m.model for m in client.list().models] == ["tiny:latest", "long:latest"]
    reply = client.generate(model="tiny", prompt="Hello", options={"num_predict": 3})
    assert reply.done and reply.eval_count == 3
    parts = list(client.chat(model="tiny", messages=[{"role": "user", "content": "Hi"}],
                             stream=True, options={"num_predict": 3}))
    assert parts[-1].done
    with pytest.raises(ollama.ResponseError) as e:
        ollama.Client(host=s.url).list()
    assert e.value.status_code == 401 and e.value.error == "unauthorized"
    # OpenAI's clients send the key as a bearer token, and read OpenAI's error object.
    models = openai.OpenAI(base_url=s.url + "/v1", api_key=KEY, max_retries=0).models.list()
    assert "tiny" in {m.id.split(":")[0] for m in models.data}
    with pytest.raises(openai.AuthenticationError) as ae:
        openai.OpenAI(base_url=s.url + "/v1", api_key="wrong", max_retries=0).models.list()
    assert ae.value.status_code == 401 and ae.value.code == "invalid_api_key"


def test_api_key_settings(monkeypatch, tiny):
    assert resolve_api_key(None, {}) is None
    assert resolve_api_key(None, {"PYENGINE_API_KEY": " k "}) == "k"
    assert resolve_api_key("", {"PYENGINE_API_KEY": "k"}) is None  # explicitly off
    assert resolve_api_key("flag", {"PYENGINE_API_KEY": "k"}) == "flag"
    for bad in ("two words", "tab\there", "clé"):
        with pytest.raises(ValueError):
            resolve_api_key(bad, {})
    monkeypatch.setenv("PYENGINE_API_KEY", KEY)
    assert create_app({"tiny": tiny}).state.ops_settings.api_key == KEY
    monkeypatch.delenv("PYENGINE_API_KEY")
    assert create_app({"tiny": tiny}).state.ops_settings.api_key is None


# -- the command line -----------------------------------------------------------------------


def test_serve_flags(pyengine_server, tiny, monkeypatch):
    monkeypatch.delenv("PYENGINE_API_KEY", raising=False)
    s = pyengine_server({"tiny": tiny}, args=["--ctx", str(N_CTX), "--kv-cache-mb", str(KV_MB),
                                              "--max-queue", "3", "--api-key", KEY,
                                              "--origins", "https://ui.example"])
    assert httpx.get(s.url + "/health").json() == {"status": "ok"}
    assert httpx.get(s.url + "/api/tags").status_code == 401
    good = {"Authorization": f"Bearer {KEY}"}
    assert value(scrape(s.url, headers=good), "pyengine_max_queue") == 3
    r = httpx.get(s.url + "/api/tags", headers={**good, "Origin": "https://ui.example"})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "https://ui.example"
