"""The fallback chain over real HTTP: a second pyengine process plays the Ollama server, a local
stand-in plays OpenAI. Native -> Ollama on a missing model, after the failure threshold and on a
time-out; the breaker closing again; paid calls refused when disabled and when the monthly cap
would be exceeded, with the ledger surviving a restart; the costs report."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from fake_openai import FakeOpenAI
from pyengine import Engine
from pyengine.gateway.providers import NativeBackend
from pyengine.gateway.breaker import CLOSED, HALF_OPEN, OPEN, CircuitBreaker
from pyengine.gateway.config import Config
from pyengine.gateway.chain import FallbackChain, NoBackendAvailable
from pyengine.gateway.front_door import Gateway
from pyengine.gateway.ledger import CostLedger
from pyengine.gateway.store import ModelStore

FAST_TASK = {"type": "classification", "priority": 1, "estimated_tokens": 10}  # -> gemma3:1b
PRIMARY_TASK = {"type": "summarization", "priority": 5, "estimated_tokens": 400}  # -> gemma3n:e2b
GREEDY = {"temperature": 0, "max_tokens": 8}



@pytest.fixture(scope="module")
def ollama_url(tiny):
    """A second pyengine process serving Ollama's API with the primary and fast tiers' names."""
    from pyengine.server.testing import ServerProcess

    with ServerProcess({"gemma3n:e2b": tiny, "gemma3:1b": tiny}, args=["--threads", "1"]) as s:
        yield s.url


def registry(tmp_path: Path, models: dict[str, Path]) -> ModelStore:
    """A store whose registry maps names to files, and an empty Ollama store."""
    reg = tmp_path / "registry"
    reg.mkdir(exist_ok=True)
    for name, path in models.items():
        link = reg / (name.replace(":", "-") + ".gguf")
        if not link.exists():
            link.write_bytes(path.read_bytes())
    (reg / "registry.json").write_text(json.dumps(
        {"models": {n: {"file": n.replace(":", "-") + ".gguf"} for n in models}}))
    (tmp_path / "ollama-empty").mkdir(exist_ok=True)
    return ModelStore(registry_dir=reg, ollama_models=tmp_path / "ollama-empty")


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def chain(tmp_path, store, ollama_url="http://127.0.0.1:9", clock=None, **cfg) -> FallbackChain:
    config = Config(ollama_host=ollama_url, **cfg)
    return FallbackChain(config, store=store, ledger=CostLedger(tmp_path / "ledger.sqlite"),
                         cooldown_s=30, clock=clock or Clock())


def test_native_serves_first(tmp_path, tiny):
    with Engine(tiny) as eng:
        want = eng.chat([{"role": "user", "content": "Hi"}], **GREEDY).text
    gw = Gateway(chain=chain(tmp_path, registry(tmp_path, {"gemma3:1b": tiny})))
    r = gw.complete(FAST_TASK, "Hi", **GREEDY)
    assert (r.backend, r.model, r.tier, r.cost_usd) == ("native", "gemma3:1b", "fast", 0.0)
    assert r.text == want and "fast" in r.reason
    assert [a.outcome for a in r.attempts] == ["served"]
    rep = gw.chain.ledger.report()
    assert rep["local_calls"] == 1 and rep["paid_calls"] == 0
    gw.close()


def test_missing_model_goes_to_ollama(tmp_path, tiny, ollama_url, caplog):
    gw = Gateway(chain=chain(tmp_path, registry(tmp_path, {}), ollama_url))
    with caplog.at_level("WARNING", logger="pyengine.gateway.chain"):
        r = gw.complete(PRIMARY_TASK, "Hi", **GREEDY)
    assert (r.backend, r.model, r.tier) == ("ollama", "gemma3n:e2b", "primary")
    assert [a.outcome for a in r.attempts] == ["cannot-serve", "served"]
    assert "not available" in r.attempts[0].reason
    assert any("cannot-serve" in rec.getMessage() for rec in caplog.records)
    with Engine(tiny) as eng:  # the other process computed what this one would have
        assert r.text == eng.chat([{"role": "user", "content": "Hi"}], **GREEDY).text


def test_failure_threshold_opens_and_the_breaker_closes_again(tmp_path, tiny, ollama_url):
    clock = Clock()
    fc = chain(tmp_path, registry(tmp_path, {"gemma3n:e2b": tiny}), ollama_url, clock)
    gw = Gateway(chain=fc)
    assert gw.complete(PRIMARY_TASK, "Hi", **GREEDY).backend == "native"
    # The native engine breaks (closed under the backend): every call fails for real.
    fc.native.pool.get_loaded("gemma3n:e2b").engine.close()
    for _ in range(3):
        r = gw.complete(PRIMARY_TASK, "Hi", **GREEDY)
        assert r.backend == "ollama" and r.attempts[0].outcome == "failed"
        assert "closed" in r.attempts[0].reason
    assert fc.breakers["native"].state == OPEN
    r = gw.complete(PRIMARY_TASK, "Hi", **GREEDY)  # past the threshold: native is not tried
    assert r.backend == "ollama" and r.attempts[0].outcome == "skipped"
    clock.t += 31  # cool-down over; the engine is back (a fresh one is loaded on demand)
    fc.native.pool.unload("gemma3n:e2b")
    assert fc.breakers["native"].state == HALF_OPEN
    r = gw.complete(PRIMARY_TASK, "Hi", **GREEDY)
    assert r.backend == "native" and fc.breakers["native"].state == CLOSED
    gw.close()


def test_time_out_sends_the_request_on(tmp_path, tiny, ollama_url):
    # A native engine busy with a long request (one sequence per step) cannot answer in time.
    fc = FallbackChain(Config(ollama_host=ollama_url, timeout_ms=1500),
                       native=NativeBackend(Config(), registry(tmp_path, {"gemma3n:e2b": tiny}),
                                            engine_options={"max_batch": 1}),
                       ledger=CostLedger(tmp_path / "l.sqlite"))
    lease = fc.native.lease("gemma3n:e2b")
    eng = lease.engine
    # Queued ahead of the request: each runs to the end of the context, one at a time.
    hogs = [eng.stream(f"busy {i}", max_tokens=-1, temperature=0, ignore_eos=True)
            for i in range(20)]
    t0 = time.time()
    r = Gateway(chain=fc).complete(PRIMARY_TASK, "Hi", **GREEDY)
    assert r.backend == "ollama" and r.attempts[0].outcome == "timeout"
    assert 1.4 < time.time() - t0 < 10
    assert eng.stats()["running"] == 1  # still busy: the time-out was real
    for h in hogs:
        h.close()
    lease.release()
    fc.close()


def test_paid_refused_when_disabled(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    with FakeOpenAI() as fake:
        monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
        fc = chain(tmp_path, registry(tmp_path, {}))  # no local model, no Ollama server
        with pytest.raises(NoBackendAvailable) as e:
            Gateway(chain=fc).complete(PRIMARY_TASK, "Hi", **GREEDY)
        reasons = [a.reason for a in e.value.attempts if a.outcome == "refused"]
        assert reasons and all("disabled" in r for r in reasons)
        assert fake.calls == [] and fc.ledger.report()["paid_calls"] == 0
        local_only = chain(tmp_path, registry(tmp_path, {}), paid_api_enabled=True,
                           routing_strategy="local-only")
        with pytest.raises(NoBackendAvailable, match="local-only"):
            Gateway(chain=local_only).complete(PRIMARY_TASK, "Hi", **GREEDY)
        assert fake.calls == []


def test_paid_cap_counts_the_ledger_across_restarts(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "test-key")
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    ledger_path = tmp_path / "ledger.sqlite"
    first = CostLedger(ledger_path)
    first.record("openai", "gpt-4o-mini", True, 10, 10, 19.9995)
    first.close()
    with FakeOpenAI(prompt_tokens=1000, completion_tokens=2000) as fake:
        monkeypatch.setenv("OPENAI_BASE_URL", fake.base_url)
        capped = chain(tmp_path, registry(tmp_path, {}), paid_api_enabled=True)  # cap $20
        assert capped.ledger.month_spend() == pytest.approx(19.9995)  # survived the restart
        with pytest.raises(NoBackendAvailable, match="monthly cap"):
            Gateway(chain=capped).complete(PRIMARY_TASK, "Hi", max_tokens=4000)
        assert fake.calls == []
        roomy = chain(tmp_path, registry(tmp_path, {}), paid_api_enabled=True,
                      paid_api_max_monthly_spend=25.0)
        r = Gateway(chain=roomy).complete(PRIMARY_TASK, "Hi", max_tokens=4000)
        assert (r.backend, r.model, r.text) == ("openai", "gpt-4o-mini", "paid answer")
        assert r.cost_usd == pytest.approx(3000 * 0.15 / 1e6)
        assert len(fake.calls) == 1 and fake.calls[0]["max_tokens"] == 4000
        assert [a.outcome for a in r.attempts][-1] == "served"
    again = CostLedger(ledger_path)
    assert again.month_spend() == pytest.approx(19.9995 + 3000 * 0.15 / 1e6)
    rep = again.report()
    assert rep["paid_calls"] == 2 and rep["paid_cost_usd"] == pytest.approx(again.month_spend())


def test_model_fallback_tries_neighbour_tiers(tmp_path, tiny):
    store = registry(tmp_path, {"gemma3:4b": tiny})  # only the alternative tier is here
    strict = chain(tmp_path, store)
    with pytest.raises(NoBackendAvailable):
        Gateway(chain=strict).complete({"priority": 9}, "Hi", **GREEDY)
    lenient = chain(tmp_path, store, fallback_enabled=True)
    r = Gateway(chain=lenient).complete({"priority": 9}, "Hi", **GREEDY)
    assert (r.backend, r.model, r.tier) == ("native", "gemma3:4b", "alternative")
    assert "quality" in r.reason


def test_breaker_state_machine():
    clock = Clock()
    b = CircuitBreaker(2, 10, clock)
    assert b.allow() and b.state == CLOSED
    b.record_failure()
    assert b.state == CLOSED and b.allow()
    b.record_failure()
    assert b.state == OPEN and not b.allow()
    clock.t += 10
    assert b.state == HALF_OPEN and b.allow() and not b.allow()  # one trial at a time
    b.record_failure()
    assert b.state == OPEN  # the trial failed: open again for a full cool-down
    clock.t += 10
    assert b.allow()
    b.record_success()
    assert b.state == CLOSED and b.allow()


def test_costs_report_command(tmp_path):
    path = tmp_path / "ledger.sqlite"
    led = CostLedger(path)
    led.record("native", "gemma3:1b", False, 5, 6, 0.0, tier="fast", task_type="classification")
    led.record("openai", "gpt-4o-mini", True, 1000, 1000, 0.0003, tier="primary",
               task_type="summarization")
    led.close()
    env = {**os.environ, "PYENGINE_LEDGER": str(path)}
    out = subprocess.run([sys.executable, "-m", "pyengine", "costs", "--json"], env=env,
                         cwd=tmp_path, capture_output=True, text=True, check=True).stdout
    rep = json.loads(out)
    assert rep["local_calls"] == 1 and rep["paid_calls"] == 1
    assert rep["paid_cost_usd"] == pytest.approx(0.0003)
    table = subprocess.run([sys.executable, "-m", "pyengine", "costs"], env=env, cwd=tmp_path,
                           capture_output=True, text=True, check=True).stdout
    assert "summarization" in table and "classification" in table


def test_concurrent_front_door_calls(tmp_path, tiny):
    gw = Gateway(chain=chain(tmp_path, registry(tmp_path, {"gemma3:1b": tiny})))
    results = []
    threads = [threading.Thread(target=lambda: results.append(
        gw.complete(FAST_TASK, "Hi", **GREEDY))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len({r.text for r in results}) == 1 and all(r.backend == "native" for r in results)
    assert gw.chain.ledger.report()["local_calls"] == 4
    gw.close()


def with_architecture(src: Path, dst: Path, arch: bytes) -> Path:
    """A copy of a model file whose general.architecture value is ``arch`` (same length)."""
    data = bytearray(src.read_bytes())
    key = b"general.architecture"
    at = data.index(len(key).to_bytes(8, "little") + key) + 8 + len(key) + 4 + 8  # type, length
    assert data[at:at + len(arch)] == b"gemma3"[:len(arch)] and len(arch) == 6
    data[at:at + 6] = arch
    dst.write_bytes(bytes(data))
    return dst


def test_unsupported_architecture_and_low_memory_go_to_ollama(tmp_path, tiny, ollama_url,
                                                              monkeypatch):
    odd = with_architecture(tiny, tmp_path / "odd.gguf", b"llama3")
    fc = chain(tmp_path, registry(tmp_path, {"gemma3n:e2b": odd}), ollama_url)
    r = Gateway(chain=fc).complete(PRIMARY_TASK, "Hi", **GREEDY)
    assert r.backend == "ollama" and r.attempts[0].outcome == "cannot-serve"
    assert "llama3" in r.attempts[0].reason
    assert fc.breakers["native"].state == CLOSED  # not the backend's failure
    from pyengine import pool

    monkeypatch.setattr(pool, "available_memory", lambda: 1 << 20)  # 1 MiB free
    fc2 = chain(tmp_path / "b", registry(tmp_path, {"gemma3n:e2b": tiny}), ollama_url)
    r = Gateway(chain=fc2).complete(PRIMARY_TASK, "Hi", **GREEDY)
    assert r.backend == "ollama" and "not enough memory" in r.attempts[0].reason


def test_rubric_optimisation_falls_back_to_the_alternative_tier(tmp_path, tiny):
    fc = chain(tmp_path, registry(tmp_path, {"gemma3:4b": tiny}))  # no quality model here
    r = Gateway(chain=fc).complete({"type": "rubric_optimization"}, "Improve this rubric",
                                   max_tokens=4)
    assert (r.backend, r.model, r.tier) == ("native", "gemma3:4b", "alternative")
    assert [a.outcome for a in r.attempts] == ["cannot-serve", "failed", "served"]


def test_the_front_door_passes_formats_and_tools_down_the_chain(tmp_path, tiny, ollama_url):
    """pyengine.complete with a JSON Schema or tools: served natively, and by the Ollama
    backend when the native one cannot run the model; the answer follows the format, and a
    tools request comes back as text or well-formed calls."""
    import jsonschema

    schema = {"type": "object", "required": ["label"], "additionalProperties": False,
              "properties": {"label": {"enum": ["spam", "ham"]}}}
    tool = {"type": "function", "function": {"name": "lookup", "parameters": {
        "type": "object", "required": ["q"], "properties": {"q": {"type": "string"}}}}}
    for models in ({"gemma3n:e2b": tiny}, {}):  # native, then the Ollama backend
        fc = FallbackChain(Config(ollama_host=ollama_url),
                           native=NativeBackend(Config(), registry(tmp_path, models)),
                           ledger=CostLedger(tmp_path / "l.sqlite"))
        gw = Gateway(chain=fc)
        r = gw.complete(PRIMARY_TASK, "Spam or ham?", temperature=1.0, max_tokens=32, seed=4,
                        format=schema)
        assert r.backend == ("native" if models else "ollama")
        jsonschema.validate(json.loads(r.text), schema)
        r = gw.complete(PRIMARY_TASK, "Look it up", temperature=1.0, max_tokens=48, seed=5,
                        tools=[tool])
        assert bool(r.tool_calls) != bool(r.text)
        for call in r.tool_calls:
            assert call.name == "lookup" and isinstance(call.arguments["q"], str)
        gw.close()
