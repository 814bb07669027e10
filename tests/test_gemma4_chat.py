"""Gemma 4's chat format (``chat_gemma4.format_gemma4``) and the per-architecture dispatch
(``chat.format_chat``).

The oracle is Google's own chat template for Gemma 4 (the 31B-it template llama.cpp ships in
``models/templates``), rendered with jinja2 as Hugging Face's ``apply_chat_template`` renders
it: every message list below must come out character for character the same. The template
comes with the pinned llama.cpp source (the ``llama_cpp_tree`` fixture); hand-written
expectations taken from it check the renderer too.
"""

from __future__ import annotations

import json

import pytest

from pyengine.chat import format_chat, format_gemma, native_tools
from pyengine.chat_gemma4 import declare_tool, format_gemma4, write_value

TEMPLATE = "models/templates/google-gemma-4-31B-it.jinja"
Q = '<|"|>'
GEN = "<|turn>model\n<|channel>thought\n<channel|>"  # the generation prompt, thinking off


@pytest.fixture(scope="module")
def jinja(llama_cpp_tree):
    """Renders Google's Gemma 4 template as Hugging Face does (sandboxed, trim_blocks,
    lstrip_blocks), without BOS (the tokenizer adds it)."""
    import jinja2  # noqa: F401  (a dependency of the test extra)
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    path = llama_cpp_tree / TEMPLATE
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=["jinja2.ext.loopcontrols"])
    template = env.from_string(path.read_text())

    def render(messages, tools=None, add_generation_prompt=True, enable_thinking=False):
        kw = {"messages": messages, "bos_token": "", "add_generation_prompt": add_generation_prompt,
              "enable_thinking": enable_thinking}
        if tools is not None:
            kw["tools"] = tools
        try:
            return template.render(**kw)
        except jinja2.TemplateError as e:  # pragma: no cover - a failing case names itself
            raise AssertionError(f"the template refused {messages!r}: {e}") from None

    return render


WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city.",
    "parameters": {"type": "object", "required": ["city"], "properties": {
        "city": {"type": "string", "description": "City name"},
        "unit": {"type": "string", "enum": ["C", "F"]},
        "days": {"type": "integer"},
        "tags": {"type": "array", "items": {"type": "string"}},
        "opts": {"type": "object", "properties": {"deep": {"type": "boolean"}},
                 "required": ["deep"]},
        "maybe": {"type": "string", "nullable": True}}}}}
TIME = {"type": "function", "function": {  # no description
    "name": "get_time", "parameters": {"type": "object",
                                       "properties": {"zone": {"type": "string"}}}}}
PING = {"type": "function", "function": {"name": "ping", "description": "Ping."}}  # no parameters
UNTYPED = {"type": "function", "function": {  # parameters without a type
    "name": "untyped", "description": "x", "parameters": {"properties": {"a": {"type": "number"}}}}}
BULK = {"type": "function", "function": {
    "name": "bulk", "description": "Many.", "response": {"type": "object", "description": "Rows"},
    "parameters": {"type": "object", "required": ["rows"], "properties": {
        "rows": {"type": "array", "description": "Rows", "items": {
            "type": "object", "required": ["a"],
            "properties": {"a": {"type": "string", "enum": ["x", "y"]}, "B": {"type": "integer"}}}},
        "grid": {"type": "array", "items": {"type": "array", "items": {"type": "number"}}},
        "maybe": {"type": ["string", "null"], "description": "union"},
        "free": {"type": "object", "additionalProperties": {"type": "string"}},
        "kinds": {"type": "array", "items": {"type": ["string", "integer"], "description": "k"}}}}}}
TOOLSETS = {"no tools": None, "one tool": [WEATHER], "odd tools": [WEATHER, TIME, PING, UNTYPED],
            "nested schemas": [BULK, WEATHER]}


def call(name, args, id_=None):
    return {"id": id_, "function": {"name": name, "arguments": args}} if id_ else \
        {"function": {"name": name, "arguments": args}}


