"""Read a safetensors tensor as float32, bfloat16 included.

safetensors' numpy reader has no bfloat16 (numpy lacks the type), and many checkpoints ship bf16 weights:
such a tensor's raw bytes are read at its offset in the file and widened (a bf16 value is the top half of
the float32 with the same sign, exponent and leading mantissa bits), exactly as torch's `.float()` does.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors import safe_open

from cortex.errors import InvalidModelFile


def tensor_f32(f: safe_open, path: Path, key: str) -> np.ndarray:
    """Tensor `key` of the open file `f` (at `path`) as float32."""
    if f.get_slice(key).get_dtype() != "BF16":
        return f.get_tensor(key).astype(np.float32)
    with open(path, "rb") as raw:
        header_len = int.from_bytes(raw.read(8), "little")
        info = json.loads(raw.read(header_len))[key]
    start, end = info["data_offsets"]
    count = (end - start) // 2
    if count != int(np.prod(info["shape"])) or 8 + header_len + end > path.stat().st_size:
        raise InvalidModelFile(f"{path.name}: tensor {key!r} lies outside the file", param="model_path")
    halves = np.fromfile(path, dtype="<u2", count=count, offset=8 + header_len + start)
    return (halves.astype(np.uint32) << 16).view(np.float32).reshape(info["shape"])
