"""The seed tutorial, through the official `openai` SDK: every input kind, every encoding."""

from __future__ import annotations

import base64

import numpy as np
import pytest

from tests.e2e.helpers import MODEL

TEXT = "embedding"
TEXTS = ["The quick brown fox jumps over the lazy dog.", "A man is eating food.", "a"]
IDS = [2, 67997]  # BOS + "embedding", as Gemma 3 tokenizes it
INPUTS = {
    "string": (TEXT, 1),
    "array of strings": (TEXTS, 3),
    "array of token ids": (IDS, 1),
    "array of arrays of token ids": ([IDS, [2, 236746], [2, 818, 3823]], 3),
}


def _vectors(resp) -> np.ndarray:
    """The SDK decodes base64 itself only when the caller named no format; decode it when one did."""
    rows = [
        np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") if isinstance(d.embedding, str) else d.embedding
        for d in resp.data
    ]
    return np.array(rows, dtype=np.float32)


@pytest.mark.parametrize("encoding_format", ["base64", "float", None])
@pytest.mark.parametrize("kind", list(INPUTS))
def test_sdk_every_input_kind(openai_client, kind: str, encoding_format: str | None) -> None:
    inp, n = INPUTS[kind]
    kwargs = {} if encoding_format is None else {"encoding_format": encoding_format}
    resp = openai_client.embeddings.create(input=inp, model=MODEL, **kwargs)
    assert resp.object == "list"
    assert resp.model == MODEL
    assert [d.index for d in resp.data] == list(range(n))
    assert all(d.object == "embedding" for d in resp.data)
    vecs = _vectors(resp)
    assert vecs.shape == (n, 640)
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    assert resp.usage.prompt_tokens == resp.usage.total_tokens > 0


def test_sdk_formats_agree(openai_client) -> None:
    """The SDK decodes base64 itself; it must give the float response's vector."""
    as_float = _vectors(openai_client.embeddings.create(input=TEXTS, model=MODEL, encoding_format="float"))
    as_b64 = _vectors(openai_client.embeddings.create(input=TEXTS, model=MODEL, encoding_format="base64"))
    as_default = _vectors(openai_client.embeddings.create(input=TEXTS, model=MODEL))
    np.testing.assert_allclose(as_float, as_b64, atol=1e-6)
    np.testing.assert_array_equal(as_b64, as_default)


def test_base64_is_little_endian_float32(http) -> None:
    body = {"model": MODEL, "input": TEXT}
    f = http.post("/v1/embeddings", json={**body, "encoding_format": "float"}).json()
    b = http.post("/v1/embeddings", json={**body, "encoding_format": "base64"}).json()
    raw = base64.b64decode(b["data"][0]["embedding"])
    assert len(raw) == 640 * 4
    np.testing.assert_allclose(np.frombuffer(raw, dtype="<f4"), f["data"][0]["embedding"], atol=1e-7)


def test_usage_counts_special_tokens(openai_client) -> None:
    resp = openai_client.embeddings.create(input=TEXT, model=MODEL)
    assert resp.usage.prompt_tokens == 2  # BOS + one word
    resp = openai_client.embeddings.create(input=[IDS, IDS[:1]], model=MODEL)
    assert resp.usage.prompt_tokens == 3


def test_dimensions_truncates_and_renormalises(openai_client) -> None:
    full = _vectors(openai_client.embeddings.create(input=TEXTS, model=MODEL))
    cut = _vectors(openai_client.embeddings.create(input=TEXTS, model=MODEL, dimensions=64))
    assert cut.shape == (3, 64)
    np.testing.assert_allclose(np.linalg.norm(cut, axis=1), 1.0, atol=1e-5)
    expect = full[:, :64] / np.linalg.norm(full[:, :64], axis=1, keepdims=True)
    np.testing.assert_allclose(cut, expect, atol=1e-5)


def test_user_and_unknown_fields_are_ignored(http) -> None:
    r = http.post("/v1/embeddings", json={"model": MODEL, "input": TEXT, "user": "u-1", "frobnicate": {"x": 1}})
    assert r.status_code == 200
    assert len(r.json()["data"]) == 1


def test_bare_name_resolves_and_is_echoed(http) -> None:
    """A bare name resolves only when one tag of it is stored; here two are, and the error lists them."""
    r = http.post("/v1/embeddings", json={"model": "gemma3", "input": TEXT})
    assert r.status_code == 404  # both gemma3:270m and gemma3:270m-last are stored: ambiguous
    err = r.json()["error"]
    assert err["code"] == "model_not_found"
    assert "gemma3:270m, gemma3:270m-last" in err["message"]
