"""The embeddings pipeline after parsing: prompt, tokenize, check against the model, batch, collect, then
cut to `dimensions` and normalise. Engines return pooled vectors; whether a vector is L2-normalised is
each request's choice (`normalize`, by default the model's, as its sentence-transformers modules say)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from cortex.engine.base import Engine, l2_normalize
from cortex.errors import ContextLengthExceeded, InvalidRequest
from cortex.runtime.registry import LoadedModel
from cortex.store.store import ModelRecord

# Below this many characters in all, tokenizing on the event loop costs less than a thread hop.
_INLINE_TOKENIZE_CHARS = 4096


def prompt_text(record: ModelRecord, prompt_name: str | None) -> str:
    """The text put before each input: the prompt named, else the model's default prompt, else none
    (sentence-transformers' `encode(prompt_name=...)`). An unknown name is a 400 listing the model's prompts."""
    if prompt_name is None:
        return "" if record.default_prompt_name is None else record.prompts[record.default_prompt_name]
    if prompt_name not in record.prompts:
        known = f"its prompts are {', '.join(repr(n) for n in record.prompts)}" if record.prompts else "it has none"
        raise InvalidRequest(
            f"Unknown prompt_name {prompt_name!r} for model `{record.id}`: {known} "
            "(config_sentence_transformers.json).",
            param="prompt_name",
        )
    return record.prompts[prompt_name]


def finish_vectors(vectors: np.ndarray, *, normalize: bool, dimensions: int | None) -> np.ndarray:
    """Pooled vectors cut to their first `dimensions` components, then L2-normalised if `normalize`
    (OpenAI's `dimensions`: a cut unit vector is normalised again; a pooled one is only cut)."""
    if dimensions is not None and dimensions < vectors.shape[1]:
        vectors = np.array(vectors[:, :dimensions], dtype=np.float32)
    return l2_normalize(vectors) if normalize else vectors


def _tokenize_all(model: LoadedModel, texts: Sequence[str]) -> list[list[int]]:
    tokenize = model.engine.tokenize
    return [tokenize(t) for t in texts]


def check_token_ids(seqs: Sequence[Sequence[int]], n_vocab: int, *, param: str = "input") -> None:
    """400 naming `param` for an id outside [0, n_vocab) in any of the non-empty `seqs`."""
    for i, seq in enumerate(seqs):
        lo, hi = min(seq), max(seq)
        if lo < 0 or hi >= n_vocab:
            bad = lo if lo < 0 else hi
            where = f" in input at index {i}" if len(seqs) > 1 or param == "input" else ""
            raise InvalidRequest(
                f"Invalid token id {bad}{where}: token ids must lie in [0, {n_vocab}).",
                param=param,
            )


def prompt_length(engine: Engine, prompt: str) -> int:
    """How many leading tokens of a prompted input sentence-transformers leaves out of the pooling when its
    Pooling has `include_prompt: false`: the prompt tokenized alone with the special tokens, less a special
    token it ends with ([SEP], </s>). The [CLS] before the prompt is left out too."""
    tokens = engine.tokens(prompt)
    return len(tokens) - (1 if tokens and tokens[-1].special else 0)


def _check_lengths(seqs: Sequence[Sequence[int]], n_ctx: int) -> None:
    for i, seq in enumerate(seqs):
        if len(seq) > n_ctx:
            raise ContextLengthExceeded(n_ctx, len(seq), index=i)


async def embed_inputs(
    model: LoadedModel,
    inputs: list[str] | list[list[int]],
    *,
    truncate: bool = False,
    max_tokens: int | None = None,
    normalize: bool | None = None,
    dimensions: int | None = None,
    prompt_name: str | None = None,
) -> tuple[np.ndarray, int]:
    """Vectors for non-empty `inputs` (texts, or token-id lists used as given) and the tokens used. The
    caller holds `model` (`ModelRegistry.use`) and has checked `dimensions` against it.

    Each text gets the prompt (`prompt_text`) put before it, and usage counts the prompt's tokens. An
    input longer than the context is a 400, or with `truncate` is cut to the context (a text keeps the
    special token its tokenizer appends; token ids are cut as given). `normalize` None: the model's own.
    """
    engine = model.engine
    n_ctx = engine.n_ctx
    pool_from = 0  # the first token pooled: after a prompt that include_prompt false leaves out
    if isinstance(inputs[0], str):
        prompt = prompt_text(model.record, prompt_name)
        if prompt and not model.record.include_prompt:  # a prompt that fills the context leaves its last token
            pool_from = min(prompt_length(engine, prompt), n_ctx - 1)
        texts: list[str] = [prompt + t for t in inputs] if prompt else inputs  # type: ignore[assignment,operator]
        if sum(len(t) for t in texts) <= _INLINE_TOKENIZE_CHARS:
            seqs = _tokenize_all(model, texts)
        else:
            seqs = await model.run_held(_tokenize_all, model, texts)
        if truncate:
            seqs = [engine.truncate(s, n_ctx) for s in seqs]
    else:
        if prompt_name is not None:
            raise InvalidRequest(
                "'prompt_name' applies to text inputs; token ids are used as given.", param="prompt_name"
            )
        seqs = inputs  # type: ignore[assignment]
        check_token_ids(seqs, engine.n_vocab)
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
    vectors = await model.scheduler.embed(seqs, pool_from)
    normalize = model.record.normalize if normalize is None else normalize
    return finish_vectors(vectors, normalize=normalize, dimensions=dimensions), total
