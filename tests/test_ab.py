"""``pyengine ab``: the A/B harness against two real pyengine servers (one addressed as Ollama,
one as OpenAI), its report, and its errors. Offline and quick: tiny synthetic model, few tokens.
"""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import gguf_builder as gb
import pytest

from pyengine.bench import ABConfig, EndpointError, parse_endpoint, run_ab
from pyengine.bench.ab import CONTEXT_CHARS, Measured, _agreement, difference, plan_rounds
from pyengine.bench.clients import (
    Endpoint,
    GenerationSettings,
    Reply,
    _read_ollama,
    _read_openai,
    completion_body,
    probe,
)
from pyengine.bench.prompts import as_messages, builtin_prompts, load_prompts
from pyengine.bench.report import format_table, plot, write_outputs
from pyengine.bench.stats import percentile, summarize
from pyengine.bench.template import TemplateError, load_template
from pyengine.chat import format_gemma
from pyengine.server.testing import ServerProcess, free_port

MAX_TOKENS = 8


def chatml(messages: list) -> str:
    """ChatML, the format llama-server gives a conversation when the file has no template."""
    return "".join(f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n"
                   for m in messages) + "<|im_start|>assistant\n"


class OpenAIStandIn:
    """OpenAI's streaming ``/v1/chat/completions`` and ``/v1/completions`` in front of a pyengine
    server (for servers without an OpenAI API of their own): the same tokens, re-framed as SSE.

    Chat requests go to ``/api/chat``, or, with ``chat_format`` (messages -> text), to
    ``/api/generate`` as raw prompts, as llama-server formats them itself; completions go to
    ``/api/generate`` with ``raw: true``, as llama-server completes a prompt as it is.
    """

    def __init__(self, upstream: str, model: str, chat_format: Any = None) -> None:
        host, port = upstream.rsplit("//", 1)[1].split(":")
        standin = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self._json(200, {"object": "list", "data": [{"id": model, "object": "model"}]})

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                if body.get("model") != model:
                    self._json(404, {"error": {"message": f"model {body.get('model')!r} not "
                                               "found", "type": "invalid_request_error"}})
                    return
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.end_headers()  # no length: the stream ends when the connection closes
                options = {"num_predict": body["max_tokens"], "temperature": body["temperature"],
                           "seed": body["seed"], "ignore_eos": body.get("ignore_eos", False)}
                completion = self.path == "/v1/completions"
                if completion or chat_format is not None:
                    prompt = body["prompt"] if completion else chat_format(body["messages"])
                    records = standin.upstream("/api/generate", {"prompt": prompt, "raw": True},
                                               options)
                else:
                    records = standin.upstream("/api/chat", {"messages": body["messages"]},
                                               options)
                for record in records:
                    if record.get("done"):
                        self._event({"choices": [{"index": 0, "finish_reason": "length",
                                                  **({"text": ""} if completion
                                                     else {"delta": {}})}]})
                        self._event({"choices": [], "usage": {
                            "prompt_tokens": record["prompt_eval_count"],
                            "completion_tokens": record["eval_count"]}})
                        self._event("[DONE]")
                        return
                    text = record["response"] if "response" in record \
                        else record["message"]["content"]
                    self._event({"choices": [{"index": 0, "finish_reason": None, **(
                        {"text": text} if completion else {"delta": {"content": text}})}]})

            def _event(self, data: Any) -> None:
                text = data if isinstance(data, str) else json.dumps(data)
                self.wfile.write(f"data: {text}\n\n".encode())
                self.wfile.flush()

            def _json(self, status: int, data: Any) -> None:
                out = json.dumps(data).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(out)))
                self.end_headers()
                self.wfile.write(out)

            def log_message(self, *args: Any) -> None:
                pass

        self._host, self._port, self._model = host, int(port), model
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._server.server_address[1]}/v1"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def upstream(self, path: str, fields: dict, options: dict) -> Iterator[dict]:
        conn = http.client.HTTPConnection(self._host, self._port, timeout=60)
        try:
            conn.request("POST", path, json.dumps(
                {"model": self._model, **fields, "options": options}))
            resp = conn.getresponse()
            for line in resp:
                if line.strip():
                    yield json.loads(line)
        finally:
            conn.close()

    def __enter__(self) -> OpenAIStandIn:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._server.server_close()


