"""sentence-transformers BERT folder -> ONNX graph, built op by op with the `onnx` package (no torch). The
encoder (`build_encoder_onnx`) also serves RoBERTa and XLM-RoBERTa (cortex.convert.xlmr_onnx), whose layers
are BERT's and whose position ids differ.

The graph takes `input_ids` and `attention_mask` (int64, [batch, tokens]) and returns `embeddings`
([batch, hidden]): token + position + type-0 embeddings and LayerNorm; per layer, self-attention with
the padding mask and a GELU (erf) feed-forward, each with its residual LayerNorm; then the folder's pooling
(mean over real tokens, CLS, or last real token). No normalisation: the graph returns the pooled vector, and
each request chooses whether it is L2-normalised (cortex.runtime.embed; the model's default is in model.yml).

A cross-encoder (`task` rerank) takes one `[CLS] query [SEP] document [SEP]` pair per row, and a third input,
`pair_start`: where each row's document begins (from the tokenizer's pair encoding). Its token types are 0
before that and 1 from there; then BERT's pooler (dense + tanh on [CLS]) and the classifier give `logits`
([batch, 1]), one per pair.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from onnx import TensorProto

from cortex.convert.onnx_ops import (
    PAIR_START,
    GraphBuilder,
    LayerNames,
    Progress,
    activation,
    encoder_layer,
    layer_norm,
    linear,
    open_weights,
    padding_mask,
    save_embedding_graph,
    save_graph,
    sequential_positions,
)
from cortex.convert.st_folder import STModel
from cortex.errors import InvalidModelFile

# Where BertModel keeps each part of a layer (under `encoder.layer.N.`).
BERT_LAYER = LayerNames(
    q="attention.self.query",
    k="attention.self.key",
    v="attention.self.value",
    o="attention.output.dense",
    attn_ln="attention.output.LayerNorm",
    up="intermediate.dense",
    down="output.dense",
    out_ln="output.LayerNorm",
)


def build_bert_onnx(model: STModel, out: Path, progress: Progress | None = None) -> None:
    """Write the ONNX graph of `model` at `out` (its weights beside it, see onnx_ops.save_graph)."""
    build_encoder_onnx(model, out, progress, prefix="bert.", positions=sequential_positions,
                       position_rows=model.max_seq_length, name="cortex-bert")  # fmt: skip


def build_encoder_onnx(
    model: STModel,
    out: Path,
    progress: Progress | None,
    *,
    prefix: str,
    positions: Callable[[GraphBuilder], str],
    position_rows: int,
    name: str,
) -> None:
    """The graph of a BERT-shaped encoder (BERT, and RoBERTa/XLM-R, whose layers are BERT's): `prefix` is
    where a task model keeps the encoder's tensors (`bert.`, `roberta.`; none in a bare model's weights),
    `positions` builds the position ids ([batch or 1, tokens]) from `input_ids`, `position_rows` is how many
    rows of the position table those ids can reach."""
    cfg = model.config
    heads = int(cfg["num_attention_heads"])
    layers = int(cfg["num_hidden_layers"])
    eps = float(cfg.get("layer_norm_eps", 1e-12))
    act = activation(cfg.get("hidden_act", "gelu"))
    with open_weights(model.weights, prefix) as w:
        b = GraphBuilder()
        total = layers + 2
        # embeddings
        word = b.init("word_embeddings", w("embeddings.word_embeddings.weight"))
        table = w("embeddings.position_embeddings.weight")
        if table.shape[0] < position_rows:  # config.json promises more positions than the weights hold
            raise InvalidModelFile(
                f"The model has {table.shape[0]} position embeddings; a context of {model.max_seq_length} tokens "
                f"needs {position_rows} (config.json's max_position_embeddings does not match the weights)",
                param="model_path",
            )
        pos = b.init("position_embeddings", table[:position_rows])
        if model.task == "rerank":
            types = b.op("Gather", [b.init("token_types", w("embeddings.token_type_embeddings.weight")),
                                    _pair_token_types(b)])  # fmt: skip
        else:
            types = b.init("token_type_0", w("embeddings.token_type_embeddings.weight")[0])
        x = b.op("Add", [b.op("Add", [b.op("Gather", [word, "input_ids"]), b.op("Gather", [pos, positions(b)])]),
                         types])  # fmt: skip
        x = layer_norm(b, x, w("embeddings.LayerNorm.weight"), w("embeddings.LayerNorm.bias"), eps, "emb_ln")
        mask_f, bias = padding_mask(b)
        if progress:
            progress(1, total)
        for i in range(layers):
            x = encoder_layer(b, x, bias, lambda name, i=i: w(f"encoder.layer.{i}.{name}"), BERT_LAYER,
                              heads=heads, eps=eps, tag=f"l{i}", act=act)  # fmt: skip
            if progress:
                progress(i + 2, total)
        if model.task == "rerank":
            pooler = (w("pooler.dense.weight"), w("pooler.dense.bias"))
            head = _classifier(b, x, pooler, (w.raw("classifier.weight"), w.raw("classifier.bias")))
    if model.task == "rerank":
        save_graph(b, out, head, output="logits", width=1, name=name)
    else:
        save_embedding_graph(b, out, x, mask_f, model, name=name)
    if progress:
        progress(total, total)


def _pair_token_types(b: GraphBuilder) -> str:
    """Token types of `[CLS] query [SEP] document [SEP]` rows: 0 before the row's `pair_start` (the first
    document token, given by the engine from the tokenizer's pair encoding), 1 from there on (padding too,
    masked). Given, not found from the ids: a query may hold the text "[SEP]", which tokenizes to that token."""
    positions = b.op("Range", [b.const(0, np.int64), b.op("Squeeze", [b.op("Shape", ["input_ids"], start=1, end=2)]),
                               b.const(1, np.int64)])  # fmt: skip
    start = b.op("Unsqueeze", [PAIR_START, b.const([1], np.int64)])
    return b.op("Cast", [b.op("GreaterOrEqual", [positions, start])], to=TensorProto.INT64)


def _classifier(
    b: GraphBuilder, x: str, pooler: tuple[np.ndarray, np.ndarray], head: tuple[np.ndarray, np.ndarray]
) -> str:
    """BertForSequenceClassification's head: the pooler (dense + tanh on [CLS]), then the one-label classifier
    (`pooler` and `head` are each a weight and a bias)."""
    if head[0].shape[0] != 1:
        raise InvalidModelFile(f"The classifier has {head[0].shape[0]} outputs; a cross-encoder has one",
                               param="model_path")  # fmt: skip
    cls = b.op("Gather", [x, b.init("cls_index", np.array(0, dtype=np.int64))], axis=1)
    pooled = b.op("Tanh", [linear(b, cls, *pooler, "pooler")])
    return linear(b, pooled, *head, "classifier")
