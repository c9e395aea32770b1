"""The tokenizer side of the engines that run an ONNX graph (ONNX Runtime and OpenVINO): a folder's
tokenizer.json through Hugging Face `tokenizers`, with the context rule cortex's own.

One class, inherited by both engines, so that a model tokenizes the same whichever runtime serves it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tokenizers import Tokenizer

from cortex.engine.base import Token, truncate_tokens
from cortex.errors import InvalidRequest


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level alphabet, character -> byte: printable bytes stand for themselves, the other 68
    (controls, space, ...) for the characters from U+0100 on, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {chr(b): b for b in printable} | {chr(256 + n): b for n, b in enumerate(others)}


class HfTokenized:
    """The Engine protocol's tokenizer methods (and PairEngine's `tokenize_pairs`) over tokenizer.json."""

    n_vocab: int
    n_ctx: int

    def _open_tokenizer(self, tokenizer: Path, ctx_len: int) -> None:
        self.tokenizer = Tokenizer.from_file(str(tokenizer))
        # sentence-transformers' tokenizer.json pads to 128 and truncates at 128; the context rule is ours
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.n_vocab = self.tokenizer.get_vocab_size()
        self.n_ctx = ctx_len
        self._pair_cutter: Tokenizer | None = None  # a cross-encoder's (see _open_pair_cutter)
        empty = self.tokenizer.encode("").ids
        self._trailing = frozenset(empty[-1:]) if len(empty) >= 2 else frozenset()
        # a byte-level BPE vocabulary (GPT-2's, ModernBERT's) spells each byte as a printable character
        self._byte_of = _byte_level_alphabet() if type(self.tokenizer.decoder).__name__ == "ByteLevel" else None

    def _open_pair_cutter(self, tokenizer: Path, ctx_len: int) -> None:
        """A second tokenizer that cuts a cross-encoder's pairs to the context as sentence-transformers does
        (see tokenize_pairs). It takes ~8 MiB, so only an engine whose graph takes pairs opens one."""
        self._pair_cutter = Tokenizer.from_file(str(tokenizer))
        self._pair_cutter.no_padding()
        self._pair_cutter.enable_truncation(ctx_len, strategy="longest_first")

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=add_special).ids

    def tokens(self, text: str, add_special: bool = True) -> list[Token]:
        enc = self.tokenizer.encode(text, add_special_tokens=add_special)
        # `tokenizers` gives offsets in characters; spans are in UTF-8 bytes, as text-embeddings-inference's
        byte_at = [0]
        for ch in text:
            byte_at.append(byte_at[-1] + len(ch.encode("utf-8")))
        return [
            Token(i, self._piece(piece, special), bool(special), None if special else (byte_at[a], byte_at[b]))
            for i, piece, special, (a, b) in zip(enc.ids, enc.tokens, enc.special_tokens_mask, enc.offsets, strict=True)
        ]

    def _piece(self, piece: str, special: int) -> bytes:
        """The bytes a token stands for: a byte-level piece's characters mapped back to bytes ('Ġ' is a space,
        'Ã' 0xC3), as llama-server gives them; any other piece (or an added token) as its UTF-8 text."""
        if self._byte_of is None or special or not all(ch in self._byte_of for ch in piece):
            return piece.encode("utf-8")
        return bytes(self._byte_of[ch] for ch in piece)

    def detokenize(self, ids: Sequence[int]) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=False)

    def tokenize_pairs(
        self, query: str, documents: Sequence[str], *, truncate: bool, doc_tokens: int | None = None
    ) -> tuple[list[list[int]], list[int]]:
        """See `cortex.engine.base.PairEngine`. The query is tokenized once, the documents in one batch
        (the tokenizers library spreads a batch over its own threads); the template adds the special tokens
        and says, by its type ids, where each document begins."""
        q = self.tokenizer.encode(query, add_special_tokens=False)
        docs = self.tokenizer.encode_batch(list(documents), add_special_tokens=False)
        pairs, starts = [], []
        for d in docs:
            if doc_tokens is not None:
                d.truncate(doc_tokens)
            try:
                pair = (self._pair_cutter if truncate and self._pair_cutter else self.tokenizer).post_process(q, d)
            except Exception as exc:  # tokenizers cannot cut to a context shorter than the special tokens
                raise InvalidRequest(f"Cannot cut the pair to {self.n_ctx} tokens: {exc}", param="documents") from exc
            pairs.append(pair.ids)
            starts.append(pair.type_ids.index(1) if 1 in pair.type_ids else len(pair.ids))
        return pairs, starts

    def truncate(self, tokens: list[int], n: int) -> list[int]:
        return truncate_tokens(tokens, n, self._trailing)
