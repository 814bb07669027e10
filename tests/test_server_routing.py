"""Tier names and ``auto`` in the server, resolved by the tier router, and the fallback chain
for models the server does not run or cannot load now (the memory check), on both APIs and for
embeddings too: a second pyengine process plays the Ollama server."""

from __future__ import annotations

import json
import time

import httpx
import ollama
import pytest

from pyengine import Engine
from pyengine.gateway.config import Config
from pyengine.server.app import create_app
from pyengine.server.testing import ServerProcess, ServerThread

USER = [{"role": "user", "content": "Hi"}]
GREEDY = {"temperature": 0, "num_predict": 6}



@pytest.fixture(scope="module")
def upstream(tiny):
    """The Ollama server of the fallback chain, with the primary tier's model."""
    with ServerProcess({"gemma3n:e2b": tiny}, args=["--threads", "1", "--ctx", "512"]) as s:
        yield s


@pytest.fixture
def front(tiny, upstream, tmp_path, monkeypatch):
    """A server running the fast and alternative tiers' models itself."""
    monkeypatch.setenv("PYENGINE_LEDGER", str(tmp_path / "ledger.sqlite"))
    app = create_app({"gemma3:1b": tiny, "gemma3:4b": tiny}, n_ctx=512, kv_cache_mb=16,
                     config=Config(ollama_host=upstream.url))
    with ServerThread(app) as s:
        yield s


def loaded(server) -> set[str]:
    return set(httpx.get(server.url + "/api/pyengine/stats").json())


def test_tier_names_route_to_the_tiers_models(front, tiny):
    c = ollama.Client(host=front.url)
    r = c.chat(model="fast", messages=USER, options=GREEDY)
    assert r.model == "fast" and loaded(front) == {"gemma3:1b"}
    with Engine(tiny) as eng:
        assert r.message.content == eng.chat(USER, temperature=0, max_tokens=6).text
    c.chat(model="alternative", messages=USER, options=GREEDY)
    assert loaded(front) == {"gemma3:1b", "gemma3:4b"}


def test_auto_uses_the_task_hints(front):
    c = ollama.Client(host=front.url)
    c.generate(model="auto", prompt="Write a sort function",
               options={**GREEDY, "task_type": "code_generation", "estimated_tokens": 500,
                        "priority": 6})
    assert loaded(front) == {"gemma3:4b"}  # code generation -> alternative tier
    r = httpx.post(front.url + "/api/chat", json={"model": "auto", "messages": USER,
                                                  "options": {"priority": 42}})
    assert r.status_code == 400 and "priority" in r.json()["error"]


def test_models_not_served_here_take_the_fallback_chain(front, tiny):
    c = ollama.Client(host=front.url)
    r = c.chat(model="primary", messages=USER, options=GREEDY, stream=False)
    with Engine(tiny) as eng:
        want = eng.chat(USER, temperature=0, max_tokens=6).text
    assert r.message.content == want
    body = httpx.post(front.url + "/api/chat", timeout=60, json={
        "model": "gemma3n:e2b", "messages": USER, "options": GREEDY, "stream": False}).json()
    assert body["pyengine"]["backend"] == "ollama" and body["pyengine"]["model"] == "gemma3n:e2b"
    assert body["message"]["content"] == want and body["eval_count"] > 0
    streamed = "".join(part.response for part in c.generate(model="gemma3n:e2b", prompt="Hi",
                                                             options=GREEDY, stream=True))
    assert streamed == want
    assert "gemma3n:e2b" not in loaded(front)  # served upstream, not here
    with pytest.raises(ollama.ResponseError) as e:  # nobody has the quality tier's model
        c.chat(model="quality", messages=USER, options=GREEDY)
    assert e.value.status_code == 404 and "gemma3n:e4b" in e.value.error


