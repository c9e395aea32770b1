"""XLM-RoBERTa and RoBERTa folders -> ONNX graph: BERT's encoder (cortex.convert.bert_onnx) with one token type
and RoBERTa's position ids.

transformers' `create_position_ids_from_input_ids` numbers the non-padding tokens of each row from
padding_idx + 1 and gives padding tokens padding_idx: positions = cumsum(ids != pad) * (ids != pad) + pad. The
graph computes exactly that, from `input_ids` as transformers does (not from the attention mask), so a row
`<s> a b </s>` gets positions 2, 3, 4, 5 with XLM-R's padding index 1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from onnx import TensorProto

from cortex.convert.bert_onnx import build_encoder_onnx
from cortex.convert.onnx_ops import GraphBuilder, Progress
from cortex.convert.st_folder import STModel, padding_index


def build_xlmr_onnx(model: STModel, out: Path, progress: Progress | None = None) -> None:
    """Write the ONNX graph of an XLM-RoBERTa or RoBERTa `model` at `out` (its weights beside it)."""
    pad = padding_index(model.config)

    def positions(b: GraphBuilder) -> str:
        real = b.op("Cast", [b.op("Not", [b.op("Equal", ["input_ids", b.const(pad, np.int64)])])], to=TensorProto.INT64)
        numbered = b.op("Mul", [b.op("CumSum", [real, b.const(1, np.int64)]), real])
        return b.op("Add", [numbered, b.const(pad, np.int64)])

    build_encoder_onnx(model, out, progress, prefix="roberta.", positions=positions,
                       position_rows=model.max_seq_length + pad + 1, name=f"cortex-{model.architecture}")  # fmt: skip