CONVERSATIONS = {
    "user": [{"role": "user", "content": "  Hi  "}],
    "system and user": [{"role": "system", "content": " Be brief. "},
                        {"role": "user", "content": "Hi"}],
    "developer": [{"role": "developer", "content": "D"}, {"role": "user", "content": "u"}],
    "system only": [{"role": "system", "content": "S"}],
    "multi-turn": [{"role": "system", "content": "S"}, {"role": "user", "content": "a"},
                   {"role": "assistant", "content": " b <|channel>thought\nxx<channel|>c "},
                   {"role": "user", "content": "d"}],
    "two assistant messages": [{"role": "user", "content": "a"},
                               {"role": "assistant", "content": "b"},
                               {"role": "assistant", "content": "c"}],
    "model role": [{"role": "user", "content": "u"}, {"role": "model", "content": "m"},
                   {"role": "model", "content": "n"}],
    "text parts": [{"role": "user", "content": [{"type": "text", "text": " a "},
                                                {"type": "text", "text": "b "}]}],
    "call then result": [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "", "tool_calls": [call("get_weather", {
            "city": "Paris", "n": 2, "ok": True, "off": False, "x": 1.5,
            "l": [1, "a", {"Z": 1, "a": "q"}]}, "c1")]},
        {"role": "tool", "tool_call_id": "c1", "content": "18 C"}],
    "call, result, answer, user": [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "", "tool_calls": [
            call("get_weather", {"city": "Paris"}, "c1")]},
        {"role": "tool", "tool_call_id": "c1", "content": "18 C"},
        {"role": "assistant", "content": "It is 18 C."},
        {"role": "user", "content": "Thanks"}],
    "parallel calls": [
        {"role": "user", "content": "Both?"},
        {"role": "assistant", "content": None, "tool_calls": [
            call("get_weather", {"city": "Paris"}, "a"), call("get_time", {"zone": "CET"}, "b")]},
        {"role": "tool", "tool_call_id": "a", "content": "18 C"},
        {"role": "tool", "tool_call_id": "b", "content": '{"t": "12:00"}'}],
    "Ollama's shape (tool_name, no ids)": [
        {"role": "user", "content": "W?"},
        {"role": "assistant", "content": "", "tool_calls": [call("get_weather", {"city": "Oslo"})]},
        {"role": "tool", "tool_name": "get_weather", "content": "-3 C"}],
    "a call not answered yet": [
        {"role": "user", "content": "W?"},
        {"role": "assistant", "tool_calls": [call("get_weather", {"city": "Paris"}, "a")]}],
    "a call with text": [
        {"role": "user", "content": "W?"},
        {"role": "assistant", "content": "Let me check.", "tool_calls": [
            call("get_weather", {"city": "Paris"}, "a")]},
        {"role": "tool", "tool_call_id": "a", "content": "sun"}],
    "reasoning before a call": [
        {"role": "user", "content": "W?"},
        {"role": "assistant", "content": "", "reasoning_content": "I should call.",
         "tool_calls": [call("get_weather", {"city": "Paris"}, "a")]},
        {"role": "tool", "tool_call_id": "a", "content": "sun"}],
    "old reasoning is dropped": [
        {"role": "user", "content": "W?"},
        {"role": "assistant", "content": "x", "reasoning_content": "hidden"},
        {"role": "user", "content": "again"}],
    "quotes, braces and newlines": [
        {"role": "user", "content": "W?"},
        {"role": "assistant", "tool_calls": [
            call("get_weather", {"city": 'a "b" {c}\nd, e:f'}, "a")]},
        {"role": "tool", "tool_call_id": "a", "content": " spaced \n"}],
    "a tool message answering nothing": [{"role": "user", "content": "u"},
                                         {"role": "tool", "content": "r", "name": "x"}],
}


@pytest.mark.parametrize("tools", TOOLSETS.values(), ids=TOOLSETS.keys())
@pytest.mark.parametrize("messages", CONVERSATIONS.values(), ids=CONVERSATIONS.keys())
def test_renders_as_googles_template(jinja, messages, tools):
    for add_generation_prompt in (True, False):
        assert format_gemma4(messages, tools, add_generation_prompt) == \
            jinja(messages, tools, add_generation_prompt)


@pytest.mark.parametrize("messages", [CONVERSATIONS["system and user"],
                                      CONVERSATIONS["call then result"]])
def test_thinking_on_renders_as_the_template(jinja, messages):
    assert format_gemma4(messages, [WEATHER], enable_thinking=True) == \
        jinja(messages, [WEATHER], enable_thinking=True)


# -- by hand (these run without the template) ---------------------------------------------

def test_system_and_user_by_hand():
    assert format_gemma4(CONVERSATIONS["system and user"]) == (
        "<|turn>system\nBe brief.<turn|>\n<|turn>user\nHi<turn|>\n" + GEN)
    # No system message and no tools: no system turn; thinking off: the empty thought block.
    assert format_gemma4([{"role": "user", "content": "Hi"}]) == "<|turn>user\nHi<turn|>\n" + GEN
    assert format_gemma4([{"role": "user", "content": "Hi"}], add_generation_prompt=False) == \
        "<|turn>user\nHi<turn|>\n"


def test_a_tool_declaration_by_hand():
    tool = {"type": "function", "function": {
        "name": "get_weather", "description": "Weather.",
        "parameters": {"type": "object", "required": ["city"], "properties": {
            "unit": {"type": "string", "enum": ["C", "F"]},
            "city": {"type": "string", "description": "City"}}}}}
    assert declare_tool(tool) == (
        f"<|tool>declaration:get_weather{{description:{Q}Weather.{Q},parameters:{{properties:{{"
        f"city:{{description:{Q}City{Q},type:{Q}STRING{Q}}},"
        f"unit:{{enum:[{Q}C{Q},{Q}F{Q}],type:{Q}STRING{Q}}}}},"
        f"required:[{Q}city{Q}],type:{Q}OBJECT{Q}}}}}<tool|>")
    text = format_gemma4([{"role": "system", "content": "S"},
                          {"role": "user", "content": "u"}], [tool])
    assert text.startswith("<|turn>system\nS<|tool>declaration:get_weather{")
    assert text.endswith("<tool|><turn|>\n<|turn>user\nu<turn|>\n" + GEN)