def test_a_server_that_falls_back_to_itself_does_not_loop(tiny, tmp_path, monkeypatch):
    monkeypatch.setenv("PYENGINE_LEDGER", str(tmp_path / "ledger.sqlite"))
    app = create_app({"tiny": tiny}, n_ctx=512, kv_cache_mb=16)
    with ServerThread(app) as s:
        app.state.config = Config(ollama_host=s.url)  # OLLAMA_HOST pointing at this server
        t0 = time.time()
        r = httpx.post(s.url + "/api/chat", timeout=60,
                       json={"model": "nope", "messages": USER, "stream": False})
        assert r.status_code == 404 and time.time() - t0 < 30
        assert r.json() == {"error": 'model "nope" not found, try pulling it first'}


def test_openai_api_takes_tier_names(front, tiny):
    import openai

    oa = openai.OpenAI(base_url=front.url + "/v1", api_key="unused", max_retries=0)
    r = oa.chat.completions.create(model="alternative", messages=USER, max_tokens=4,
                                   temperature=0)
    with Engine(tiny) as eng:
        want = eng.chat(USER, temperature=0, max_tokens=4).text
    assert r.choices[0].message.content == want and loaded(front) == {"gemma3:4b"}
    with pytest.raises(openai.NotFoundError):  # the quality tier's model is not served here
        oa.chat.completions.create(model="quality", messages=USER, max_tokens=4)


def test_the_openai_api_falls_back_like_the_ollama_api(front, tiny):
    import openai

    oa = openai.OpenAI(base_url=front.url + "/v1", api_key="unused", max_retries=0)
    with Engine(tiny) as eng:
        want = eng.chat(USER, temperature=0, max_tokens=6).text
    # "primary" (gemma3n:e2b) is not served here: the upstream Ollama answers, as on /api/chat.
    r = oa.chat.completions.create(model="primary", messages=USER, max_tokens=6, temperature=0)
    assert r.choices[0].message.content == want and r.model == "primary"
    assert r.usage.completion_tokens == 6 and "gemma3n:e2b" not in loaded(front)
    events = list(oa.chat.completions.create(model="gemma3n:e2b", messages=USER, max_tokens=6,
                                             temperature=0, stream=True))
    texts = [e.choices[0].delta.content for e in events if e.choices and e.choices[0].delta.content]
    assert "".join(texts) == want and len(texts) > 1  # streamed as the fallback made it
    assert events[-1].choices[0].finish_reason == "length"
    c = oa.completions.create(model="gemma3n:e2b", prompt="Hi", max_tokens=6, temperature=0)
    assert c.choices[0].text == want


def test_a_fallback_stream_streams(front, tiny):
    with Engine(tiny) as eng:
        want = eng.chat(USER, temperature=0, max_tokens=24).text
    parts = list(ollama.Client(host=front.url).chat(
        model="gemma3n:e2b", messages=USER, options={"temperature": 0, "num_predict": 24},
        stream=True))
    pieces = [p.message.content for p in parts if not p.done]
    # One record per piece the upstream sent, not the whole reply in one.
    assert "".join(pieces) == want and len(pieces) > 1 and all(pieces)
    assert parts[-1].done and parts[-1].eval_count == 24


