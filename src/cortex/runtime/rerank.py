"""The rerank pipeline after parsing: check -> tokenize the pairs -> check against the context -> batch
through the model's scheduler (with every other request's inputs) -> scores -> ranking.

Every rerank route (Jina's, Cohere's, text-embeddings-inference's) runs this same line; only the request
and response shapes differ, and those live with the routes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from cortex.engine.base import PairEngine
from cortex.errors import ContextLengthExceeded, InvalidRequest
from cortex.runtime.registry import LoadedModel

# Below this many characters in all, tokenizing on the event loop costs less than a thread hop.
_INLINE_TOKENIZE_CHARS = 4096


@dataclass(frozen=True)
class Ranked:
    index: int  # the document's position in the request
    score: float


def check_rerank(
    query: str, documents: Sequence[str], *, max_documents: int, top_n: int | None, docs_param: str = "documents"
) -> None:
    """400 naming the parameter for an empty query, no documents, too many, or a top_n below 1."""
    if not query:
        raise InvalidRequest("'query' must not be empty.", param="query")
    if not documents:
        raise InvalidRequest(f"'{docs_param}' must not be an empty array.", param=docs_param)
    if len(documents) > max_documents:
        raise InvalidRequest(
            f"Too many documents: {len(documents)} given, at most {max_documents} per request (max_inputs).",
            param=docs_param,
        )
    if top_n is not None and top_n < 1:
        raise InvalidRequest("'top_n' must be a positive integer.", param="top_n")


def rank(scores: Sequence[float], top_n: int | None = None) -> list[Ranked]:
    """The documents best first, equal scores in request order, cut to `top_n` (all when None)."""
    order = sorted(range(len(scores)), key=lambda i: (-scores[i], i))
    return [Ranked(i, float(scores[i])) for i in order[:top_n]]


def sigmoid(logits: np.ndarray) -> np.ndarray:
    """1 / (1 + e^-x) in float64, without overflow for logits of any size."""
    return np.exp(-np.logaddexp(0.0, -logits.astype(np.float64)))


def _tokenize(
    engine: PairEngine, query: str, documents: Sequence[str], truncate: bool, doc_tokens: int | None
) -> tuple[list[list[int]], list[int]]:
    return engine.tokenize_pairs(query, documents, truncate=truncate, doc_tokens=doc_tokens)


async def score_pairs(
    model: LoadedModel,
    query: str,
    documents: Sequence[str],
    *,
    truncate: bool,
    raw: bool = False,
    max_tokens: int | None = None,
    doc_tokens: int | None = None,
    docs_param: str = "documents",
) -> tuple[list[float], int]:
    """One score per document and the tokens of all pairs. A score is sentence-transformers': the sigmoid of
    the cross-encoder's logit, or the logit itself where its config.json names the Identity activation
    (`record.activation`) or the request asks for `raw`. The caller holds `model` (`ModelRegistry.use(...,
    task="rerank")`).

    A pair longer than the context is a 400 naming the document, or with `truncate` is cut the way
    sentence-transformers cuts it. `doc_tokens` cuts each document first (Cohere's max_tokens_per_doc)."""
    engine: PairEngine = model.engine  # type: ignore[assignment]  # the registry gives rerank models only
    if doc_tokens is not None and doc_tokens < 1:
        raise InvalidRequest("'max_tokens_per_doc' must be a positive integer.", param="max_tokens_per_doc")
    if len(query) + sum(len(d) for d in documents) <= _INLINE_TOKENIZE_CHARS:
        seqs, starts = _tokenize(engine, query, documents, truncate, doc_tokens)
    else:
        seqs, starts = await model.run_held(_tokenize, engine, query, documents, truncate, doc_tokens)
    for i, (seq, start) in enumerate(zip(seqs, starts, strict=True)):
        if start + 1 > engine.n_ctx:  # the query and its special tokens alone fill the context
            raise ContextLengthExceeded(engine.n_ctx, len(seq), param="query", item="query")
        if len(seq) > engine.n_ctx:
            raise ContextLengthExceeded(engine.n_ctx, len(seq), index=i, param=docs_param, item="document")
    total = sum(len(s) for s in seqs)
    if max_tokens is not None and total > max_tokens:
        raise InvalidRequest(
            f"The request's query-document pairs have {total} tokens in all, over the limit of {max_tokens} "
            "per request (max_tokens_per_request).",
            param=docs_param,
        )
    logits = (await model.scheduler.embed(seqs, starts))[:, 0]
    raw = raw or model.record.activation == "identity"  # the model's own default score is its logit
    scores = logits.astype(np.float64) if raw else sigmoid(logits)
    return scores.tolist(), total
