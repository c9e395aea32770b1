"""A cased BERT vocabulary (float16 weights, mean_sqrt_len pooling, not normalised) through a running server:
imported with `cortex models import` and pulled from the local hub double, it gives sentence-transformers'
vectors and token ids for every reference text; int8 imports too; llama.cpp, which lower-cases, refuses it."""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import numpy as np
import pytest

from tests import DATA
from tests.e2e.fakehub import FakeHub
from tests.e2e.helpers import ServerProcess, cortex, cosines, embed_vectors

FOLDER = DATA / "arch" / "bert-cased"
REFERENCE = json.loads((DATA / "arch" / "bert-cased.reference.json").read_text())
REPO = "acme/bert-cased"


@pytest.fixture(scope="module")
def hub() -> Iterator[str]:
    h = FakeHub()
    h.add_folder(REPO, FOLDER)
    with h.serving() as url:
        yield url


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, hub: str) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path_factory.mktemp("cased") / "data", HF_ENDPOINT=hub, HF_HUB_OFFLINE="0") as s:
        out = cortex(s.data_dir, "models", "import", "--model_id", "cased:fp32", "--model_path", str(FOLDER)).stdout
        assert "Imported cased:fp32" in out
        assert REPO in cortex(s.data_dir, "pull", REPO, timeout=300).stdout
        s.import_models({"model": "cased:int8", "model_path": str(FOLDER), "quantize": "int8"})
        yield s


@pytest.fixture
def c(srv: ServerProcess) -> Iterator[httpx.Client]:
    with srv.client() as client:
        yield client


def _reference() -> tuple[list[str], np.ndarray]:
    """Every text (the short ones, then the long one, which sentence-transformers cut at max_seq_length)."""
    rows = [*REFERENCE["short"], REFERENCE["long"]]
    return [r["text"] for r in rows], np.array([r["embedding"] for r in rows], dtype=np.float64)


@pytest.mark.parametrize("model", ["cased:fp32", REPO])
def test_every_text_is_sentence_transformers_vector(c, model: str) -> None:
    texts, ref = _reference()
    got, tokens = embed_vectors(c, model, texts, truncate=True)  # the model's default: not normalised
    assert cosines(got, ref).min() >= 0.99999
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), np.linalg.norm(ref, axis=1), rtol=0, atol=1e-3)
    assert tokens == sum(len(r["tokens"]) for r in REFERENCE["short"]) + 256
    record = c.get(f"/v1/models/{model}").json()
    assert (record["engine"], record["pooling"], record["normalize"], record["ctx_len"], record["n_embd"]) == (
        "onnxruntime", "mean_sqrt_len", False, 256, 64,
    )  # fmt: skip


@pytest.mark.parametrize("model", ["cased:fp32", REPO])
def test_token_ids_are_sentence_transformers_ids(c, model: str) -> None:
    for row in REFERENCE["short"]:
        r = c.post("/tokenize", json={"model": model, "content": row["text"], "add_special": True})
        assert r.status_code == 200, r.text
        assert r.json()["tokens"] == row["tokens"], row["text"]
    long = c.post("/tokenize", json={"model": model, "content": REFERENCE["long"]["text"], "add_special": True})
    assert len(long.json()["tokens"]) == REFERENCE["long"]["tokens_untruncated"]


def test_case_is_kept(c) -> None:
    """A cased vocabulary: `Python` and `python` are different tokens and vectors (an uncased one lower-cases)."""
    upper = c.post("/tokenize", json={"model": "cased:fp32", "content": "Python"}).json()["tokens"]
    lower = c.post("/tokenize", json={"model": "cased:fp32", "content": "python"}).json()["tokens"]
    assert upper != lower
    a, _ = embed_vectors(c, "cased:fp32", ["Python"])
    b, _ = embed_vectors(c, "cased:fp32", ["python"])
    assert float(cosines(a, b)[0]) < 0.999


def test_the_long_text_is_refused_unless_truncated(c) -> None:
    r = c.post("/v1/embeddings", json={"model": "cased:fp32", "input": REFERENCE["long"]["text"]})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"


def test_int8_is_close_and_records_its_figure(c) -> None:
    texts, ref = _reference()
    got, _ = embed_vectors(c, "cased:int8", texts, truncate=True)
    worst = float(cosines(got, ref).min())
    record = c.get("/v1/models/cased:int8").json()
    print(f"bert-cased int8: min cosine vs sentence-transformers {worst:.6f}, recorded {record['int8_min_cosine']}")
    # random weights of width 64 quantise worse than a trained model (MiniLM: >= 0.98); measured here 0.975
    assert worst >= 0.95 and record["quantize"] == "int8" and 0.95 <= record["int8_min_cosine"] < 1


def test_llama_cpp_refuses_a_cased_vocabulary(c) -> None:
    r = c.post("/v1/models/import", json={"model": "cased:gguf", "model_path": str(FOLDER), "engine": "llama-cpp"})
    err = r.json()["error"]
    assert r.status_code == 400 and err["param"] == "engine"
    assert "cased" in err["message"] and "onnxruntime engine" in err["message"]
    ids = [m["id"] for m in c.get("/v1/models").json()["data"]]
    assert "cased:gguf" not in ids