def test_a_fallback_that_dies_mid_stream_ends_the_stream_with_an_error(long_model, tmp_path,
                                                                         monkeypatch):
    import openai

    monkeypatch.setenv("PYENGINE_LEDGER", str(tmp_path / "ledger.sqlite"))
    for api in ("ollama", "openai"):
        # A reply as long as the context (32768 positions): far from done when it is killed.
        with ServerProcess({"gemma3n:e2b": long_model},
                           args=["--threads", "1", "--ctx", "32768"]) as upstream:
            app = create_app({"gemma3:1b": long_model}, n_ctx=512, kv_cache_mb=16,
                             config=Config(ollama_host=upstream.url))
            with ServerThread(app) as s:
                got: list[str] = []
                if api == "ollama":
                    stream = ollama.Client(host=s.url).chat(
                        model="gemma3n:e2b", messages=USER, stream=True,
                        options={"temperature": 0, "num_predict": -1})
                    with pytest.raises(ollama.ResponseError) as e:
                        for part in stream:
                            got.append(part.message.content)
                            if len(got) == 3:
                                upstream.proc.kill()
                            assert not part.done
                else:
                    oa = openai.OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0)
                    stream = oa.chat.completions.create(model="gemma3n:e2b", messages=USER,
                                                        stream=True)
                    with pytest.raises(openai.APIError) as e:
                        for event in stream:
                            got.append(event.choices[0].delta.content or "")
                            if len(got) == 3:
                                upstream.proc.kill()
                            assert event.choices[0].finish_reason is None
                assert len(got) >= 3 and "mid-stream" in str(e.value)
                # The front keeps serving: its own model, and the chain's verdict next time.
                r = httpx.post(s.url + "/api/chat", timeout=60, json={
                    "model": "gemma3:1b", "messages": USER, "stream": False,
                    "options": GREEDY})
                assert r.status_code == 200 and r.json()["eval_count"] == 6


def test_every_served_call_is_in_the_cost_ledger(front):
    c = ollama.Client(host=front.url)
    c.chat(model="gemma3:1b", messages=USER, options=GREEDY)  # here
    list(c.generate(model="gemma3:1b", prompt="Hi", options=GREEDY, stream=True))  # streamed
    c.chat(model="gemma3n:e2b", messages=USER, options=GREEDY)  # the upstream Ollama
    import openai

    openai.OpenAI(base_url=front.url + "/v1", api_key="unused", max_retries=0) \
        .chat.completions.create(model="gemma3:1b", messages=USER, max_tokens=6)
    ledger = front.app.state.ledger
    rep = ledger.report()
    calls = {(g["backend"], g["paid"]): (g["calls"], g["completion_tokens"], g["cost_usd"])
             for g in rep["groups"]}
    assert calls == {("native", False): (3, 18, 0.0), ("ollama", False): (1, 6, 0.0)}
    assert rep["local_calls"] == 4 and rep["paid_calls"] == 0


def test_a_model_refused_by_the_memory_check_falls_back_on_both_apis(tiny, upstream, tmp_path,
                                                                    monkeypatch, caplog):
    import openai

    from pyengine import pool

    monkeypatch.setenv("PYENGINE_LEDGER", str(tmp_path / "ledger.sqlite"))
    # This server has the primary tier's model too, but not the memory to load it now.
    app = create_app({"gemma3n:e2b": tiny}, n_ctx=512, kv_cache_mb=16,
                     config=Config(ollama_host=upstream.url))
    with Engine(tiny) as eng:
        want = eng.chat(USER, temperature=0, max_tokens=6).text
    with ServerThread(app) as s:
        monkeypatch.setattr(pool, "available_memory", lambda: 1 << 20)  # 1 MiB free
        c = ollama.Client(host=s.url)
        with caplog.at_level("WARNING", logger="pyengine.gateway.chain"):
            body = httpx.post(s.url + "/api/chat", timeout=60, json={
                "model": "gemma3n:e2b", "messages": USER, "options": GREEDY,
                "stream": False}).json()
        assert body["pyengine"]["backend"] == "ollama" and body["message"]["content"] == want
        assert any("not enough memory" in r.getMessage() for r in caplog.records)
        streamed = "".join(p.response for p in c.generate(model="primary", prompt="Hi",
                                                          options=GREEDY, stream=True))
        assert streamed == want
        oa = openai.OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0)
        r = oa.chat.completions.create(model="gemma3n:e2b", messages=USER, max_tokens=6,
                                       temperature=0)
        assert r.choices[0].message.content == want and r.usage.completion_tokens == 6
        events = list(oa.chat.completions.create(model="primary", messages=USER, max_tokens=6,
                                                 temperature=0, stream=True))
        assert "".join(e.choices[0].delta.content or "" for e in events if e.choices) == want
        assert loaded(s) == set() and app.state.models.unavailable("gemma3n:e2b") is None
        calls = {g["backend"]: g["calls"] for g in app.state.ledger.report()["groups"]}
        assert calls == {"ollama": 4}

        # Memory again: the same requests are served here, by the server's own native path.
        monkeypatch.setattr(pool, "available_memory", lambda: None)
        body = httpx.post(s.url + "/api/chat", timeout=60, json={
            "model": "gemma3n:e2b", "messages": USER, "options": GREEDY,
            "stream": False}).json()
        assert "pyengine" not in body and body["message"]["content"] == want
        assert body["load_duration"] > 0 and loaded(s) == {"gemma3n:e2b"}


