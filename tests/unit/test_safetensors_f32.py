"""bfloat16 checkpoints: safetensors' numpy reader cannot read them, cortex widens them to float32."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import numpy as np
from safetensors import safe_open
from safetensors.numpy import save_file

from cortex.convert.safetensors_f32 import tensor_f32
from cortex.convert.st_folder import read_st_folder
from cortex.engine.kinds import ImportOptions
from cortex.engine.onnx import OnnxEngine
from cortex.importer import Importer
from cortex.store.store import ModelStore
from tests import DATA

FIXTURE = DATA / "arch" / "mpnet"


def _write_bf16(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """A safetensors file of `tensors` in bfloat16 (each float32 value cut to its top 16 bits)."""
    header, blobs, offset = {}, [], 0
    for name, array in tensors.items():
        halves = (np.ascontiguousarray(array, dtype=np.float32).view(np.uint32) >> 16).astype("<u2").tobytes()
        header[name] = {"dtype": "BF16", "shape": list(array.shape), "data_offsets": [offset, offset + len(halves)]}
        blobs.append(halves)
        offset += len(halves)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def test_a_bf16_tensor_reads_as_the_float32_it_widens_to(tmp_path: Path) -> None:
    exact = np.array([[1.5, -2.25, 3.0], [0.0, -0.0, 65280.0]], dtype=np.float32)  # each exact in bf16
    _write_bf16(tmp_path / "w.safetensors", {"a": exact, "b": np.arange(4, dtype=np.float32)})
    with safe_open(tmp_path / "w.safetensors", framework="numpy") as f:
        np.testing.assert_array_equal(tensor_f32(f, tmp_path / "w.safetensors", "a"), exact)
        np.testing.assert_array_equal(tensor_f32(f, tmp_path / "w.safetensors", "b"), np.arange(4))


def test_a_bf16_checkpoint_imports_and_embeds_as_the_float32_of_its_values(tmp_path: Path) -> None:
    """The same weights stored as bf16 and as the float32 they widen to give the same vectors."""
    with safe_open(FIXTURE / "model.safetensors", framework="numpy") as f:
        tensors = {k: f.get_tensor(k).astype(np.float32) for k in f.keys()}  # noqa: SIM118
    widened = {k: ((v.view(np.uint32) >> 16) << 16).view(np.float32) for k, v in tensors.items()}
    bf16, fp32 = tmp_path / "bf16", tmp_path / "fp32"
    for folder in (bf16, fp32):
        shutil.copytree(FIXTURE, folder)
    _write_bf16(bf16 / "model.safetensors", tensors)
    save_file(widened, fp32 / "model.safetensors")
    store = ModelStore(tmp_path / "models")
    vectors = []
    for name, source in (("fp32:1", fp32), ("bf16:1", bf16)):
        record = Importer(store).run(name, source, ImportOptions())
        graph, _, tokenizer = (store.folder(record.id) / f for f in record.files)
        engine = OnnxEngine(graph, tokenizer, ctx_len=record.ctx_len, n_threads=1)
        vectors.append(engine.embed([engine.tokenize("bfloat16 weights, widened exactly")])[0])
        engine.close()
    a, b = vectors
    assert read_st_folder(bf16).n_embd == a.shape[0]
    np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-6)
