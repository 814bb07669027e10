"""Replicas on Ray Serve (``pyengine serve --replicas N``): the official ``ollama`` and
``openai`` clients get the single server's answers, streaming and not, through the ingress;
requests that share a prompt prefix go where it is cached (as many prefix tokens computed as one
replica computes); a replica killed under load costs no hang and no silent loss, and the
service recovers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

pytest.importorskip("ray.serve")

import ollama  # noqa: E402
import openai  # noqa: E402

from pyengine.server.app import create_app  # noqa: E402
from pyengine.server.testing import ServerThread, free_port, wait_until_up  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from bench_replicas import run_workload, text_of  # noqa: E402

from pyengine import _core  # noqa: E402

CTX = 2048


class Cluster:
    """``pyengine serve --replicas N`` in its own process group, stopped with SIGINT (Ray
    Serve drains and shuts down), whatever is left of Ray stopped after it."""

    def __init__(self, models: dict, replicas: int = 2, router: str = "prefix",
                 args: tuple = (), env: dict | None = None):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = open(os.devnull, "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "pyengine", "serve", "--host", "127.0.0.1", "--port",
             str(self.port), "--ctx", str(CTX), "--threads", "1", "--keep-alive", "-1",
             "--replicas", str(replicas), "--router", router, *args,
             *(f"{n}={p}" for n, p in models.items())],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, **(env or {})},
            cwd=str(Path(models[next(iter(models))]).parent))
        try:
            wait_until_up(self.url, 300, self.proc)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGINT)  # drains, then shuts its Ray cluster down
            try:
                self.proc.wait(timeout=90)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.log.close()


@pytest.fixture(scope="module")
def long_tiny(make_model) -> Path:
    return make_model("tiny", "q8_0", context_length=8192)


@pytest.fixture(scope="module")
def cluster(long_tiny):
    c = Cluster({"tiny": long_tiny})
    yield c
    c.stop()


@pytest.fixture(scope="module")
def single(long_tiny):
    with ServerThread(create_app({"tiny": long_tiny}, n_threads=1, n_ctx=CTX,
                                 keep_alive=-1)) as s:
        yield s


def test_official_clients_get_the_single_servers_answers(cluster, single):
    opts = {"num_predict": 12, "temperature": 0}
    msgs = [{"role": "user", "content": "Name three rivers."}]
    answers = []
    for url in (single.url, cluster.url):
        oc = ollama.Client(host=url)
        gen = oc.generate(model="tiny", prompt="Once upon a time", options=opts).response
        gen_stream = "".join(p.response for p in oc.generate(
            model="tiny", prompt="Once upon a time", options=opts, stream=True))
        chat_stream = "".join(p.message.content for p in oc.chat(
            model="tiny", messages=msgs, options=opts, stream=True))
        ai = openai.OpenAI(base_url=f"{url}/v1", api_key="unused")
        chat = ai.chat.completions.create(model="tiny", messages=msgs, max_tokens=12,
                                          temperature=0).choices[0].message.content
        chat_sse = "".join(ch.choices[0].delta.content or "" for ch in ai.chat.completions.create(
            model="tiny", messages=msgs, max_tokens=12, temperature=0, stream=True)
            if ch.choices)
        answers.append((gen, gen_stream, chat_stream, chat, chat_sse))
        assert gen and gen == gen_stream and chat == chat_sse == chat_stream
    assert answers[0] == answers[1]
    # Errors come through as the server gives them.
    r = httpx.post(f"{cluster.url}/api/generate", json={"model": "nope", "prompt": "x"})
    assert r.status_code == 404 and "error" in r.json()
    r = httpx.post(f"{cluster.url}/api/chat", content=b"{not json")
    assert r.status_code == 400


def test_each_tier_its_own_deployment_and_replica_count(make_model):
    # Two models, each a deployment: "big" (the quality tier) with 2 replicas, "small" (the
    # fast tier) with 1. Tier names resolve at the ingress as the server resolves them.
    big, small = make_model("tiny", "q8_0"), make_model("tiny-tied", "q8_0")
    c = Cluster({"big": big, "small": small}, replicas=1,
                args=("--model-replicas", "quality=2"),
                env={"OLLAMA_QUALITY_MODEL": "big", "OLLAMA_FAST_MODEL": "small"})
    try:
        def pid(model: str, i: int) -> str:
            r = httpx.post(f"{c.url}/api/generate", timeout=60, json={
                "model": model, "prompt": f"hello {i} {time.time()}", "stream": False,
                "options": {"num_predict": 16}})
            assert r.status_code == 200, r.text
            return r.headers["x-pyengine-replica"]

        with ThreadPoolExecutor(6) as pool:
            quality = set(pool.map(lambda i: pid("quality", i), range(24)))
            by_name = set(pool.map(lambda i: pid("big", i), range(24)))
            fast = set(pool.map(lambda i: pid("fast", i), range(12)))
            small_ = set(pool.map(lambda i: pid("small", i), range(12)))
        assert len(quality | by_name) == 2  # the quality tier's two replicas
        assert fast == small_ and len(fast) == 1  # the fast tier's one
        assert not (quality | by_name) & fast
        # The replica answered for the tier's model.
        r = httpx.post(f"{c.url}/api/generate", timeout=60, json={
            "model": "fast", "prompt": "hi", "stream": False, "options": {"num_predict": 2}})
        assert r.json()["model"] == "small"
    finally:
        c.stop()


def test_autoscaled_deployments_serve_and_bad_counts_are_refused(make_model):
    big, small = make_model("tiny", "q8_0"), make_model("tiny-tied", "q8_0")
    c = Cluster({"big": big, "small": small}, args=("--autoscale", "1:2"))
    try:
        for model in ("big", "small"):
            r = httpx.post(f"{c.url}/api/generate", timeout=60, json={
                "model": model, "prompt": "hi", "stream": False, "options": {"num_predict": 2}})
            assert r.status_code == 200 and r.json()["model"] == model
    finally:
        c.stop()
    for args in (("--model-replicas", "nosuch=2"), ("--model-replicas", "big=x"),
                 ("--autoscale", "3:1")):
        proc = subprocess.run([sys.executable, "-m", "pyengine", "serve", *args,
                               f"big={big}", f"small={small}"], capture_output=True, text=True,
                              timeout=120, cwd=str(Path(big).parent))
        assert proc.returncode != 0 and ("--model-replicas" in proc.stderr
                                         or "--autoscale" in proc.stderr), proc.stderr[-500:]


def test_metrics_of_every_replica_and_the_routing_counters(cluster):
    import re

    httpx.post(f"{cluster.url}/api/generate", timeout=60, json={
        "model": "tiny", "prompt": "count me", "stream": False, "options": {"num_predict": 2}})
    deadline = time.monotonic() + 30
    while True:  # replicas post every 2 s
        text = httpx.get(f"{cluster.url}/metrics", timeout=30).text
        replicas = set(re.findall(r'pyengine_build_info\{replica="(\d+)"', text))
        if len(replicas) == 2 or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert len(replicas) == 2, text[:2000]
    assert "pyengine_cluster_replicas 2" in text
    routed = int(re.search(r"^pyengine_cluster_requests_routed_total (\d+)$", text, re.M).group(1))
    assert routed >= 1
    # Every family's TYPE line comes once, before its samples.
    types = re.findall(r"^# TYPE (\S+) ", text, re.M)
    assert len(types) == len(set(types))


def test_merged_metrics_label_each_replica():
    from pyengine.cluster.metrics import merge

    one = '# HELP up Up.\n# TYPE up gauge\nup 1\n# TYPE req counter\nreq_total{model="a"} 3\n'
    text = merge({"11": one, "12": one.replace(" 3", " 4")}, {"routed": 5}, 1, 0)
    assert text.count("# TYPE up gauge") == 1
    assert 'up{replica="11"} 1' in text and 'up{replica="12"} 1' in text
    assert 'req_total{replica="12",model="a"} 4' in text
    assert "pyengine_cluster_requests_routed_total 5" in text
    assert "pyengine_cluster_failovers_total 1" in text


def test_shared_prefixes_are_computed_once_as_on_one_replica(cluster, single, long_tiny):
    # 3 prefixes of about 256 tokens x 4 suffixes, one request at a time in a shuffled order:
    # one replica computes each prefix once; the router must send every repeat to the replica
    # that has it, so the two replicas together compute no more.
    tok = _core.Tokenizer(str(long_tiny))
    prefixes = [text_of(tok, 50 + i, 256) for i in range(3)]
    lengths = [len(tok.tokenize(p, True, False)) for p in prefixes]
    jobs = [(prefixes[i] + f" question {j}: " + text_of(tok, 90 + 4 * i + j, 12), lengths[i])
            for i in range(3) for j in range(4)]
    order = [5, 0, 11, 3, 8, 1, 10, 6, 2, 9, 4, 7]
    jobs = [jobs[k] for k in order]
    before = httpx.get(f"{cluster.url}/api/pyengine/cluster").json()["routing"]
    one = run_workload(int(single.url.rsplit(":", 1)[1]), "tiny", jobs, 1)
    two = run_workload(cluster.port, "tiny", jobs, 1)
    after = httpx.get(f"{cluster.url}/api/pyengine/cluster").json()["routing"]
    assert one["prefix_tokens_computed"] > 0
    assert two["prefix_tokens_computed"] == one["prefix_tokens_computed"]
    assert after["keyed"] - before["keyed"] == len(jobs)
    assert after["prefix_hits"] - before["prefix_hits"] == len(jobs) - len(prefixes)


def test_a_replica_killed_under_load_costs_no_hang(cluster):
    # The module's cluster: this test runs last in the module.
    results: list[str] = []
    stop = threading.Event()
    lock = threading.Lock()

    def client(k: int) -> None:
        oc = ollama.Client(host=cluster.url, timeout=60)
        while not stop.is_set():
            try:
                text = "".join(p.response for p in oc.generate(
                    model="tiny", prompt=f"story {k} {time.time()}", stream=True,
                    options={"num_predict": 64, "temperature": 0}))
                outcome = "ok" if text else "empty"
            except (ollama.ResponseError, httpx.HTTPError) as e:
                outcome = f"error: {e}"
            with lock:
                results.append(outcome)

    threads = [threading.Thread(target=client, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    time.sleep(5)
    victim = int(httpx.post(f"{cluster.url}/api/generate", timeout=60, json={
        "model": "tiny", "prompt": "who", "stream": False,
        "options": {"num_predict": 1}}).headers["x-pyengine-replica"])
    os.kill(victim, signal.SIGKILL)
    killed_at = time.monotonic()
    time.sleep(10)
    stop.set()
    for t in threads:
        t.join(timeout=90)
    assert not any(t.is_alive() for t in threads)  # nothing hung past the client timeout
    errors = [r for r in results if r != "ok"]
    assert "empty" not in results  # a failure is an error the client sees, never silence
    assert len(results) - len(errors) > 0
    # Recovery: Ray restarts the replica; within 30 s of the kill both serve again. (Idle,
    # Ray Serve sends one request at a time to the same replica: batches of concurrent
    # requests show both.)
    def one(i: int) -> str | None:
        r = httpx.post(f"{cluster.url}/api/generate", timeout=30, json={
            "model": "tiny", "prompt": f"again {i} {time.time()}", "stream": False,
            "options": {"num_predict": 16}})
        return r.headers["x-pyengine-replica"] if r.status_code == 200 else None

    deadline = killed_at + 30
    seen: set[str] = set()
    with ThreadPoolExecutor(6) as pool:
        while time.monotonic() < deadline and len(seen) < 2:
            seen |= {pid for pid in pool.map(one, range(6)) if pid}
    assert len(seen) == 2 and str(victim) not in seen
    stats = httpx.get(f"{cluster.url}/api/pyengine/cluster").json()
    assert stats["failovers"] + stats["failed"] >= len(errors)
