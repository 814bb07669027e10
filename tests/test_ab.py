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

import pytest

from pyengine.bench import ABConfig, EndpointError, parse_endpoint, run_ab
from pyengine.bench.ab import plan_rounds
from pyengine.bench.clients import Endpoint, GenerationSettings, Reply, _read_openai, probe
from pyengine.bench.prompts import builtin_prompts, load_prompts
from pyengine.bench.report import format_table, plot, write_outputs
from pyengine.bench.stats import percentile, summarize
from pyengine.server.testing import ServerProcess, free_port

MAX_TOKENS = 8


class OpenAIStandIn:
    """OpenAI's streaming ``/v1/chat/completions`` in front of a pyengine server's ``/api/chat``
    (for servers without an OpenAI API of their own): the same tokens, re-framed as SSE."""

    def __init__(self, upstream: str, model: str) -> None:
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
                for record in standin.upstream_chat(body["messages"], options):
                    if record.get("done"):
                        self._event({"choices": [{"index": 0, "delta": {},
                                                  "finish_reason": "length"}]})
                        self._event({"choices": [], "usage": {
                            "prompt_tokens": record["prompt_eval_count"],
                            "completion_tokens": record["eval_count"]}})
                        self._event("[DONE]")
                        return
                    self._event({"choices": [{"index": 0, "finish_reason": None, "delta": {
                        "content": record["message"]["content"]}}]})

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

    def upstream_chat(self, messages: list, options: dict) -> Iterator[dict]:
        conn = http.client.HTTPConnection(self._host, self._port, timeout=60)
        try:
            conn.request("POST", "/api/chat", json.dumps(
                {"model": self._model, "messages": messages, "options": options}))
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
    assert load_prompts(f) == [
        [{"role": "user", "content": "plain words"}],
        [{"role": "user", "content": "[not json"}],
        [{"role": "user", "content": "hi"}],
        [{"role": "system", "content": "s"}, {"role": "user", "content": "u"}],
        [{"role": "user", "content": "p"}]]
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
