"""The Ollama-compatible HTTP server, driven over real HTTP.

The official ``ollama`` client checks that replies parse as Ollama's; raw HTTP checks framing,
status codes and error bodies. Outputs are compared with the ``Engine`` called directly
(temperature 0, or a fixed seed, gives identical text).
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Callable

import httpx
import ollama
import pytest

import pyengine
from conftest import SERVER_KV_MB as KV_MB
from conftest import SERVER_N_CTX as N_CTX
from support import stats_of, wait_for
from pyengine.chat import format_gemma
from pyengine.gateway.config import Config
from pyengine.server import create_app
from pyengine.server.keep_alive import FOREVER, parse_keep_alive
from pyengine.server.ollama.api import OLLAMA_API_VERSION
from pyengine.server.serve import parse_host, parse_model_args, resolve_address
from pyengine.server.ollama.template import GEMMA_TEMPLATE, TemplateError, render
from pyengine.server.testing import ServerProcess, ServerThread, free_port, wait_until_up

GREEDY = {"temperature": 0, "num_predict": 12}
STATS = ("total_duration", "load_duration", "prompt_eval_count", "prompt_eval_duration",
         "eval_count", "eval_duration")





@pytest.fixture(scope="module")
def server(tiny, long_model):
    app = create_app({"tiny": tiny, "long": long_model}, n_ctx=N_CTX, kv_cache_mb=KV_MB,
                     keep_alive=-1)
    with ServerThread(app) as s:
        yield s


@pytest.fixture
def fresh_server(tiny, long_model) -> Callable[..., ServerThread]:
    """A server of its own for tests that load and unload models."""
    started: list[ServerThread] = []

    def start(**options: Any) -> ServerThread:
        app = create_app({"tiny": tiny, "long": long_model}, n_ctx=N_CTX, kv_cache_mb=KV_MB,
                         **options)
        started.append(ServerThread(app).start())
        return started[-1]

    yield start
    for s in started:
        s.stop()


@pytest.fixture(scope="module")
def client(server) -> ollama.Client:
    return ollama.Client(host=server.url)


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def parse_time(text: str) -> datetime:
    """An RFC 3339 time stamp (``Z`` or an offset) as an aware datetime."""
    assert "T" in text and (text.endswith("Z") or text[-6] in "+-"), text
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def post_lines(url: str, body: dict[str, Any]) -> tuple[httpx.Response, list[bytes]]:
    with httpx.stream("POST", url, json=body, timeout=60) as r:
        return r, list(r.iter_bytes())


# -- small endpoints ----------------------------------------------------------------------


def test_root_version_and_unknown_routes(server):
    r = httpx.get(server.url + "/")
    assert r.status_code == 200 and r.text == "Ollama is running"
    assert httpx.head(server.url + "/").status_code == 200
    assert httpx.get(server.url + "/api/version").json() == {
        "version": OLLAMA_API_VERSION, "pyengine_version": pyengine.__version__}
    r = httpx.get(server.url + "/api/nothing-here")
    assert r.status_code == 404 and isinstance(r.json()["error"], str)
    r = httpx.get(server.url + "/api/generate")  # wrong method
    assert r.status_code == 405 and "error" in r.json()


def test_tags_list_every_model(client, tiny, long_model):
    models = {m.model: m for m in client.list().models}
    assert set(models) == {"tiny:latest", "long:latest"}
    m = models["tiny:latest"]
    assert m.size == tiny.stat().st_size
    assert len(m.digest) == 64 and m.digest != models["long:latest"].digest
    assert m.details.format == "gguf" and m.details.family == "gemma3"
    assert m.details.families == ["gemma3"] and m.details.quantization_level == "Q8_0"
    assert m.details.parameter_size.endswith("M")
    assert abs(m.modified_at.timestamp() - tiny.stat().st_mtime) < 1
    raw = httpx.get(client._client.base_url.join("/api/tags")).json()["models"][0]
    assert raw["name"] == raw["model"]
    parse_time(raw["modified_at"])


def test_show_describes_the_model(server, client, ref):
    for name in ("tiny", "tiny:latest", "TINY"):
        info = client.show(name)
        assert info.details.family == "gemma3" and info.details.quantization_level == "Q8_0"
        assert info.capabilities == ["completion"]
        assert info.modelinfo["general.architecture"] == "gemma3"
        assert info.modelinfo["gemma3.block_count"] == ref.config["n_layer"]
        assert info.modelinfo["tokenizer.ggml.tokens"] == []  # arrays only when verbose
        assert "<start_of_turn>" in info.template and "FROM " in info.modelfile
    verbose = httpx.post(server.url + "/api/show", json={"name": "tiny", "verbose": True}).json()
    assert len(verbose["model_info"]["tokenizer.ggml.tokens"]) == ref.n_vocab
    with pytest.raises(ollama.ResponseError) as e:
        client.show("absent")
    assert e.value.status_code == 404


def test_template_shown_renders_the_engine_prompt(ref):
    # The template /api/show reports is the format the engine applies.
    text = render(GEMMA_TEMPLATE, {"System": "Be brief.", "Prompt": "Hi"})
    assert ref.tokenize(text, special=True) == ref.chat_prompt(
        [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])


# -- generation ---------------------------------------------------------------------------


def test_generate_matches_engine(client, ref):
    expected = ref.chat(user("Hello"), max_tokens=12, temperature=0)
    r = client.generate(model="tiny", prompt="Hello", options=GREEDY)
    assert r.response == expected.text and r.done and r.done_reason == "length"
    assert r.model == "tiny"
    assert r.eval_count == 12 and r.prompt_eval_count == len(ref.chat_prompt(user("Hello")))
    assert r.context[:r.prompt_eval_count] == ref.chat_prompt(user("Hello"))
    assert all(isinstance(getattr(r, k), int) and getattr(r, k) > 0 for k in STATS)
    assert r.total_duration >= r.eval_duration
    parse_time(r.created_at)


def test_generate_stream_matches_engine(client, ref):
    expected = ref.chat(user("Hello"), max_tokens=12, temperature=0).text
    parts = list(client.generate(model="tiny", prompt="Hello", options=GREEDY, stream=True))
    assert all(not p.done for p in parts[:-1]) and parts[-1].done
    assert "".join(p.response for p in parts) == expected
    last = parts[-1]
    assert last.response == "" and last.done_reason == "length" and last.eval_count == 12


def test_generate_raw_system_and_template(client, ref):
    r = client.generate(model="tiny", prompt="Once upon", raw=True, options=GREEDY)
    assert r.response == ref.generate("Once upon", max_tokens=12, temperature=0).text
    assert r.context is None  # raw replies carry no context, as in Ollama

    msgs = [{"role": "system", "content": "Be brief."}] + user("Hello")
    r = client.generate(model="tiny", prompt="Hello", system="Be brief.", options=GREEDY)
    assert r.response == ref.chat(msgs, max_tokens=12, temperature=0).text

    r = client.generate(model="tiny", prompt="Hello", system="S", options=GREEDY,
                        template="{{ if .System }}[{{ .System }}] {{ end }}{{ .Prompt }}:"
                                 "{{ .Response }} ignored")
    assert r.response == ref.generate("[S] Hello:", max_tokens=12, temperature=0).text

    with pytest.raises(ollama.ResponseError) as e:
        client.generate(model="tiny", prompt="x", raw=True, system="S")
    assert e.value.status_code == 400 and "raw mode" in e.value.error


def test_raw_prompt_in_the_chat_format_is_the_chat_request(client, ref):
    """A raw prompt is tokenized as Ollama tokenizes it: one BOS added, turn markers read as
    the control tokens. A conversation rendered in Gemma's format therefore completes exactly
    as the chat request does (what ``pyengine ab --raw`` relies on)."""
    msgs = [{"role": "system", "content": "Be brief."}] + user("Hello there")
    text = format_gemma(msgs)
    ids = ref.tokenize(text, add_bos=True, special=True)
    assert ids == ref.chat_prompt(msgs) and ids.count(2) == 1 and ids.count(105) == 2
    raw = client.generate(model="tiny", prompt=text, raw=True, options=GREEDY)
    chat = client.chat(model="tiny", messages=msgs, options=GREEDY)
    assert raw.response == chat.message.content == ref.generate(
        ids, max_tokens=12, temperature=0).text
    assert raw.prompt_eval_count == chat.prompt_eval_count == len(ids)


def test_prompt_eval_count_is_the_whole_prompt_when_cached(server, client, ref):
    # Several KV blocks (16 positions) long, so a repeat reads them from the prefix cache.
    prompt = "The quick brown fox jumps over the lazy dog, then naps. " * 4
    ids = ref.tokenize(prompt, add_bos=True, special=True)
    assert len(ids) > 48

    def hits() -> int:
        stats = httpx.get(server.url + "/api/pyengine/stats", timeout=10).json()
        return int(stats["tiny:latest"]["prefix_hit_tokens"])

    first = client.generate(model="tiny", prompt=prompt, raw=True, options=GREEDY)
    before = hits()
    again = client.generate(model="tiny", prompt=prompt, raw=True, options=GREEDY)
    assert hits() - before >= 48  # the repeat was served from the cache
    # As in Ollama: caching does not change the count a client sees.
    assert first.prompt_eval_count == again.prompt_eval_count == len(ids)
    assert again.response == first.response


def test_generate_context_continues_a_reply(client, ref):
    first = client.generate(model="tiny", prompt="Hello", options=GREEDY)
    follow = client.generate(model="tiny", prompt="More", context=first.context, options=GREEDY)
    ids = list(first.context) + ref.tokenize(
        "<start_of_turn>user\nMore<end_of_turn>\n<start_of_turn>model\n", add_bos=False,
        special=True)
    assert follow.response == ref.generate(ids, max_tokens=12, temperature=0).text


def test_chat_matches_engine(client, ref):
    msgs = [{"role": "system", "content": "You are terse."}, *user("Hi"),
            {"role": "assistant", "content": "Hello."}, *user("Tell me more")]
    expected = ref.chat(msgs, max_tokens=12, temperature=0)
    r = client.chat(model="tiny", messages=msgs, options=GREEDY)
    assert r.message.role == "assistant" and r.message.content == expected.text
    assert r.done and r.done_reason == "length"
    assert r.prompt_eval_count == len(ref.chat_prompt(msgs)) and r.eval_count == 12

    parts = list(client.chat(model="tiny", messages=msgs, options=GREEDY, stream=True))
    assert "".join(p.message.content for p in parts) == expected.text
    assert parts[-1].done and parts[-1].message.content == "" and parts[-1].eval_count == 12
    assert all(p.message.role == "assistant" for p in parts)


def test_sampling_options_reach_the_engine(client, ref):
    opts = {"temperature": 0.9, "top_k": 20, "top_p": 0.8, "seed": 42, "num_predict": 16,
            "repeat_penalty": 1.1}
    expected = ref.chat(user("Hello"), max_tokens=16, temperature=0.9, top_k=20, top_p=0.8,
                        seed=42, repeat_penalty=1.1).text
    a = client.chat(model="tiny", messages=user("Hello"), options=opts)
    b = client.chat(model="tiny", messages=user("Hello"), options=opts)
    assert a.message.content == b.message.content == expected

    # A stop string cuts the reply before it and ends with done_reason "stop".
    greedy = ref.chat(user("Hello"), max_tokens=12, temperature=0).text
    stop = greedy[len(greedy) // 2:len(greedy) // 2 + 3]
    r = client.chat(model="tiny", messages=user("Hello"), options={**GREEDY, "stop": [stop]})
    assert r.done_reason == "stop" and stop not in r.message.content
    assert greedy.startswith(r.message.content)


def test_options_that_do_not_apply_are_ignored(client, ref):
    expected = ref.chat(user("Hello"), max_tokens=5, temperature=0).text
    ignored = {"num_gpu": 1, "num_thread": 8, "mirostat": 2, "mirostat_eta": 0.1,
               "mirostat_tau": 5.0, "typical_p": 0.7, "numa": False, "use_mmap": True,
               "num_batch": 2, "main_gpu": 0, "penalize_newline": True, "num_keep": 5,
               "tfs_z": 1.0, "low_vram": False, "an_option_nobody_has": "x"}
    r = client.generate(model="tiny", prompt="Hello",
                        options={**ignored, "temperature": 0, "num_predict": 5.0})
    assert r.response == expected and r.eval_count == 5


def test_concurrent_requests_match_engine(server, ref):
    prompts = ["Hello", "Why is the sky blue?", "Count to ten", "Write a poem"]
    expected = [ref.chat(user(p), max_tokens=20, temperature=0).text for p in prompts]

    async def main() -> list[str]:
        c = ollama.AsyncClient(host=server.url)

        async def one(p: str) -> str:
            out = []
            async for part in await c.chat(model="tiny", messages=user(p), stream=True,
                                           options={"temperature": 0, "num_predict": 20}):
                out.append(part.message.content)
            return "".join(out)

        return await asyncio.gather(*(one(p) for p in prompts))

    assert asyncio.run(main()) == expected


# -- the wire format ----------------------------------------------------------------------


@pytest.mark.parametrize("path,body,key", [
    ("/api/generate", {"prompt": "Hello"}, "response"),
    ("/api/chat", {"messages": user("Hello")}, "message"),
])
def test_ndjson_framing_and_final_stats(server, ref, path, body, key):
    r, chunks = post_lines(server.url + path, {"model": "tiny", "options": GREEDY, **body})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/x-ndjson")
    data = b"".join(chunks)
    assert data.endswith(b"\n")
    records = [json.loads(line) for line in data.decode().split("\n")[:-1]]
    assert len(records) >= 2 and all(isinstance(x, dict) for x in records)
    for rec in records[:-1]:
        assert rec["done"] is False and rec["model"] == "tiny"
        parse_time(rec["created_at"])
    last = records[-1]
    assert last["done"] is True and last["done_reason"] == "length"
    for k in STATS:
        assert type(last[k]) is int and last[k] > 0, k
    assert last["prompt_eval_count"] == len(ref.chat_prompt(user("Hello")))
    assert last["eval_count"] == 12
    text = "".join(x[key] if key == "response" else x[key]["content"] for x in records)
    assert text == ref.chat(user("Hello"), max_tokens=12, temperature=0).text


def test_stream_false_is_one_object(server, ref):
    r = httpx.post(server.url + "/api/chat", timeout=60,
                   json={"model": "tiny", "messages": user("Hello"), "stream": False,
                         "options": GREEDY})
    assert r.status_code == 200 and r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert body["done"] is True and body["message"]["role"] == "assistant"
    assert body["message"]["content"] == ref.chat(user("Hello"), max_tokens=12,
                                                  temperature=0).text
    assert all(type(body[k]) is int for k in STATS)


_BAD_GENERATE = [
    b"{not json", b"", b"[1, 2]", b"\xff\xfe",
    {"prompt": 5}, {"prompt": "x", "stream": "yes"}, {"prompt": "x", "options": [1]},
    {"prompt": "x", "options": {"temperature": "hot"}},
    {"prompt": "x", "options": {"num_predict": "5"}},
    {"prompt": "x", "options": {"stop": 3}},
    {"prompt": "x", "options": {"temperature": -1}}, {"prompt": "x", "options": {"top_p": 5}},
    {"prompt": "x", "options": {"top_k": -3}}, {"prompt": "x", "options": {"num_predict": -7}},
    {"prompt": "x", "options": {"repeat_penalty": 0}}, {"prompt": "x", "keep_alive": True},
    {"prompt": "x", "keep_alive": "soon"}, {"prompt": "x", "raw": "yes"},
    {"prompt": "x", "context": ["a"]}, {"prompt": "x", "images": ["aGk="]},
    {"prompt": "x", "template": "{{ .Messages }}"}, {"prompt": "x", "think": True},
    {"prompt": "x", "format": "yaml"}, {"prompt": "x", "format": {"type": "bogus"}},
    {"prompt": "x", "format": {"properties": {"a": {"$ref": "#/nowhere"}}}},
    {"prompt": "x", "suffix": "y"},
    {"prompt": "x", "raw": True, "template": "{{ .Prompt }}"},
    {"prompt": "hello " * 300},  # longer than the context
    {"prompt": "x", "context": [10 ** 6]},  # a token outside the vocabulary
]
_BAD_CHAT = [
    {"messages": "hi"}, {"messages": [{"content": "no role"}]},
    {"messages": [{"role": "user", "content": 3}]},
    {"messages": [{"role": "wizard", "content": "x"}]},
    {"messages": [{"role": "user", "content": "x", "images": ["aGk="]}]},
    {"messages": user("x"), "tools": [{"type": "function", "function": {"name": "bad name!"}}]},
    {"messages": user("x"), "tools": [{"type": "function", "function": {"name": "f",
                                                                       "parameters": 3}}]},
    {"messages": [{"role": "assistant", "content": "", "tool_calls": [{"function": {}}]}]},
    {"messages": user("x"), "options": {"temperature": float("nan")}},
    {"messages": user("hello " * 300)},
]


def _post(url: str, body: Any) -> httpx.Response:
    if isinstance(body, bytes):
        return httpx.post(url, content=body, timeout=60,
                          headers={"content-type": "application/json"})
    return httpx.post(url, content=json.dumps(body), timeout=60)  # no content type, as curl -d


@pytest.mark.parametrize("path,body", [("/api/generate", b) for b in _BAD_GENERATE] +
                         [("/api/chat", b) for b in _BAD_CHAT])
def test_bad_requests_get_400_and_the_server_keeps_serving(server, ref, path, body):
    if isinstance(body, dict):
        body = {"model": "tiny", **body}
    r = _post(server.url + path, body)
    assert r.status_code == 400, r.text
    assert set(r.json()) == {"error"} and r.json()["error"]
    ok = httpx.post(server.url + "/api/generate", timeout=60,
                    json={"model": "tiny", "prompt": "Hello", "stream": False, "options": GREEDY})
    assert ok.status_code == 200
    assert ok.json()["response"] == ref.chat(user("Hello"), max_tokens=12, temperature=0).text


def test_error_messages_follow_ollama(server, client):
    r = httpx.post(server.url + "/api/generate", json={"model": "nope", "prompt": "x"})
    assert r.status_code == 404
    assert r.json() == {"error": 'model "nope" not found, try pulling it first'}
    with pytest.raises(ollama.ResponseError) as e:
        client.chat(model="nope:7b", messages=user("x"))
    assert e.value.status_code == 404 and "nope:7b" in e.value.error
    r = httpx.post(server.url + "/api/chat", json={"messages": user("x")})
    assert r.status_code == 400 and r.json() == {"error": "model is required"}
    r = httpx.post(server.url + "/api/generate", json={"model": "tiny", "prompt": "hi " * 300})
    assert r.status_code == 400 and "context" in r.json()["error"]
    r = httpx.post(server.url + "/api/chat",
                   json={"model": "tiny", "messages": [{"role": "user", "content": "x",
                                                        "images": ["aGk="]}]})
    assert r.json() == {"error": "this model does not support images"}
    r = httpx.post(server.url + "/api/generate", content=b"")
    assert r.status_code == 400 and r.json() == {"error": "missing request body"}


# -- disconnects --------------------------------------------------------------------------

LONG_REPLY = {"temperature": 0, "num_predict": -1, "num_ctx": 32768}


def test_disconnect_mid_stream_cancels_and_frees_kv(server):
    httpx.post(server.url + "/api/generate", timeout=60,
               json={"model": "long", "prompt": "", "keep_alive": -1})  # load
    before = stats_of(server, "long:latest")
    with httpx.stream("POST", server.url + "/api/generate", timeout=60,
                      json={"model": "long", "prompt": "Hello", "options": LONG_REPLY}) as r:
        lines = r.iter_lines()
        for _ in range(3):
            assert json.loads(next(lines))["done"] is False
        assert stats_of(server, "long:latest")["running"] == 1
    # Leaving the block closed the connection with the reply unfinished.
    assert wait_for(lambda: stats_of(server, "long:latest")["running"] == 0)
    after = stats_of(server, "long:latest")
    assert after["cancelled"] == before["cancelled"] + 1
    assert after["kv_pages_used"] == 0 and after["waiting"] == 0
    assert httpx.get(server.url + "/").status_code == 200


def test_disconnect_before_a_non_streamed_reply_cancels(server):
    httpx.post(server.url + "/api/generate", timeout=60,
               json={"model": "long", "prompt": "", "keep_alive": -1})
    before = stats_of(server, "long:latest")
    body = json.dumps({"model": "long", "prompt": "Hello", "stream": False,
                       "options": LONG_REPLY}).encode()
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST /api/generate HTTP/1.1\r\nHost: x\r\nContent-Type: "
                     b"application/json\r\nContent-Length: " + str(len(body)).encode() +
                     b"\r\n\r\n" + body)
        assert wait_for(lambda: stats_of(server, "long:latest")["running"] == 1)
    assert wait_for(lambda: stats_of(server, "long:latest")["running"] == 0)
    after = stats_of(server, "long:latest")
    assert after["cancelled"] == before["cancelled"] + 1
    assert after["kv_pages_used"] == 0


# -- loading and unloading ----------------------------------------------------------------


def loaded(c: ollama.Client) -> dict[str, Any]:
    return {m.model: m for m in c.ps().models}


def test_keep_alive_loads_and_unloads(fresh_server):
    s = fresh_server()
    c = ollama.Client(host=s.url)
    assert loaded(c) == {}
    r = c.generate(model="tiny", keep_alive="10m")
    assert r.done and r.done_reason == "load" and r.response == ""
    m = loaded(c)["tiny:latest"]
    expected = datetime.now(timezone.utc) + timedelta(minutes=10)
    assert abs((m.expires_at - expected).total_seconds()) < 30
    assert m.context_length == N_CTX and m.size_vram == 0 and m.size > 0
    assert m.details.family == "gemma3"

    r = c.generate(model="tiny", keep_alive=0)
    assert r.done_reason == "unload" and loaded(c) == {}

    r = c.chat(model="tiny", messages=[])
    assert r.done_reason == "load" and r.message.role == "assistant"
    assert "tiny:latest" in loaded(c)
    r = c.chat(model="tiny", messages=[], keep_alive=0)
    assert r.done_reason == "unload" and loaded(c) == {}


def test_keep_alive_expiry(fresh_server):
    s = fresh_server()
    c = ollama.Client(host=s.url)
    c.generate(model="tiny", prompt="Hi", options={"num_predict": 2}, keep_alive=0)
    assert wait_for(lambda: loaded(c) == {}, timeout=5)  # 0: unloaded when the reply ends

    c.generate(model="tiny", prompt="Hi", options={"num_predict": 2}, keep_alive="700ms")
    assert "tiny:latest" in loaded(c)
    assert wait_for(lambda: loaded(c) == {}, timeout=10)

    c.generate(model="tiny", keep_alive=-1)
    assert loaded(c)["tiny:latest"].expires_at.year > 2100
    raw = httpx.get(s.url + "/api/ps").json()["models"][0]
    parse_time(raw["expires_at"])


def test_default_keep_alive_applies(fresh_server):
    s = fresh_server(keep_alive=0.5)
    c = ollama.Client(host=s.url)
    c.generate(model="tiny", prompt="Hi", options={"num_predict": 2})
    assert "tiny:latest" in loaded(c)
    assert wait_for(lambda: loaded(c) == {}, timeout=10)


def test_max_loaded_evicts_the_least_recently_used(fresh_server):
    s = fresh_server(max_loaded=1)
    c = ollama.Client(host=s.url)
    c.generate(model="tiny", prompt="Hi", options={"num_predict": 2})
    assert set(loaded(c)) == {"tiny:latest"}
    r = c.generate(model="long", prompt="Hi", options={"num_predict": 2})
    assert r.done and set(loaded(c)) == {"long:latest"}
    assert r.load_duration > 0


def test_a_model_that_cannot_run_is_reported_once_and_never_served(tmp_path, tiny, caplog):
    bad = tmp_path / "bad.gguf"
    bad.write_bytes(b"GGUF" + b"\x03\x00\x00\x00" + b"\xff" * 16)
    reason = str(pytest.raises(pyengine.PyEngineError, pyengine.Engine, bad).value)
    app = create_app({"bad": bad, "tiny": tiny}, n_ctx=N_CTX, kv_cache_mb=KV_MB,
                     config=Config(ollama_host="http://127.0.0.1:9"))  # no fallback answers
    # Checked at start, from the file's metadata: reported once, with the reason.
    assert app.state.models.unavailable("bad") == reason
    reports = [r for r in caplog.records if "cannot run on this server" in r.getMessage()]
    assert len(reports) == 1 and reason in reports[0].getMessage()
    with ServerThread(app) as s:
        for _ in range(2):  # every request: the reason, never a fresh load attempt
            r = httpx.post(s.url + "/api/generate", json={"model": "bad", "prompt": "x"})
            assert r.status_code == 503 and reason in r.json()["error"]
            r = httpx.post(s.url + "/v1/chat/completions", json={
                "model": "bad", "messages": [{"role": "user", "content": "x"}]})
            assert r.status_code == 503 and reason in r.json()["error"]["message"]
        assert app.state.models.loaded() == []
        assert len([r for r in caplog.records if "cannot run on this server" in r.getMessage()]) == 1
        assert [m["name"] for m in httpx.get(s.url + "/api/tags").json()["models"]] == \
            ["tiny:latest"]
        assert [m["id"] for m in httpx.get(s.url + "/v1/models").json()["data"]] == ["tiny:latest"]
        assert httpx.get(s.url + "/health").json() == {"status": "degraded",
                                                        "unavailable": {"bad:latest": reason}}
        r = httpx.post(s.url + "/api/generate", timeout=60,
                       json={"model": "tiny", "prompt": "x", "stream": False,
                             "options": {"num_predict": 2}})
        assert r.status_code == 200 and r.json()["eval_count"] == 2


# -- the command line ---------------------------------------------------------------------


def test_serve_subprocess(pyengine_server, tiny, ref):
    s = pyengine_server({"tiny": tiny, "gemma3:1b": tiny},
                        args=["--ctx", str(N_CTX), "--kv-cache-mb", str(KV_MB)])
    c = ollama.Client(host=s.url)
    assert [m.model for m in c.list().models] == ["tiny:latest", "gemma3:1b"]
    expected = ref.chat(user("Hello"), max_tokens=12, temperature=0).text
    for name in ("tiny", "gemma3:1b"):
        assert c.generate(model=name, prompt="Hello", options=GREEDY).response == expected
    assert loaded(c)["tiny:latest"].context_length == N_CTX


def test_server_process_reports_a_failed_start(tmp_path):
    with pytest.raises(RuntimeError, match="model not found"):
        ServerProcess({"x": tmp_path / "missing.gguf"}, timeout=60).start()


def test_serve_reads_pyengine_host_and_names_models_by_stem(tiny, tmp_path):
    port = free_port()
    env = {**os.environ, "PYENGINE_HOST": f"http://127.0.0.1:{port}"}
    # Run outside the source tree so the installed package (with its extension) is imported.
    proc = subprocess.Popen([sys.executable, "-m", "pyengine", "serve", str(tiny)], env=env,
                            cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_until_up(f"http://127.0.0.1:{port}", timeout=60, proc=proc)
        names = [m["name"] for m in
                 httpx.get(f"http://127.0.0.1:{port}/api/tags").json()["models"]]
        assert names == [f"{tiny.stem}:latest"]
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_serve_errors_are_clean(tmp_path):
    def serve(*args: str, **env: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "pyengine", "serve", *args],
                              capture_output=True, text=True, timeout=120,
                              env={**os.environ, **env}, cwd=tmp_path)

    proc = serve(str(tmp_path / "missing.gguf"), "--port", str(free_port()))
    assert proc.returncode == 1 and "model not found" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = serve(PYENGINE_HOST="127.0.0.1:notaport")
    assert proc.returncode == 1 and "bad port" in proc.stderr


# -- parsing helpers ----------------------------------------------------------------------


def test_parse_host():
    assert parse_host(None) == ("127.0.0.1", 11435)
    assert parse_host(":8080") == ("127.0.0.1", 8080)
    assert parse_host("0.0.0.0:1234") == ("0.0.0.0", 1234)
    assert parse_host("http://example.com:99") == ("example.com", 99)
    assert parse_host("localhost") == ("localhost", 11435)
    assert parse_host("[::1]:7") == ("::1", 7)
    for bad in ("h:x", "h:70000", "ftp://h:1", "[::1"):
        with pytest.raises(ValueError):
            parse_host(bad)
    assert resolve_address(None, None, {"PYENGINE_HOST": ":9"}) == ("127.0.0.1", 9)
    assert resolve_address("0.0.0.0", 5, {"PYENGINE_HOST": "h:9"}) == ("0.0.0.0", 5)


def test_parse_keep_alive():
    assert parse_keep_alive(None, 300.0) == 300.0
    assert parse_keep_alive(10) == 10.0 and parse_keep_alive(0) == 0.0
    assert parse_keep_alive(-1) == FOREVER and parse_keep_alive("-1m") == FOREVER
    assert parse_keep_alive("5m") == 300.0 and parse_keep_alive("1h30m") == 5400.0
    assert parse_keep_alive("250ms") == 0.25 and parse_keep_alive("0") == 0.0
    assert parse_keep_alive("30") == 30.0
    for bad in ("soon", "5 m", "", "m", True, [1], float("nan")):
        with pytest.raises(ValueError):
            parse_keep_alive(bad)


def test_template_subset():
    values = {"System": "", "Prompt": "P"}
    assert render("{{ .Prompt }}!", values) == "P!"
    assert render("{{ if .System }}S{{ else }}none{{ end }} {{- .Prompt -}} .", values) == "noneP."
    assert render("a{{/* note */}}b{{ .Response }}c", values) == "ab"
    for bad in ("{{ .Messages }}", "{{ if .System }}x", "{{ end }}", "{{ range .X }}{{ end }}"):
        with pytest.raises(TemplateError):
            render(bad, values)


def test_parse_model_args(tmp_path):
    assert parse_model_args(["a=/m/x.gguf", "/m/gemma-3.gguf"]) == {
        "a": Path("/m/x.gguf"), "gemma-3": Path("/m/gemma-3.gguf")}
    with pytest.raises(ValueError):
        parse_model_args(["/a/x.gguf", "/b/x.gguf"])


def test_a_model_too_large_for_free_memory_is_refused_this_time(tiny, monkeypatch):
    from pyengine import pool as models_module

    app = create_app({"tiny": tiny}, n_ctx=N_CTX, kv_cache_mb=KV_MB,
                     config=Config(ollama_host="http://127.0.0.1:9"))  # no fallback answers
    with ServerThread(app) as s:
        monkeypatch.setattr(models_module, "available_memory", lambda: 1 << 20)  # 1 MiB free
        r = httpx.post(s.url + "/api/generate", json={"model": "tiny", "prompt": "x"})
        assert r.status_code == 503 and "not enough memory" in r.json()["error"]
        assert app.state.models.loaded() == [] and app.state.models.unavailable("tiny") is None
        monkeypatch.setattr(models_module, "available_memory", lambda: None)  # unknown: try
        r = httpx.post(s.url + "/api/generate", timeout=60, json={
            "model": "tiny", "prompt": "x", "stream": False, "options": {"num_predict": 2}})
        assert r.status_code == 200 and r.json()["eval_count"] == 2