def _has_openai_api(url: str) -> bool:
    conn = http.client.HTTPConnection(url.split("//")[1], timeout=10)
    try:
        conn.request("GET", "/v1/models")
        return conn.getresponse().status == 200
    finally:
        conn.close()


@pytest.fixture(scope="module")
def pyengine_pair(make_model) -> Iterator[tuple[str, str]]:
    """Two pyengine servers on the tiny model (their base URLs)."""
    path = make_model("tiny", "q8_0")
    with ServerProcess({"tiny": path}, args=["--threads", "1"]) as a, \
            ServerProcess({"tiny": path}, args=["--threads", "1"]) as b:
        yield a.url, b.url


@pytest.fixture(scope="module")
def servers(pyengine_pair) -> Iterator[tuple[str, str]]:
    """(Ollama URL of A, OpenAI URL of B): B's own OpenAI API when it has one, else a stand-in
    in front of its Ollama API."""
    a_url, b_url = pyengine_pair
    if _has_openai_api(b_url):
        yield a_url, b_url + "/v1"
    else:
        with OpenAIStandIn(b_url, "tiny") as standin:
            yield a_url, standin.url


@pytest.fixture(params=["server", "stand-in"])
def openai_pair(request, pyengine_pair) -> Iterator[tuple[str, str]]:
    """(Ollama URL of A, OpenAI URL of B) with B's OpenAI API from the server itself (skipped
    while it has none) or from the stand-in."""
    a_url, b_url = pyengine_pair
    if request.param == "server":
        if not _has_openai_api(b_url):
            pytest.skip("this server has no OpenAI API")
        yield a_url, b_url + "/v1"
    else:
        with OpenAIStandIn(b_url, "tiny") as standin:
            yield a_url, standin.url


def run_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    # Outside the source tree, so the installed package (with its extension) is imported.
    return subprocess.run([sys.executable, "-m", "pyengine", "ab", *args], capture_output=True,
                          text=True, timeout=300, cwd=cwd, check=False)


# -- the harness against real servers ------------------------------------------------------


