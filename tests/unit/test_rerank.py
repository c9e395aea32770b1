"""Reranking in process, with a stub cross-encoder (real scores are tests/e2e/test_rerank.py's business):
ranking and top_n, every route's shape, the context rule and truncation, the model a TEI request without
`model` gets, malformed bodies, the wrong task both ways, and pairs of several requests batched together."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import httpx
import numpy as np
import pytest

from cortex.config import Settings
from cortex.errors import InvalidRequest
from cortex.runtime.rerank import Ranked, check_rerank, rank, sigmoid
from tests.unit.support import BOS, EOS, StubEngine, StubEngines, serve, write_model

pytestmark = pytest.mark.anyio

SEP = 3
R = "ce:1"  # a rerank model
E = "em:1"  # an embedding model
QUERY = "red fox"
DOCS = ["a red fox", "blue sky", "the fox", "red red fox jumps"]  # overlaps with the query: 2, 0, 1, 2


class StubPairEngine(StubEngine):
    """A cross-encoder without a model: `[BOS] query [SEP] document [EOS]`, one word a token; the logit of a
    pair is how many distinct query words the document holds. `truncate` cuts the document's end."""

    def tokenize_pairs(
        self, query: str, documents: Sequence[str], *, truncate: bool, doc_tokens: int | None = None
    ) -> tuple[list[list[int]], list[int]]:
        q = [self.word_id(w) for w in query.split()]
        out = []
        for doc in documents:
            d = [self.word_id(w) for w in doc.split()][:doc_tokens]
            if truncate:
                d = d[: max(0, self.n_ctx - len(q) - 3)]
            out.append([BOS, *q, SEP, *d, EOS])
        return out, [len(q) + 2] * len(out)

    def embed(self, seqs: Sequence[Sequence[int]], starts: Sequence[int] | None = None) -> np.ndarray:
        self.entered.set()
        self.gate.wait()
        self.batches.append([list(s) for s in seqs])
        rows = []
        for s, start in zip(seqs, starts or [], strict=True):  # the document begins where it is told
            rows.append([float(len(set(s[1 : start - 1]) & set(s[start:-1])))])
        return np.array(rows, dtype=np.float32)


def _logit(doc: str) -> float:
    return float(len(set(QUERY.split()) & set(doc.split())))


@pytest.fixture
def pair_engines(engines: StubEngines) -> StubEngines:
    engines.make = lambda record: (StubPairEngine if record.task == "rerank" else StubEngine)(
        n_embd=record.n_embd, n_ctx=record.ctx_len, max_batch_tokens=256, max_batch_seqs=64
    )
    return engines


@pytest.fixture
def stored(models_dir: Path) -> None:
    write_model(models_dir, R, task="rerank", n_embd=1, ctx_len=12, pooling="cls", normalize=False)
    write_model(models_dir, E, n_embd=8, ctx_len=16)


@pytest.fixture
async def api(settings: Callable[..., Settings], pair_engines: StubEngines, stored: None):
    async with serve(settings(max_inputs=5)) as client:
        yield client


# --- pure logic ---


def test_rank_sorts_by_score_then_index_and_cuts_to_top_n() -> None:
    scores = [0.5, 0.9, 0.5, 0.1, 0.9]
    assert rank(scores) == [Ranked(1, 0.9), Ranked(4, 0.9), Ranked(0, 0.5), Ranked(2, 0.5), Ranked(3, 0.1)]
    assert [r.index for r in rank(scores, 2)] == [1, 4]
    assert len(rank(scores, 99)) == 5


def test_sigmoid_is_exact_and_never_overflows() -> None:
    got = sigmoid(np.array([0.0, 2.0, -2.0, 1000.0, -1000.0], dtype=np.float32))
    assert (
        got[0] == 0.5 and math.isclose(got[1], 1 / (1 + math.exp(-2))) and math.isclose(got[2], 1 / (1 + math.exp(2)))
    )
    assert got[3] == 1.0 and got[4] == 0.0


@pytest.mark.parametrize(
    ("query", "docs", "top_n", "param"),
    [("", ["a"], None, "query"), ("q", [], None, "texts"), ("q", ["a"] * 4, None, "texts"), ("q", ["a"], 0, "top_n")],
)
def test_check_rerank_names_the_parameter(query: str, docs: list[str], top_n: int | None, param: str) -> None:
    with pytest.raises(InvalidRequest) as caught:
        check_rerank(query, docs, max_documents=3, top_n=top_n, docs_param="texts")
    assert caught.value.param == param


# --- the routes ---


