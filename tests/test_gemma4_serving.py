"""Gemma 4 chat and tool calls end to end: the engine and both APIs serving the synthetic Gemma 4
model (tiny-4), whose vocabulary holds Gemma 4's markup as the real one does. The engine picks the
Gemma 4 format by the model's architecture, the grammar makes replies Gemma 4's own calls, and
Ollama's and OpenAI's APIs return them as the same ``tool_calls`` shapes as for Gemma 3.

The model's weights are random and it samples at temperature 1, so only the grammar makes its
calls well formed: each check fails loudly if a mask is lost.
"""

from __future__ import annotations

import json

import jsonschema
import ollama
import openai
import pytest

from pyengine import Engine, _core
from pyengine.chat_gemma4 import format_gemma4
from pyengine.server import create_app
from pyengine.server.testing import ServerThread

MODEL = "gemma4:tiny"
CHECKER = jsonschema.Draft202012Validator.FORMAT_CHECKER
WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "required": ["city"], "additionalProperties": False,
                   "properties": {"city": {"type": "string", "maxLength": 24},
                                  "unit": {"type": "string", "enum": ["C", "F"]},
                                  "days": {"type": "integer", "minimum": 1, "maximum": 7}}}}}
TIME = {"type": "function", "function": {
    "name": "get_time", "parameters": {"type": "object", "required": ["zone"],
                                       "properties": {"zone": {"type": "string",
                                                               "pattern": "^[A-Z]{3}$"}}}}}
TOOLS = {"get_weather": WEATHER, "get_time": TIME}
QUESTION = [{"role": "system", "content": "You help with the weather."},
            {"role": "user", "content": "Weather in Paris?"}]


@pytest.fixture(scope="module")
def gemma4(make_model):
    return make_model("tiny-4", "f32")


@pytest.fixture(scope="module")
def engine(gemma4):
    with Engine(gemma4, n_ctx=1024, kv_cache_mb=64) as e:
        yield e


def check_calls(calls, allowed) -> None:
    assert calls
    for c in calls:
        jsonschema.validate(c.arguments, allowed[c.name]["function"]["parameters"],
                            format_checker=CHECKER)


def test_the_engine_speaks_gemma4(engine):
    assert engine.arch == "gemma4"
    ids = engine.chat_prompt(QUESTION)
    assert ids == engine.tokenize(format_gemma4(QUESTION), add_bos=True, special=True)
    assert ids[:2] == [2, 105]  # BOS, then <|turn> as its token


def test_required_and_named_calls_are_gemma4_calls(engine):
    for seed in range(4):
        c = engine.chat(QUESTION, tools=list(TOOLS.values()), tool_choice="required",
                        max_tokens=64, temperature=1.0, seed=seed)
        assert c.text == "" and c.done_reason == "stop"
        check_calls(c.tool_calls, TOOLS)
        assert engine.detokenize(c.tokens[:1]) == "<|tool_call>"  # the model's own syntax
    for seed in range(3):
        c = engine.chat(QUESTION, tools=list(TOOLS.values()), parallel_tool_calls=False,
                        tool_choice={"type": "function", "function": {"name": "get_time"}},
                        max_tokens=48, temperature=1.0, seed=seed)
        assert [t.name for t in c.tool_calls] == ["get_time"]
        check_calls(c.tool_calls, TOOLS)


def test_auto_streams_text_or_holds_back_calls(engine):
    for seed in range(6):
        chunks = list(engine.chat_stream(QUESTION, tools=[WEATHER], max_tokens=24,
                                         temperature=1.0, seed=seed))
        completion = chunks[-1].completion
        streamed = "".join(ch.text for ch in chunks)
        if completion.tool_calls:
            assert streamed == "" and completion.text == ""
            check_calls(completion.tool_calls, TOOLS)
        else:
            assert streamed == completion.text and "<|tool_call>" not in completion.text


def test_a_call_and_its_result_in_the_history(engine):
    history = QUESTION + [
        {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "tool_name": "get_weather", "content": "18 C, sunny"}]
    c = engine.chat(history, tools=[WEATHER], max_tokens=16, temperature=0)
    assert c.prompt_eval_count + c.cached_tokens == len(engine.tokenize(
        format_gemma4(history, [WEATHER]), add_bos=True, special=True))


# -- both APIs ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def server(gemma4):
    with ServerThread(create_app({MODEL: gemma4}, n_ctx=1024, kv_cache_mb=64,
                                 keep_alive=-1)) as s:
        yield s


@pytest.fixture(scope="module")
def ollama_client(server) -> ollama.Client:
    return ollama.Client(host=server.url, timeout=120)


@pytest.fixture(scope="module")
def openai_client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0,
                         timeout=120)


def prompt_tokens(engine, messages, tools=None) -> int:
    return len(engine.tokenize(format_gemma4(messages, tools), add_bos=True, special=True))


