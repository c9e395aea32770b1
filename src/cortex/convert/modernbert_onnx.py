"""sentence-transformers ModernBERT folder -> ONNX graph, built op by op with the `onnx` package (no torch).

As transformers' `ModernBertModel` computes it (eager/sdpa path, float32): token embeddings and a LayerNorm
(no position embeddings); per layer, pre-norm attention (layer 0 has no norm before it) with rotary position
embeddings on queries and keys (rotate_half convention; theta per layer type), global on `full_attention`
layers and a band |i - j| <= local_attention // 2 on `sliding_attention` ones, then a pre-norm GeGLU
feed-forward (Wi's output split in halves: act(input) * gate), both with residuals; a final LayerNorm; the
folder's pooling. LayerNorms and linears carry biases only where the config says so (none by default).

Attention runs a block of QUERY_CHUNK queries per step of an ONNX Loop, so that a long input (ModernBERT
reads 8192 tokens) holds [heads, chunk, tokens] scores at once rather than [heads, tokens, tokens].

The rotary tables (cos, sin per position) are computed here in float32 for the positions up to the folder's
max_seq_length (the most an input may hold, see cortex.engine.kinds) and sliced in the graph to the input's
length, so no trigonometry runs per request.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper
from safetensors import SafetensorError, safe_open

from cortex.convert.onnx_ops import (
    GraphBuilder,
    Progress,
    activation,
    layer_norm,
    linear,
    padding_mask,
    save_embedding_graph,
)
from cortex.convert.safetensors_f32 import tensor_f32
from cortex.convert.st_folder import STModel
from cortex.errors import InvalidModelFile

FULL, SLIDING = "full_attention", "sliding_attention"
_DEFAULT_THETA = {FULL: 160_000.0, SLIDING: 10_000.0}  # ModernBertConfig's, when config.json names none
_THETA_KEY = {FULL: "global_rope_theta", SLIDING: "local_rope_theta"}  # config.json before transformers 5
QUERY_CHUNK = 512  # queries per step of the attention loop: an input up to this long takes one step


def layer_types(cfg: dict) -> list[str]:
    """Each layer's attention: config.json's `layer_types` (transformers 5), else every
    `global_attn_every_n_layers`-th layer from 0 global (ModernBertConfig's default: every third)."""
    n = int(cfg["num_hidden_layers"])
    types = cfg.get("layer_types")
    if types is not None:
        if not isinstance(types, list) or len(types) != n or not set(types) <= {FULL, SLIDING}:
            raise InvalidModelFile(
                f"config.json: layer_types must list {n} of {FULL!r} and {SLIDING!r}", param="model_path"
            )
        return list(types)
    every = cfg.get("global_attn_every_n_layers", 3)
    if not isinstance(every, int) or every <= 0:
        raise InvalidModelFile("config.json: global_attn_every_n_layers must be a positive integer", param="model_path")
    return [FULL if i % every == 0 else SLIDING for i in range(n)]


def rope_theta(cfg: dict, layer_type: str) -> float:
    """The rotary base of a layer type: `rope_parameters[type].rope_theta` (transformers 5), else
    `global_rope_theta` / `local_rope_theta`. Only the default (unscaled) rotary embedding is built."""
    params = (cfg.get("rope_parameters") or {}).get(layer_type) or {}
    scaling = cfg.get("rope_scaling")
    kind = params.get("rope_type", "default")
    if kind != "default" or scaling:
        shown = kind if kind != "default" else (scaling or {}).get("rope_type", "scaled")
        raise InvalidModelFile(f"Rotary embedding type `{shown}` is not supported (only default)", param="model_path")
    return float(params.get("rope_theta", cfg.get(_THETA_KEY[layer_type], _DEFAULT_THETA[layer_type])))


def rotary_tables(theta: float, head_dim: int, positions: int) -> tuple[np.ndarray, np.ndarray]:
    """(cos, sin) [positions, head_dim] as ModernBertRotaryEmbedding computes them in float32: inverse
    frequencies base^(-2i/d), their angles per position repeated over both halves of the head."""
    exponents = np.arange(0, head_dim, 2, dtype=np.int64).astype(np.float32) / np.float32(head_dim)
    inv_freq = (np.float32(1.0) / (np.float32(theta) ** exponents)).astype(np.float32)
    freqs = np.arange(positions, dtype=np.float32)[:, None] * inv_freq[None, :]
    emb = np.concatenate([freqs, freqs], axis=-1)
    return np.cos(emb).astype(np.float32), np.sin(emb).astype(np.float32)


def build_modernbert_onnx(model: STModel, out: Path, progress: Progress | None = None) -> None:
    """Write the ONNX graph of `model` at `out` (its weights beside it, see onnx_ops.save_graph). Cross-encoders
    of this architecture never get here: cortex.convert.st_folder refuses them."""
    cfg = model.config
    hidden = int(cfg["hidden_size"])
    heads = int(cfg["num_attention_heads"])
    n_layers = int(cfg["num_hidden_layers"])
    inter = int(cfg["intermediate_size"])
    if hidden % heads:
        raise InvalidModelFile(f"hidden_size {hidden} is not a multiple of {heads} heads", param="model_path")
    head_dim = hidden // heads
    eps = float(cfg.get("norm_eps", 1e-5))
    window = cfg.get("local_attention", 128)
    if not isinstance(window, int) or window <= 0:
        raise InvalidModelFile("config.json: local_attention must be a positive integer", param="model_path")
    act = activation(cfg.get("hidden_activation", "gelu"))
    types = layer_types(cfg)
    norm_bias, attn_bias, mlp_bias = (bool(cfg.get(k, False)) for k in ("norm_bias", "attention_bias", "mlp_bias"))
    try:
        with safe_open(model.weights, framework="numpy") as f:
            keys = set(f.keys())
            prefix = "model." if "model.embeddings.tok_embeddings.weight" in keys else ""  # ModernBertFor*

            def w(name: str) -> np.ndarray:
                if prefix + name not in keys:
                    raise InvalidModelFile(f"{model.weights.name} lacks tensor {prefix + name!r}", param="model_path")
                return tensor_f32(f, model.weights, prefix + name)

            def bias(name: str, present: bool) -> np.ndarray | None:
                return w(name + ".bias") if present else None

            def norm(x: str, name: str) -> str:
                return layer_norm(b, x, w(name + ".weight"), bias(name, norm_bias), eps, name)

            b = GraphBuilder()
            total = n_layers + 2
            x = b.op("Gather", [b.init("tok_embeddings", w("embeddings.tok_embeddings.weight")), "input_ids"])
            x = norm(x, "embeddings.norm")
            mask_f, pad_bias = padding_mask(b)
            seq_len = b.op("Shape", ["input_ids"], start=1, end=2)  # [1]
            zero = b.const([0], np.int64)
            chunks = _Chunks(b, seq_len, pad_bias)
            rotary = {}
            for kind in sorted(set(types)):
                cos, sin = rotary_tables(rope_theta(cfg, kind), head_dim, model.max_seq_length)
                rotary[kind] = tuple(
                    b.op("Slice", [b.init(f"rope_{name}_{kind}", table), zero, seq_len, zero])  # [tokens, head_dim]
                    for name, table in (("cos", cos), ("sin", sin))
                )
            split_shape = b.const([0, 0, heads, head_dim], np.int64)
            merge_shape = b.const([0, 0, hidden], np.int64)
            if progress:
                progress(1, total)
            for i, kind in enumerate(types):
                p = f"layers.{i}."
                h = x if i == 0 else norm(x, p + "attn_norm")  # layer 0's attn_norm is an Identity
                qkv = linear(b, h, w(p + "attn.Wqkv.weight"), bias(p + "attn.Wqkv", attn_bias), f"l{i}.qkv")
                q, k, v = (
                    b.op("Transpose", [b.op("Reshape", [t, split_shape])], perm=[0, 2, 1, 3])  # [batch, heads, tok, d]
                    for t in _split(b, qkv, 3)
                )
                q, k = (_rotate(b, t, *rotary[kind]) for t in (q, k))
                k_t = b.op("Transpose", [k], perm=[0, 1, 3, 2])
                ctx = chunks.attention(q, k_t, v, 1.0 / math.sqrt(head_dim), window // 2 if kind == SLIDING else None)
                ctx = b.op("Reshape", [b.op("Transpose", [ctx], perm=[0, 2, 1, 3]), merge_shape])
                x = b.op("Add", [x, linear(b, ctx, w(p + "attn.Wo.weight"), bias(p + "attn.Wo", attn_bias), f"l{i}.o")])
                h = norm(x, p + "mlp_norm")
                wi = w(p + "mlp.Wi.weight")
                if wi.shape[0] != 2 * inter:
                    raise InvalidModelFile(f"{p}mlp.Wi has {wi.shape[0]} rows, not 2 x {inter}", param="model_path")
                up, gate = _split(b, linear(b, h, wi, bias(p + "mlp.Wi", mlp_bias), f"l{i}.wi"), 2)
                glu = b.op("Mul", [act(b, up), gate])
                x = b.op("Add", [x, linear(b, glu, w(p + "mlp.Wo.weight"), bias(p + "mlp.Wo", mlp_bias), f"l{i}.wo")])
                if progress:
                    progress(i + 2, total)
            x = norm(x, "final_norm")
    except SafetensorError as exc:
        raise InvalidModelFile(
            f"Cannot read {model.weights.name} (truncated or corrupt?): {exc}", param="model_path"
        ) from exc
    save_embedding_graph(b, out, x, mask_f, model, name="cortex-modernbert")
    if progress:
        progress(total, total)


def _split(b: GraphBuilder, x: str, parts: int) -> list[str]:
    """`x` cut into `parts` equal slices along its last axis (a torch `chunk`)."""
    outs = [b.name("split") for _ in range(parts)]
    b.nodes.append(helper.make_node("Split", [x], outs, axis=-1))  # opset 17: equal parts, one per output
    return outs


def _rotate(b: GraphBuilder, x: str, cos: str, sin: str) -> str:
    """x * cos + rotate_half(x) * sin, where rotate_half(x) = concat(-x2, x1) of x's two halves."""
    x1, x2 = _split(b, x, 2)
    half = b.op("Concat", [b.op("Neg", [x2]), x1], axis=-1)
    return b.op("Add", [b.op("Mul", [x, cos]), b.op("Mul", [half, sin])])


class _Body(GraphBuilder):
    """A subgraph's builder: its names carry a prefix, so none shadows a name of the graph around it."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def name(self, hint: str) -> str:
        return self.prefix + super().name(hint)


class _Chunks:
    """Attention a block of QUERY_CHUNK queries at a time (an ONNX Loop), so that a long input holds scores
    for [heads, QUERY_CHUNK, tokens] at once, not [heads, tokens, tokens]: 8192 tokens with 12 heads would
    otherwise need gigabytes per layer. Each query's row is computed whole, so the result is the same."""

    def __init__(self, b: GraphBuilder, seq_len: str, pad_bias: str) -> None:
        self.b, self.seq_len, self.pad_bias = b, seq_len, pad_bias
        chunk = b.const(QUERY_CHUNK, np.int64)
        n = b.op("Div", [b.op("Add", [seq_len, b.const(QUERY_CHUNK - 1, np.int64)]), chunk])
        self.trips = b.op("Squeeze", [n, b.const([0], np.int64)])  # ceil(tokens / QUERY_CHUNK), a scalar
        end = b.op("Squeeze", [seq_len, b.const([0], np.int64)])
        keys = b.op("Range", [b.const(0, np.int64), end, b.const(1, np.int64)])
        self.keys = b.op("Unsqueeze", [keys, b.const([0], np.int64)])  # key positions [1, tokens]
        self._loops = 0

    def attention(self, q: str, k_t: str, v: str, scale: float, reach: int | None) -> str:
        """softmax(q k_t * scale + bias) v, [batch, heads, tokens, head_dim]; with `reach`, keys farther than
        it from the query are left out (a sliding-window layer)."""
        b = self.b
        self._loops += 1
        body = _Body(f"loop{self._loops}_")
        step, cond, acc = (body.name(n) for n in ("step", "cond", "acc"))
        start = body.op("Mul", [step, body.const(QUERY_CHUNK, np.int64)])
        start1 = body.op("Unsqueeze", [start, body.const([0], np.int64)])
        end1 = body.op("Min", [body.op("Add", [start1, body.const([QUERY_CHUNK], np.int64)]), self.seq_len])
        queries = body.op("Slice", [q, start1, end1, body.const([2], np.int64)])  # [batch, heads, chunk, head_dim]
        scores = body.op("Mul", [body.op("MatMul", [queries, k_t]), body.const(scale)])
        bias = self.pad_bias
        if reach is not None:  # the band |i - j| <= reach around each query of this chunk
            end = body.op("Squeeze", [end1, body.const([0], np.int64)])
            rows = body.op("Range", [start, end, body.const(1, np.int64)])
            column = body.op("Unsqueeze", [rows, body.const([1], np.int64)])
            dist = body.op("Abs", [body.op("Sub", [column, self.keys])])
            outside = body.op("Greater", [dist, body.const(reach, np.int64)])  # [chunk, tokens]
            bias = body.op("Where", [outside, body.const(-3.4e38), self.pad_bias])  # finite: no NaN rows
        ctx = body.op("MatMul", [body.op("Softmax", [body.op("Add", [scores, bias])], axis=-1), v])
        done = body.op("Concat", [acc, ctx], axis=2)
        keep = body.op("Identity", [cond])
        graph = helper.make_graph(
            body.nodes,
            f"attention_{self._loops}",
            [helper.make_tensor_value_info(step, TensorProto.INT64, []),
             helper.make_tensor_value_info(cond, TensorProto.BOOL, []),
             helper.make_tensor_value_info(acc, TensorProto.FLOAT, None)],
            [helper.make_tensor_value_info(keep, TensorProto.BOOL, []),
             helper.make_tensor_value_info(done, TensorProto.FLOAT, None)],
            body.inits,
        )  # fmt: skip
        empty = b.op("Slice", [q, b.const([0], np.int64), b.const([0], np.int64), b.const([2], np.int64)])
        out = b.name("attention")
        b.nodes.append(helper.make_node("Loop", [self.trips, b.const(True, np.bool_), empty], [out], body=graph))
        return out
