"""Read and check a GGUF file's header and tensor table before llama.cpp ever loads it.

A file that is not GGUF, is truncated, or whose metadata lies (counts, string lengths, tensor shapes
or offsets beyond the file) is refused with a clear error instead of reaching native code.

The format's constants (magic, value types, quantisation block sizes) come from the `gguf` library that
llama.cpp publishes. Its `GGUFReader` is not used for the walk itself: it builds a numpy view per value,
which takes 8 s for a 262k-token vocabulary; this walk skips arrays it does not need in ~0.1 s and
bounds-checks every read.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from gguf import GGML_QUANT_SIZES, GGUF_DEFAULT_ALIGNMENT, GGUF_MAGIC, GGMLQuantizationType, GGUFValueType

from cortex.errors import InvalidModelFile

# llama.cpp's enum llama_pooling_type, as written under `{arch}.pooling_type`.
_POOLING_BY_CODE = {0: "none", 1: "mean", 2: "cls", 3: "last", 4: "rank"}
_SCALARS = {
    GGUFValueType.UINT8: "<B", GGUFValueType.INT8: "<b", GGUFValueType.UINT16: "<H", GGUFValueType.INT16: "<h",
    GGUFValueType.UINT32: "<I", GGUFValueType.INT32: "<i", GGUFValueType.FLOAT32: "<f", GGUFValueType.BOOL: "<?",
    GGUFValueType.UINT64: "<Q", GGUFValueType.INT64: "<q", GGUFValueType.FLOAT64: "<d",
}  # fmt: skip
_MAX_DIMS = 4  # GGML_MAX_DIMS
_MAX_COUNT = 1 << 24  # more tensors or metadata keys than any real model has
_MAX_STRING = 16 << 20  # a longer key or string value (chat templates are a few KiB) is a lie


@dataclass(frozen=True)
class GGUFInfo:
    """What the store needs to know about a GGUF model."""

    architecture: str
    name: str | None
    n_embd: int
    n_ctx_train: int
    pooling: str | None  # None when the file declares no pooling (generative LLMs)
    n_tensors: int


class _Corrupt(Exception):
    pass


class _Cursor:
    """Bounds-checked little-endian reads of a file through a moving window.

    Read, not mapped: a mapped file that is cut short while it is walked (`truncate -s` on a model's
    weights) kills the process with SIGBUS; a read that comes back short is an error like any other."""

    _WINDOW = 1 << 20

    def __init__(self, f: BinaryIO, size: int) -> None:
        self.f = f
        self.pos = 0
        self.size = size
        self._base = 0
        self._buf = b""

    def take(self, n: int) -> int:
        start = self.pos
        if n < 0 or start + n > self.size:
            raise _Corrupt(f"a value at byte {start} runs past the end of the file")
        self.pos = start + n
        return start

    def _read(self, start: int, n: int) -> tuple[bytes, int]:
        """The buffer holding bytes [start, start + n) and the offset of `start` in it."""
        if not (self._base <= start and start + n <= self._base + len(self._buf)):
            self.f.seek(start)
            self._buf = self.f.read(max(n, self._WINDOW))
            self._base = start
            if len(self._buf) < n:
                raise _Corrupt("the file shrank while it was read")
        return self._buf, start - self._base

    def unpack(self, fmt: str) -> object:
        n = struct.calcsize(fmt)
        buf, offset = self._read(self.take(n), n)
        return struct.unpack_from(fmt, buf, offset)[0]

    def string(self) -> str:
        n = self.unpack("<Q")
        start = self.take(n)
        if n > _MAX_STRING:
            raise _Corrupt(f"a string of {n} bytes at byte {start}")
        buf, offset = self._read(start, n)
        return buf[offset : offset + n].decode("utf-8", errors="replace")

    def skip_string(self) -> None:
        self.take(self.unpack("<Q"))

    def value(self, vtype: int) -> object:
        """A scalar or string value; arrays are skipped and give None."""
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        if vtype == GGUFValueType.STRING:
            return self.string()
        if vtype == GGUFValueType.ARRAY:
            itype, count = self.unpack("<I"), self.unpack("<Q")
            if itype in _SCALARS:
                self.take(struct.calcsize(_SCALARS[itype]) * count)
            elif itype == GGUFValueType.STRING:
                for _ in range(count):
                    self.skip_string()
            elif itype == GGUFValueType.ARRAY:
                raise _Corrupt("nested arrays are not used by any model format")
            else:
                raise _Corrupt(f"unknown array item type {itype}")
            return None
        raise _Corrupt(f"unknown metadata value type {vtype}")


def _walk(cur: _Cursor) -> tuple[dict[str, object], int]:
    if cur.unpack("<I") != GGUF_MAGIC:
        raise _Corrupt("no GGUF magic at the start")
    version = cur.unpack("<I")
    if version not in (2, 3):
        raise _Corrupt(f"unsupported GGUF version {version}")
    n_tensors, n_kv = cur.unpack("<Q"), cur.unpack("<Q")
    if n_tensors > _MAX_COUNT or n_kv > _MAX_COUNT:
        raise _Corrupt(f"implausible counts: {n_tensors} tensors, {n_kv} metadata keys")
    meta: dict[str, object] = {}
    for _ in range(n_kv):
        key = cur.string()
        meta[key] = cur.value(cur.unpack("<I"))
    tensors = []
    for _ in range(n_tensors):
        name = cur.string()
        n_dims = cur.unpack("<I")
        if not 1 <= n_dims <= _MAX_DIMS:
            raise _Corrupt(f"tensor {name!r} has {n_dims} dimensions")
        dims = [cur.unpack("<Q") for _ in range(n_dims)]
        ggml_type, offset = cur.unpack("<I"), cur.unpack("<Q")
        try:
            block, type_size = GGML_QUANT_SIZES[GGMLQuantizationType(ggml_type)]
        except (ValueError, KeyError):
            raise _Corrupt(f"tensor {name!r} has unknown type {ggml_type}") from None
        n_elements = 1
        for d in dims:
            n_elements *= d
        if n_elements == 0 or n_elements % block:
            raise _Corrupt(f"tensor {name!r} has shape {dims}, not a whole number of {block}-element blocks")
        tensors.append((name, offset, n_elements // block * type_size))
    alignment = meta.get("general.alignment", GGUF_DEFAULT_ALIGNMENT)
    if not isinstance(alignment, int) or alignment <= 0 or alignment & (alignment - 1):
        raise _Corrupt(f"invalid general.alignment {alignment!r}")
    data_start = -(-cur.pos // alignment) * alignment
    for name, offset, n_bytes in tensors:
        end = data_start + offset + n_bytes
        if end > cur.size:
            raise _Corrupt(f"tensor {name!r} ends at byte {end}, but the file has {cur.size} bytes (truncated?)")
    return meta, len(tensors)


def inspect_gguf(path: Path, label: str | None = None) -> GGUFInfo:
    """Parse `path` as GGUF and check that every tensor lies inside the file. Errors name it as `label`
    (the path the user gave) when given, else by its file name."""
    shown = label or path.name
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size == 0:
                raise _Corrupt("the file is empty")
            meta, n_tensors = _walk(_Cursor(f, size))
    except (_Corrupt, OSError, struct.error) as exc:
        raise InvalidModelFile(f"{shown} is not a valid GGUF file: {exc}", param="model_path") from exc
    arch = meta.get("general.architecture")
    if not isinstance(arch, str) or not arch:
        raise InvalidModelFile(f"{shown} has no general.architecture: not a model GGUF", param="model_path")
    n_embd = meta.get(f"{arch}.embedding_length")
    n_ctx = meta.get(f"{arch}.context_length")
    if not isinstance(n_embd, int) or n_embd <= 0 or not isinstance(n_ctx, int) or n_ctx <= 0:
        raise InvalidModelFile(f"{shown} lacks {arch}.embedding_length or {arch}.context_length", param="model_path")
    pooling = _POOLING_BY_CODE.get(meta.get(f"{arch}.pooling_type"))  # type: ignore[arg-type]
    name = meta.get("general.name")
    return GGUFInfo(
        architecture=arch,
        name=name if isinstance(name, str) else None,
        n_embd=n_embd,
        n_ctx_train=n_ctx,
        pooling=None if pooling in (None, "none") else pooling,
        n_tensors=n_tensors,
    )