def test_the_memory_refusal_keeps_its_503_when_no_fallback_serves(tiny, monkeypatch):
    import openai

    from pyengine import pool

    app = create_app({"tiny": tiny}, n_ctx=512, kv_cache_mb=16,
                     config=Config(ollama_host="http://127.0.0.1:9"))  # no fallback answers
    with ServerThread(app) as s:
        monkeypatch.setattr(pool, "available_memory", lambda: 1 << 20)
        for path, body in (("/api/chat", {"messages": USER, "stream": True}),
                           ("/api/embed", {"input": "Hi"}),
                           ("/api/embeddings", {"prompt": "Hi"})):
            r = httpx.post(s.url + path, json={"model": "tiny", **body})
            assert r.status_code == 503 and "not enough memory" in r.json()["error"], path
        oa = openai.OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0)
        with pytest.raises(openai.InternalServerError, match="not enough memory"):
            oa.chat.completions.create(model="tiny", messages=USER, stream=True)
        with pytest.raises(openai.InternalServerError, match="not enough memory"):
            oa.embeddings.create(model="tiny", input="Hi")
        assert loaded(s) == set()


def test_embeddings_take_the_same_route(tiny, front, upstream):
    import numpy as np
    import openai

    texts = ["The quick brown fox", "jumps over the lazy dog"]
    with Engine(tiny, n_ctx=512) as eng:
        want = np.array([eng.embed(t) for t in texts])
    c = ollama.Client(host=front.url)
    # A tier this server runs: embedded here.
    here = c.embed(model="fast", input=texts)
    assert np.allclose(here.embeddings, want, atol=1e-6) and loaded(front) == {"gemma3:1b"}
    # A model (and a tier) it does not run: the fallback server embeds it.
    there = c.embed(model="gemma3n:e2b", input=texts)
    assert np.allclose(there.embeddings, want, atol=1e-6)
    assert there.prompt_eval_count == here.prompt_eval_count
    legacy = c.embeddings(model="primary", prompt=texts[1])
    assert np.allclose(legacy.embedding, want[1], atol=1e-6)
    cut = c.embed(model="primary", input=texts[0], dimensions=16)
    v = np.array(cut.embeddings[0])
    assert v.shape == (16,) and abs(np.linalg.norm(v) - 1) < 1e-5
    oa = openai.OpenAI(base_url=front.url + "/v1", api_key="unused", max_retries=0)
    res = oa.embeddings.create(model="primary", input=texts)
    assert np.allclose([d.embedding for d in res.data], want, atol=1e-6)
    assert res.usage.prompt_tokens == here.prompt_eval_count
    assert "gemma3n:e2b" not in loaded(front)
    rows = {(g["backend"], g["task_type"]): g["calls"]
            for g in front.app.state.ledger.report()["groups"]}
    assert rows.get(("ollama", "embedding")) == 4
    # Nobody has the quality tier's model: the same 404 as chat, on both APIs.
    with pytest.raises(ollama.ResponseError) as e:
        c.embed(model="quality", input="x")
    assert e.value.status_code == 404 and "gemma3n:e4b" in e.value.error
    with pytest.raises(openai.NotFoundError):
        oa.embeddings.create(model="quality", input="x")


