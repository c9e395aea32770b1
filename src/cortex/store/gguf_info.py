"""Read and check a GGUF file's header and tensor table with the `gguf` library, before llama.cpp
ever maps it: a file that is not GGUF, is truncated, or whose tensor table points past its end is
refused with a clear error instead of reaching native code.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import gguf

from cortex.errors import InvalidModelFile

# llama.cpp's enum llama_pooling_type, as written under `{arch}.pooling_type`.
_POOLING_BY_CODE = {0: "none", 1: "mean", 2: "cls", 3: "last", 4: "rank"}


@dataclass(frozen=True)
class GGUFInfo:
    """What the store needs to know about a GGUF model."""

    architecture: str
    name: str | None
    n_embd: int
    n_ctx_train: int
    pooling: str | None  # None when the file declares no pooling (generative LLMs)
    n_tensors: int


def _value(reader: gguf.GGUFReader, key: str) -> object | None:
    field = reader.fields.get(key)
    return None if field is None else field.contents()


def inspect_gguf(path: Path) -> GGUFInfo:
    """Parse `path` as GGUF and check that every tensor lies inside the file."""
    try:
        reader = gguf.GGUFReader(path, "r")
    except Exception as exc:  # the reader raises ValueError, IndexError, struct and numpy errors alike
        raise InvalidModelFile(f"{path.name} is not a valid GGUF file ({type(exc).__name__}: {exc})") from exc
    size = os.path.getsize(path)
    for tensor in reader.tensors:
        if tensor.data_offset + tensor.n_bytes > size:
            raise InvalidModelFile(
                f"{path.name} is truncated or corrupt: tensor {tensor.name!r} ends at byte "
                f"{tensor.data_offset + tensor.n_bytes}, but the file has {size} bytes"
            )
    arch = _value(reader, "general.architecture")
    if not isinstance(arch, str) or not arch:
        raise InvalidModelFile(f"{path.name} has no general.architecture: not a model GGUF")
    n_embd = _value(reader, f"{arch}.embedding_length")
    n_ctx = _value(reader, f"{arch}.context_length")
    if not isinstance(n_embd, int) or n_embd <= 0 or not isinstance(n_ctx, int) or n_ctx <= 0:
        raise InvalidModelFile(f"{path.name} lacks {arch}.embedding_length or {arch}.context_length")
    pooling_code = _value(reader, f"{arch}.pooling_type")
    pooling = _POOLING_BY_CODE.get(pooling_code) if isinstance(pooling_code, int) else None
    name = _value(reader, "general.name")
    return GGUFInfo(
        architecture=arch,
        name=name if isinstance(name, str) else None,
        n_embd=n_embd,
        n_ctx_train=n_ctx,
        pooling=None if pooling == "none" else pooling,
        n_tensors=len(reader.tensors),
    )
