# Copied from the shared bench folder (the load generator every peer is measured with).
"""Closed-loop load generator for any OpenAI-compatible /v1/embeddings server.

C concurrent clients each send requests of B inputs drawn from a real-text corpus
(Python's own pydoc topics, which nobody here wrote), for a fixed number of requests.
Every response is checked for shape; the result is one JSON line.

usage: load.py URL MODEL [--concurrency C] [--batch B] [--requests N] [--format float|base64]
"""
import argparse, asyncio, base64, json, random, re, statistics, struct, sys, time

import aiohttp


def corpus(seed=0, n=4000):
    import pydoc_data.topics as t
    text = " ".join(t.topics.values())
    sents = [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if 20 <= len(s.strip()) <= 600]
    rnd = random.Random(seed)
    rnd.shuffle(sents)
    return sents[:n]


async def client(session, url, model, fmt, batches, lat, errors, counts):
    for inputs in batches:
        body = {"model": model, "input": inputs}
        if fmt:
            body["encoding_format"] = fmt
        t0 = time.perf_counter()
        try:
            async with session.post(url, json=body) as r:
                data = await r.json(content_type=None)
                if r.status != 200:
                    errors.append(f"{r.status}: {str(data)[:200]}")
                    continue
        except Exception as e:  # noqa: BLE001 - a load tool counts every failure
            errors.append(repr(e)[:200])
            continue
        lat.append(time.perf_counter() - t0)
        items = data["data"]
        if len(items) != len(inputs):
            errors.append(f"got {len(items)} embeddings for {len(inputs)} inputs")
            continue
        for it in items:
            e = it["embedding"]
            if isinstance(e, str):
                n = len(base64.b64decode(e)) // 4
            else:
                n = len(e)
            counts["dims"].add(n)
        counts["inputs"] += len(inputs)
        counts["tokens"] += data.get("usage", {}).get("prompt_tokens", 0)


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("url")
    ap.add_argument("model")
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--requests", type=int, default=400)
    ap.add_argument("--format", default=None)
    a = ap.parse_args()
    sents = corpus()
    rnd = random.Random(1)
    reqs = [[rnd.choice(sents) for _ in range(a.batch)] for _ in range(a.requests)]
    per = [reqs[i::a.concurrency] for i in range(a.concurrency)]
    lat, errors, counts = [], [], {"inputs": 0, "tokens": 0, "dims": set()}
    conn = aiohttp.TCPConnector(limit=a.concurrency)
    async with aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=600)) as s:
        t0 = time.perf_counter()
        await asyncio.gather(*(client(s, a.url, a.model, a.format, b, lat, errors, counts) for b in per))
        wall = time.perf_counter() - t0
    lat.sort()
    q = lambda p: round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 2) if lat else None
    print(json.dumps({
        "concurrency": a.concurrency, "batch": a.batch, "requests": a.requests,
        "ok": len(lat), "errors": len(errors), "first_error": errors[0] if errors else None,
        "wall_s": round(wall, 3), "inputs_per_s": round(counts["inputs"] / wall, 1),
        "tokens_per_s": round(counts["tokens"] / wall, 1), "dims": sorted(counts["dims"]),
        "p50_ms": q(0.5), "p95_ms": q(0.95), "p99_ms": q(0.99),
    }))
    return 0 if not errors else 1


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
