"""GGUF checks before llama.cpp sees a file: valid files pass, lies and truncation are refused."""

from __future__ import annotations

import struct
from pathlib import Path

import gguf
import numpy as np
import pytest

from cortex.errors import InvalidModelFile
from cortex.store.gguf_info import inspect_gguf


def _write(path: Path, pooling: int | None = None) -> Path:
    w = gguf.GGUFWriter(path, "bert")
    w.add_name("tiny")
    w.add_embedding_length(8)
    w.add_context_length(16)
    if pooling is not None:
        w.add_pooling_type(gguf.PoolingType(pooling))
    w.add_token_list(["[PAD]", "a", "b"])
    w.add_tensor("tok", np.arange(32, dtype=np.float32).reshape(4, 8))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_valid_file_and_its_metadata(tmp_path: Path, gemma_gguf: Path) -> None:
    info = inspect_gguf(_write(tmp_path / "t.gguf", pooling=2))
    assert (info.architecture, info.name, info.n_embd, info.n_ctx_train, info.pooling) == ("bert", "tiny", 8, 16, "cls")
    assert inspect_gguf(_write(tmp_path / "u.gguf")).pooling is None
    real = inspect_gguf(gemma_gguf)
    assert (real.architecture, real.n_embd, real.n_ctx_train, real.pooling, real.n_tensors) == (
        "gemma3",
        640,
        32768,
        None,
        236,
    )


def _refused(path: Path, words: str) -> None:
    with pytest.raises(InvalidModelFile) as exc:
        inspect_gguf(path)
    assert words in exc.value.message


def test_truncated_and_foreign_files(tmp_path: Path) -> None:
    data = _write(tmp_path / "t.gguf").read_bytes()
    for n, words in ((len(data) - 4, "ends at byte"), (40, "past the end"), (3, "past the end"), (0, "empty")):
        (tmp_path / "cut.gguf").write_bytes(data[:n])
        _refused(tmp_path / "cut.gguf", words)
    (tmp_path / "text.gguf").write_bytes(b"#!/bin/sh\necho not a model\n" * 10)
    _refused(tmp_path / "text.gguf", "magic")


def test_metadata_that_lies(tmp_path: Path) -> None:
    data = bytearray(_write(tmp_path / "t.gguf").read_bytes())
    # tensor 'tok': u64 name length 3, 'tok', u32 n_dims, u64 dims..., u32 type, u64 offset
    at = data.index(struct.pack("<Q", 3) + b"tok") + 8 + 3
    n_dims = struct.unpack_from("<I", data, at)[0]
    offset_at = at + 4 + 8 * n_dims + 4
    lying = bytearray(data)
    struct.pack_into("<Q", lying, offset_at, 1 << 40)  # tensor data far beyond the file
    (tmp_path / "lie.gguf").write_bytes(lying)
    _refused(tmp_path / "lie.gguf", "ends at byte")
    lying = bytearray(data)
    struct.pack_into("<I", lying, at, 9)  # 9 dimensions
    (tmp_path / "dims.gguf").write_bytes(lying)
    _refused(tmp_path / "dims.gguf", "dimensions")
    lying = bytearray(data)
    struct.pack_into("<Q", lying, 8, 1 << 40)  # tensor count
    (tmp_path / "count.gguf").write_bytes(lying)
    _refused(tmp_path / "count.gguf", "implausible")
    lying = bytearray(data)
    struct.pack_into("<Q", lying, 24, 1 << 62)  # length of the first key
    (tmp_path / "key.gguf").write_bytes(lying)
    _refused(tmp_path / "key.gguf", "past the end")
