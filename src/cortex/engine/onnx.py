"""ONNX Runtime for encoder models imported from sentence-transformers folders.

How it wants work (measured here on all-MiniLM-L6-v2, 2 cores): one input per run beats padded
batches, and two runs in parallel beat one run on two threads (12.2k vs 10.9k tokens/s). ONNX Runtime
releases the GIL and a session may run from several threads at once, so the engine keeps ONE session with
an intra-op thread per core that `workers` threads call in parallel: a lone input spreads over all cores,
and runs in parallel share the pool (a run's parallel loop does the parts no idle pool thread took
itself), at the same CPU time per token as runs on one-thread sessions (bench/memory.py's notes).

Memory (bench/memory.py): a session pre-packs the weights of its matrix products into a layout of its
own (a second session, as the one-thread and all-core pair this engine had, holds a second copy: 41 MiB
for all-MiniLM-L6-v2), and ONNX Runtime frees its unpacked copy of a weight only when it loaded that weight
itself. So the session reads those weights from the model's external-data file; only the tables that
Gather nodes read (the embeddings, never pre-packed) are loaded here (`add_initializer`), after the
checks of `load_shared_weights`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx.external_data_helper import uses_external_data
from tokenizers import Tokenizer

from cortex.convert.onnx_ops import PAIR_START, POOL_START
from cortex.engine.base import Token, truncate_tokens
from cortex.errors import EngineFailure, InvalidModelFile, InvalidRequest


def load_shared_weights(path: Path) -> tuple[dict[str, ort.OrtValue], int]:
    """(the external initializers that only Gather nodes read, as OrtValues; the bytes of all external
    initializers). External data must be a plain file name in the model's own folder: a graph that points
    elsewhere is refused, like a lying GGUF."""
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise InvalidModelFile(f"{path.name} is not a valid ONNX file: {exc}") from exc
    folder = path.parent.resolve()
    shared = gathered_only(proto.graph)
    values: dict[str, ort.OrtValue] = {}
    total = 0
    for init in proto.graph.initializer:
        if not uses_external_data(init):
            continue
        info = {e.key: e.value for e in init.external_data}
        location = info.get("location", "")
        target = (folder / location).resolve()
        if "/" in location or "\\" in location or location in ("", ".", "..") or target.parent != folder:
            raise InvalidModelFile(f"{path.name} points outside its folder for tensor {init.name!r}")
        offset, length = int(info.get("offset", 0)), int(info.get("length", -1))
        dims = tuple(init.dims)
        dtype = onnx.helper.tensor_dtype_to_np_dtype(init.data_type)
        count = int(np.prod(dims)) if dims else 1
        if length != count * dtype.itemsize or offset < 0 or offset + length > target.stat().st_size:
            raise InvalidModelFile(f"{path.name}: tensor {init.name!r} lies outside {location}")
        if init.name in shared:
            array = np.fromfile(target, dtype=dtype, count=count, offset=offset).reshape(dims)
            values[init.name] = ort.OrtValue.ortvalue_from_numpy(array)
        total += length
    return values, total


def gathered_only(graph: onnx.GraphProto) -> set[str]:
    """The initializers that only Gather nodes read, as the table they gather from (embedding tables). ONNX
    Runtime reads such a table as it is; a weight of a matrix product it re-packs in each session."""
    uses: dict[str, set[tuple[str, int]]] = {}
    for node in graph.node:
        for slot, name in enumerate(node.input):
            uses.setdefault(name, set()).add((node.op_type, slot))
    return {i.name for i in graph.initializer if uses.get(i.name) == {("Gather", 0)}}


def without_final_normalization(path: Path) -> bytes | None:
    """The graph at `path` serialised without its last node, if that node is an LpNormalization (graphs
    written before normalisation moved into cortex.runtime.embed ended with one); None if it has none.

    Engines return pooled vectors and each request chooses whether they are normalised, so a stored graph
    that normalises is served from its pooled output. Its external weights are left out here: the
    sessions take them from `load_shared_weights`."""
    proto = onnx.load(str(path), load_external_data=False)
    graph = proto.graph
    if len(graph.output) != 1:
        return None
    producers = {out: node for node in graph.node for out in node.output}
    node = producers.get(graph.output[0].name)
    identity = None
    if node is not None and node.op_type == "Identity":
        identity, node = node, producers.get(node.input[0])
    if node is None or node.op_type != "LpNormalization":
        return None
    pooled = node.input[0]
    graph.node.remove(node)
    if identity is not None:
        identity.input[0] = pooled
    else:
        graph.node.append(onnx.helper.make_node("Identity", [pooled], [graph.output[0].name]))
    return proto.SerializeToString()


def _byte_level_alphabet() -> dict[str, int]:
    """GPT-2's byte-level alphabet, character -> byte: printable bytes stand for themselves, the other 68
    (controls, space, ...) for the characters from U+0100 on, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in printable]
    return {chr(b): b for b in printable} | {chr(256 + n): b for n, b in enumerate(others)}


