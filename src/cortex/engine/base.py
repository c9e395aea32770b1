"""The engine interface: what the scheduler and the API may ask of any inference backend."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

# How a sequence's token vectors become one vector, as sentence-transformers' Pooling modes: their mean, the
# first token's ([CLS]), the last's (`lasttoken`), their per-dimension max, their sum over the square root of
# their count (`mean_sqrt_len_tokens`), and their mean weighted by position 1..n (`weightedmean_tokens`).
POOLINGS: tuple[str, ...] = ("mean", "cls", "last", "max", "mean_sqrt_len", "weightedmean")


@dataclass(frozen=True)
class Token:
    """One token of a tokenized text, for /tokenize: its id, its piece (the vocabulary's bytes for it,
    possibly part of a UTF-8 character), whether the tokenizer added it (BOS, [CLS], [SEP], ...), and the
    UTF-8 byte span of the text it covers (None for an added token, or where the engine cannot tell)."""

    id: int
    piece: bytes
    special: bool
    span: tuple[int, int] | None


class Engine(Protocol):
    """An embedding model loaded in memory. Knows nothing of HTTP or queues.

    `tokenize` may be called from any thread; `embed` from up to `workers` threads at once, each run free to
    use every core (the runtimes' own thread pools share them).
    """

    n_embd: int  # size of each vector
    n_ctx: int  # most tokens one input may have
    n_vocab: int  # token ids must lie in [0, n_vocab)
    max_batch_tokens: int  # most tokens one `embed` call takes (a longer single input runs alone)
    max_batch_seqs: int  # most sequences one `embed` call takes
    workers: int  # how many `embed` calls may run at once, from different threads
    # Optional (read with getattr, False if absent): `embed` takes `alone=True` for a run with no other run
    # in flight and nothing queued, which it may then spread over every core more eagerly (cortex.engine.onnx).
    solo_runs: bool

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        """Token ids of `text`, with the special tokens the model adds (BOS, CLS/SEP, ...) unless not
        `add_special`."""
        ...

    def tokens(self, text: str, add_special: bool = True) -> list[Token]:
        """`tokenize(text, add_special)` with each token's piece, special flag and span."""
        ...

    def detokenize(self, ids: Sequence[int]) -> str:
        """The text of `ids` (ids in [0, n_vocab)), special tokens written out as the vocabulary spells them."""
        ...

    def truncate(self, tokens: list[int], n: int) -> list[int]:
        """`tokens` of a text cut to `n`, keeping the special token the tokenizer appends, if any."""
        ...

    def embed(self, seqs: Sequence[Sequence[int]], starts: Sequence[int] | None = None) -> np.ndarray:
        """Pooled float32 vectors, one row per sequence, in order: not normalised (the embeddings pipeline,
        cortex.runtime.embed, normalises per request). `starts`: per sequence, where its second part begins: a pair's
        document (token type 1 from there, see PairEngine), or the first token pooled when a prompt is left out
        of the pooling (`include_prompt` false); None: every sequence is one part."""
        ...

    def memory_bytes(self) -> int:
        """Bytes the loaded weights and buffers take."""
        ...

    def close(self) -> None:
        """Free native resources. The engine is unusable afterwards."""
        ...


class PairEngine(Engine, Protocol):
    """A cross-encoder (a model whose task is rerank): `embed` gives one logit per pair, a row of one."""

    def tokenize_pairs(
        self, query: str, documents: Sequence[str], *, truncate: bool, doc_tokens: int | None = None
    ) -> tuple[list[list[int]], list[int]]:
        """(`[CLS] query [SEP] document [SEP]` ids per document, the index where each one's document begins:
        the `starts` of `embed`, since a literal "[SEP]" in the query must not end it). With `truncate`, a pair
        longer than `n_ctx` is
        cut as sentence-transformers cuts it (longest first: tokens come off the longer of query and document);
        `doc_tokens` first cuts each document to that many tokens (Cohere's max_tokens_per_doc)."""
        ...


def truncate_tokens(tokens: list[int], n: int, trailing: frozenset[int]) -> list[int]:
    """Cut a tokenized text to `n` tokens; a special token the tokenizer appends (in `trailing`, such as
    BERT's [SEP]) stays last, exactly as tokenizers truncate."""
    if len(tokens) <= n:
        return tokens
    if tokens[-1] in trailing:
        return [*tokens[: n - 1], tokens[-1]]
    return tokens[:n]


def l2_normalize(rows: np.ndarray) -> np.ndarray:
    """`rows` scaled to unit length in place (a zero row stays zero); returns it."""
    norms = np.linalg.norm(rows, axis=1, keepdims=True)
    np.maximum(norms, 1e-12, out=norms)
    rows /= norms
    return rows
