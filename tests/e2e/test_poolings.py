"""Every pooling mode of sentence-transformers' Pooling module through a running server: a folder whose Pooling
config names the mode, or an import's `pooling` override, serves the vector a numpy forward pass pools that
way, with `include_prompt: false` leaving a prompt's tokens out of the pooling as sentence-transformers does;
what cortex cannot compute or run (several modes, poolings llama.cpp lacks, architectures it does not
build, models that need their own code) is a 400 that lists what it can."""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from cortex.convert.st_folder import POOLING_KEYS
from cortex.engine.base import POOLINGS
from tests import DATA
from tests.e2e.helpers import ServerProcess, cortex
from tests.numpy_bert import pooled, token_vectors

CASED = DATA / "arch" / "bert-cased"
PROMPTS = {"query": "query: ", "instruct": "Represent the Science title for retrieval: "}
LEFT_OUT = ("mean", "cls", "max", "weightedmean", "last")  # include_prompt: false, with each of these
TEXTS = ["A man is eating food.", "The Quick brown fox, in Paris: 42 times!", "x"]


def _copy(root: Path, name: str, **pooling: bool) -> Path:
    """A copy of the cased BERT fixture whose Pooling config turns on `pooling` (every other mode off)."""
    folder = root / name
    shutil.copytree(CASED, folder)
    cfg = json.loads((folder / "1_Pooling" / "config.json").read_text())
    cfg.update({key: False for key in POOLING_KEYS.values()} | pooling)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(cfg))
    return folder


LONG_PROMPT = "Represent this sentence for retrieval: " * 60  # longer than the 256-token context


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("poolings")


@pytest.fixture(scope="module")
def srv(root: Path) -> Iterator[ServerProcess]:
    with ServerProcess(root / "data") as s:
        s.import_models(*({"model": f"pool:{p}", "model_path": str(_copy(root, p, **{POOLING_KEYS[p]: True}))}
                          for p in POOLINGS))  # fmt: skip
        s.import_models({"model": "override:max", "model_path": str(CASED), "pooling": "max"})
        for p in LEFT_OUT:
            folder = _copy(root, f"noprompt-{p}", **{POOLING_KEYS[p]: True, "include_prompt": False})
            (folder / "config_sentence_transformers.json").write_text(json.dumps({"prompts": PROMPTS}))
            s.import_models({"model": f"noprompt:{p}", "model_path": str(folder)})
        folder = _copy(root, "longprompt", pooling_mode_mean_tokens=True, include_prompt=False)
        prompts = {"prompts": {"long": LONG_PROMPT}, "default_prompt_name": "long"}
        (folder / "config_sentence_transformers.json").write_text(json.dumps(prompts))
        s.import_models({"model": "longprompt:mean", "model_path": str(folder)})
        out = cortex(s.data_dir, "models", "import", "--model_id", "cli:weightedmean", "--model_path", str(CASED),
                     "--pooling", "weightedmean").stdout  # fmt: skip
        assert "pooling weightedmean" in out
        yield s


@pytest.fixture
def c(srv: ServerProcess) -> Iterator[httpx.Client]:
    with srv.client() as client:
        yield client


def _expected(c: httpx.Client, model: str, pooling: str) -> np.ndarray:
    ids = [c.post("/tokenize", json={"model": model, "content": t, "add_special": True}).json()["tokens"]
           for t in TEXTS]  # fmt: skip
    return np.array([pooled(token_vectors(CASED, i), pooling) for i in ids])


@pytest.mark.parametrize(
    ("model", "pooling"),
    [*((f"pool:{p}", p) for p in POOLINGS), ("override:max", "max"), ("cli:weightedmean", "weightedmean")],
)
def test_each_pooling_serves_sentence_transformers_vector(c, model: str, pooling: str) -> None:
    assert c.get(f"/v1/models/{model}").json()["pooling"] == pooling
    r = c.post("/v1/embeddings", json={"model": model, "input": TEXTS, "normalize": False})
    assert r.status_code == 200, r.text
    got = np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float64)
    want = _expected(c, model, pooling)
    cos = np.sum(got * want, axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cos.min() >= 0.99999
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), np.linalg.norm(want, axis=1), rtol=0, atol=1e-3)


def _tokens(c: httpx.Client, model: str, text: str) -> list[int]:
    return c.post("/tokenize", json={"model": model, "content": text, "add_special": True}).json()["tokens"]