def test_a_call_its_result_and_the_answer_share_one_model_turn():
    messages = CONVERSATIONS["call, result, answer, user"]
    assert format_gemma4(messages) == (
        "<|turn>user\nWeather?<turn|>\n"
        f"<|turn>model\n<|tool_call>call:get_weather{{city:{Q}Paris{Q}}}<tool_call|>"
        f"<|tool_response>response:get_weather{{value:{Q}18 C{Q}}}<tool_response|>"
        "It is 18 C.<turn|>\n"
        "<|turn>user\nThanks<turn|>\n" + GEN)
    # Ending on the result, the prompt has no generation prompt: the model goes on in its turn.
    assert format_gemma4(messages[:3]).endswith(f"{Q}18 C{Q}}}<tool_response|>")


def test_values_in_gemma4_syntax():
    assert write_value({"b": [1, 2.5, True, None], "A": {"k": "v"}, "s": 'x "y" {z}'}) == (
        f'{{A:{{k:{Q}v{Q}}},b:[1,2.5,true,null],s:{Q}x "y" {{z}}{Q}}}')
    assert write_value({"k": "v"}, escape_keys=True) == f"{{{Q}k{Q}:{Q}v{Q}}}"


def test_where_it_departs_from_the_31b_template():
    # None is null (the template prints Python's None); JSON text arguments become values
    # (the template pastes the text); an object result is written as an object.
    args = [{"role": "user", "content": "u"},
            {"role": "assistant", "tool_calls": [call("f", '{"a": null, "b": "x"}', "1")]},
            {"role": "tool", "tool_call_id": "1", "content": {"ok": True}}]
    assert format_gemma4(args) == (
        "<|turn>user\nu<turn|>\n"
        f"<|turn>model\n<|tool_call>call:f{{a:null,b:{Q}x{Q}}}<tool_call|>"
        "<|tool_response>response:f{ok:true}<tool_response|>")
    # Results without ids and names answer the calls in order.
    text = format_gemma4([{"role": "user", "content": "u"},
                          {"role": "assistant", "tool_calls": [call("f", {}), call("g", {})]},
                          {"role": "tool", "content": "1"}, {"role": "tool", "content": "2"}])
    assert "response:f{value:" in text and "response:g{value:" in text


@pytest.mark.parametrize("messages, match", [
    ("hello", "list"),
    ([{"role": "wizard", "content": "x"}], "unknown role"),
    ([{"role": "user", "content": 3}], "content must be a string"),
    ([{"role": "user", "content": [{"type": "image_url", "image_url": "x"}]}], "content parts"),
    ([{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": "{"}}]}],
     "arguments must be JSON"),
    ([{"role": "assistant", "tool_calls": [{"function": {"name": "f", "arguments": [1]}}]}],
     "must be an object"),
])
def test_bad_messages_are_refused(messages, match):
    with pytest.raises(ValueError, match=match):
        format_gemma4(messages)


# -- one dispatch by architecture ----------------------------------------------------------

def test_format_chat_picks_the_architectures_format():
    messages = CONVERSATIONS["multi-turn"]
    for arch in ("gemma3", "gemma3n"):
        assert not native_tools(arch)
        assert format_chat(messages, arch) == format_gemma(messages)
        assert format_chat(messages, arch, add_generation_prompt=False) == \
            format_gemma(messages, add_generation_prompt=False)
    assert native_tools("gemma4")
    assert format_chat(messages, "gemma4") == format_gemma4(messages)
    assert format_chat(messages, "gemma4", tools=[WEATHER]) == format_gemma4(messages, [WEATHER])
    # Gemma 3 has no tool declarations: tools must come as turns (structured.tools).
    with pytest.raises(ValueError, match="no tool declarations"):
        format_chat(messages, "gemma3", tools=[WEATHER])


def test_the_bench_harness_offers_the_gemma4_format():
    from pyengine.bench.template import load_template

    convo = CONVERSATIONS["system and user"]
    assert load_template("gemma4").render(convo) == format_gemma4(convo)
    assert load_template("gemma").render(convo) == format_gemma(convo)


def test_json_text_arguments_and_objects_render_alike():
    # OpenAI's clients send arguments as JSON text, Ollama's as objects: one prompt either way.
    args = {"city": "Paris", "days": 3}
    as_text = [{"role": "user", "content": "u"},
               {"role": "assistant", "tool_calls": [call("get_weather", json.dumps(args), "1")]}]
    as_object = [{"role": "user", "content": "u"},
                 {"role": "assistant", "tool_calls": [call("get_weather", args, "1")]}]
    assert format_gemma4(as_text) == format_gemma4(as_object)
