"""Rerank parity and throughput on POST /v1/rerank: the largest |score - sentence-transformers'| over the
fixture's reference pairs (tests/data/cross-encoder-tiny.reference.json; on the server it starts, not with
--url), then query-document pairs per second at 1 and 8 concurrent clients.

Each client sends requests of one query and `--docs` documents, sentences of Python's pydoc topics (real text
nobody here wrote), closed loop, for `--seconds` per concurrency after a warm-up. Every answer is checked (one
result per document, each index once). One JSON line per concurrency.

usage: python bench/rerank.py [--url URL --model ID] [--threads 2] [--docs 10] [--seconds 10]
Without --url it starts a cortex server with the fixture cross-encoder (tests/data/cross-encoder-tiny).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import statistics
import sys
import threading
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from common import cortex_server

DATA = Path(__file__).parents[1] / "tests" / "data"
FIXTURE = DATA / "cross-encoder-tiny"


def corpus(seed: int = 0, n: int = 4000) -> list[str]:
    import pydoc_data.topics as t

    text = " ".join(t.topics.values())
    sents = [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if 20 <= len(s.strip()) <= 600]
    random.Random(seed).shuffle(sents)
    return sents[:n]


def parity(url: str, model: str) -> dict:
    """Max |score - reference| over the reference pairs, raw and sigmoid, and for the long pair cut."""
    ref = json.loads((DATA / "cross-encoder-tiny.reference.json").read_text())
    worst = {"raw": 0.0, "sigmoid": 0.0}
    with httpx.Client(base_url=url, timeout=120) as c:
        for p in ref["pairs"]:
            for kind in worst:
                body = {"model": model, "query": p["query"], "documents": [p["document"]], "raw_scores": kind == "raw"}
                got = c.post("/v1/rerank", json=body).raise_for_status().json()["results"][0]["relevance_score"]
                worst[kind] = max(worst[kind], abs(got - p[kind]))
        long = ref["long"]
        body = {"model": model, "query": long["query"], "documents": [long["document"]], "raw_scores": True}
        got = c.post("/v1/rerank", json={**body, "truncate": True}).raise_for_status().json()["results"][0]
    return {
        "pairs": len(ref["pairs"]),
        "max_abs_diff_raw": float(f"{worst['raw']:.3g}"),
        "max_abs_diff_sigmoid": float(f"{worst['sigmoid']:.3g}"),
        "long_pair_truncated_abs_diff": float(f"{abs(got['relevance_score'] - long['raw_truncated']):.3g}"),
    }


def run(url: str, model: str, clients: int, docs: int, seconds: float) -> dict:
    sents = corpus()
    stop = threading.Event()
    lock = threading.Lock()
    lat: list[float] = []
    totals = {"pairs": 0, "tokens": 0, "errors": 0}
    first_error: list[str] = []

    def client(seed: int) -> None:
        rng = random.Random(seed)
        with httpx.Client(base_url=url, timeout=120) as c:
            while not stop.is_set():
                body = {"model": model, "query": rng.choice(sents), "documents": rng.sample(sents, docs)}
                body |= {"return_documents": False, "truncate": True}  # a few pairs exceed the fixture's 256
                t0 = time.perf_counter()
                r = c.post("/v1/rerank", json=body)
                took = time.perf_counter() - t0
                ok = r.status_code == 200 and sorted(x["index"] for x in r.json()["results"]) == list(range(docs))
                with lock:
                    if not ok:
                        totals["errors"] += 1
                        first_error.append(f"{r.status_code}: {r.text[:200]}")
                        continue
                    lat.append(took)
                    totals["pairs"] += docs
                    totals["tokens"] += r.json()["usage"]["total_tokens"]

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    time.sleep(min(2.0, seconds / 4))  # warm-up: the counts start after it
    with lock:
        lat.clear()
        totals.update(pairs=0, tokens=0, errors=0)
    t0 = time.perf_counter()
    time.sleep(seconds)
    with lock:
        wall = time.perf_counter() - t0
        pairs, tokens, errors, done = totals["pairs"], totals["tokens"], totals["errors"], sorted(lat)
    stop.set()
    for t in threads:
        t.join()
    return {
        "clients": clients,
        "docs_per_request": docs,
        "requests": len(done),
        "errors": errors,
        "first_error": first_error[0] if first_error else None,
        "pairs_per_s": round(pairs / wall, 1),
        "tokens_per_s": round(tokens / wall, 1),
        "mean_pair_tokens": round(tokens / pairs, 1) if pairs else None,
        "p50_ms": round(statistics.median(done) * 1000, 1) if done else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", help="a running server (default: start one with the fixture cross-encoder)")
    ap.add_argument("--model", default="ce:tiny")
    ap.add_argument("--threads", type=int, default=2, help="CORTEX_N_THREADS of the server started here")
    ap.add_argument("--docs", type=int, default=10)
    ap.add_argument("--seconds", type=float, default=10)
    a = ap.parse_args()
    if a.url:
        throughput(a.url, a)
        return
    with cortex_server({a.model: {"model_path": str(FIXTURE)}}, a.threads, "bench-rerank-") as (_, url):
        print(json.dumps({"parity": parity(url, a.model)}), flush=True)
        throughput(url, a)


def throughput(url: str, a: argparse.Namespace) -> None:
    for clients in (1, 8):
        print(json.dumps(run(url, a.model, clients, a.docs, a.seconds)), flush=True)


if __name__ == "__main__":
    main()
