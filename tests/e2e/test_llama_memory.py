"""Decoder GGUF embeddings leave out the LM head: cortex's llama.cpp build (scripts/llama-cpp-wheel.sh applies
scripts/llama-cpp-embeddings-only.patch) computes no logits in a pooled-embedding context, so a long input
no longer leaves the server holding a vocabulary-sized buffer per token (stock: 4.5 GiB after one
2048-token Gemma input, 2 MiB a token). Vectors are unchanged: tests/e2e/test_correctness.py holds them to
llama.cpp's and sentence-transformers' references."""

from __future__ import annotations

import ctypes
from pathlib import Path

import pytest

from tests.e2e.helpers import ServerProcess

# Stock llama.cpp's logits for 2048 tokens of Gemma's 262,144-token vocabulary are 2 GiB (and as much
# again in the compute buffer); what the rest of the model needs for them is ~100 MiB. A bound in between
# fails only when the logits come back.
LONG_INPUT_BOUND_MIB = 400


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError(f"no VmRSS for process {pid}")


def test_a_2048_token_input_leaves_the_server_near_its_idle_memory(tmp_path: Path, gemma_gguf: Path) -> None:
    with ServerProcess(tmp_path / "data") as srv, srv.client(timeout=600) as c:
        srv.import_models({"model": "gemma", "model_path": str(gemma_gguf)})
        r = c.post("/v1/embeddings", json={"model": "gemma", "input": ["a first short text", "and another"]})
        assert r.status_code == 200, r.text
        assert srv.proc is not None
        idle = _rss_mib(srv.proc.pid)
        long_text = " ".join(f"sentence number {i} of a long document about embeddings." for i in range(400))
        r = c.post("/v1/embeddings", json={"model": "gemma", "input": long_text, "truncate": True})
        assert r.status_code == 200, r.text
        assert r.json()["usage"]["prompt_tokens"] == 2048  # the default context, filled
        after = _rss_mib(srv.proc.pid)
        assert after - idle < LONG_INPUT_BOUND_MIB, f"resident {idle:.0f} MiB idle, {after:.0f} MiB after 2048 tokens"
        r = c.post("/v1/embeddings", json={"model": "gemma", "input": "still serving"})
        assert r.status_code == 200, r.text


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_a_pooled_embedding_context_computes_no_logits(gemma_gguf: Path, pooling: str) -> None:
    """The build itself: after a pooled batch llama.cpp has a vector for the sequence and no logits at all."""
    import llama_cpp

    from cortex.engine.llama import _POOLING
    from cortex.engine.llama_backend import init_backend

    init_backend()
    model = llama_cpp.llama_model_load_from_file(str(gemma_gguf).encode(), llama_cpp.llama_model_default_params())
    assert model
    cparams = llama_cpp.llama_context_default_params()
    cparams.n_ctx = cparams.n_batch = cparams.n_ubatch = 64
    cparams.embeddings = True
    cparams.pooling_type = _POOLING[pooling]
    cparams.n_threads = cparams.n_threads_batch = 1
    ctx = llama_cpp.llama_init_from_model(model, cparams)
    assert ctx
    batch = llama_cpp.llama_batch_init(64, 0, 1)
    try:
        tokens = [2, 818, 1171, 1994]  # <bos> and three words
        for i, t in enumerate(tokens):
            batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = t, i, 1, 1
            batch.seq_id[i][0] = 0
        batch.n_tokens = len(tokens)
        assert llama_cpp.llama_decode(ctx, batch) == 0
        vector = llama_cpp.llama_get_embeddings_seq(ctx, 0)
        assert vector and all(abs(vector[k]) < 1e6 for k in range(8))
        logits = llama_cpp.llama_get_logits(ctx)
        assert not ctypes.cast(logits, ctypes.c_void_p).value, "the LM head ran: logits were computed"
    finally:
        llama_cpp.llama_batch_free(batch)
        llama_cpp.llama_free(ctx)
        llama_cpp.llama_model_free(model)