async def test_v1_rerank_is_jinas_shape(api: httpx.AsyncClient) -> None:
    r = await api.post("/v1/rerank", json={"model": R, "query": QUERY, "documents": DOCS})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"model", "object", "results", "usage"} and (body["model"], body["object"]) == (R, "list")
    assert [x["index"] for x in body["results"]] == [0, 3, 2, 1]  # 2, 2 (by index), 1, 0
    for x in body["results"]:
        assert x["relevance_score"] == pytest.approx(1 / (1 + math.exp(-_logit(DOCS[x["index"]]))))
        assert x["document"] == {"text": DOCS[x["index"]]}  # Jina returns documents unless told not to
    n_tokens = sum(5 + len(d.split()) for d in DOCS)  # BOS, 2 query words, SEP, the document, EOS
    assert body["usage"] == {"prompt_tokens": n_tokens, "total_tokens": n_tokens}


async def test_v1_rerank_objects_top_n_raw_and_no_documents(api: httpx.AsyncClient) -> None:
    docs = [{"text": d} for d in DOCS]
    for route in ("/v1/rerank", "/v1/reranking", "/rerank"):  # llama-server's alias, and its /rerank with documents
        body = {
            "model": R,
            "query": QUERY,
            "documents": docs,
            "top_n": 2,
            "return_documents": False,
            "raw_scores": True,
        }
        r = await api.post(route, json=body)
        assert r.status_code == 200, (route, r.text)
        assert r.json()["results"] == [{"index": 0, "relevance_score": 2.0}, {"index": 3, "relevance_score": 2.0}]


async def test_v2_rerank_is_cohere_v2s_shape(api: httpx.AsyncClient) -> None:
    r = await api.post("/v2/rerank", json={"model": R, "query": QUERY, "documents": DOCS, "top_n": 3})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {"id", "results", "meta"} and len(body["id"]) == 36
    assert [x["index"] for x in body["results"]] == [0, 3, 2]
    assert set(body["results"][0]) == {"index", "relevance_score"}
    n_tokens = sum(5 + len(d.split()) for d in DOCS)
    assert body["meta"]["tokens"] == {"input_tokens": n_tokens} and body["meta"]["api_version"] == {"version": "2"}


async def test_tei_rerank_shape_and_default_model(api: httpx.AsyncClient, models_dir: Path) -> None:
    r = await api.post("/rerank", json={"query": QUERY, "texts": DOCS, "return_text": True, "raw_scores": True})
    assert r.status_code == 200, r.text  # no `model`: the only rerank model serves it
    assert r.json() == [
        {"index": 0, "score": 2.0, "text": DOCS[0]},
        {"index": 3, "score": 2.0, "text": DOCS[3]},
        {"index": 2, "score": 1.0, "text": DOCS[2]},
        {"index": 1, "score": 0.0, "text": DOCS[1]},
    ]
    plain = (await api.post("/rerank", json={"query": QUERY, "texts": DOCS, "model": R})).json()
    assert set(plain[0]) == {"index", "score"} and plain[0]["score"] == pytest.approx(1 / (1 + math.exp(-2)))
    write_model(models_dir, "ce:2", task="rerank", n_embd=1, ctx_len=12, pooling="cls")
    r = await api.post("/rerank", json={"query": QUERY, "texts": DOCS})  # ce:1 is loaded, but not the only one
    assert (r.status_code, r.json()["error"]["param"]) == (400, "model") and "ce:1, ce:2" in r.json()["error"][
        "message"
    ]


async def test_tei_without_a_rerank_model_says_to_import_one(
    settings: Callable[..., Settings], pair_engines: StubEngines, models_dir: Path
) -> None:
    write_model(models_dir, E, n_embd=8, ctx_len=16)
    async with serve(settings()) as api:
        r = await api.post("/rerank", json={"query": "q", "texts": ["a"]})
    assert r.status_code == 400 and "no rerank model" in r.json()["error"]["message"]


async def test_a_pair_over_the_context_is_a_400_or_cut(api: httpx.AsyncClient) -> None:
    long = " ".join(f"w{i}" for i in range(20))
    body = {"model": R, "query": QUERY, "documents": ["red", long]}
    r = await api.post("/v1/rerank", json=body)
    err = r.json()["error"]
    assert r.status_code == 400 and (err["code"], err["param"]) == ("context_length_exceeded", "documents")
    assert "document at index 1" in err["message"] and "12 tokens" in err["message"]
    r = await api.post("/rerank", json={"model": R, "query": QUERY, "texts": ["red", long]})
    assert r.json()["error"]["param"] == "texts"
    cut = await api.post("/v1/rerank", json={**body, "truncate": True})
    assert cut.status_code == 200 and cut.json()["usage"]["total_tokens"] == 6 + 12
    cohere = await api.post("/v2/rerank", json=body)  # Cohere cuts long documents itself
    assert cohere.status_code == 200
    refused = await api.post("/v2/rerank", json={**body, "truncate": False})
    assert refused.status_code == 400
    short = await api.post("/v2/rerank", json={**body, "max_tokens_per_doc": 2, "truncate": False})
    assert short.status_code == 200 and short.json()["meta"]["tokens"]["input_tokens"] == 6 + 7


