"""OpenVINO for the bf16 precision tier: the same fp32 ONNX graph ONNX Runtime serves, compiled by
OpenVINO's CPU plugin with INFERENCE_PRECISION_HINT=bf16, so its matrix products run on the CPU's bf16
units (AVX512-BF16's VDPBF16PS, or AMX tiles) with fp32 accumulation.

How it wants work (measured in bench/precision.py): single inputs in parallel, one OpenVINO stream per
worker (PERFORMANCE_HINT THROUGHPUT, NUM_STREAMS = threads). One compiled model holds the weights once
(with their packed forms); each worker thread takes one of `workers` infer requests. A lone input runs
on one stream like any other: a second compiled model for lone inputs would hold the weights again. No
ONNX Runtime session stays beside it.
"""

from __future__ import annotations

import queue
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from cortex.convert.onnx_ops import PAIR_START, POOL_START
from cortex.engine.graph_file import external_tensors, graph_feed
from cortex.engine.hf_tokenizer import HfTokenized
from cortex.errors import EngineFailure, InvalidModelFile

# The OpenVINO inference precision of each cortex precision this engine serves.
OV_PRECISIONS = {"bf16": "bf16", "fp32": "f32"}
_LENGTH_STEP = 8  # input lengths are rounded up to a multiple of this (see embed)


class OpenVinoEngine(HfTokenized):
    """An encoder model's ONNX graph compiled by OpenVINO at `precision`, and its tokenizer."""

    def __init__(self, graph: Path, tokenizer: Path, *, ctx_len: int, n_threads: int, precision: str = "bf16") -> None:
        import openvino as ov

        self._open_tokenizer(tokenizer, ctx_len)
        fp32_bytes = sum(t.length for t in external_tensors(graph)[1])  # checked before OpenVINO reads it
        streams = max(1, n_threads)
        config = {
            "INFERENCE_PRECISION_HINT": OV_PRECISIONS[precision],
            "PERFORMANCE_HINT": "THROUGHPUT",
            "NUM_STREAMS": str(streams),
            "INFERENCE_NUM_THREADS": str(streams),
        }
        try:
            self._compiled = ov.Core().compile_model(str(graph), "CPU", config)
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses for graphs it cannot read
            raise InvalidModelFile(f"OpenVINO refused the graph: {exc}") from exc
        # The plugin falls back to f32 where the CPU lacks bf16: never serve another precision than asked.
        got = self._compiled.get_property("INFERENCE_PRECISION_HINT").get_type_name()
        if got != OV_PRECISIONS[precision]:
            raise EngineFailure(f"OpenVINO compiled the graph at {got}, not {OV_PRECISIONS[precision]}")
        self.precision = precision
        self.workers = streams
        self.max_batch_seqs = 1  # one input per run, runs in parallel: padded batches were not faster
        self.max_batch_tokens = ctx_len
        self.n_embd = int(self._compiled.outputs[0].get_partial_shape()[1].get_length())
        names = {name for port in self._compiled.inputs for name in port.get_names()}
        self._starts_input = next((n for n in (POOL_START, PAIR_START) if n in names), None)
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        for _ in range(self.workers):
            self._requests.put(self._compiled.create_infer_request())
        # OpenVINO does not report its memory. Measured on MiniLM: compiling adds about twice the fp32 weights
        # (constants and their packed copies), at bf16 as at fp32, as ONNX Runtime's sessions do; the weights'
        # bytes are what ONNX Runtime reports too.
        self._weight_bytes = fp32_bytes

    def embed(self, seqs: Sequence[Sequence[int]], starts: Sequence[int] | None = None) -> np.ndarray:
        # OpenVINO's CPU plugin keeps what it compiled for each input shape, per stream (up to 5,000 shapes):
        # a length of its own per input grew a server by ~470 MiB over MiniLM's 256 lengths. Lengths rounded up
        # to a multiple of _LENGTH_STEP keep at most n_ctx / _LENGTH_STEP shapes, at the same speed (measured on
        # the bench corpus: the padding is masked out, and cheaper than a new shape).
        longest = max(len(s) for s in seqs)
        step = _LENGTH_STEP if longest + (-longest % _LENGTH_STEP) <= self.n_ctx else 1
        feed = graph_feed(seqs, self._starts_input, starts, step)
        request = self._requests.get()  # at most `workers` callers at once: one request each
        try:
            request.infer(feed)
            return np.array(request.get_output_tensor(0).data, dtype=np.float32)  # a copy: the request is reused
        except Exception as exc:
            raise EngineFailure(f"OpenVINO failed on a batch of {len(seqs)} inputs: {exc}") from exc
        finally:
            self._requests.put(request)

    def memory_bytes(self) -> int:
        return self._weight_bytes

    def close(self) -> None:
        self._requests = queue.SimpleQueue()
        self._compiled = None
