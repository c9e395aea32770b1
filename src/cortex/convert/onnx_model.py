"""Write an encoder model for the ONNX Runtime engine (and OpenVINO's bf16 tier, which serves the same
fp32 graph): graph + external weights + tokenizer.json, and optionally an int8 graph (per-channel dynamic
quantisation of the MatMul weights) whose accuracy against the fp32 graph is measured on a built-in probe
set and recorded with the CPU features it was measured on.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import onnx

from cortex.convert.bert_onnx import build_bert_onnx
from cortex.convert.modernbert_onnx import build_modernbert_onnx
from cortex.convert.mpnet_onnx import build_mpnet_onnx
from cortex.convert.onnx_ops import Progress
from cortex.convert.st_folder import STModel, served_tokenizer_json
from cortex.convert.xlmr_onnx import build_xlmr_onnx
from cortex.errors import InvalidModelFile

# The graph builder of each architecture that `cortex.convert.st_folder` accepts.
GRAPH_BUILDERS: dict[str, Callable[[STModel, Path, Progress | None], None]] = {
    "bert": build_bert_onnx,
    "modernbert": build_modernbert_onnx,
    "mpnet": build_mpnet_onnx,
    "xlm-roberta": build_xlmr_onnx,
    "roberta": build_xlmr_onnx,
}
GRAPH_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
TOKENIZER_FILE = "tokenizer.json"
FILES = [GRAPH_FILE, DATA_FILE, TOKENIZER_FILE]  # in this order in model.yml: the engine opens files[0] and [2]
PROBE_TEXTS = [
    "The quick brown fox jumps over the lazy dog.",
    "A man is eating food.",
    "Embeddings map text to vectors that capture meaning.",
    "What is the capital of France?",
    "Paris is the capital and most populous city of France.",
    "def add(a, b): return a + b",
    "The weather today is sunny with a light breeze from the west.",
    "Quantum computers use qubits, which can be in superpositions of states.",
    "short",
    "Ünïcödé — naïve café résumé",
    "日本語のテキスト",
    "Error 404: the page you requested could not be found on this server.",
    "She sells sea shells by the sea shore, and the shells she sells are surely seashells.",
    "Invest in a diversified portfolio to manage risk over the long term.",
    "The mitochondria is the powerhouse of the cell.",
    "1 2 3 4 5 6 7 8 9 10",
]


def _save_external(proto: onnx.ModelProto, dest: Path) -> None:
    onnx.save_model(proto, str(dest / GRAPH_FILE), save_as_external_data=True, all_tensors_to_one_file=True,
                    location=DATA_FILE, size_threshold=1024)  # fmt: skip


def write_onnx_model(
    model: STModel,
    dest: Path,
    quantize: str | None,
    progress: Callable[[int, int], None] | None = None,
    *,
    compare: Callable[[Path, Path, int], dict] | None = None,
) -> dict:
    """Write `FILES` into `dest`; return the model.yml fields this adds. With `quantize="int8"` the graph
    is int8, and `compare(fp32 folder, int8 folder, context)` measures it against the fp32 graph (it needs
    an engine, which a converter does not import) and returns the fields that record how close it is."""
    if not (model.folder / TOKENIZER_FILE).exists():
        raise InvalidModelFile(
            "The onnxruntime engine needs tokenizer.json in the folder; import it with --engine llama-cpp instead.",
            param="model_path",
        )
    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        full = Path(tmp) / "full.onnx"
        GRAPH_BUILDERS[model.architecture](model, full, progress)
        _save_external(onnx.load(str(full)), dest)
    (dest / TOKENIZER_FILE).write_text(served_tokenizer_json(model.folder), encoding="utf-8")
    if quantize is None:
        return {}
    if quantize != "int8":
        raise InvalidModelFile(f"Unknown quantisation {quantize!r}; use int8", param="quantize")
    from onnxruntime.quantization import QuantType, quantize_dynamic

    with tempfile.TemporaryDirectory(dir=dest) as tmp:
        fp32 = Path(tmp) / "fp32"
        fp32.mkdir()
        for name in FILES:
            shutil.copyfile(dest / name, fp32 / name)
        quantized = Path(tmp) / "int8.onnx"
        quantize_dynamic(
            fp32 / GRAPH_FILE,
            quantized,
            per_channel=True,
            weight_type=QuantType.QInt8,
            op_types_to_quantize=["MatMul"],
            use_external_data_format=True,
        )  # over 2 GiB: see save_graph
        for name in (GRAPH_FILE, DATA_FILE):
            (dest / name).unlink()
        _save_external(onnx.load(str(quantized)), dest)
        measured = compare(fp32, dest, model.max_seq_length) if compare is not None else {}
    return {"quantize": "int8", **measured}
