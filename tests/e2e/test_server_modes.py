"""Servers started with non-default settings."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from tests.e2e.helpers import ServerProcess

TEXTS = [
    "embedding",
    "The quick brown fox jumps over the lazy dog.",
    "A man is eating food.",
    "Ünïcödé — naïve café résumé",
]


def test_batch_invariant_mode_and_graceful_exit(tmp_path: Path, gemma_gguf: Path) -> None:
    with ServerProcess(tmp_path / "data", CORTEX_LLAMA_MAX_BATCH_SEQS="1") as srv:
        with srv.client() as c:
            r = c.post("/v1/models/import", json={"model": "g:1", "model_path": str(gemma_gguf)})
            assert r.status_code == 200, r.text

            def embed(inp):
                body = c.post("/v1/embeddings", json={"model": "g:1", "input": inp}).json()
                return np.array([d["embedding"] for d in body["data"]], dtype=np.float32)

            single = np.concatenate([embed(t) for t in TEXTS])
            batched = embed(TEXTS * 3)
            with ThreadPoolExecutor(8) as pool:
                concurrent = list(pool.map(embed, [TEXTS] * 8))
        np.testing.assert_array_equal(batched, np.tile(single, (3, 1)))
        for got in concurrent:
            np.testing.assert_array_equal(got, single)
    assert srv.returncode == 0  # SIGTERM: graceful shutdown, exit status 0


def test_load_on_demand_off(tmp_path: Path, gemma_gguf: Path) -> None:
    with ServerProcess(tmp_path / "data", CORTEX_LOAD_ON_DEMAND="false") as srv:
        with srv.client() as c:
            assert c.post("/v1/models/import", json={"model": "g:1", "model_path": str(gemma_gguf)}).status_code == 200
            r = c.post("/v1/embeddings", json={"model": "g:1", "input": "x"})
            assert r.status_code == 409
            assert r.json()["error"]["code"] == "model_not_loaded"
            assert c.post("/v1/models/start", json={"model": "g:1"}).status_code == 200
            assert c.post("/v1/embeddings", json={"model": "g:1", "input": "x"}).status_code == 200
        assert (srv.data_dir / "config.yml").is_file()


def test_auto_truncate_serves_a_plain_openai_client(tmp_path: Path) -> None:
    """Issue 15: a plain OpenAI client cannot send `truncate`; with auto_truncate the server cuts its long
    input to the context, exactly as a request asking `truncate: true` is cut."""
    from openai import OpenAI

    long = "word " * 1000
    with ServerProcess(tmp_path / "data", CORTEX_AUTO_TRUNCATE="true") as srv:
        srv.import_models({"model": "all-minilm"})
        client = OpenAI(base_url=f"{srv.base_url}/v1", api_key="not-needed", max_retries=0)
        plain = client.embeddings.create(model="all-minilm", input=long)
        asked = client.embeddings.create(model="all-minilm", input=long, extra_body={"truncate": True})
        assert plain.usage.prompt_tokens == asked.usage.prompt_tokens == 256
        np.testing.assert_allclose(plain.data[0].embedding, asked.data[0].embedding, atol=1e-6)


def test_preloaded_models_are_loaded_at_start_and_ready_says_so(tmp_path: Path) -> None:
    """Issue 15: `preload_models` loads at start, and GET /ready (open, for probes) turns 200 once it has."""
    import time

    with ServerProcess(tmp_path / "data") as srv:
        srv.import_models({"model": "all-minilm"})
    with ServerProcess(tmp_path / "data", CORTEX_PRELOAD_MODELS="all-minilm") as srv, srv.client() as c:
        deadline = time.monotonic() + 60
        while (r := c.get("/ready")).status_code != 200:
            assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready", r.text
            assert time.monotonic() < deadline, "never ready"
            time.sleep(0.1)
        assert r.json()["models"] == ["all-minilm:l6-v2"]
        assert c.get("/v1/models/all-minilm").json()["status"] == "loaded"  # before any embeddings request