async def test_auto_truncate_applies_when_the_request_does_not_say(
    settings: Callable[..., Settings], pair_engines: StubEngines, stored: None
) -> None:
    long = " ".join(f"w{i}" for i in range(20))
    async with serve(settings(auto_truncate=True)) as api:
        r = await api.post("/rerank", json={"query": QUERY, "texts": [long]})
        assert r.status_code == 200
        r = await api.post("/rerank", json={"query": QUERY, "texts": [long], "truncate": False})
        assert r.status_code == 400


@pytest.mark.parametrize(
    ("route", "body", "param"),
    [
        ("/v1/rerank", b"not json", None),
        ("/v1/rerank", b"[1, 2]", None),
        ("/v1/rerank", {"query": "q", "documents": ["a"]}, "model"),
        ("/v1/rerank", {"model": R, "documents": ["a"]}, "query"),
        ("/v1/rerank", {"model": R, "query": "q"}, "documents"),
        ("/v1/rerank", {"model": R, "query": "q", "documents": "a"}, "documents"),
        ("/v1/rerank", {"model": R, "query": "q", "documents": [1, 2]}, "documents"),
        ("/v1/rerank", {"model": R, "query": "q", "documents": [{"txt": "a"}]}, "documents"),
        ("/v1/rerank", {"model": R, "query": 7, "documents": ["a"]}, "query"),
        ("/v1/rerank", {"model": R, "query": "", "documents": ["a"]}, "query"),
        ("/v1/rerank", {"model": R, "query": "q", "documents": []}, "documents"),
        ("/v1/rerank", {"model": R, "query": "q", "documents": ["a"] * 6}, "documents"),
        ("/v1/rerank", {"model": R, "query": "q", "documents": ["a"], "top_n": 0}, "top_n"),
        ("/v1/rerank", {"model": R, "query": "q", "documents": ["a"], "top_n": "2"}, "top_n"),
        ("/v1/rerank", {"model": R, "query": "q", "documents": ["a"], "return_documents": "yes"}, "return_documents"),
        ("/v2/rerank", {"model": R, "query": "q", "documents": [{"text": "a"}]}, "documents"),
        ("/v2/rerank", {"model": R, "query": "q", "documents": ["a"], "max_tokens_per_doc": 0}, "max_tokens_per_doc"),
        ("/rerank", {"query": "q"}, "texts"),
        ("/rerank", {"query": "q", "texts": []}, "texts"),
        ("/rerank", {"query": "q", "texts": ["a"], "truncation_direction": "Left"}, "truncation_direction"),
        ("/rerank", {"query": "q", "texts": ["a"], "raw_scores": 1}, "raw_scores"),
    ],
)
async def test_malformed_bodies_are_400s_naming_the_parameter(
    api: httpx.AsyncClient, route: str, body: bytes | dict, param: str | None
) -> None:
    r = await (api.post(route, content=body) if isinstance(body, bytes) else api.post(route, json=body))
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param and r.json()["error"]["type"] == "invalid_request_error"


async def test_each_task_is_refused_on_the_others_routes(api: httpx.AsyncClient, pair_engines: StubEngines) -> None:
    r = await api.post("/v1/embeddings", json={"model": R, "input": "x"})
    err = r.json()["error"]
    assert (r.status_code, err["code"], err["param"]) == (400, "wrong_model_task", "model")
    assert "rerank model" in err["message"] and "/v1/rerank" in err["message"] and "/rerank" in err["message"]
    for route, body in (
        ("/v1/rerank", {"model": E, "query": "q", "documents": ["a"]}),
        ("/v2/rerank", {"model": E, "query": "q", "documents": ["a"]}),
        ("/rerank", {"model": E, "query": "q", "texts": ["a"]}),
    ):
        r = await api.post(route, json=body)
        err = r.json()["error"]
        assert (r.status_code, err["code"]) == (400, "wrong_model_task") and "/v1/embeddings" in err["message"]
        assert f"`{E}` is an embed model" in err["message"] and "needs a rerank model" in err["message"]
    assert pair_engines == []  # refused before loading: neither model was loaded for the wrong route


async def test_an_unknown_model_is_a_404(api: httpx.AsyncClient) -> None:
    r = await api.post("/v1/rerank", json={"model": "ce:9", "query": "q", "documents": ["a"]})
    assert (r.status_code, r.json()["error"]["code"]) == (404, "model_not_found")


