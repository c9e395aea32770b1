"""llama.cpp through llama-cpp-python's low-level (ctypes) API.

Why not the high-level `Llama.embed`: it decodes a list of inputs one sequence at a time with
Python bookkeeping around each call and re-allocates per call; measured here it serves 21 inputs/s
when handed 32 inputs at once against 97 one by one. Instead we own one context and one
pre-allocated batch, pack many sequences (each with its own seq_id) into a single
`llama_decode`/`llama_encode`, and read each sequence's pooled vector with
`llama_get_embeddings_seq`. llama.cpp masks attention between sequences, so packing changes no
vector beyond float rounding.

Context settings that packing needs (see llama.cpp's embedding example): `embeddings=True`, an
explicit pooling type, `n_seq_max` at least the sequences per batch, `kv_unified=True`, and
`n_ctx = n_batch = n_ubatch`, because a non-causal sequence must fit one ubatch and a pooled causal
one must too for its vector to cover all its tokens.

A decoder's output layer is not run: cortex's llama.cpp build (scripts/llama-cpp-wheel.sh) leaves the LM
head out of a pooled-embedding context and reserves no logits buffer, which stock llama.cpp computes for
every token and sizes by the largest batch (Gemma 3 270M: 336 of 537 MFLOP a token, 2 MiB a token).
"""

from __future__ import annotations

import contextlib
import ctypes
from collections.abc import Sequence
from pathlib import Path

import llama_cpp
import numpy as np

from cortex.engine.base import Token, truncate_tokens
from cortex.engine.llama_backend import init_backend
from cortex.errors import EngineFailure, InvalidModelFile

_POOLING = {
    "mean": llama_cpp.LLAMA_POOLING_TYPE_MEAN,
    "cls": llama_cpp.LLAMA_POOLING_TYPE_CLS,
    "last": llama_cpp.LLAMA_POOLING_TYPE_LAST,
}


