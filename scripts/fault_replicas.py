"""A replica killed under load: C clients stream completions from ``pyengine serve
--replicas N`` for D seconds; at K seconds one replica process is killed (SIGKILL). Reports
every request's outcome (ok, an error the client saw, or a hang past the client's timeout),
the requests the ingress failed over to another replica, and when the service had all its
replicas serving again.

    python scripts/fault_replicas.py MODEL [--replicas 2] [--clients 4] [--seconds 60]
        [--kill-at 20] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import ollama

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_replicas import start_server, stop_server  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model")
    ap.add_argument("--replicas", type=int, default=2)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--kill-at", type=float, default=20)
    ap.add_argument("--timeout", type=float, default=60, help="each client request's timeout")
    ap.add_argument("--port", type=int, default=11720)
    ap.add_argument("--router", choices=("prefix", "default"), default="prefix")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    name = Path(args.model).stem
    url = f"http://127.0.0.1:{args.port}"
    proc = start_server(args.model, args.port, args.replicas, args.router,
                        max(1, (os.cpu_count() or 1) // args.replicas))
    outcomes: list[dict] = []
    lock = threading.Lock()
    stop = threading.Event()

    def client(k: int) -> None:
        oc = ollama.Client(host=url, timeout=args.timeout)
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                text = "".join(p.response for p in oc.generate(
                    model=name, prompt=f"Tell story {k} number {t0}", stream=True,
                    options={"num_predict": 48, "temperature": 0}))
                outcome = "ok" if text else "empty"
            except httpx.TimeoutException:
                outcome = "timeout"
            except (ollama.ResponseError, httpx.HTTPError) as e:
                outcome = f"error: {type(e).__name__}: {str(e)[:80]}"
            with lock:
                outcomes.append({"t": round(t0 - start, 2), "s": round(time.monotonic() - t0, 2),
                                 "outcome": outcome})

    try:
        start = time.monotonic()
        threads = [threading.Thread(target=client, args=(k,)) for k in range(args.clients)]
        for t in threads:
            t.start()
        time.sleep(args.kill_at)
        victim = httpx.post(f"{url}/api/generate", timeout=60, json={
            "model": name, "prompt": "who", "stream": False,
            "options": {"num_predict": 1}}).headers["x-pyengine-replica"]
        os.kill(int(victim), signal.SIGKILL)
        killed = time.monotonic()

        def probe(i: int) -> str | None:
            try:
                r = httpx.post(f"{url}/api/generate", timeout=30, json={
                    "model": name, "prompt": f"probe {i} {time.time()}", "stream": False,
                    "options": {"num_predict": 8}})
                return r.headers.get("x-pyengine-replica") if r.status_code == 200 else None
            except httpx.HTTPError:
                return None

        recovered = None
        first_seen: dict[str, float] = {}
        with ThreadPoolExecutor(6) as pool:
            while time.monotonic() - killed < 120 and len(set(first_seen) - {victim}) < args.replicas:
                for p in pool.map(probe, range(6)):
                    if p and p not in first_seen:
                        first_seen[p] = round(time.monotonic() - killed, 1)
            if len(set(first_seen) - {victim}) >= args.replicas:
                recovered = max(t for p, t in first_seen.items() if p != victim)
        time.sleep(max(0.0, start + args.seconds - time.monotonic()))
        stop.set()
        for t in threads:
            t.join(timeout=args.timeout + 30)
        hung = sum(t.is_alive() for t in threads)
        cluster = httpx.get(f"{url}/api/pyengine/cluster", timeout=30).json()
    finally:
        stop.set()
        stop_server(proc)
    errors = [o for o in outcomes if o["outcome"] != "ok"]
    report = {"requests": len(outcomes), "ok": len(outcomes) - len(errors),
              "errors_seen_by_clients": len(errors), "timeouts": sum(o["outcome"] == "timeout" for o in outcomes),
              "empty": sum(o["outcome"] == "empty" for o in outcomes), "hung_clients": hung,
              "failed_over": cluster["failovers"], "failed_at_ingress": cluster["failed"],
              "all_replicas_serving_after_s": recovered, "replicas_first_answered_s": first_seen,
              "killed": victim, "errors": errors[:10]}
    print(json.dumps(report, indent=1))
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0 if hung == 0 and report["empty"] == 0 and report["timeouts"] == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
