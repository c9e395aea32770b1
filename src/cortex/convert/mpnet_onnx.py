"""sentence-transformers MPNet folder (all-mpnet-base-v2 and its kin) -> ONNX graph, as transformers'
`MPNetModel` computes it, built with the shared blocks of `cortex.convert.onnx_ops` (no torch).

MPNet is BERT's post-LayerNorm encoder with three differences, each reproduced here:
- positions count from padding_idx + 1 = 2, skipping padding tokens (id 1), as RoBERTa's do;
- no token types;
- every layer adds one relative position bias to its attention scores: `relative_attention_bias` (buckets x
  heads) looked up by T5's bidirectional bucket of the distance j - i (32 buckets, max distance 128).

The bias depends only on j - i, so the builder computes it once in numpy for every distance a sequence of
`max_seq_length` tokens can have ([2 * max_seq_length - 1, heads], a few KiB) and the graph gathers it by
distance for the actual length. This is simpler than the bucket's log arithmetic in the graph, and exact:
the bucket is found in integers (see `relative_position_buckets`), so no float log can round it differently.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from cortex.convert.onnx_ops import (
    GraphBuilder,
    LayerNames,
    Progress,
    activation,
    encoder_layer,
    layer_norm,
    open_weights,
    padding_mask,
    positions_after_padding,
    save_embedding_graph,
)
from cortex.convert.st_folder import STModel
from cortex.errors import InvalidModelFile

PADDING_IDX = 1  # MPNetEmbeddings' padding index (fixed there, whatever config.json's pad_token_id says)
NUM_BUCKETS = 32  # MPNetEncoder.compute_position_bias buckets with its defaults (max distance 128), whatever
# config.json's relative_attention_num_buckets says

# Where MPNetModel keeps each part of a layer (under `encoder.layer.N.`).
MPNET_LAYER = LayerNames(
    q="attention.attn.q",
    k="attention.attn.k",
    v="attention.attn.v",
    o="attention.attn.o",
    attn_ln="attention.LayerNorm",
    up="intermediate.dense",
    down="output.dense",
    out_ln="output.LayerNorm",
)


def relative_position_buckets(relative: np.ndarray) -> np.ndarray:
    """MPNetEncoder.relative_position_bucket (32 buckets, max distance 128) of the distances `relative`
    (j - i): 16 buckets for each direction; within one, distances below 8 have a bucket each, larger ones
    share logarithmically spaced buckets up to 128, the last bucket beyond.

    transformers finds the logarithmic bucket in float: 8 + int(log(n / 8) / log(128 / 8) * (16 - 8)), which
    is 8 + floor(log2(n^2 / 64)); here it is found in integers (the exponent of floor(n^2 / 64)), so no float
    log can round it differently at the exact powers (n = 16, 32, 64). tests/unit/test_mpnet_onnx.py checks
    the two agree for every distance below 2048."""
    half = NUM_BUCKETS // 2
    max_exact = half // 2
    n = -np.asarray(relative, dtype=np.int64)
    ret = (n < 0).astype(np.int64) * half
    n = np.abs(n)
    squared = np.maximum(n * n // (max_exact * max_exact), 1).astype(np.float64)  # exact below 2^53
    large = np.minimum(max_exact + np.frexp(squared)[1].astype(np.int64) - 1, half - 1)  # frexp: exponent + 1
    return ret + np.where(n < max_exact, n, large)


def build_mpnet_onnx(model: STModel, out: Path, progress: Progress | None = None) -> None:
    """Write the ONNX graph of `model` at `out` (its weights beside it, see onnx_ops.save_graph). Cross-encoders
    of this architecture never get here: cortex.convert.st_folder refuses them."""
    cfg = model.config
    heads = int(cfg["num_attention_heads"])
    layers = int(cfg["num_hidden_layers"])
    eps = float(cfg.get("layer_norm_eps", 1e-12))
    act = activation(cfg.get("hidden_act", "gelu"))
    with open_weights(model.weights, "mpnet.") as w:
        b = GraphBuilder()
        total = layers + 2
        word, positions = w("embeddings.word_embeddings.weight"), w("embeddings.position_embeddings.weight")
        x = _embeddings(b, model, word, positions)
        x = layer_norm(b, x, w("embeddings.LayerNorm.weight"), w("embeddings.LayerNorm.bias"), eps, "emb_ln")
        mask_f, padding = padding_mask(b)
        relative = _position_bias(b, w("encoder.relative_attention_bias.weight"), heads, model.max_seq_length)
        bias = b.op("Add", [relative, padding])  # [batch, heads, tokens, tokens], shared by every layer
        if progress:
            progress(1, total)
        for i in range(layers):
            x = encoder_layer(b, x, bias, lambda name, i=i: w(f"encoder.layer.{i}.{name}"), MPNET_LAYER,
                              heads=heads, eps=eps, tag=f"l{i}", act=act)  # fmt: skip
            if progress:
                progress(i + 2, total)
    save_embedding_graph(b, out, x, mask_f, model, name="cortex-mpnet")
    if progress:
        progress(total, total)


def _embeddings(b: GraphBuilder, model: STModel, word: np.ndarray, positions: np.ndarray) -> str:
    """Token + position embeddings, positions as create_position_ids_from_input_ids numbers them: the
    running count of non-padding tokens, plus the padding index (padding tokens themselves get it)."""
    need = model.max_seq_length + PADDING_IDX + 1
    if positions.shape[0] < need:
        raise InvalidModelFile(
            f"The model has {positions.shape[0]} positions; {model.max_seq_length} tokens need {need}",
            param="model_path",
        )
    ids = positions_after_padding(b, PADDING_IDX)
    table = b.init("position_embeddings", positions[:need])
    return b.op("Add", [b.op("Gather", [b.init("word_embeddings", word), "input_ids"]), b.op("Gather", [table, ids])])


def _position_bias(b: GraphBuilder, weight: np.ndarray, heads: int, max_len: int) -> str:
    """MPNetEncoder.compute_position_bias as [1, heads, tokens, tokens]: the bias of each distance j - i from
    -(max_len - 1) to max_len - 1 is a constant row, gathered by the distances of the actual length."""
    if weight.shape != (weight.shape[0], heads) or weight.shape[0] < NUM_BUCKETS:
        raise InvalidModelFile(
            f"relative_attention_bias has shape {list(weight.shape)}; MPNet needs [{NUM_BUCKETS}, {heads}]",
            param="model_path",
        )
    distances = np.arange(-(max_len - 1), max_len)
    table = b.init("relative_position_bias", weight[relative_position_buckets(distances)])  # [2 max_len - 1, heads]
    length = b.op("Gather", [b.op("Shape", ["input_ids"]), b.const(1, np.int64)])
    steps = b.op("Range", [b.const(0, np.int64), length, b.const(1, np.int64)])
    rows = b.op("Unsqueeze", [steps, b.const([1], np.int64)])  # i
    cols = b.op("Unsqueeze", [steps, b.const([0], np.int64)])  # j
    index = b.op("Add", [b.op("Sub", [cols, rows]), b.const(max_len - 1, np.int64)])
    per_pair = b.op("Gather", [table, index])  # [tokens, tokens, heads]
    return b.op("Unsqueeze", [b.op("Transpose", [per_pair], perm=[2, 0, 1]), b.const([0], np.int64)])
