"""Concurrent requests share engine batches, yet each gets its own vectors, in its own order."""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np

from tests.e2e.helpers import MODEL

WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "river",
    "mountain",
    "cloud",
    "engine",
    "paper",
    "garden",
    "window",
    "music",
    "light",
    "stone",
]


def _texts(seed: int, n: int) -> list[str]:
    rnd = random.Random(seed)
    return [" ".join(rnd.choice(WORDS) for _ in range(rnd.randint(3, 40))) + f" #{seed}-{i}" for i in range(n)]


def test_concurrent_requests_get_their_own_vectors_in_order(server) -> None:
    requests = [_texts(seed, 1 + seed % 5) for seed in range(16)]
    with httpx.Client(base_url=server.base_url, timeout=300) as c:

        def embed(texts: list[str]) -> tuple[np.ndarray, int]:
            body = c.post("/v1/embeddings", json={"model": MODEL, "input": texts}).json()
            assert [d["index"] for d in body["data"]] == list(range(len(texts)))
            return np.array([d["embedding"] for d in body["data"]], dtype=np.float32), body["usage"]["prompt_tokens"]

        alone = [embed([t]) for texts in requests for t in texts]
        with ThreadPoolExecutor(12) as pool:
            together = list(pool.map(embed, requests))
    flat_alone = np.concatenate([v for v, _ in alone])
    flat_together = np.concatenate([v for v, _ in together])
    cos = np.sum(flat_alone * flat_together, axis=1)
    assert cos.min() >= 0.997  # each row is its own text's vector (others' would be far lower)
    assert sum(n for _, n in together) == sum(n for _, n in alone)
    # and a row is closer to its own single vector than to any other text's
    sims = flat_together @ flat_alone.T
    assert (np.argmax(sims, axis=1) == np.arange(len(flat_alone))).all()