class LlamaCppEngine:
    """One GGUF model and one embedding context."""

    workers = 1  # one context: batches run one after another, each on all threads

    def __init__(
        self,
        path: Path,
        *,
        pooling: str,
        ctx_len: int,
        n_threads: int,
        max_batch_tokens: int = 512,
        max_batch_seqs: int = 64,
    ) -> None:
        init_backend()
        self.max_batch_seqs = max_batch_seqs
        self.max_batch_tokens = max_batch_tokens
        mparams = llama_cpp.llama_model_default_params()
        # Read the weights into memory instead of mapping the file: a mapped file that is cut short or
        # rewritten under a loaded model (`truncate -s` on the store's file) kills the whole process with
        # SIGBUS at the next batch. Resident memory is no higher: Gemma 3 270M Q4_K_M loaded and used, 494 MiB
        # mapped vs 481 MiB read (bench/load_modes.py, AMD EPYC Zen 4): mapped pages count in RSS too, and
        # Q4_K weights are repacked into copies anyway.
        mparams.load_mode = llama_cpp.LLAMA_LOAD_MODE_NONE
        mparams.lazy_mode = llama_cpp.LLAMA_LAZY_MODE_OFF  # lazy reads need a mapped file
        self._model = llama_cpp.llama_model_load_from_file(str(path).encode(), mparams)
        if not self._model:
            raise InvalidModelFile(f"llama.cpp could not load {path.name} (unsupported architecture or corrupt file)")
        self._vocab = llama_cpp.llama_model_get_vocab(self._model)
        self.n_vocab = llama_cpp.llama_vocab_n_tokens(self._vocab)
        self.n_embd = llama_cpp.llama_model_n_embd(self._model)
        self.n_ctx = min(ctx_len, llama_cpp.llama_model_n_ctx_train(self._model))
        # tokens that tokenize() appends after the text ([SEP] for BERT, EOS where a model adds one)
        trailing = []
        if llama_cpp.llama_vocab_get_add_eos(self._vocab):
            trailing.append(llama_cpp.llama_vocab_eos(self._vocab))
        if llama_cpp.llama_vocab_get_add_sep(self._vocab):
            trailing.append(llama_cpp.llama_vocab_sep(self._vocab))
        self._trailing = frozenset(t for t in trailing if t >= 0)
        # Encoder-only models (BERT) have no KV cache and run through llama_encode.
        self._encoder_only = bool(
            llama_cpp.llama_model_has_encoder(self._model) and not llama_cpp.llama_model_has_decoder(self._model)
        )
        capacity = max(self.n_ctx, max_batch_tokens)
        cparams = llama_cpp.llama_context_default_params()
        cparams.n_ctx = capacity
        cparams.n_batch = capacity
        cparams.n_ubatch = capacity
        cparams.n_seq_max = max_batch_seqs
        cparams.n_threads = n_threads
        cparams.n_threads_batch = n_threads
        cparams.embeddings = True
        cparams.pooling_type = _POOLING[pooling]
        cparams.kv_unified = True
        cparams.no_perf = True
        self._ctx = llama_cpp.llama_init_from_model(self._model, cparams)
        if not self._ctx:
            llama_cpp.llama_model_free(self._model)
            raise EngineFailure(f"llama.cpp could not create a context for {path.name} (out of memory?)")
        self._memory = None if self._encoder_only else llama_cpp.llama_get_memory(self._ctx)
        self._capacity = capacity
        self._batch = llama_cpp.llama_batch_init(capacity, 0, 1)
        # numpy views over the batch's arrays, so filling it costs a few vector writes per sequence
        self._tok = np.ctypeslib.as_array(self._batch.token, shape=(capacity,))
        self._pos = np.ctypeslib.as_array(self._batch.pos, shape=(capacity,))
        self._nseq = np.ctypeslib.as_array(self._batch.n_seq_id, shape=(capacity,))
        self._out = np.ctypeslib.as_array(self._batch.logits, shape=(capacity,))
        self._nseq[:] = 1
        self._out[:] = 1
        self._positions = np.arange(capacity, dtype=np.int32)

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        data = text.encode("utf-8")
        n_max = len(data) + 16
        while True:
            buf = (llama_cpp.llama_token * n_max)()
            n = llama_cpp.llama_tokenize(self._vocab, data, len(data), buf, n_max, add_special, False)
            if n >= 0:
                return buf[:n]
            n_max = -n

    def _piece(self, token: int) -> bytes:
        """The token's bytes as llama.cpp writes it out, special tokens spelled out (llama-server's piece)."""
        n_max = 64
        while True:
            buf = ctypes.create_string_buffer(n_max)
            n = llama_cpp.llama_token_to_piece(self._vocab, token, buf, n_max, 0, True)
            if n >= 0:
                return buf.raw[:n]
            n_max = -n

    def tokens(self, text: str, add_special: bool = True) -> list[Token]:
        """Spans come from the pieces: where the text's pieces spell it exactly (byte-level and
        SentencePiece vocabularies), each covers its own bytes; where they do not (WordPiece lower-cases and
        drops spaces), llama.cpp cannot tell, and spans are None."""
        ids = self.tokenize(text, add_special)
        control = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL
        specials = [bool(llama_cpp.llama_vocab_get_attr(self._vocab, t) & control) for t in ids]
        pieces = [self._piece(t) for t in ids]
        spelled = b"".join(p for p, special in zip(pieces, specials, strict=True) if not special)
        data = text.encode("utf-8")
        lead = len(spelled) - len(data)  # SentencePiece's added leading space, if any
        aligned = spelled == data or (lead == 1 and spelled == b" " + data)
        out, at = [], -lead if aligned else 0
        for token, piece, special in zip(ids, pieces, specials, strict=True):
            span = None
            if aligned and not special:
                span = (max(at, 0), at + len(piece))
                at += len(piece)
            out.append(Token(token, piece, special, span))
        return out

    def detokenize(self, ids: Sequence[int]) -> str:
        arr = (llama_cpp.llama_token * max(len(ids), 1))(*ids)
        n_max = 16 + 8 * len(ids)
        while True:
            buf = ctypes.create_string_buffer(n_max)
            n = llama_cpp.llama_detokenize(self._vocab, arr, len(ids), buf, n_max, False, True)
            if n >= 0:
                return buf.raw[:n].decode("utf-8", errors="replace")
            n_max = -n

    def truncate(self, tokens: list[int], n: int) -> list[int]:
        """Cut a tokenized text to `n` tokens, keeping a trailing special token as tokenizers do."""
        return truncate_tokens(tokens, n, self._trailing)

    def embed(self, seqs: Sequence[Sequence[int]], starts: Sequence[int] | None = None) -> np.ndarray:
        """See `Engine.embed`. llama.cpp pools every token: a model that leaves its prompt out of the pooling
        is not imported for this engine (cortex.engine.kinds), nor are cross-encoders, so `starts` is never set."""
        if starts is not None and any(starts):
            raise EngineFailure("llama.cpp pools every token; it cannot leave a prompt out of the pooling")
        total = sum(len(s) for s in seqs)
        if not seqs or total > self._capacity or len(seqs) > self.max_batch_seqs:
            raise EngineFailure(f"batch of {len(seqs)} sequences / {total} tokens exceeds the engine's capacity")
        offset = 0
        seq_id = self._batch.seq_id
        for sid, toks in enumerate(seqs):
            n = len(toks)
            self._tok[offset : offset + n] = toks
            self._pos[offset : offset + n] = self._positions[:n]
            for i in range(offset, offset + n):
                seq_id[i][0] = sid
            offset += n
        self._batch.n_tokens = total
        try:
            if self._encoder_only:
                rc = llama_cpp.llama_encode(self._ctx, self._batch)
            else:
                rc = llama_cpp.llama_decode(self._ctx, self._batch)
            if rc != 0:
                raise EngineFailure(f"llama.cpp failed on a batch of {len(seqs)} sequences (code {rc})")
            out = np.empty((len(seqs), self.n_embd), dtype=np.float32)
            for sid in range(len(seqs)):
                ptr = llama_cpp.llama_get_embeddings_seq(self._ctx, sid)
                if not ptr:
                    raise EngineFailure(f"llama.cpp returned no embedding for sequence {sid}")
                out[sid] = np.ctypeslib.as_array(ptr, shape=(self.n_embd,))
        finally:
            if self._memory is not None:
                llama_cpp.llama_memory_clear(self._memory, True)
        return out

    def memory_bytes(self) -> int:
        return int(llama_cpp.llama_model_size(self._model)) + int(llama_cpp.llama_state_get_size(self._ctx))

    def close(self) -> None:
        if self._ctx:
            llama_cpp.llama_batch_free(self._batch)
            llama_cpp.llama_free(self._ctx)
            llama_cpp.llama_model_free(self._model)
            self._ctx = None
            self._model = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()