def test_ab_ollama_vs_openai_report(openai_pair, tmp_path):
    a_url, b_url = openai_pair
    config = ABConfig(a=parse_endpoint(f"{a_url},model=tiny,name=ollama-api", "A"),
                      b=parse_endpoint(f"{b_url},model=tiny,name=openai-api", "B"),
                      concurrency=[1, 3], requests=3, rounds=2,
                      settings=GenerationSettings(max_tokens=MAX_TOKENS, seed=7), warmup=1)
    logged: list[str] = []
    report = run_ab(config, log=logged.append)

    assert report["sides"]["A"]["api"] == "ollama" and report["sides"]["B"]["api"] == "openai"
    assert report["settings"]["max_tokens"] == MAX_TOKENS
    assert [lv["concurrency"] for lv in report["levels"]] == [1, 3]
    # concurrency 1: two rounds (A B, then B A); concurrency 3: one round of 3 (B A)
    assert [lv["rounds"] for lv in report["levels"]] == [2, 1]
    assert any("round 2/2 B" in line for line in logged)
    for level in report["levels"]:
        for side in ("A", "B"):
            d = level[side]
            assert d["requests"] == d["ok"] == 3 and d["errors"] == 0, d["error_samples"]
            assert d["tokens_source"] == "server"
            assert 0 < d["completion_tokens"] <= 3 * MAX_TOKENS
            assert 0 < d["tokens_per_request"]["max"] <= MAX_TOKENS
            for metric in ("ttft_ms", "latency_ms"):
                s = d[metric]
                assert s["n"] == 3 and 0 < s["min"] <= s["p50"] <= s["p95"] <= s["p99"] <= s["max"]
            assert d["ttft_ms"]["p50"] <= d["latency_ms"]["p50"]
            agg = d["aggregate_tps"]
            assert agg["median"] > 0 and agg["overall"] > 0
            assert len(agg["rounds"]) == level["rounds"]
            assert (agg["spread"] is None) == (level["rounds"] == 1)
            assert agg["spread"] is None or agg["spread"] >= 1
        assert level["A"]["server_eval_tps"]["n"] == 3  # Ollama reports eval_duration
        assert level["a_vs_b"]["aggregate_tps"] > 0
    assert len(report["requests"]) == 2 * 2 * 3
    # Greedy, same engine, same file: the same text on both sides for every request.
    assert report["agreement"]["compared"] == 6
    assert report["agreement"]["identical"] == 6, report["agreement"]
    # Request k of a level gets the same prompt on both sides.
    prompts = {s: sorted((r["concurrency"], r["index"], r["prompt"]) for r in report["requests"]
                         if r["side"] == s) for s in ("A", "B")}
    assert prompts["A"] == prompts["B"]
    assert len({p for _, _, p in prompts["A"]}) == 3

    written = write_outputs(report, tmp_path / "out")
    assert json.loads(written["json"].read_text())["levels"][0]["A"]["requests"] == 3
    table = written["table"].read_text()
    assert table == format_table(report)
    assert "| 3 | openai-api | 3/3 |" in table and "identical for 6 of 6" in table
    if "chart" in written:
        assert written["chart"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_ab_ignore_eos_fills_max_tokens(servers):
    a_url, _ = servers
    config = ABConfig(a=parse_endpoint(a_url, "A"), b=parse_endpoint(a_url, "B"),
                      concurrency=[2], requests=2, rounds=1, warmup=0,
                      settings=GenerationSettings(max_tokens=MAX_TOKENS, ignore_eos=True))
    report = run_ab(config, log=lambda _: None)
    assert report["sides"]["A"]["model"] in ("tiny", "tiny:latest")  # the only one served
    for side in ("A", "B"):
        assert report["levels"][0][side]["completion_tokens"] == 2 * MAX_TOKENS


def test_cli_writes_table_json_and_chart(servers, tmp_path):
    a_url, b_url = servers
    proc = run_cli("--a", f"{a_url},name=pyengine", "--b", f"{b_url},model=tiny",
                   "--concurrency", "2", "--requests", "2", "--max-tokens", "4",
                   "--warmup", "0", "--out", "result", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "| 2 | pyengine | 2/2 |" in proc.stdout
    out = tmp_path / "result"
    assert (out / "ab.md").read_text() == proc.stdout.rstrip("\n") + "\n"
    report = json.loads((out / "ab.json").read_text())
    assert report["levels"][0]["B"]["ok"] == 2
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "matplotlib is not installed" in proc.stderr
    else:
        assert (out / "ab.png").exists()


# -- raw completions: both sides complete the same text ------------------------------------


def test_raw_mode_compares_what_chat_mode_cannot(pyengine_pair, ref):
    """B formats chat requests as llama-server does for a file without a chat template
    (ChatML), A as Gemma turns: chat requests read different prompts. Raw completions render
    the conversation once (Gemma's format) and send both sides the same text."""
    a_url, b_url = pyengine_pair
    prompts = [builtin_prompts()[0], "Once upon a time", builtin_prompts()[1]]
    with OpenAIStandIn(b_url, "tiny", chat_format=chatml) as standin:
        def config(raw: bool) -> ABConfig:
            return ABConfig(a=parse_endpoint(f"{a_url},model=tiny,name=pyengine", "A"),
                            b=parse_endpoint(f"{standin.url},model=tiny,name=llama-like", "B"),
                            prompts=prompts, concurrency=[3], requests=3, rounds=1, warmup=0,
                            settings=GenerationSettings(max_tokens=MAX_TOKENS, raw=raw))

        chat = run_ab(config(raw=False), log=lambda _: None)
        raw = run_ab(config(raw=True), log=lambda _: None)

    agree = chat["agreement"]
    assert chat["settings"]["mode"] == "chat" and agree["compared"] == 3
    assert agree["prompt_tokens_compared"] == 3 and agree["prompt_tokens_differ"] == 3
    table = format_table(chat)
    assert "Prompt token counts differ on 3 of 3 pairs" in table and "--raw sends both" in table

    assert raw["settings"]["mode"] == "raw" and raw["settings"]["chat_template"] == "gemma"
    # Conversations rendered in Gemma's format; a text prompt sent as it is.
    assert raw["payloads"] == [format_gemma(prompts[0]), "Once upon a time",
                               format_gemma(prompts[2])]
    agree = raw["agreement"]
    assert agree["compared"] == 3 and agree["identical"] == 3, agree
    assert agree["prompt_tokens_differ"] == 0 and "first_difference" not in agree
    for pair in agree["pairs"]:
        text = raw["payloads"][pair["prompt"]]
        # One BOS, added by the server: the prompt is the text's tokens after it, on both sides.
        ids = ref.tokenize(text, add_bos=True, special=True)
        assert ids.count(2) == 1
        assert pair["prompt_tokens"] == [len(ids), len(ids)]
        assert pair["identical"] and pair["difference"] is None
        assert 0 < pair["tokens"][0] == pair["tokens"][1] <= MAX_TOKENS
        # The same greedy text the engine completes the same ids with.
        reply = next(r for r in raw["requests"] if r["side"] == "A"
                     and r["index"] == pair["index"])
        assert reply["text"] == ref.generate(ids, max_tokens=MAX_TOKENS, temperature=0).text
    table = format_table(raw)
    assert "raw completions (no server-side template)" in table
    assert "identical for 3 of 3" in table and "| 3 | 1 | 1 |" in table


def _reply(pieces: list[str], prompt_tokens: int | None = 5) -> Reply:
    return Reply(ok=True, text="".join(pieces), pieces=pieces, completion_tokens=len(pieces),
                 prompt_tokens=prompt_tokens)


def test_difference_finds_the_first_differing_character_and_token():
    assert difference(_reply(["The", " cat"]), _reply(["The", " cat"])) is None
    d = difference(_reply(["The", " cat", " sat", "."]), _reply(["The", " cat", " sits"]))
    assert (d["char"], d["token_a"], d["token_b"]) == (9, 2, 2)
    assert (d["a"], d["b"], d["context_from"]) == ("The cat sat.", "The cat sits", 0)
    # Tokenized differently before the texts part: each side's own token index.
    d = difference(_reply(["Hello", " world"]), _reply(["Hel", "lo", " word"]))
    assert (d["char"], d["token_a"], d["token_b"]) == (9, 1, 2)
    # One text a prefix of the other: the shorter one stopped (its next token differs).
    d = difference(_reply(["The", " cat"]), _reply(["The", " cat", " sat"]))
    assert (d["char"], d["token_a"], d["token_b"]) == (7, 2, 2)
    # Context: CONTEXT_CHARS before the difference, twice that after it.
    long_a, long_b = "x" * 100 + "abc" + "y" * 100, "x" * 100 + "abd" + "y" * 100
    d = difference(_reply([long_a]), _reply([long_b]))
    assert d["char"] == 102 and d["context_from"] == 102 - CONTEXT_CHARS
    assert d["a"] == long_a[102 - CONTEXT_CHARS:102 + 2 * CONTEXT_CHARS]


def test_agreement_reports_every_pair():
    def measured(side: str, index: int, reply: Reply) -> Measured:
        return Measured(side, 1, 0, index, index % 2, 0.0, reply)

    failed = Reply(ok=False, error="HTTP 500: boom")
    runs = [measured("A", 0, _reply(["a", "b"])), measured("B", 0, _reply(["a", "b"])),
            measured("A", 1, _reply(["a", "b"], 7)), measured("B", 1, _reply(["a", "c"], 8)),
            measured("A", 2, _reply(["x"])), measured("B", 2, failed),
            measured("A", 3, _reply(["y"], None)), measured("B", 3, _reply(["y"]))]
    agree = _agreement(runs)
    assert (agree["compared"], agree["identical"]) == (3, 2)  # a failed reply is no pair
    assert (agree["prompt_tokens_compared"], agree["prompt_tokens_differ"]) == (2, 1)
    assert [p["index"] for p in agree["pairs"]] == [0, 1, 3]
    assert [p["identical"] for p in agree["pairs"]] == [True, False, True]
    assert agree["pairs"][1]["prompt_tokens"] == [7, 8]
    assert agree["pairs"][1]["difference"]["token_a"] == 1
    first = agree["first_difference"]
    assert (first["index"], first["common_prefix_chars"], first["a"], first["b"]) == \
        (1, 1, "ab", "ac")
    report = {"sides": {s: {"label": s, "url": "u", "api": "ollama", "model": "m"}
                        for s in "AB"},
              "settings": {"requests": 4, "max_tokens": 2, "seed": 1, "prompts": 2, "warmup": 0,
                           "ignore_eos": False, "mode": "raw", "chat_template": "gemma"},
              "duration_s": 1.0, "levels": [], "agreement": agree}
    table = format_table(report)
    assert "identical for 2 of 3 request pairs" in table
    assert "| 1 | 1 | 1 | 7 / 8 | 2 / 2 | **no** | 1, 1 / 1: `\"ab\"` vs `\"ac\"` |" in table
    assert "| 1 | 3 | 1 | - / 5 | 1 / 1 | yes | - |" in table
    assert "Prompt token counts differ on 1 of 2 pairs" in table


def test_completion_bodies_and_streams():
    settings = GenerationSettings(max_tokens=5, seed=3, raw=True)
    ollama_side = Endpoint("A", "http://h:1/x", "ollama", "m")
    assert ollama_side.completion_path == "/x/api/generate"
    assert completion_body(ollama_side, "Hi <b>", settings) == {
        "model": "m", "prompt": "Hi <b>", "raw": True, "stream": True,
        "options": {"temperature": 0, "seed": 3, "num_predict": 5, "repeat_penalty": 1.0}}
    openai_side = Endpoint("B", "http://h:1", "openai", "m")
    assert openai_side.completion_path == "/v1/completions"
    body = completion_body(openai_side, "Hi", settings)
    assert body["prompt"] == "Hi" and "messages" not in body and body["max_tokens"] == 5
    assert body["temperature"] == 0 and body["stream"] is True

    reply = Reply()
    _read_ollama(iter([(1.1, '{"response": "He", "done": false}'),
                       (1.2, '{"response": "llo", "done": false}'),
                       (1.3, ('{"response": "", "done": true, "done_reason": "length", '
                              '"eval_count": 2, "prompt_eval_count": 4}'))]), reply, 1.0)
    assert (reply.error, reply.text, reply.pieces) == (None, "Hello", ["He", "llo"])
    assert (reply.completion_tokens, reply.prompt_tokens) == (2, 4)
    reply = Reply()
    _read_openai(iter([(1.1, 'data: {"choices":[{"index":0,"text":"He"}]}'),
                       (1.2, ('data: {"choices":[{"index":0,"text":"llo",'
                              '"finish_reason":"length"}]}')),
                       (1.3, "data: [DONE]")]), reply, 1.0)
    assert (reply.error, reply.text, reply.pieces) == (None, "Hello", ["He", "llo"])


def _gguf_with_template(path: Path, template: str | None, add_bos: bool = True) -> Path:
    kvs = [("general.architecture", gb.STRING, "gemma3"),
           ("tokenizer.ggml.tokens", gb.ARRAY, (gb.STRING, ["<pad>", "<eos>", "<bos>"])),
           ("tokenizer.ggml.bos_token_id", gb.U32, 2), ("tokenizer.ggml.eos_token_id", gb.U32, 1),
           ("tokenizer.ggml.add_bos_token", gb.BOOL, add_bos)]
    if template is not None:
        kvs.append(("tokenizer.chat_template", gb.STRING, template))
    path.write_bytes(gb.build_gguf(kvs, []))
    return path


def test_chat_template_comes_from_the_file(tmp_path, make_model):
    convo = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": " Hi "}]
    # The synthetic model's template is Gemma's: the same text as the server's format.
    tiny = load_template(str(make_model("tiny", "q8_0")))
    assert tiny.name.endswith("tokenizer.chat_template")
    assert tiny.render(convo) == format_gemma(convo)
    assert tiny.render(convo).startswith("<start_of_turn>user\nBe brief.\n\nHi<end_of_turn>")

    jinja = ("{{ bos_token }}{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] | trim }}"
             "{{ eos_token }}\n{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}")
    # The servers add BOS themselves: a template's own BOS text is cut, unless the file says
    # the tokenizer adds none.
    t = load_template(str(_gguf_with_template(tmp_path / "j.gguf", jinja)))
    assert t.render(convo) == "<|system|>Be brief.<eos>\n<|user|>Hi<eos>\n<|assistant|>"
    t = load_template(str(_gguf_with_template(tmp_path / "k.gguf", jinja, add_bos=False)))
    assert t.render(convo).startswith("<bos><|system|>")

    none = load_template(str(_gguf_with_template(tmp_path / "n.gguf", None)))
    assert none.name == "gemma (n.gguf has no chat template)"
    assert none.render(convo) == format_gemma(convo)
    assert load_template(None).name == load_template("Gemma").name == "gemma"

    bad = load_template(str(_gguf_with_template(
        tmp_path / "b.gguf", "{{ raise_exception('system messages are not supported') }}")))
    with pytest.raises(TemplateError, match="system messages are not supported"):
        bad.render(convo)
    with pytest.raises(TemplateError, match="neither 'gemma' nor a GGUF file"):
        load_template(str(tmp_path / "missing.gguf"))
    (tmp_path / "x.gguf").write_bytes(b"GGUF")
    with pytest.raises(TemplateError, match="x.gguf"):
        load_template(str(tmp_path / "x.gguf"))


def test_cli_raw_with_the_files_template(servers, tmp_path, make_model):
    a_url, _ = servers
    proc = run_cli("--a", a_url, "--b", a_url, "--chat-template", "gemma", cwd=tmp_path)
    assert proc.returncode == 1 and "applies to --raw requests only" in proc.stderr
    proc = run_cli("--a", a_url, "--b", a_url, "--raw", "--chat-template", "nosuch.gguf",
                   cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "neither 'gemma' nor a GGUF file" in proc.stderr

    proc = run_cli("--a", f"{a_url},name=one", "--b", f"{a_url},name=two", "--raw",
                   "--chat-template", str(make_model("tiny", "q8_0")), "--concurrency", "1",
                   "--requests", "2", "--max-tokens", "4", "--warmup", "0", "--out", "r",
                   cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads((tmp_path / "r" / "ab.json").read_text())
    assert report["settings"]["mode"] == "raw"
    assert report["settings"]["chat_template"].endswith("tokenizer.chat_template")
    assert report["payloads"][0] == format_gemma(builtin_prompts()[0])
    assert report["agreement"]["identical"] == report["agreement"]["compared"] == 2
    assert "| 1 | 1 | 1 |" in proc.stdout


# -- clean errors ----------------------------------------------------------------------------


def test_cli_dead_endpoint_is_a_clean_error(servers, tmp_path):
    a_url, _ = servers
    dead = f"http://127.0.0.1:{free_port()}"
    proc = run_cli("--a", a_url, "--b", dead, "--out", "x", cwd=tmp_path)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert f"B: cannot connect to {dead}: connection refused" in proc.stderr
    assert not (tmp_path / "x").exists()


def test_cli_missing_model_is_a_clean_error(servers, tmp_path):
    a_url, b_url = servers
    proc = run_cli("--a", f"{a_url},model=nosuch", "--b", b_url, cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "model 'nosuch' not found" in proc.stderr and "tiny" in proc.stderr
    # An OpenAI server may list no models or serve any name: the warm-up reports its refusal.
    proc = run_cli("--a", a_url, "--b", f"{b_url},model=nosuch", cwd=tmp_path)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    assert "B: warm-up request failed: HTTP 404" in proc.stderr, proc.stderr


def test_wrong_api_is_named(servers):
    a_url, _ = servers
    dead = free_port()
    with pytest.raises(EndpointError, match="connection refused"):
        probe(Endpoint("A", f"http://127.0.0.1:{dead}", "ollama"))
    if not _has_openai_api(a_url):
        with pytest.raises(EndpointError, match="add api=ollama"):
            probe(Endpoint("A", a_url, "openai"))


# -- pieces ----------------------------------------------------------------------------------


def test_parse_endpoint():
    e = parse_endpoint("127.0.0.1:11434", "A")
    assert (e.label, e.url, e.api, e.model) == ("A", "http://127.0.0.1:11434", "ollama", None)
    assert e.chat_path == "/api/chat"
    e = parse_endpoint("http://h:8080/v1/,model=gemma3:1b,name=llama.cpp", "B")
    assert (e.label, e.url, e.api, e.model) == ("llama.cpp", "http://h:8080", "openai",
                                                "gemma3:1b")
    assert e.chat_path == "/v1/chat/completions"
    e = parse_endpoint("https://h/proxy, api=OpenAI", "B")
    assert (e.url, e.api, e.chat_path) == ("https://h/proxy", "openai",
                                           "/proxy/v1/chat/completions")
    for bad in ("", "ftp://h", "h:1,api=grpc", "h:1,model", "h:1,colour=red",
                "h:1,key_env=AB_TEST_UNSET_KEY"):
        with pytest.raises(ValueError):
            parse_endpoint(bad, "A")


def test_api_key_from_the_environment(monkeypatch):
    monkeypatch.setenv("AB_TEST_KEY", "sekrit")
    e = parse_endpoint("h:1,key_env=AB_TEST_KEY", "A")
    assert e.headers(Accept="x") == {"Accept": "x", "Authorization": "Bearer sekrit"}
    assert "sekrit" not in repr(e)
    assert parse_endpoint("h:1", "A").headers() == {}


def test_percentiles_and_rounds():
    assert percentile([], 50) is None
    assert percentile([3.0], 99) == 3.0
    assert percentile([1, 2, 3, 4], 50) == 2.5
    assert percentile(range(101), 95) == 95
    s = summarize([0.004, 0.001, None, 0.002, 0.003], scale=1000)
    assert s["n"] == 4 and s["min"] == 1 and s["max"] == 4 and s["p50"] == 2.5
    assert s["p50"] <= s["p95"] <= s["p99"] <= s["max"]
    assert summarize([None]) == {"n": 0}
    assert plan_rounds(8, 2, 1) == [4, 4]
    assert plan_rounds(9, 2, 4) == [5, 4]
    assert plan_rounds(8, 2, 8) == [8]  # a round of 4 could not keep 8 in flight
    assert plan_rounds(3, 5, 8) == [3]


def test_load_prompts(tmp_path):
    f = tmp_path / "p.txt"
    f.write_text('plain words\n\n[not json\n[{"role": "user", "content": "hi"}]\n'
                 '{"messages": [{"role": "system", "content": "s"}, '
                 '{"role": "user", "content": "u"}]}\n{"prompt": "p"}\n')
    # Texts stay texts (a raw completion sends them as they are); a chat request sends a text
    # as one user message.
    prompts = load_prompts(f)
    assert prompts == [
        "plain words", "[not json", [{"role": "user", "content": "hi"}],
        [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}], "p"]
    assert [as_messages(p) for p in prompts] == [
        [{"role": "user", "content": "plain words"}],
        [{"role": "user", "content": "[not json"}],
        [{"role": "user", "content": "hi"}],
        [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
        [{"role": "user", "content": "p"}]]
    f.write_text('{"prompt": " two spaces  "}\n')
    assert load_prompts(f) == [" two spaces  "]  # JSON keeps a raw prompt's exact text
    f.write_text('{"messages": [{"role": "user"}]}\n')
    with pytest.raises(ValueError, match="p.txt:1"):
        load_prompts(f)
    f.write_text("\n \n")
    with pytest.raises(ValueError, match="no prompts"):
        load_prompts(f)
    assert 8 <= len(builtin_prompts()) <= 16


def test_openai_stream_parsing():
    lines = ['data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}',
             ': a comment', 'data: {"choices":[{"index":0,"delta":{"content":"Hel"}}]}',
             'data: {"choices":[{"index":0,"delta":{"content":"lo"}}]}',
             ('data: {"choices":[{"index":0,"delta":{},"finish_reason":"length"}],'
              '"timings":{"predicted_per_second":50.0,"prompt_per_second":400.0}}'),
             'data: {"choices":[],"usage":{"prompt_tokens":9,"completion_tokens":3}}',
             "data: [DONE]", 'data: {"choices":[{"delta":{"content":"after done"}}]}']
    reply = Reply()
    _read_openai(iter((1.0 + i / 10, line) for i, line in enumerate(lines)), reply, 1.0)
    assert reply.error is None and reply.text == "Hello" and reply.finish_reason == "length"
    assert (reply.completion_tokens, reply.prompt_tokens) == (3, 9)
    assert (reply.server_eval_tps, reply.server_prompt_tps) == (50.0, 400.0)
    assert reply.ttft == pytest.approx(0.2) and reply.chunk_times == pytest.approx([0.2, 0.3])
    reply.ok = True
    assert reply.decode_tps == pytest.approx(2 / 0.1)

    cut = Reply()
    _read_openai(iter([(1.0, lines[2])]), cut, 0.0)
    assert cut.error == "the stream ended before the reply finished"
    failed = Reply()
    _read_openai(iter([(1.0, 'data: {"error": {"message": "boom"}}')]), failed, 0.0)
    assert failed.error == "stream error: boom"


def test_chart_is_skipped_without_matplotlib(monkeypatch, tmp_path, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # makes "import matplotlib" fail
    assert plot({"levels": []}, tmp_path / "c.png") is False
    assert "matplotlib is not installed" in capsys.readouterr().err
    assert not (tmp_path / "c.png").exists()
