"""ModernBERT (rotary positions, GeGLU, global and sliding-window attention, no biases, byte-level BPE)
through a running server, imported from a folder and pulled as ORG/REPO from the local hub double: every
reference text gives sentence-transformers' vector (cosine and length) and token ids; int8 stays close."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from tests import DATA
from tests.e2e.fakehub import FakeHub
from tests.e2e.helpers import ServerProcess, embed_vectors

FIXTURE = DATA / "arch" / "modernbert"  # random weights in gte-modernbert's published layout
REFERENCE = json.loads((DATA / "arch" / "modernbert.reference.json").read_text())
REPO = "acme/gte-modernbert-tiny"
FP32, INT8 = "modernbert:fp32", "modernbert:int8"
CTX = 512  # sentence_bert_config.json's max_seq_length


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    hub = FakeHub()
    hub.add_folder(REPO, FIXTURE)
    data = tmp_path_factory.mktemp("modernbert") / "data"
    with hub.serving() as url, ServerProcess(data, HF_ENDPOINT=url, HF_HUB_OFFLINE="0") as s:
        s.import_models(
            {"model": FP32, "model_path": str(FIXTURE)},
            {"model": INT8, "model_path": str(FIXTURE), "quantize": "int8"},
        )
        with s.client(timeout=300) as c:
            _pull(c, REPO)
        yield s


@pytest.fixture
def c(srv: ServerProcess) -> Iterator[httpx.Client]:
    with srv.client() as client:
        yield client


def _pull(c: httpx.Client, model: str) -> None:
    r = c.post("/v1/models/pull", json={"model": model})
    assert r.status_code == 202, r.text
    task = r.json()
    while task["status"] not in ("done", "failed", "cancelled", "paused"):
        time.sleep(0.1)
        task = c.get(f"/v1/models/pull/{task['task']}").json()
    assert task["status"] == "done", task


def _embed(c: httpx.Client, model: str, texts: list[str], truncate: bool = False) -> tuple[np.ndarray, int]:
    return embed_vectors(c, model, texts, truncate=truncate)


def _compare(got: np.ndarray, ref: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(cosine, |length difference|) per row."""
    got_len, ref_len = np.linalg.norm(got, axis=1), np.linalg.norm(ref, axis=1)
    return np.sum(got * ref, axis=1) / (got_len * ref_len), np.abs(got_len - ref_len)


@pytest.mark.parametrize("model", [FP32, REPO])
def test_every_text_matches_sentence_transformers(c, model: str) -> None:
    short = REFERENCE["short"]
    got, tokens = _embed(c, model, [r["text"] for r in short])
    cosine, length = _compare(got, np.array([r["embedding"] for r in short]))
    assert cosine.min() >= 0.99999 and length.max() <= 1e-3, (cosine.min(), length.max())
    assert tokens == sum(len(r["tokens"]) for r in short)  # CLS pooling of unnormalised vectors, every token
    # the long text, cut at max_seq_length as sentence-transformers cuts it: its sliding layers see only +-8
    long = REFERENCE["long"]
    assert long["tokens_untruncated"] > CTX
    got, tokens = _embed(c, model, [long["text"]], truncate=True)
    cosine, length = _compare(got, np.array([long["embedding"]]))
    assert cosine[0] >= 0.99999 and length[0] <= 1e-3 and tokens == CTX


@pytest.mark.parametrize("model", [FP32, REPO])
def test_token_ids_are_the_references(c, model: str) -> None:
    for row in REFERENCE["short"]:
        r = c.post("/tokenize", json={"model": model, "content": row["text"], "add_special": True})
        assert r.status_code == 200, r.text
        assert r.json()["tokens"] == row["tokens"], row["text"]


def test_pieces_are_bytes_not_the_byte_level_alphabet(c) -> None:
    r = c.post("/tokenize", json={"model": FP32, "content": "naïve café", "add_special": True, "with_pieces": True})
    pieces = [t["piece"] for t in r.json()["tokens"]]
    assert pieces[:5] == ["[CLS]", "n", "a", [0xC3], [0xAF]] and " ca" in pieces  # 'ï' is two byte tokens; 'Ġca'


def test_records_and_a_long_text_without_truncate(c) -> None:
    for model in (FP32, REPO):
        m = c.get(f"/v1/models/{model}").json()
        assert (m["engine"], m["architecture"], m["pooling"]) == ("onnxruntime", "modernbert", "cls")
        assert m["normalize"] is False  # no Normalize module: sentence-transformers' vectors are not unit length
        assert (m["n_embd"], m["ctx_len"], m["source_format"]) == (96, CTX, "sentence-transformers")
    r = c.post("/v1/embeddings", json={"model": FP32, "input": REFERENCE["long"]["text"], "truncate": False})
    assert r.status_code == 400 and r.json()["error"]["param"] == "input"
    r = c.post("/v1/models/import", json={"model": "mb:gguf", "model_path": str(FIXTURE), "engine": "llama-cpp"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "engine"  # llama.cpp's converter: BERT only
    assert "modernbert" in r.json()["error"]["message"]


def test_int8_is_close_and_records_its_cosine(c) -> None:
    m = c.get(f"/v1/models/{INT8}").json()
    assert m["quantize"] == "int8" and 0.9 <= m["int8_min_cosine"] < 1 and m["cpu_features"] is not None
    short = REFERENCE["short"]
    got, _ = _embed(c, INT8, [r["text"] for r in short])
    cosine, _ = _compare(got, np.array([r["embedding"] for r in short]))
    print(f"modernbert int8 min cosine vs sentence-transformers: {cosine.min():.6f}")
    assert cosine.min() >= 0.97, cosine.min()  # 0.9845 measured (AVX-512 VNNI); random weights are hard on int8