def test_ollama_chat_with_tools_in_gemma4s_format(ollama_client, engine):
    # Ollama's API has no tool_choice: under "auto" this random model answers in text on
    # these seeds, so what is checked is the prompt (Gemma 4's format, the tool declared) and
    # that a reply is text or calls, never the call syntax as text. The calls' own shape is
    # checked with required and named calls on the engine and the OpenAI API.
    for seed in range(6):
        r = ollama_client.chat(model=MODEL, messages=QUESTION, tools=[WEATHER],
                               options={"temperature": 1, "num_predict": 32, "seed": seed})
        # The server rendered Gemma 4's format with the tool declared.
        assert r.prompt_eval_count == prompt_tokens(engine, QUESTION, [WEATHER])
        for call in r.message.tool_calls or []:  # Ollama's shape: arguments as an object
            jsonschema.validate(dict(call.function.arguments),
                                WEATHER["function"]["parameters"])
        assert bool(r.message.tool_calls) != bool(r.message.content)
        assert not (r.message.content or "").startswith("<|tool_call>")
    follow = ollama_client.chat(model=MODEL, tools=[WEATHER], messages=QUESTION + [
        {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "tool_name": "get_weather", "content": "18 C"}],
        options={"temperature": 0, "num_predict": 8})
    assert follow.done and follow.prompt_eval_count == prompt_tokens(engine, QUESTION + [
        {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "tool_name": "get_weather", "content": "18 C"}], [WEATHER])


def test_show_gives_gemma4s_template_and_stop(ollama_client):
    from pyengine.chat import format_chat
    from pyengine.server.ollama.template import render

    shown = ollama_client.show(MODEL)
    assert shown.parameters.split() == ["stop", '"<turn|>"']
    assert '<|turn>' in shown.modelfile and 'PARAMETER stop "<turn|>"' in shown.modelfile
    # The template renders the prompt the server builds.
    for system in ("", "Be brief."):
        msgs = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": "Hello"}]
        assert render(shown.template, {"System": system, "Prompt": "Hello"}) == \
            format_chat(msgs, "gemma4")


def test_ollama_generate_uses_gemma4s_format(ollama_client, engine):
    r = ollama_client.generate(model=MODEL, prompt="Hello", system="Be brief.",
                               options={"temperature": 0, "num_predict": 4})
    assert r.prompt_eval_count == prompt_tokens(
        engine, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}])


def test_openai_required_call_whole_and_streamed(openai_client, engine):
    r = openai_client.chat.completions.create(
        model=MODEL, messages=QUESTION, tools=[WEATHER, TIME], tool_choice="required",
        temperature=1.0, seed=2, max_tokens=64)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    assert r.usage.prompt_tokens == prompt_tokens(engine, QUESTION, [WEATHER, TIME])
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.id.startswith("call_")
    jsonschema.validate(json.loads(call.function.arguments),
                        TOOLS[call.function.name]["function"]["parameters"])
    chunks = list(openai_client.chat.completions.create(
        model=MODEL, messages=QUESTION, tools=[WEATHER, TIME], tool_choice="required",
        temperature=1.0, seed=2, max_tokens=64, stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert not any(d.content for d in deltas)  # the call's markup is not streamed as text
    streamed = [tc for d in deltas for tc in (d.tool_calls or [])]
    assert [tc.function.arguments for tc in streamed] == \
        [c.function.arguments for c in choice.message.tool_calls]
    # The call answered by id, as OpenAI's clients send it (arguments as JSON text).
    follow = openai_client.chat.completions.create(
        model=MODEL, tools=[WEATHER, TIME], temperature=0, max_tokens=8,
        messages=QUESTION + [choice.message.model_dump(exclude_none=True),
                             {"role": "tool", "tool_call_id": call.id, "content": "18 C"}])
    assert follow.choices[0].finish_reason in ("stop", "length", "tool_calls")
    native = QUESTION + [
        {"role": "assistant", "tool_calls": [
            {"id": c.id, "function": {"name": c.function.name,
                                      "arguments": json.loads(c.function.arguments)}}
            for c in choice.message.tool_calls]},
        {"role": "tool", "tool_call_id": call.id, "content": "18 C"}]
    assert follow.usage.prompt_tokens == prompt_tokens(engine, native, [WEATHER, TIME])


def test_openai_completions_use_gemma4s_format(openai_client, engine):
    r = openai_client.completions.create(model=MODEL, prompt="Once upon", max_tokens=4,
                                         temperature=0)
    assert r.usage.prompt_tokens == prompt_tokens(engine,
                                                  [{"role": "user", "content": "Once upon"}])


def test_bad_tool_messages_are_a_400(openai_client):
    with pytest.raises(openai.BadRequestError):
        openai_client.chat.completions.create(
            model=MODEL, tools=[WEATHER], max_tokens=4, messages=QUESTION + [
                {"role": "assistant", "tool_calls": [{"id": "c", "type": "function", "function": {
                    "name": "get_weather", "arguments": "{not json"}}]}])
