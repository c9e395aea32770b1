"""XLM-RoBERTa through a running server, exact against sentence-transformers: the fixture folder (random
weights, the published layout) imported with `cortex models import`, with POST /v1/models/import (int8), and
pulled as ORG/REPO from the local hub double; every reference text embedded and tokenized."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests import DATA
from tests.e2e.fakehub import FakeHub
from tests.e2e.helpers import ServerProcess, cortex, embed_vectors
from tests.unit.test_xlmr import published_style

FIXTURE = DATA / "arch" / "xlm-roberta"
REFERENCE = json.loads((DATA / "arch" / "xlm-roberta.reference.json").read_text())
SHORT = REFERENCE["short"]
LONG = REFERENCE["long"]
REPO = "acme/xlmr-tiny"


@pytest.fixture(scope="module")
def hub_url() -> Iterator[str]:
    hub = FakeHub()
    hub.add_folder(REPO, FIXTURE)
    with hub.serving() as url:
        yield url


@pytest.fixture(scope="module")
def roberta(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture relabelled as plain RoBERTa: the same graph, so the same vectors."""
    folder = tmp_path_factory.mktemp("roberta") / "roberta"
    shutil.copytree(FIXTURE, folder)
    config = json.loads((folder / "config.json").read_text())
    config.update(model_type="roberta", architectures=["RobertaModel"])
    (folder / "config.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The fixture with its tokenizer.json as published XLM-RoBERTa models have it (Metaspace alone), which
    transformers 5 rebuilds: cortex must tokenize as sentence-transformers does, not as the file says."""
    folder = tmp_path_factory.mktemp("published") / "published"
    shutil.copytree(FIXTURE, folder)
    published_style(folder)
    return folder


@pytest.fixture(scope="module")
def srv(
    tmp_path_factory: pytest.TempPathFactory, hub_url: str, roberta: Path, published: Path
) -> Iterator[ServerProcess]:
    data = tmp_path_factory.mktemp("xlmr") / "data"
    with ServerProcess(data, HF_ENDPOINT=hub_url, HF_TOKEN="hf_test_token", HF_HUB_OFFLINE="0") as s:
        imported = cortex(data, "models", "import", "--model_id", "xlmr:fp32", "--model_path", str(FIXTURE)).stdout
        assert "Imported xlmr:fp32" in imported and "96 dimensions" in imported and "context 256" in imported
        s.import_models(
            {"model": "xlmr:int8", "model_path": str(FIXTURE), "quantize": "int8"},
            {"model": "roberta:fp32", "model_path": str(roberta)},
            {"model": "xlmr:published", "model_path": str(published)},
        )
        with s.client(timeout=300) as c:
            r = c.post("/v1/models/pull", json={"model": REPO})
            assert r.status_code == 202, r.text
            task = r.json()
            while task["status"] not in ("done", "failed", "cancelled", "paused"):
                time.sleep(0.1)
                task = c.get(f"/v1/models/pull/{task['task']}").json()
            assert (task["status"], task["model"]) == ("done", REPO), task
        yield s


@pytest.fixture
def c(srv: ServerProcess) -> Iterator[httpx.Client]:
    with srv.client() as client:
        yield client


def _embed(c: httpx.Client, model: str) -> tuple[np.ndarray, int]:
    """Every reference text's vector (the long one truncated, as sentence-transformers cuts it at
    max_seq_length) and the tokens counted."""
    texts = [row["text"] for row in SHORT] + [LONG["text"]]
    return embed_vectors(c, model, texts, truncate=True)


def _cosines(got: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(cosine with the reference, |length - reference length|) per text."""
    ref = np.array([row["embedding"] for row in SHORT] + [LONG["embedding"]], dtype=np.float64)
    cos = np.sum(got * ref, axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
    return cos, np.abs(np.linalg.norm(got, axis=1) - np.linalg.norm(ref, axis=1))


@pytest.mark.parametrize("model", ["xlmr:fp32", REPO, "roberta:fp32", "xlmr:published"])
def test_every_text_matches_sentence_transformers(c, model: str) -> None:
    got, tokens = _embed(c, model)
    cos, length = _cosines(got)
    assert cos.min() >= 0.99999, [(row["text"], float(x)) for row, x in zip([*SHORT, LONG], cos, strict=True)]
    assert length.max() <= 1e-3
    assert tokens == sum(len(row["tokens"]) for row in SHORT) + 256  # the long text: cut at max_seq_length


@pytest.mark.parametrize("model", ["xlmr:fp32", REPO, "xlmr:published"])
def test_token_ids_are_sentence_transformers(c, model: str) -> None:
    """Including the whitespace-only text and the one with leading and trailing spaces."""
    for row in SHORT:
        r = c.post("/tokenize", json={"model": model, "content": row["text"], "add_special": True})
        assert r.status_code == 200, r.text
        assert r.json()["tokens"] == row["tokens"], row["text"]
    r = c.post("/tokenize", json={"model": model, "content": LONG["text"], "add_special": True})
    long = r.json()["tokens"]  # the reference has the long text's count only (and its truncated vector)
    assert (len(long), long[0], long[-1]) == (LONG["tokens_untruncated"], 0, 2)


def test_records_say_what_was_imported(c) -> None:
    for model in ("xlmr:fp32", REPO):
        m = c.get(f"/v1/models/{model}").json()
        assert (m["engine"], m["source_format"], m["ctx_len"], m["n_embd"], m["pooling"]) == (
            "onnxruntime", "sentence-transformers", 256, 96, "mean"
        )  # fmt: skip


def test_int8_is_close_and_records_its_cosine(c) -> None:
    q = c.get("/v1/models/xlmr:int8").json()
    assert q["quantize"] == "int8" and 0.95 <= q["int8_min_cosine"] < 1 and q["cpu_features"] is not None
    got, _ = _embed(c, "xlmr:int8")
    cos, _ = _cosines(got)
    assert cos.min() >= 0.98, float(cos.min())  # random weights: 0.9888 measured


def test_the_llama_cpp_engine_refuses_it_by_name(c) -> None:
    r = c.post("/v1/models/import", json={"model": "xlmr:gguf", "model_path": str(FIXTURE), "engine": "llama-cpp"})
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["param"] == "engine" and "xlm-roberta" in error["message"] and "onnxruntime" in error["message"]
