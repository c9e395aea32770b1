"""Soak: many clients, mixed good and bad requests, for minutes; no unexpected answer, flat memory.

    .venv/bin/python bench/soak.py [--minutes 10] [--clients 32]

Starts cortex (default configuration, every check on) with all-minilm, then CLIENTS clients send, for
MINUTES, a mix: good requests of 1-16 real sentences (float or base64, some with `dimensions` or token
ids) and bad ones (empty input, unknown model, wrong types, broken JSON, bad dimensions), each with its
expected status. Prints requests by kind, unexpected answers (should be 0), throughput, and the
server's resident memory after warm-up (the first 10% of the time) and at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from collections import Counter
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import cortex_server, process_rss_mib  # noqa: E402
from load import corpus  # noqa: E402

from cortex.config import available_cores  # noqa: E402

M = "all-minilm"


def make_request(rnd: random.Random, sents: list[str]) -> tuple[str, bytes | dict, int]:
    """(kind, body, expected status)."""
    roll = rnd.random()
    if roll < 0.7:
        body = {"model": M, "input": [rnd.choice(sents)[:400] for _ in range(rnd.randint(1, 16))], "truncate": True}
        if rnd.random() < 0.5:
            body["encoding_format"] = "base64"
        if rnd.random() < 0.2:
            body["dimensions"] = rnd.choice([32, 128, 384])
        if rnd.random() < 0.1:
            body["input"] = [[101, *(rnd.randrange(1000, 30000) for _ in range(rnd.randint(1, 60))), 102]]
        return "good", body, 200
    bad = [
        ("empty input", {"model": M, "input": ""}, 400),
        ("unknown model", {"model": "ghost:1", "input": "x"}, 404),
        ("wrong type", {"model": M, "input": [1, "a"]}, 400),
        ("broken json", b'{"model": "all-minilm", "input": ', 400),
        ("bad dimensions", {"model": M, "input": "x", "dimensions": 0}, 400),
        ("out of vocabulary", {"model": M, "input": [[101, 10**9]]}, 400),
        ("too deep", b'{"model":"all-minilm","input":' + b"[" * 100 + b"]" * 100 + b"}", 400),
    ]
    return rnd.choice(bad)


async def client(base: str, seed: int, until: float, sents: list[str], stats: Counter, problems: list) -> None:
    rnd = random.Random(seed)
    async with httpx.AsyncClient(base_url=base, timeout=120) as c:
        while time.monotonic() < until:
            kind, body, expected = make_request(rnd, sents)
            if isinstance(body, bytes):
                r = await c.post("/v1/embeddings", content=body, headers={"content-type": "application/json"})
            else:
                r = await c.post("/v1/embeddings", json=body)
            stats[kind] += 1
            if r.status_code != expected:
                problems.append((kind, r.status_code, r.text[:200]))


async def run(base: str, clients: int, seconds: float, pid: int) -> tuple[Counter, list, list]:
    sents = corpus()
    stats: Counter = Counter()
    problems: list = []
    samples: list[tuple[float, float]] = []
    start = time.monotonic()
    until = start + seconds

    async def sampler() -> None:
        while time.monotonic() < until:
            samples.append((time.monotonic() - start, process_rss_mib(pid)))
            await asyncio.sleep(max(1.0, seconds / 60))

    await asyncio.gather(sampler(), *(client(base, i, until, sents, stats, problems) for i in range(clients)))
    return stats, problems, samples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--clients", type=int, default=32)
    args = ap.parse_args()
    with cortex_server({"all-minilm": {}}, available_cores(), prefix="cortex-soak-") as (proc, base):
        stats, problems, samples = asyncio.run(run(base, args.clients, args.minutes * 60, proc.pid))
        alive = proc.poll() is None
    total = sum(stats.values())
    print(f"{args.clients} clients for {args.minutes:g} min: {total} requests ({total / (args.minutes * 60):.1f}/s)")
    print("by kind:", dict(stats.most_common()))
    print(f"unexpected answers: {len(problems)}", problems[:5] if problems else "")
    print(f"server alive at the end: {alive}")
    warm = next(rss for t, rss in samples if t >= args.minutes * 6)
    peak_after = max(rss for t, rss in samples if t >= args.minutes * 6)
    print(f"RSS after warm-up {warm:.1f} MiB, at the end {samples[-1][1]:.1f} MiB, peak after warm-up "
          f"{peak_after:.1f} MiB ({100 * (peak_after - warm) / warm:+.1f}%)")  # fmt: skip


if __name__ == "__main__":
    main()
