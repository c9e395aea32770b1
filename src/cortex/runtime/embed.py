"""The embeddings pipeline after parsing: tokenize, check against the model, batch, collect."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cortex.errors import ContextLengthExceeded, InvalidRequest
from cortex.runtime.registry import LoadedModel

# Below this many characters in all, tokenizing on the event loop costs less than a thread hop.
_INLINE_TOKENIZE_CHARS = 4096


def _tokenize_all(model: LoadedModel, texts: Sequence[str]) -> list[list[int]]:
    tokenize = model.engine.tokenize
    return [tokenize(t) for t in texts]


def _check_token_ids(seqs: Sequence[Sequence[int]], n_vocab: int) -> None:
    for i, seq in enumerate(seqs):
        lo, hi = min(seq), max(seq)
        if lo < 0 or hi >= n_vocab:
            bad = lo if lo < 0 else hi
            raise InvalidRequest(
                f"Invalid token id {bad} in input at index {i}: token ids must lie in [0, {n_vocab}).",
                param="input",
            )


def _check_lengths(seqs: Sequence[Sequence[int]], n_ctx: int) -> None:
    for i, seq in enumerate(seqs):
        if len(seq) > n_ctx:
            raise ContextLengthExceeded(n_ctx, len(seq), index=i)


async def embed_inputs(
    model: LoadedModel, inputs: list[str] | list[list[int]], *, truncate: bool = False, max_tokens: int | None = None
) -> tuple[np.ndarray, int]:
    """Vectors for non-empty `inputs` (texts, or token-id lists used as given) and the tokens used. The
    caller holds `model` (`ModelRegistry.use`).

    An input longer than the context is a 400, or with `truncate` is cut to the context (a text keeps
    the special token its tokenizer appends; token ids are cut as given).
    """
    engine = model.engine
    n_ctx = engine.n_ctx
    if isinstance(inputs[0], str):
        texts: list[str] = inputs  # type: ignore[assignment]
        if sum(len(t) for t in texts) <= _INLINE_TOKENIZE_CHARS:
            seqs = _tokenize_all(model, texts)
        else:
            seqs = await model.run_held(_tokenize_all, model, texts)
        if truncate:
            seqs = [engine.truncate(s, n_ctx) for s in seqs]
    else:
        seqs = inputs  # type: ignore[assignment]
        _check_token_ids(seqs, engine.n_vocab)
        if truncate:
            seqs = [s[:n_ctx] for s in seqs]
    _check_lengths(seqs, n_ctx)
    total = sum(len(s) for s in seqs)
    if max_tokens is not None and total > max_tokens:
        raise InvalidRequest(
            f"The request has {total} tokens in all, over the limit of {max_tokens} per request "
            "(max_tokens_per_request).",
            param="input",
        )
    vectors = await model.scheduler.embed(seqs)
    return vectors, total
