"""The model pool (``pyengine.pool``): one policy for the server and for the gateway's native
provider. Loads, least-recently-used eviction of idle models under ``max_loaded``, waiting for
room when every model is busy, the memory check, models marked unavailable; and both users
holding the same class (the server's pool is its chain's native step)."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

import pyengine.pool as pool_module
from pyengine import PyEngineError
from pyengine.gateway.config import Config
from pyengine.gateway.ledger import CostLedger
from pyengine.gateway.providers import CannotServe, NativeBackend
from pyengine.pool import ModelNotFound, ModelPool, ModelUnavailable


class FakeEngine:
    """Stands in for ``Engine``: records its file, options and whether it was closed."""

    def __init__(self, path: Path, **options: object) -> None:
        self.path, self.options, self.closed = Path(path), options, False

    def close(self) -> None:
        self.closed = True


class Factory:
    """Builds FakeEngines and remembers them; files named ``bad*`` fail as the engine would."""

    def __init__(self) -> None:
        self.made: list[FakeEngine] = []

    def __call__(self, path: Path, **options: object) -> FakeEngine:
        if Path(path).name.startswith("bad"):
            raise PyEngineError(f"{path}: unsupported architecture")
        eng = FakeEngine(path, **options)
        self.made.append(eng)
        return eng

    def loads(self, name: str) -> int:
        return sum(1 for e in self.made if e.path.stem == name)


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    out = {}
    for name in ("a", "b", "c", "bad"):
        out[name] = tmp_path / f"{name}.gguf"
        out[name].write_bytes(b"GGUF" + bytes(60))
    return out


def test_idle_models_are_evicted_least_recently_used_first(files):
    factory = Factory()
    pool = ModelPool(files, max_loaded=2, engine_factory=factory,
                     engine_options={"n_ctx": 64})
    for name in ("a", "b"):
        pool.lease(name).release()
    pool.lease("a").release()  # a is now the more recently used
    c = pool.lease("c")
    assert {m.name for m in pool.loaded()} == {"a:latest", "c:latest"}
    assert [e.closed for e in factory.made] == [False, True, False]
    assert factory.made[0].options == {"n_ctx": 64}
    assert c.load_duration > 0 and c.engine is factory.made[2]
    again = pool.lease("A:latest")  # names match as Ollama's do, without reloading
    assert again.engine is factory.made[0] and factory.loads("a") == 1
    again.release()
    c.release()


def test_a_load_waits_while_every_loaded_model_is_busy(files):
    factory = Factory()
    pool = ModelPool(files, max_loaded=1, engine_factory=factory)
    a = pool.lease("a")
    with pytest.raises(TimeoutError, match="busy"):
        pool.lease("b", wait_s=0)
    got: list[object] = []
    waiter = threading.Thread(target=lambda: got.append(pool.lease("b")))
    waiter.start()
    waiter.join(0.2)
    assert waiter.is_alive() and not got  # a is still held
    a.release()
    waiter.join()
    assert [m.name for m in pool.loaded()] == ["b:latest"] and factory.made[0].closed
    got[0].release()  # type: ignore[attr-defined]
    pool.close()
    assert all(e.closed for e in factory.made) and pool.loaded() == []


def test_the_memory_check_refuses_this_time_only(files, monkeypatch):
    factory = Factory()
    pool = ModelPool(files, max_loaded=2, engine_factory=factory)
    pool.lease("a").release()
    seen: list[int] = []

    def one_byte_free() -> int:
        seen.append(len(pool.loaded()))
        return 1

    monkeypatch.setattr(pool_module, "available_memory", one_byte_free)
    pool.max_loaded = 1
    with pytest.raises(ModelUnavailable, match="not enough memory") as e:
        pool.lease("b")
    assert not e.value.lasting and pool.unavailable("b") is None
    assert seen == [0]  # checked after the idle model made room
    monkeypatch.setattr(pool_module, "available_memory", lambda: None)  # unknown: try
    pool.lease("b").release()
    assert factory.loads("b") == 1


def test_a_file_the_engine_cannot_run_is_marked_once(files, caplog):
    factory = Factory()
    pool = ModelPool(files, engine_factory=factory)
    with pytest.raises(ModelUnavailable, match="unsupported architecture") as e:
        pool.lease("bad")
    assert e.value.lasting and "unsupported architecture" in pool.unavailable("bad:latest")
    with pytest.raises(ModelUnavailable):
        pool.lease("bad")
    assert factory.made == []
    assert len([r for r in caplog.records if "cannot run" in r.getMessage()]) == 1
    with pytest.raises(ModelNotFound):
        pool.lease("nope")
    pool.check(lambda path: "too new" if path.stem == "c" else None)
    assert pool.unavailable("c") == "too new" and pool.unavailable("a") is None


def test_concurrent_acquires_load_once(files):
    factory = Factory()
    pool = ModelPool(files, engine_factory=factory, keep_alive=60.0)

    async def main() -> None:
        leases = await asyncio.gather(*(pool.acquire("a", keep_alive=0.5) for _ in range(4)))
        assert len({id(lease.engine) for lease in leases}) == 1
        assert pool.get_loaded("a").refs == 4 and pool.get_loaded("a").keep_alive == 0.5
        for lease in leases:
            lease.release()
            lease.release()  # idempotent
        assert pool.get_loaded("a").refs == 0
        await pool.aunload("a")
        await pool.aclose()

    asyncio.run(main())
    assert factory.loads("a") == 1 and factory.made[0].closed and pool.loaded() == []


def test_the_gateway_provider_is_a_thin_layer_over_the_pool(files, monkeypatch):
    factory = Factory()
    resolved: list[str] = []

    def resolver(name: str) -> Path:
        resolved.append(name)
        if name not in files:
            raise LookupError(f"{name} is in no store")
        return files[name]

    pool = ModelPool(resolver=resolver, max_loaded=1, engine_factory=factory)
    native = NativeBackend(Config(), pool=pool)
    native.lease("a").release()
    native.lease("a").release()
    assert resolved == ["a"]  # a loaded model is not resolved again
    native.lease("b").release()  # the pool's eviction, not the provider's
    assert [m.name for m in pool.loaded()] == ["b"] and factory.made[0].closed
    with pytest.raises(CannotServe, match="not available here: nope is in no store"):
        native.lease("nope")
    with pytest.raises(CannotServe, match="cannot run 'bad'.*unsupported"):
        native.lease("bad")
    monkeypatch.setattr(pool_module, "available_memory", lambda: 1)
    with pytest.raises(CannotServe, match="not enough memory"):
        native.lease("c")


def test_the_gateway_and_the_server_hold_the_same_pool_class(tiny, tmp_path):
    from pyengine.server.app import create_app
    from pyengine.server.targets import make_chain

    app = create_app({"tiny": tiny}, config=Config(ollama_host="http://127.0.0.1:9"))
    assert type(app.state.models) is ModelPool
    chain = make_chain(app.state.config, app.state.models, CostLedger(tmp_path / "l.sqlite"))
    assert isinstance(chain.native, NativeBackend) and chain.native.pool is app.state.models
    store_backed = NativeBackend(Config())
    assert type(store_backed.pool) is ModelPool
