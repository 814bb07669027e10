"""OpenAI's API under ``/v1``, driven over real HTTP by the official ``openai`` client.

The client checks that replies parse as OpenAI's (and raises its typed errors on error
statuses); raw HTTP checks the event-stream framing and error bodies. Texts are compared with
the ``Engine`` called directly: temperature 0, or a fixed seed, gives identical text.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from typing import Any

import httpx
import openai
import pytest

from conftest import SERVER_KV_MB as KV_MB
from conftest import SERVER_N_CTX as N_CTX
from support import stats_of, wait_for
from pyengine import Engine
from pyengine.server import create_app
from pyengine.server.openai.api import Reply, _events, owned_by
from pyengine.server.openai.sse import DONE, sse_event
from pyengine.server.testing import ServerThread

GREEDY: dict[str, Any] = {"temperature": 0, "max_tokens": 12}
MESSAGES = [{"role": "system", "content": "You are terse."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello."},
            {"role": "user", "content": "Tell me more"}]





@pytest.fixture(scope="module")
def server(tiny):
    with ServerThread(create_app({"tiny": tiny}, n_ctx=N_CTX, kv_cache_mb=KV_MB,
                                 keep_alive=-1)) as s:
        yield s


@pytest.fixture(scope="module")
def client(server) -> openai.OpenAI:
    # No retries: every error must surface as it was answered.
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0,
                         timeout=60)


def user(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def greedy(ref: Engine, messages: list[dict[str, str]], n: int = 12) -> str:
    return ref.chat(messages, max_tokens=n, temperature=0).text


def sse_data(body: str) -> list[str]:
    """The ``data:`` payloads of an event stream, checking its framing on the way."""
    assert body.endswith("\n\n")
    events = body.split("\n\n")[:-1]
    assert all(e.startswith("data: ") and "\n" not in e for e in events), events
    return [e[len("data: "):] for e in events]


# -- chat completions ---------------------------------------------------------------------


def test_chat_completion_matches_engine(client, ref):
    r = client.chat.completions.create(model="tiny", messages=MESSAGES, **GREEDY)
    assert r.object == "chat.completion" and r.id.startswith("chatcmpl-")
    assert r.model == "tiny" and abs(r.created - time.time()) < 60
    assert len(r.choices) == 1
    choice = r.choices[0]
    assert choice.index == 0 and choice.finish_reason == "length"
    assert choice.message.role == "assistant"
    assert choice.message.content == greedy(ref, MESSAGES)
    assert r.usage.prompt_tokens == len(ref.chat_prompt(MESSAGES))
    assert r.usage.completion_tokens == 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + 12


def test_usage_counts_the_whole_prompt_when_cached(server, client, ref):
    # Several KV blocks (16 positions) long, so a repeat reads them from the prefix cache.
    messages = user("Pack my box with five dozen liquor jugs, said the sphinx. " * 4)
    n = len(ref.chat_prompt(messages))
    first = client.chat.completions.create(model="tiny", messages=messages, **GREEDY)
    again = client.chat.completions.create(model="tiny", messages=messages, **GREEDY)
    # OpenAI's meaning: prompt_tokens is the whole prompt, cached_tokens the part of it
    # that came from the cache.
    assert first.usage.prompt_tokens == again.usage.prompt_tokens == n
    assert again.usage.prompt_tokens_details.cached_tokens >= 48
    assert again.usage.total_tokens == n + again.usage.completion_tokens
    assert again.choices[0].message.content == first.choices[0].message.content


def test_chat_stream_matches_engine_and_non_streamed(client, ref):
    whole = client.chat.completions.create(model="tiny", messages=MESSAGES, **GREEDY)
    chunks = list(client.chat.completions.create(model="tiny", messages=MESSAGES, stream=True,
                                                 **GREEDY))
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert len({c.created for c in chunks}) == 1
    assert all(c.object == "chat.completion.chunk" and c.model == "tiny" for c in chunks)
    assert all(c.usage is None for c in chunks)  # no usage chunk unless asked for
    first, last = chunks[0].choices[0], chunks[-1].choices[0]
    assert first.delta.role == "assistant" and first.delta.content == ""
    assert all(c.choices[0].delta.role is None for c in chunks[1:])
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])
    assert last.finish_reason == "length" and last.delta.content is None
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == whole.choices[0].message.content == greedy(ref, MESSAGES)
    assert len(chunks) >= 4  # role, text pieces, finish


def test_stream_include_usage(client, ref):
    chunks = list(client.chat.completions.create(
        model="tiny", messages=user("Hello"), stream=True,
        stream_options={"include_usage": True}, **GREEDY))
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == []
    assert all(c.usage is None for c in chunks[:-1])
    assert chunks[-2].choices[0].finish_reason == "length"
    assert usage_chunk.usage.prompt_tokens == len(ref.chat_prompt(user("Hello")))
    assert usage_chunk.usage.completion_tokens == 12
    assert usage_chunk.usage.total_tokens == usage_chunk.usage.prompt_tokens + 12
    whole = client.chat.completions.create(model="tiny", messages=user("Hello"), **GREEDY)
    assert (whole.usage.prompt_tokens, whole.usage.completion_tokens) == \
        (usage_chunk.usage.prompt_tokens, usage_chunk.usage.completion_tokens)


def test_event_stream_framing(server, ref):
    body = {"model": "tiny", "messages": user("Hello"), "stream": True, **GREEDY}
    r = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60)
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    assert r.headers["cache-control"] == "no-cache"
    data = sse_data(r.text)
    assert data[-1] == DONE
    events = [json.loads(d) for d in data[:-1]]
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert events[-1]["choices"][0] == {"index": 0, "delta": {}, "logprobs": None,
                                        "finish_reason": "length"}
    assert all("usage" not in e for e in events)
    text = "".join(e["choices"][0]["delta"].get("content", "") for e in events)
    assert text == greedy(ref, user("Hello"))


def test_content_parts_and_developer_role(client, ref):
    expected = greedy(ref, [{"role": "system", "content": "Be brief."},
                            {"role": "user", "content": "Hello\nthere"}])
    r = client.chat.completions.create(
        model="tiny", **GREEDY,
        messages=[{"role": "developer", "content": [{"type": "text", "text": "Be brief."}]},
                  {"role": "user", "content": [{"type": "text", "text": "Hello"},
                                               {"type": "text", "text": "there"}]}])
    assert r.choices[0].message.content == expected


def test_stop_strings(client, ref):
    text = greedy(ref, user("Hello"))
    stop = text[len(text) // 2:len(text) // 2 + 3]
    for value in (stop, [stop, "never appears"]):
        r = client.chat.completions.create(model="tiny", messages=user("Hello"), stop=value,
                                           **GREEDY)
        content = r.choices[0].message.content
        assert r.choices[0].finish_reason == "stop" and stop not in content
        assert text.startswith(content) and len(content) < len(text)
    chunks = list(client.chat.completions.create(model="tiny", messages=user("Hello"),
                                                 stop=stop, stream=True, **GREEDY))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == content
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_max_tokens_ends_with_length(client, ref):
    for field in ("max_tokens", "max_completion_tokens"):
        r = client.chat.completions.create(model="tiny", messages=user("Hello"), temperature=0,
                                           **{field: 5})
        assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 5
        assert r.choices[0].message.content == greedy(ref, user("Hello"), 5)
    # Both given: the newer name wins.
    r = client.chat.completions.create(model="tiny", messages=user("Hello"), temperature=0,
                                       max_tokens=9, max_completion_tokens=3)
    assert r.usage.completion_tokens == 3


def test_sampling_fields_reach_the_engine(client, ref):
    fields = {"temperature": 0.9, "top_p": 0.8, "seed": 42, "max_tokens": 16,
              "presence_penalty": 0.5, "frequency_penalty": 0.3}
    expected = ref.chat(user("Hello"), max_tokens=16, temperature=0.9, top_p=0.8, seed=42,
                        presence_penalty=0.5, frequency_penalty=0.3).text
    a = client.chat.completions.create(model="tiny", messages=user("Hello"), **fields)
    b = client.chat.completions.create(model="tiny", messages=user("Hello"), **fields)
    assert a.choices[0].message.content == b.choices[0].message.content == expected
    # Left out, temperature and top_p are 1.0 (Ollama's OpenAI defaults), top_k the engine's.
    r = client.chat.completions.create(model="tiny", messages=user("Hello"), seed=7,
                                       max_tokens=16)
    assert r.choices[0].message.content == ref.chat(
        user("Hello"), max_tokens=16, temperature=1.0, top_p=1.0, top_k=40, seed=7).text
    # top_p 0 keeps only the most likely token: greedy, whatever the temperature.
    r = client.chat.completions.create(model="tiny", messages=user("Hello"), top_p=0,
                                       temperature=1.5, seed=3, max_tokens=12)
    assert r.choices[0].message.content == greedy(ref, user("Hello"))


def test_harmless_fields_are_ignored(client, ref):
    r = client.chat.completions.create(
        model="tiny", messages=user("Hello"), user="someone", logit_bias={}, n=1,
        response_format={"type": "text"}, store=False, metadata={"k": "v"},
        tool_choice="none", reasoning_effort="none",
        extra_body={"a_field_nobody_has": [1, 2]}, **GREEDY)
    assert r.choices[0].message.content == greedy(ref, user("Hello"))


def test_concurrent_streams_match_engine(server, ref):
    prompts = ["Hello", "Why is the sky blue?", "Count to ten"]
    expected = [greedy(ref, user(p), 16) for p in prompts]

    async def main() -> list[str]:
        c = openai.AsyncOpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0)

        async def one(p: str) -> str:
            stream = await c.chat.completions.create(model="tiny", messages=user(p),
                                                     stream=True, temperature=0,
                                                     max_tokens=16)
            return "".join([ch.choices[0].delta.content or "" async for ch in stream])

        try:
            return await asyncio.gather(*(one(p) for p in prompts))
        finally:
            await c.close()

    assert asyncio.run(main()) == expected


# -- completions --------------------------------------------------------------------------


def test_completions_match_engine(client, ref):
    # As in Ollama, the prompt is a user turn of the chat format.
    expected = greedy(ref, user("Once upon"))
    r = client.completions.create(model="tiny", prompt="Once upon", **GREEDY)
    assert r.object == "text_completion" and r.id.startswith("cmpl-") and r.model == "tiny"
    assert r.choices[0].text == expected and r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens == len(ref.chat_prompt(user("Once upon")))
    assert r.usage.completion_tokens == 12
    assert r.usage.total_tokens == r.usage.prompt_tokens + 12
    listed = client.completions.create(model="tiny", prompt=["Once upon"], **GREEDY)
    assert listed.choices[0].text == expected

    chunks = list(client.completions.create(model="tiny", prompt="Once upon", stream=True,
                                            stream_options={"include_usage": True},
                                            **GREEDY))
    assert all(c.object == "text_completion" and c.id == chunks[0].id for c in chunks)
    assert "".join(c.choices[0].text for c in chunks[:-1]) == expected
    assert chunks[-2].choices[0].finish_reason == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 12
    stop = expected[3:6]
    r = client.completions.create(model="tiny", prompt="Once upon", stop=[stop], **GREEDY)
    assert r.choices[0].finish_reason == "stop" and expected.startswith(r.choices[0].text)
    assert stop not in r.choices[0].text


# -- models -------------------------------------------------------------------------------


def test_models_list_and_retrieve(client, tiny):
    models = list(client.models.list())
    assert [m.id for m in models] == ["tiny:latest"]
    m = models[0]
    assert m.object == "model" and m.owned_by == "library"
    assert m.created == int(tiny.stat().st_mtime)
    for name in ("tiny", "tiny:latest", "TINY"):
        got = client.models.retrieve(name)
        assert got.id == name and got.created == m.created and got.owned_by == "library"
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("absent")
    assert e.value.body["code"] == "model_not_found"


def test_owned_by_is_the_namespace():
    assert owned_by("gemma3:1b") == "library"
    assert owned_by("someone/gemma3:1b") == "someone"
    assert owned_by("hf.co/org/model:q8") == "org"


# -- errors -------------------------------------------------------------------------------


def test_unknown_model_is_not_found(server, client):
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="nope", messages=user("x"))
    assert e.value.status_code == 404
    assert e.value.body == {"message": 'model "nope" not found, try pulling it first',
                            "type": "invalid_request_error", "param": "model",
                            "code": "model_not_found"}
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="nope:7b", prompt="x", stream=True)
    r = httpx.post(server.url + "/v1/chat/completions", json={"model": "nope",
                                                               "messages": user("x")})
    assert r.status_code == 404 and set(r.json()) == {"error"}


_BAD_CHAT: list[tuple[dict[str, Any], str | None]] = [
    ({"n": 2}, "n"), ({"temperature": -1}, "temperature"), ({"temperature": "hot"}, "temperature"),
    ({"top_p": 5}, "top_p"), ({"max_tokens": 0}, "max_tokens"),
    ({"max_completion_tokens": -1}, "max_completion_tokens"), ({"stop": [1]}, "stop"),
    ({"seed": "x"}, "seed"), ({"frequency_penalty": 1000}, "frequency_penalty"),
    ({"messages": []}, "messages"), ({"messages": "hi"}, "messages"),
    ({"messages": [{"role": "wizard", "content": "x"}]}, "messages"),
    ({"messages": [{"role": "user", "content": 3}]}, "messages"),
    ({"messages": [{"role": "user"}]}, "messages"),
    ({"messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "data:image/png;base64,aGk="}}]}]},
     "messages"),
    ({"tools": [{"type": "function", "function": {}}]}, "tools"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}],
      "tool_choice": {"type": "function", "function": {"name": "g"}}}, "tool_choice"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}], "tool_choice": "always"},
     "tool_choice"),
    ({"messages": [{"role": "assistant", "content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{oops"}}]}]},
     "messages"),
    ({"response_format": {"type": "xml"}}, "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "x",
                                                                 "schema": {"type": "bogus"}}}},
     "response_format"),
    ({"response_format": {"type": "json_schema", "json_schema": "x"}}, "response_format"),
    ({"logprobs": True}, "logprobs"), ({"logit_bias": {"1": 5}}, "logit_bias"),
    ({"reasoning_effort": "high"}, "reasoning_effort"), ({"stream": "yes"}, "stream"),
    ({"messages": user("hello " * 300)}, None),  # longer than the context
]
_BAD_COMPLETION: list[tuple[dict[str, Any], str | None]] = [
    ({"suffix": "end"}, "suffix"), ({"prompt": ["a", "b"]}, "prompt"),
    ({"prompt": [1, 2, 3]}, "prompt"), ({"prompt": 5}, "prompt"), ({"echo": True}, "echo"),
    ({"best_of": 2}, "best_of"), ({"logprobs": 2}, "logprobs"), ({"n": 3}, "n"),
    ({"max_tokens": -1}, "max_tokens"),
]


@pytest.mark.parametrize("kind,fields,param",
                         [("chat", f, p) for f, p in _BAD_CHAT] +
                         [("completion", f, p) for f, p in _BAD_COMPLETION])
def test_bad_params_get_400_and_the_server_keeps_serving(client, ref, kind, fields, param):
    with pytest.raises(openai.BadRequestError) as e:
        if kind == "chat":
            client.chat.completions.create(**{"model": "tiny", "messages": user("x"), **fields})
        else:
            client.completions.create(**{"model": "tiny", "prompt": "x", **fields})
    assert e.value.status_code == 400
    body = e.value.body
    assert body["type"] == "invalid_request_error" and body["message"]
    assert body["param"] == param and body["code"] is None
    r = client.chat.completions.create(model="tiny", messages=user("Hello"), **GREEDY)
    assert r.choices[0].message.content == greedy(ref, user("Hello"))


@pytest.mark.parametrize("content", [b"{not json", b"", b"[1, 2]", b'{"messages": []}'])
def test_malformed_bodies_get_400_in_openai_shape(server, content):
    r = httpx.post(server.url + "/v1/chat/completions", content=content, timeout=60,
                   headers={"content-type": "application/json"})
    assert r.status_code == 400
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["type"] == "invalid_request_error"


def test_engine_failure_mid_stream_is_an_error_event():
    closed = []

    async def records():
        try:
            yield {"text": "a"}
            yield {"error": "engine failed"}
            yield {"text": "never sent"}
        finally:
            closed.append(True)

    async def collect() -> list[Any]:
        return [e async for e in _events(Reply(chat=True, model="m"), records())]

    events = asyncio.run(collect())
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert events[1]["choices"][0]["delta"] == {"content": "a"}
    assert events[2] == {"error": {"message": "engine failed", "type": "server_error",
                                   "param": None, "code": None}}
    assert len(events) == 3 and closed == [True]  # no [DONE]; the generation is closed


def test_sse_event_framing():
    assert sse_event({"a": "é"}) == 'data: {"a":"é"}\n\n'.encode()
    assert sse_event(DONE) == b"data: [DONE]\n\n"


# -- disconnects --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def long_server(long_model):
    # The request's context is the server's: make it long enough for an unfinished reply.
    with ServerThread(create_app({"long": long_model}, n_ctx=32768, kv_cache_mb=KV_MB,
                                 keep_alive=-1)) as s:
        yield s


def test_disconnect_mid_stream_cancels_and_frees_kv(long_server):
    c = openai.OpenAI(base_url=long_server.url + "/v1", api_key="unused", max_retries=0)
    c.models.retrieve("long")
    c.chat.completions.create(model="long", messages=user("Hi"), max_tokens=1)  # load
    before = stats_of(long_server, "long:latest")
    assert before["kv_pages_used"] == 0
    stream = c.chat.completions.create(model="long", messages=user("Hello"), temperature=0,
                                       stream=True)
    chunks = iter(stream)
    for _ in range(4):
        assert next(chunks).choices[0].finish_reason is None
    assert stats_of(long_server, "long:latest")["running"] == 1
    stream.close()  # the connection closes with the reply unfinished
    assert wait_for(lambda: stats_of(long_server, "long:latest")["running"] == 0)
    after = stats_of(long_server, "long:latest")
    assert after["cancelled"] == before["cancelled"] + 1
    assert after["kv_pages_used"] == 0 and after["waiting"] == 0
    r = c.chat.completions.create(model="long", messages=user("Hi"), max_tokens=3)
    assert r.choices[0].finish_reason == "length" and r.usage.completion_tokens == 3


def test_disconnect_before_a_non_streamed_reply_cancels(long_server):
    httpx.post(long_server.url + "/v1/completions", timeout=60,
               json={"model": "long", "prompt": "Hi", "max_tokens": 1})  # load
    before = stats_of(long_server, "long:latest")
    body = json.dumps({"model": "long", "prompt": "Hello", "temperature": 0}).encode()
    port = int(long_server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: "
                     b"application/json\r\nContent-Length: " + str(len(body)).encode() +
                     b"\r\n\r\n" + body)
        assert wait_for(lambda: stats_of(long_server, "long:latest")["running"] == 1)
    assert wait_for(lambda: stats_of(long_server, "long:latest")["running"] == 0)
    after = stats_of(long_server, "long:latest")
    assert after["cancelled"] == before["cancelled"] + 1
    assert after["kv_pages_used"] == 0
