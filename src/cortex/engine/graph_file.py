"""What the two engines that run a stored ONNX graph (ONNX Runtime and OpenVINO) share about it: its external
weights, checked before any runtime reads them (each must lie in a plain file of the graph's own folder,
inside that file: a runtime would follow any path a graph names, as a lying GGUF would point past its end);
a final normalisation written by older cortex; and the inputs a batch of token ids becomes."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx.external_data_helper import uses_external_data

from cortex.errors import InvalidModelFile


@dataclass(frozen=True)
class ExternalTensor:
    """One initializer stored outside the graph: where its bytes are, and what they hold."""

    name: str
    file: Path
    offset: int
    length: int
    dtype: np.dtype
    dims: tuple[int, ...]


def external_tensors(path: Path) -> tuple[onnx.GraphProto, list[ExternalTensor]]:
    """The graph at `path` (without its external data) and its external initializers, each checked to lie in
    a file of the graph's folder; InvalidModelFile for a graph that is not ONNX or points elsewhere."""
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises DecodeError and friends
        raise InvalidModelFile(f"{path.name} is not a valid ONNX file: {exc}") from exc
    folder = path.parent.resolve()
    tensors = []
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
        tensors.append(ExternalTensor(init.name, target, offset, length, dtype, dims))
    return proto.graph, tensors


def without_final_normalization(path: Path) -> bytes | None:
    """The graph at `path` serialised without its last node, if that node is an LpNormalization (graphs
    written before normalisation moved into cortex.runtime.embed ended with one); None if it has none.

    Engines return pooled vectors and each request chooses whether they are normalised, so a stored graph
    that normalises is served from its pooled output. Its external weights are left out here: the
    runtime reads them from the graph's folder."""
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


def graph_feed(
    seqs: Sequence[Sequence[int]], starts_input: str | None, starts: Sequence[int] | None, multiple: int = 1
) -> dict[str, np.ndarray]:
    """The graph's inputs for `seqs`: ids and attention mask padded to the longest, rounded up to `multiple`
    tokens; and, for a graph that takes one (`starts_input`), where each row's second part starts."""
    longest = max(len(s) for s in seqs)
    longest += -longest % multiple
    ids = np.zeros((len(seqs), longest), dtype=np.int64)
    mask = np.zeros((len(seqs), longest), dtype=np.int64)
    for i, seq in enumerate(seqs):
        ids[i, : len(seq)] = seq
        mask[i, : len(seq)] = 1
    feed = {"input_ids": ids, "attention_mask": mask}
    if starts_input is not None:
        feed[starts_input] = np.array(starts or [0] * len(seqs), dtype=np.int64)
    return feed