@pytest.mark.parametrize("pooling", LEFT_OUT)
def test_include_prompt_false_leaves_the_prompt_out_of_the_pooling(c, pooling: str) -> None:
    """sentence-transformers: the prompt tokenized alone, less its [SEP], is how many leading tokens of each
    prompted input ([CLS] and the prompt's) the pooling leaves out; the model still attends to them."""
    model = f"noprompt:{pooling}"
    assert c.get(f"/v1/models/{model}").json()["include_prompt"] is False
    for name, prompt in PROMPTS.items():
        left_out = len(_tokens(c, model, prompt)) - 1
        r = c.post("/v1/embeddings", json={"model": model, "input": TEXTS, "prompt_name": name})
        assert r.status_code == 200, r.text
        got = np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float64)
        want = np.array([pooled(token_vectors(CASED, _tokens(c, model, prompt + t)), pooling, left_out)
                         for t in TEXTS])  # fmt: skip
        cos = np.sum(got * want, axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
        assert cos.min() >= 0.99999, (name, cos)
        np.testing.assert_allclose(np.linalg.norm(got, axis=1), np.linalg.norm(want, axis=1), rtol=0, atol=1e-3)
        if pooling != "last":  # the last token is the same either way
            whole = np.array([pooled(token_vectors(CASED, _tokens(c, model, prompt + t)), pooling) for t in TEXTS])
            assert np.abs(got - whole).max() > 1e-2  # pooling the prompt too would give other vectors
    plain = c.post("/v1/embeddings", json={"model": model, "input": TEXTS}).json()["data"]  # no prompt: every token
    want = np.array([pooled(token_vectors(CASED, _tokens(c, model, t)), pooling) for t in TEXTS])
    np.testing.assert_allclose([d["embedding"] for d in plain], want, rtol=1e-4, atol=1e-4)


def test_the_listing_shows_each_pooling(srv: ServerProcess) -> None:
    table = cortex(srv.data_dir, "models", "list").stdout
    for p in POOLINGS:
        assert f"pool:{p}" in table and p in table


def _refused(c: httpx.Client, body: dict, param: str, *words: str) -> str:
    r = c.post("/v1/models/import", json=body)
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["param"] == param and all(w in err["message"] for w in words), err
    assert body["model"] not in [m["id"] for m in c.get("/v1/models").json()["data"]]
    return err["message"]


def test_several_modes_at_once_are_refused_with_the_supported_ones(c, root: Path) -> None:
    both = _copy(root, "both", pooling_mode_cls_token=True, pooling_mode_mean_tokens=True)
    message = _refused(c, {"model": "bad:both", "model_path": str(both)}, "model_path", "several pooling modes")
    assert all(p in message for p in POOLINGS)
    attention = _copy(root, "attention", pooling_mode_attention=True)
    body = {"model": "bad:attn", "model_path": str(attention)}
    _refused(c, body, "model_path", "pooling_mode_attention", "Supported")


def test_llama_cpp_refuses_poolings_it_lacks(c, root: Path) -> None:
    from cortex.convert.bert_gguf import write_bert_gguf
    from cortex.convert.st_folder import read_st_folder

    for pooling in ("max", "mean_sqrt_len", "weightedmean"):
        body = {"model": "bad:gguf", "model_path": str(root / pooling), "engine": "llama-cpp"}
        why = f"its pooling is {pooling}, and this engine pools by mean, cls, last"
        _refused(c, body, "engine", why, "onnxruntime engine")
    body = {"model": "bad:gguf", "model_path": str(root / "noprompt-mean"), "engine": "llama-cpp"}
    _refused(c, body, "engine", "include_prompt: false", "vocabulary is cased")  # every reason
    gguf = root / "tiny.gguf"  # a GGUF file: only llama.cpp imports one
    write_bert_gguf(dataclasses.replace(read_st_folder(CASED), pooling="mean"), gguf, "f32")
    _refused(c, {"model": "bad:gguf", "model_path": str(gguf), "pooling": "max"}, "pooling",
             "cannot serve this GGUF file: its pooling is max, and this engine pools by mean, cls, last")  # fmt: skip
    r = c.post("/v1/models/import", json={"model": "tiny:last", "model_path": str(gguf), "pooling": "last"})
    assert r.status_code == 200, r.text


def test_architectures_cortex_does_not_build_are_refused(c, root: Path) -> None:
    for name, change, words in (
        ("gpt2", {"model_type": "gpt2", "architectures": ["GPT2Model"]}, ("`gpt2` is not supported", "bert")),
        ("remote", {"model_type": "acme", "architectures": ["AcmeModel"], "auto_map": {"AutoModel": "m.Acme"}},
         ("trust_remote_code", "auto_map")),
    ):  # fmt: skip
        folder = _copy(root, name, pooling_mode_mean_tokens=True)
        config = json.loads((folder / "config.json").read_text())
        (folder / "config.json").write_text(json.dumps(config | change))
        _refused(c, {"model": f"bad:{name}", "model_path": str(folder)}, "model_path", *words)


def test_a_prompt_that_fills_the_context_leaves_its_last_token_to_pool(c) -> None:
    """With truncate, an input whose prompt alone passes the context is cut to it, and sentence-transformers
    (which counts the prompt cut to the context too) pools only the final [SEP]: not an error, not zeros."""
    model = "longprompt:mean"
    r = c.post("/v1/embeddings", json={"model": model, "input": TEXTS, "truncate": True, "normalize": False})
    assert r.status_code == 200, r.text
    got = np.array([d["embedding"] for d in r.json()["data"]], dtype=np.float64)
    for row, text in zip(got, TEXTS, strict=True):
        ids = _tokens(c, model, LONG_PROMPT + text)
        cut = [*ids[:255], ids[-1]]  # the context, keeping [SEP], as the tokenizer truncates
        np.testing.assert_allclose(row, pooled(token_vectors(CASED, cut), "mean", 255), rtol=1e-4, atol=1e-4)
        assert np.abs(row).max() > 0.1