def test_formats_and_tools_pass_through_the_fallback_chain(front):
    """A model served upstream gets the request's format and tools in Ollama's words, and its
    calls come back in each API's shape."""
    import jsonschema
    import openai

    schema = {"type": "object", "required": ["a"], "additionalProperties": False,
              "properties": {"a": {"type": "integer", "minimum": 3, "maximum": 9}}}
    tool = {"type": "function", "function": {"name": "add", "parameters": {
        "type": "object", "required": ["x"], "properties": {"x": {"type": "integer"}}}}}
    c = ollama.Client(host=front.url)
    for temperature in (0, 1):
        r = c.chat(model="gemma3n:e2b", messages=USER, format=schema,
                   options={"temperature": temperature, "num_predict": 32, "seed": 1})
        jsonschema.validate(json.loads(r.message.content), schema)
    body = httpx.post(front.url + "/api/chat", timeout=60, json={
        "model": "gemma3n:e2b", "messages": USER, "tools": [tool], "stream": False,
        "options": {"temperature": 1, "num_predict": 48, "seed": 2}}).json()
    assert body["pyengine"]["backend"] == "ollama"
    for call in body["message"].get("tool_calls") or []:
        assert call["function"]["name"] == "add"
        assert isinstance(call["function"]["arguments"]["x"], int)
    oa = openai.OpenAI(base_url=front.url + "/v1", api_key="unused", max_retries=0)
    r = oa.chat.completions.create(model="gemma3n:e2b", messages=USER, tools=[tool],
                                   max_tokens=48, temperature=1, seed=3)
    assert "gemma3n:e2b" not in loaded(front)  # served upstream, not here
    for call in r.choices[0].message.tool_calls or []:
        assert call.function.name == "add"
        assert isinstance(json.loads(call.function.arguments)["x"], int)


def test_a_fallbacks_tool_calls_reach_both_apis(tiny, tmp_path, monkeypatch):
    """The chain sends the tools upstream in Ollama's words and relays the call it gets back:
    Ollama's message.tool_calls, OpenAI's tool_calls (whole and streamed)."""
    import openai

    from fake_ollama import CALL_ARGUMENTS, fake_ollama

    monkeypatch.setenv("PYENGINE_LEDGER", str(tmp_path / "ledger.sqlite"))
    tool = {"type": "function", "function": {"name": "add", "parameters": {
        "type": "object", "properties": {"x": {"type": "integer"}}}}}
    received: list[dict] = []
    with ServerThread(fake_ollama(received)) as upstream_fake, ServerThread(create_app(
            {"gemma3:1b": tiny}, n_ctx=512, kv_cache_mb=16,
            config=Config(ollama_host=upstream_fake.url))) as s:
        r = ollama.Client(host=s.url).chat(model="remote:1b", messages=USER, tools=[tool])
        assert [(c.function.name, c.function.arguments) for c in r.message.tool_calls] == \
            [("add", CALL_ARGUMENTS)]
        assert received[-1]["tools"][0]["function"]["name"] == "add"
        oa = openai.OpenAI(base_url=s.url + "/v1", api_key="unused", max_retries=0)
        whole = oa.chat.completions.create(model="remote:1b", messages=USER, tools=[tool])
        assert whole.choices[0].finish_reason == "tool_calls"
        assert json.loads(whole.choices[0].message.tool_calls[0].function.arguments) == \
            CALL_ARGUMENTS
        chunks = list(oa.chat.completions.create(model="remote:1b", messages=USER,
                                                 tools=[tool], stream=True))
        deltas = [tc for c in chunks if c.choices for tc in (c.choices[0].delta.tool_calls or [])]
        assert [json.loads(d.function.arguments) for d in deltas] == [CALL_ARGUMENTS]
        assert received[-1]["tools"][0]["function"]["name"] == "add"
