"""A stored ONNX graph's external weights, checked before any runtime reads them: each must lie in a plain
file of the graph's own folder, inside that file (ONNX Runtime and OpenVINO would follow any path a graph
names, as a lying GGUF would point past its end). One check for both engines that run ONNX graphs."""

from __future__ import annotations

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
