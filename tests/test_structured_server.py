"""Structured output through both APIs, driven by the official clients against a server that
runs the real Gemma 3 270M file: Ollama's ``format`` (a pydantic model's JSON Schema, "json"),
OpenAI's ``response_format`` (``parse()`` with a pydantic model, ``json_object``), streamed
and not; bad formats get a 400 in each API's shape and the server keeps serving."""

from __future__ import annotations

import json

import httpx
import jsonschema
import ollama
import openai
import pytest
from pydantic import BaseModel

from pyengine.server import create_app
from pyengine.server.testing import ServerThread

MODEL = "gemma3:270m"
CHECKER = jsonschema.Draft202012Validator.FORMAT_CHECKER
QUESTION = [{"role": "user", "content": "What is the capital of France? Answer in JSON."}]


class Capital(BaseModel):
    country: str
    city: str
    population_millions: float


class Answer(BaseModel):
    answer: int
    confidence: float


@pytest.fixture(scope="module")
def server(real_gguf):
    with ServerThread(create_app({MODEL: real_gguf}, n_ctx=2048, kv_cache_mb=128,
                                 keep_alive=-1)) as s:
        yield s


@pytest.fixture(scope="module")
def ollama_client(server) -> ollama.Client:
    return ollama.Client(host=server.url, timeout=120)


@pytest.fixture(scope="module")
def openai_client(server) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "/v1", api_key="unused", max_retries=0,
                         timeout=120)


def test_ollama_chat_with_a_pydantic_schema(ollama_client):
    schema = Capital.model_json_schema()
    for temperature in (0, 1):
        r = ollama_client.chat(model=MODEL, messages=QUESTION, format=schema,
                               options={"temperature": temperature, "num_predict": 96,
                                        "seed": 3})
        jsonschema.validate(json.loads(r.message.content), schema, format_checker=CHECKER)
        Capital.model_validate_json(r.message.content)
        assert r.done_reason == "stop"


def test_ollama_streamed_chat_and_generate_with_json(ollama_client):
    parts = [c.message.content for c in ollama_client.chat(
        model=MODEL, messages=QUESTION, format=Answer.model_json_schema(), stream=True,
        options={"temperature": 0.8, "num_predict": 64, "seed": 1})]
    assert len(parts) > 2  # streamed as it is made
    Answer.model_validate_json("".join(parts))
    r = ollama_client.generate(model=MODEL, prompt="List two colours as JSON.", format="json",
                               options={"temperature": 0, "num_predict": 64})
    assert isinstance(json.loads(r.response), dict)


def test_openai_parse_with_a_pydantic_model(openai_client):
    completion = openai_client.chat.completions.parse(
        model=MODEL, messages=QUESTION, response_format=Capital, temperature=0.7, seed=5,
        max_completion_tokens=96)
    message = completion.choices[0].message
    assert isinstance(message.parsed, Capital)
    assert completion.choices[0].finish_reason == "stop"


def test_openai_json_object_streamed(openai_client):
    stream = openai_client.chat.completions.create(
        model=MODEL, messages=QUESTION, response_format={"type": "json_object"}, stream=True,
        temperature=0, max_tokens=64)
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert isinstance(json.loads(text), dict)


def test_bad_formats_get_400_in_each_shape_and_the_server_keeps_serving(server,
                                                                         openai_client):
    bad = {"type": "object", "properties": {"a": {"type": "nonsense"}}}
    r = httpx.post(server.url + "/api/chat", json={"model": MODEL, "messages": QUESTION,
                                                   "format": bad}, timeout=60)
    assert r.status_code == 400 and "nonsense" in r.json()["error"]
    with pytest.raises(openai.BadRequestError) as e:
        openai_client.chat.completions.create(
            model=MODEL, messages=QUESTION, max_tokens=16,
            response_format={"type": "json_schema", "json_schema": {"name": "x", "schema": bad}})
    assert e.value.body["param"] == "response_format"
    r = httpx.post(server.url + "/api/generate", json={"model": MODEL, "prompt": "x",
                                                       "format": "json", "stream": False,
                                                       "options": {"num_predict": 2}},
                   timeout=60)
    assert r.status_code == 400 and "raise max_tokens" in r.json()["error"]
    ok = openai_client.chat.completions.create(model=MODEL, messages=QUESTION, max_tokens=8,
                                               temperature=0)
    assert ok.choices[0].message.content


def get_weather(city: str, unit: str = "C") -> str:
    """The current weather in a city.

    Args:
        city: The city's name.
        unit: C or F.
    """
    return f"18 {unit} and sunny in {city}"


