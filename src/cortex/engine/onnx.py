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

An int8 graph (dynamically quantised matrix products) wants work otherwise (`bench/engines.py --rounds 3`,
MiniLM, 2 cores): its runs are short, so two parallel runs sharing one all-core pool lose 18% of its
tokens/s to the pool (17.3k against 21.0k on a one-thread session), and a lone run gains 40% from pool
threads that spin between operators rather than sleep (16.0k against 11.4k). Its packed weights are a
quarter of fp32's, so it keeps two sessions (~16 MiB more for MiniLM, bench/memory.py): a one-thread one
that the workers' threads run in parallel, and an all-core one whose pool spins during a run, for a run
the scheduler says is alone (`solo_runs`).

ONNX Runtime fuses each residual Add and LayerNormalization of an int8 graph into SkipLayerNormalization,
whose CPU kernel is slower than the two operators it replaces (ORT 1.32, same run: 19.5k against 17.1k
tokens/s with two callers, 16.0k against 14.1k alone): for int8 that fusion is left off (fp32 graphs keep
ONNX Runtime's defaults: it fuses few or none of theirs, and that was not measured).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from cortex.convert.onnx_ops import PAIR_START, POOL_START
from cortex.engine.graph_file import external_tensors, graph_feed, without_final_normalization
from cortex.engine.hf_tokenizer import HfTokenized
from cortex.errors import EngineFailure, InvalidModelFile

# Graph rewrites of ONNX Runtime this engine turns off for an int8 graph (see the module's docstring).
_INT8_DISABLED_OPTIMIZERS = ["SkipLayerNormFusion"]


def load_shared_weights(path: Path) -> tuple[dict[str, ort.OrtValue], int]:
    """(the external initializers that only Gather nodes read, as OrtValues; the bytes of all external
    initializers). External data must be a plain file name in the model's own folder: a graph that points
    elsewhere is refused, like a lying GGUF."""
    graph, tensors = external_tensors(path)
    shared = gathered_only(graph)
    values = {
        t.name: ort.OrtValue.ortvalue_from_numpy(
            np.fromfile(t.file, dtype=t.dtype, count=t.length // t.dtype.itemsize, offset=t.offset).reshape(t.dims)
        )
        for t in tensors
        if t.name in shared
    }
    return values, sum(t.length for t in tensors)


def gathered_only(graph: onnx.GraphProto) -> set[str]:
    """The initializers that only Gather nodes read, as the table they gather from (embedding tables). ONNX
    Runtime reads such a table as it is; a weight of a matrix product it re-packs in each session."""
    uses: dict[str, set[tuple[str, int]]] = {}
    for node in graph.node:
        for slot, name in enumerate(node.input):
            uses.setdefault(name, set()).add((node.op_type, slot))
    return {i.name for i in graph.initializer if uses.get(i.name) == {("Gather", 0)}}


class OnnxEngine(HfTokenized):
    """An encoder model's ONNX graph and its tokenizer (cortex.engine.hf_tokenizer)."""

    def __init__(self, graph: Path, tokenizer: Path, *, ctx_len: int, n_threads: int, precision: str = "fp32") -> None:
        """`precision`: the record's; "int8" (a quantised graph) runs as the module's docstring says."""
        self._open_tokenizer(tokenizer, ctx_len)
        self._weights, self._weight_bytes = load_shared_weights(graph)
        self._folder = graph.parent
        model = without_final_normalization(graph) or str(graph)
        int8 = precision == "int8"
        two = int8 and n_threads > 1
        self._session = self._open(model, 1 if two else n_threads, int8=int8)
        # a run with nothing beside it (the scheduler's `alone`): all cores, pool threads spinning (int8 only)
        self._lone = self._open(model, n_threads, int8=True, spin=True) if two else None
        self.solo_runs = two
        self.workers = n_threads
        self.max_batch_seqs = 1  # one input per run: padding costs more than batching saves
        self.max_batch_tokens = ctx_len
        self.n_embd = int(self._session.get_outputs()[0].shape[1])
        # graphs that take where each row's second part starts (cortex.convert.onnx_ops): a pooling start or a
        # pair's document
        names = {i.name for i in self._session.get_inputs()}
        self._starts_input = next((n for n in (POOL_START, PAIR_START) if n in names), None)
        if self._starts_input == PAIR_START:  # a cross-encoder's graph
            self._open_pair_cutter(tokenizer, ctx_len)

    def _open(self, model: str | bytes, threads: int, *, int8: bool, spin: bool = False) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        # A pool thread that spins after a run steals a core from the other workers' runs: sleep instead,
        # except in the pool of the session kept for lone runs.
        options.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        if spin:  # between the operators of a run; not after it, when another run may start beside it
            options.add_session_config_entry("session.force_spinning_stop", "1")
        # a graph given as bytes names its external data relative to this folder
        options.add_session_config_entry("session.model_external_initializers_file_folder_path", str(self._folder))
        for name, value in self._weights.items():
            options.add_initializer(name, value)
        try:
            return ort.InferenceSession(
                model,
                options,
                providers=["CPUExecutionProvider"],
                disabled_optimizers=_INT8_DISABLED_OPTIMIZERS if int8 else [],
            )
        except Exception as exc:  # ORT raises its own exception types for invalid graphs
            raise InvalidModelFile(f"ONNX Runtime refused the graph: {exc}") from exc

    def embed(
        self, seqs: Sequence[Sequence[int]], starts: Sequence[int] | None = None, *, alone: bool = False
    ) -> np.ndarray:
        feed = graph_feed(seqs, self._starts_input, starts)
        session = self._lone if alone and self._lone is not None else self._session
        try:
            out = session.run(None, feed)[0]
        except Exception as exc:
            raise EngineFailure(f"ONNX Runtime failed on a batch of {len(seqs)} inputs: {exc}") from exc
        return np.asarray(out, dtype=np.float32)

    def memory_bytes(self) -> int:
        return self._weight_bytes

    def close(self) -> None:
        self._session = self._lone = None  # type: ignore[assignment]
        self._weights = {}