class OnnxEngine:
    """An encoder model's ONNX graph and its tokenizer."""

    def __init__(self, graph: Path, tokenizer: Path, *, ctx_len: int, n_threads: int) -> None:
        self.tokenizer = Tokenizer.from_file(str(tokenizer))
        # sentence-transformers' tokenizer.json pads to 128 and truncates at 128; the context rule is ours
        self.tokenizer.no_padding()
        self.tokenizer.no_truncation()
        self.n_vocab = self.tokenizer.get_vocab_size()
        self.n_ctx = ctx_len
        self._weights, self._weight_bytes = load_shared_weights(graph)
        self._folder = graph.parent
        model = without_final_normalization(graph) or str(graph)
        self._session = self._open(model, n_threads)
        self.workers = n_threads
        self.max_batch_seqs = 1  # one input per run: padding costs more than batching saves
        self.max_batch_tokens = ctx_len
        self.n_embd = int(self._session.get_outputs()[0].shape[1])
        # graphs pooled from a start per row take `pool_start` (cortex.convert.onnx_ops); older ones do not
        # graphs that take where each row's second part starts (cortex.convert.onnx_ops): a pooling start or a
        # pair's document
        names = {i.name for i in self._session.get_inputs()}
        self._starts_input = next((n for n in (POOL_START, PAIR_START) if n in names), None)
        # pairs of a cross-encoder cut to the context as sentence-transformers cuts them (see tokenize_pairs);
        # a second tokenizer takes ~8 MiB, so only a cross-encoder's graph (it takes pairs) gets one
        self._pair_cutter = None
        if self._starts_input == PAIR_START:
            self._pair_cutter = Tokenizer.from_file(str(tokenizer))
            self._pair_cutter.no_padding()
            self._pair_cutter.enable_truncation(ctx_len, strategy="longest_first")
        empty = self.tokenizer.encode("").ids
        self._trailing = frozenset(empty[-1:]) if len(empty) >= 2 else frozenset()
        # a byte-level BPE vocabulary (GPT-2's, ModernBERT's) spells each byte as a printable character
        self._byte_of = _byte_level_alphabet() if type(self.tokenizer.decoder).__name__ == "ByteLevel" else None

    def _open(self, model: str | bytes, threads: int) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # A pool thread that spins after a run steals a core from the other workers' runs: sleep instead.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # a graph given as bytes names its external data relative to this folder
        options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(self._folder))
        for name, value in self._weights.items():
            options.add_initializer(name, value)
        try:
            return ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own exception types for invalid graphs
            raise InvalidModelFile(f"ONNX Runtime refused the graph: {exc}") from exc

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

    def embed(
        self, seqs: Sequence[Sequence[int]], wide: bool = False, starts: Sequence[int] | None = None
    ) -> np.ndarray:
        """See `cortex.engine.base.Engine`; `wide` changes nothing here: every run may use every core."""
        longest = max(len(s) for s in seqs)
        ids = np.zeros((len(seqs), longest), dtype=np.int64)
        mask = np.zeros((len(seqs), longest), dtype=np.int64)
        for i, seq in enumerate(seqs):
            ids[i, : len(seq)] = seq
            mask[i, : len(seq)] = 1
        feed = {"input_ids": ids, "attention_mask": mask}
        if self._starts_input is not None:
            feed[self._starts_input] = np.array(starts or [0] * len(seqs), dtype=np.int64)
        try:
            out = self._session.run(None, feed)[0]
        except Exception as exc:
            raise EngineFailure(f"ONNX Runtime failed on a batch of {len(seqs)} inputs: {exc}") from exc
        return np.asarray(out, dtype=np.float32)

    def memory_bytes(self) -> int:
        return self._weight_bytes

    def close(self) -> None:
        self._session = None  # type: ignore[assignment]
        self._weights = {}
