"""sentence-transformers BERT folder -> ONNX graph, built op by op with the `onnx` package (no torch). The
encoder (`build_encoder_onnx`) also serves RoBERTa and XLM-RoBERTa (cortex.convert.xlmr_onnx), whose layers
are BERT's and whose position ids differ.

The graph takes `input_ids` and `attention_mask` (int64, [batch, tokens]) and returns `embeddings`
([batch, hidden]): token + position + type-0 embeddings and LayerNorm; per layer, self-attention with
the padding mask and a GELU (erf) feed-forward, each with its residual LayerNorm; then the folder's pooling
(mean over real tokens, CLS, or last real token). No normalisation: the graph returns the pooled vector, and
each request chooses whether it is L2-normalised (cortex.runtime.embed; the model's default is in model.yml).

A cross-encoder (`task` rerank) takes the same two inputs, one `[CLS] query [SEP] document [SEP]` pair per
row, and returns `logits` ([batch, 1]): its token types (0 up to and including the first [SEP], 1 after) are
derived in the graph from the ids, so the engine and scheduler pass plain token-id sequences as for
embeddings; then BERT's pooler (dense + tanh on [CLS]) and the classifier give one logit per pair.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
from onnx import TensorProto
from safetensors import SafetensorError, safe_open

from cortex.convert.onnx_ops import GraphBuilder, Progress, gelu, layer_norm, linear, padding_mask, pool, save_graph
from cortex.convert.st_folder import STModel
from cortex.errors import InvalidModelFile


def build_bert_onnx(model: STModel, out: Path, progress: Progress | None = None) -> None:
    """Write the ONNX graph of `model` at `out` (its weights beside it, see onnx_ops.save_graph)."""
    build_encoder_onnx(model, out, progress, prefix="bert.", positions=_bert_positions,
                       position_rows=model.max_seq_length, name="cortex-bert")  # fmt: skip


def _bert_positions(b: GraphBuilder) -> str:
    """BERT's position ids: 0, 1, ... for every row."""
    seq_len = b.op("Gather", [b.op("Shape", ["input_ids"]), b.init("one_i", np.array(1, dtype=np.int64))])
    return b.op("Range", [b.init("zero_i", np.array(0, dtype=np.int64)), seq_len,
                          b.init("step_i", np.array(1, dtype=np.int64))])  # fmt: skip


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
    hidden = int(cfg["hidden_size"])
    heads = int(cfg["num_attention_heads"])
    layers = int(cfg["num_hidden_layers"])
    eps = float(cfg.get("layer_norm_eps", 1e-12))
    head_dim = hidden // heads
    try:
        with safe_open(model.weights, framework="numpy") as f:
            keys = set(f.keys())
            prefix = prefix if f"{prefix}embeddings.word_embeddings.weight" in keys else ""

            def tensor(key: str) -> np.ndarray:
                if key not in keys:
                    raise InvalidModelFile(f"{model.weights.name} lacks tensor {key!r}", param="model_path")
                return f.get_tensor(key).astype(np.float32)

            def w(key: str) -> np.ndarray:  # the encoder's tensors, under the prefix in a task model's weights
                return tensor(prefix + key)

            b = GraphBuilder()
            total = layers + 2
            # embeddings
            word = b.init("word_embeddings", w("embeddings.word_embeddings.weight"))
            pos = b.init("position_embeddings", w("embeddings.position_embeddings.weight")[:position_rows])
            if model.task == "rerank":
                types = b.op("Gather", [b.init("token_types", w("embeddings.token_type_embeddings.weight")),
                                        _pair_token_types(b, model)])  # fmt: skip
            else:
                types = b.init("token_type_0", w("embeddings.token_type_embeddings.weight")[0])
            pos_ids = positions(b)
            x = b.op("Add", [b.op("Add", [b.op("Gather", [word, "input_ids"]), b.op("Gather", [pos, pos_ids])]), types])
            x = layer_norm(b, x, w("embeddings.LayerNorm.weight"), w("embeddings.LayerNorm.bias"), eps, "emb_ln")
            # attention bias from the padding mask: 0 where attended, a large negative where padded
            mask_f, bias = padding_mask(b)
            split_shape = b.init("split_heads", np.array([0, 0, heads, head_dim], dtype=np.int64))
            merge_shape = b.init("merge_heads", np.array([0, 0, hidden], dtype=np.int64))
            scale = b.init("attn_scale", np.array(1.0 / math.sqrt(head_dim), dtype=np.float32))
            if progress:
                progress(1, total)
            for i in range(layers):
                p = f"encoder.layer.{i}."

                def heads_of(t: str, perm: list[int]) -> str:
                    return b.op("Transpose", [b.op("Reshape", [t, split_shape])], perm=perm)

                q = heads_of(linear(b, x, w(p + "attention.self.query.weight"), w(p + "attention.self.query.bias"),
                                     f"l{i}.q"), [0, 2, 1, 3])  # fmt: skip
                k = heads_of(linear(b, x, w(p + "attention.self.key.weight"), w(p + "attention.self.key.bias"),
                                     f"l{i}.k"), [0, 2, 3, 1])  # fmt: skip
                v = heads_of(linear(b, x, w(p + "attention.self.value.weight"), w(p + "attention.self.value.bias"),
                                     f"l{i}.v"), [0, 2, 1, 3])  # fmt: skip
                scores = b.op("Add", [b.op("Mul", [b.op("MatMul", [q, k]), scale]), bias])
                ctx = b.op("MatMul", [b.op("Softmax", [scores], axis=-1), v])
                ctx = b.op("Reshape", [b.op("Transpose", [ctx], perm=[0, 2, 1, 3]), merge_shape])
                attn = linear(b, ctx, w(p + "attention.output.dense.weight"), w(p + "attention.output.dense.bias"),
                               f"l{i}.o")  # fmt: skip
                x = layer_norm(b, b.op("Add", [attn, x]), w(p + "attention.output.LayerNorm.weight"),
                                w(p + "attention.output.LayerNorm.bias"), eps, f"l{i}.attn_ln")  # fmt: skip
                up = gelu(b, linear(b, x, w(p + "intermediate.dense.weight"), w(p + "intermediate.dense.bias"),
                                      f"l{i}.up"))  # fmt: skip
                down = linear(b, up, w(p + "output.dense.weight"), w(p + "output.dense.bias"), f"l{i}.down")
                x = layer_norm(b, b.op("Add", [down, x]), w(p + "output.LayerNorm.weight"),
                                w(p + "output.LayerNorm.bias"), eps, f"l{i}.out_ln")  # fmt: skip
                if progress:
                    progress(i + 2, total)
            if model.task == "rerank":
                pooler = (w("pooler.dense.weight"), w("pooler.dense.bias"))
                head = _classifier(b, x, pooler, (tensor("classifier.weight"), tensor("classifier.bias")))
    except SafetensorError as exc:
        raise InvalidModelFile(
            f"Cannot read {model.weights.name} (truncated or corrupt?): {exc}", param="model_path"
        ) from exc
    if model.task == "rerank":
        save_graph(b, out, head, output="logits", width=1, name=name)
    else:
        save_graph(b, out, pool(b, x, mask_f, model.pooling), output="embeddings", width=hidden, name=name)
    if progress:
        progress(total, total)


def _pair_token_types(b: GraphBuilder, model: STModel) -> str:
    """Token types of `[CLS] query [SEP] document [SEP]` rows: 0 up to and including the first [SEP], 1 after
    it (padding gets 1, and is masked). The count of [SEP]s strictly before each position, capped at 1."""
    if "[SEP]" not in model.vocab:
        raise InvalidModelFile("A cross-encoder's vocabulary needs a [SEP] token", param="model_path")
    sep = b.init("sep_id", np.array(model.vocab.index("[SEP]"), dtype=np.int64))
    is_sep = b.op("Cast", [b.op("Equal", ["input_ids", sep])], to=TensorProto.INT64)
    before = b.op("CumSum", [is_sep, b.init("types_axis", np.array(1, dtype=np.int64))], exclusive=1)
    return b.op("Min", [before, b.init("type_one", np.array(1, dtype=np.int64))])


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
