"""XLM-RoBERTa and RoBERTa folders -> ONNX graph: BERT's encoder (cortex.convert.bert_onnx) with one token type
and RoBERTa's position ids.

Positions are numbered from `input_ids` as transformers numbers them (onnx_ops.positions_after_padding), not
from the attention mask.
"""

from __future__ import annotations

from pathlib import Path

from cortex.convert.bert_onnx import build_encoder_onnx
from cortex.convert.onnx_ops import Progress, positions_after_padding
from cortex.convert.st_folder import STModel, padding_index


def build_xlmr_onnx(model: STModel, out: Path, progress: Progress | None = None) -> None:
    """Write the ONNX graph of an XLM-RoBERTa or RoBERTa `model` at `out` (its weights beside it)."""
    pad = padding_index(model.config)

    build_encoder_onnx(model, out, progress, prefix="roberta.", positions=lambda b: positions_after_padding(b, pad),
                       position_rows=model.max_seq_length + pad + 1, name=f"cortex-{model.architecture}")  # fmt: skip