WEATHER_TOOL = {"type": "function", "function": {
    "name": "get_weather", "description": "The current weather in a city.",
    "parameters": {"type": "object", "required": ["city"],
                   "properties": {"city": {"type": "string"},
                                  "unit": {"type": "string", "enum": ["C", "F"]}}}}}
WEATHER_QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]


def test_ollama_tools_from_a_python_function_and_the_result_back(ollama_client):
    r = ollama_client.chat(model=MODEL, messages=WEATHER_QUESTION, tools=[get_weather],
                           options={"temperature": 0, "num_predict": 96})
    # Small models answer in text or call: whichever it is, it is well formed.
    for call in r.message.tool_calls or []:
        assert call.function.name == "get_weather"
        assert isinstance(call.function.arguments["city"], str)
    assert bool(r.message.tool_calls) != bool(r.message.content)
    # The call and its result back, as an agent loop sends them: a text answer may follow.
    follow = ollama_client.chat(model=MODEL, tools=[get_weather], messages=WEATHER_QUESTION + [
        {"role": "assistant", "content": "", "tool_calls": [
            {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}]},
        {"role": "tool", "tool_name": "get_weather", "content": get_weather("Paris")}],
        options={"temperature": 0, "num_predict": 48})
    assert follow.done and (follow.message.content or follow.message.tool_calls)


def test_openai_required_tool_call_whole_and_streamed(openai_client):
    r = openai_client.chat.completions.create(
        model=MODEL, messages=WEATHER_QUESTION, tools=[WEATHER_TOOL], tool_choice="required",
        temperature=0.8, seed=2, max_tokens=96)
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls" and choice.message.content is None
    call = choice.message.tool_calls[0]
    assert call.type == "function" and call.id.startswith("call_")
    jsonschema.validate(json.loads(call.function.arguments),
                        WEATHER_TOOL["function"]["parameters"])
    chunks = list(openai_client.chat.completions.create(
        model=MODEL, messages=WEATHER_QUESTION, tools=[WEATHER_TOOL], tool_choice="required",
        temperature=0.8, seed=2, max_tokens=96, stream=True))
    deltas = [c.choices[0].delta for c in chunks if c.choices]
    assert not any(d.content for d in deltas)  # the call's JSON is not streamed as text
    streamed = [tc for d in deltas for tc in (d.tool_calls or [])]
    assert [tc.function.arguments for tc in streamed] == [call.function.arguments]
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "tool_calls"
    # The call answered, by id as OpenAI's clients send it.
    follow = openai_client.chat.completions.create(
        model=MODEL, tools=[WEATHER_TOOL], temperature=0, max_tokens=32,
        messages=WEATHER_QUESTION + [choice.message.model_dump(exclude_none=True),
                                     {"role": "tool", "tool_call_id": call.id,
                                      "content": "18 C and sunny"}])
    assert follow.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_litellm_structured_output_through_both_apis(server, monkeypatch):
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no fetch from the network
    import litellm
    for model, base in ((f"ollama_chat/{MODEL}", server.url), (f"openai/{MODEL}",
                                                               server.url + "/v1")):
        r = litellm.completion(model=model, api_base=base, api_key="unused", messages=QUESTION,
                               response_format=Capital, temperature=0, max_tokens=96)
        Capital.model_validate_json(r.choices[0].message.content)


def test_a_dspy_program_with_the_json_adapter(server):
    """A typed DSPy signature through its JSON adapter. DSPy 3.4 asks for a JSON Schema only
    from servers it knows support one: this server is declared as DSPy documents it for an
    OpenAI-compatible endpoint (``register_provider`` with ``response_schema=True``)."""
    import dspy
    from dspy.lm15 import (AccessPolicy, ModelSupport, OpenAIChatCompat, ProviderDefinition,
                           register_provider, unregister_provider)

    class Solve(dspy.Signature):
        """Answer the arithmetic question."""

        question: str = dspy.InputField()
        answer: int = dspy.OutputField()
        confidence: float = dspy.OutputField()

    base = server.url + "/v1"
    register_provider(ProviderDefinition.chat(
        AccessPolicy(provider="pyengine", env_keys=("PYENGINE_API_KEY",), base_url=base),
        compat=OpenAIChatCompat()), supports=ModelSupport(response_schema=True), replace=True)
    try:
        lm = dspy.LM(f"pyengine/{MODEL}", api_base=base, api_key="unused", temperature=0,
                     max_tokens=200, cache=False)
        with dspy.context(lm=lm, adapter=dspy.JSONAdapter()):
            prediction = dspy.Predict(Solve)(question="What is 2 + 3?")
        assert isinstance(prediction.answer, int) and isinstance(prediction.confidence, float)
    finally:
        unregister_provider("pyengine")