async def test_pairs_of_concurrent_requests_share_batches(api: httpx.AsyncClient, pair_engines: StubEngines) -> None:
    await api.post("/v1/models/start", json={"model": R})
    engine = pair_engines[0]
    engine.gate.clear()  # the first batch waits, so the other requests' pairs queue up behind it
    first = asyncio.create_task(api.post("/v1/rerank", json={"model": R, "query": QUERY, "documents": DOCS[:1]}))
    await asyncio.to_thread(engine.entered.wait, 5)
    rest = [
        asyncio.create_task(api.post("/v1/rerank", json={"model": R, "query": QUERY, "documents": DOCS[i : i + 2]}))
        for i in range(3)
    ]
    await asyncio.sleep(0.2)
    engine.gate.set()
    answers = await asyncio.gather(first, *rest)
    assert all(a.status_code == 200 for a in answers)
    for i, a in enumerate(answers[1:]):
        got = {x["index"]: x["relevance_score"] for x in a.json()["results"]}
        assert got == {j: pytest.approx(1 / (1 + math.exp(-_logit(d)))) for j, d in enumerate(DOCS[i : i + 2])}
    assert max(len(b) for b in engine.batches) == 6  # the three queued requests' pairs ran as one batch


# --- what a folder says ---


def _folder(tmp_path: Path, *, config: dict | None = None, files: dict[str, str] | None = None) -> Path:
    """The fixture cross-encoder copied, its config.json updated with `config` and `files` written."""
    import json
    import shutil

    from tests import DATA

    folder = tmp_path / "ce"
    shutil.copytree(DATA / "cross-encoder-tiny", folder)
    cfg = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**cfg, **(config or {})}))
    for name, text in (files or {}).items():
        (folder / name).write_text(text)
    return folder


def test_a_cross_encoder_folder_is_read_as_rerank(tmp_path: Path) -> None:
    from cortex.convert.st_folder import read_st_folder

    model = read_st_folder(_folder(tmp_path))
    assert (model.task, model.activation, model.max_seq_length) == ("rerank", "sigmoid", 256)


@pytest.mark.parametrize(
    ("config", "activation"),
    [
        ({"sentence_transformers": {"activation_fn": "torch.nn.modules.linear.Identity"}}, "identity"),
        ({"sentence_transformers": {"activation_fn": "torch.nn.modules.activation.Sigmoid"}}, "sigmoid"),
        ({"sbert_ce_default_activation_function": "torch.nn.modules.linear.Identity"}, "identity"),  # before v4
    ],
)
def test_the_folders_activation_is_kept(tmp_path: Path, config: dict, activation: str) -> None:
    from cortex.convert.st_folder import read_st_folder

    assert read_st_folder(_folder(tmp_path, config=config)).activation == activation


def test_what_is_not_a_one_label_cross_encoder(tmp_path: Path) -> None:
    from cortex.convert.st_folder import read_st_folder
    from cortex.errors import InvalidModelFile

    with pytest.raises(InvalidModelFile, match="2 labels"):
        read_st_folder(_folder(tmp_path / "a", config={"id2label": {"0": "NO", "1": "YES"}}))
    with pytest.raises(InvalidModelFile, match=r"activation `torch\.nn\.Tanh` is not supported"):
        read_st_folder(_folder(tmp_path / "b", config={"sentence_transformers": {"activation_fn": "torch.nn.Tanh"}}))
    short = read_st_folder(_folder(tmp_path / "c", config={"max_position_embeddings": 128}))
    assert short.max_seq_length == 128  # the tokenizer's 256, within the positions
    bi = read_st_folder(_folder(tmp_path / "d", files={"modules.json": "[]"}))
    assert (bi.task, bi.activation) == ("embed", None)  # sentence-transformers modules: a bi-encoder


def test_a_cross_encoder_saved_by_sentence_transformers_5_7_is_one(tmp_path: Path) -> None:
    """From 5.7 a CrossEncoder is saved with modules.json; config_sentence_transformers.json says what it is."""
    import json

    from cortex.convert.st_folder import read_st_folder

    transformer = "sentence_transformers.base.modules.Transformer"
    modules = json.dumps([{"idx": 0, "name": "0", "path": "", "type": transformer}])
    st = json.dumps({"model_type": "CrossEncoder", "activation_fn": "torch.nn.modules.linear.Identity"})
    model = read_st_folder(_folder(tmp_path, files={"modules.json": modules, "config_sentence_transformers.json": st}))
    assert (model.task, model.activation) == ("rerank", "identity")


async def test_a_model_whose_activation_is_identity_scores_its_logits(
    settings: Callable[..., Settings], pair_engines: StubEngines, models_dir: Path
) -> None:
    write_model(models_dir, R, task="rerank", activation="identity", n_embd=1, ctx_len=12, pooling="cls")
    async with serve(settings()) as api:
        r = await api.post("/v1/rerank", json={"model": R, "query": QUERY, "documents": DOCS})
    assert [x["relevance_score"] for x in r.json()["results"]] == [2.0, 2.0, 1.0, 0.0]
