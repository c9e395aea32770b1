"""Building blocks shared by the ONNX graph builders of each architecture (`cortex.convert.*_onnx`): a graph
under construction, the layers encoders share (linear, LayerNorm, GELU, the padding mask as an attention
bias), sentence-transformers' pooling, and the writing of the finished graph.

Every graph takes `input_ids` and `attention_mask` (int64, [batch, tokens]) and returns `embeddings`
([batch, hidden], pooled, not normalised: each request chooses that, see cortex.runtime.embed) or, for a
cross-encoder, `logits` ([batch, 1]). A pooled graph also takes `pool_start` (int64, [batch]): the tokens
before it in each row are left out of the pooling (sentence-transformers' `include_prompt: false`, where a
prompt's tokens are attended to but not pooled); the engine feeds 0 unless a request's prompt is left out.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper
from safetensors import SafetensorError, safe_open

from cortex.convert.safetensors_f32 import tensor_f32
from cortex.errors import InvalidModelFile

if TYPE_CHECKING:
    from cortex.convert.st_folder import STModel

OPSET = 17  # LayerNormalization
POOL_START = "pool_start"  # the optional input of a pooled graph: per row, the first token pooled
PAIR_START = "pair_start"  # the input of a cross-encoder's graph: per row, the first token of the document
Progress = Callable[[int, int], None]


class GraphBuilder:
    """Nodes and initializers of a graph being built; every intermediate gets a unique name."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[onnx.TensorProto] = []
        self._n = 0

    def name(self, hint: str) -> str:
        self._n += 1
        return f"{hint}_{self._n}"

    def init(self, name: str, array: np.ndarray) -> str:
        self.inits.append(numpy_helper.from_array(array, name))
        return name

    def const(self, value: float | int | list, dtype: type = np.float32) -> str:
        """A small constant under a fresh name."""
        return self.init(self.name("const"), np.array(value, dtype=dtype))

    def op(self, op_type: str, inputs: list[str], **attrs: object) -> str:
        out = self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out


class Weights:
    """A safetensors file's tensors as float32: `w(name)` an encoder tensor, found under `prefix` in a task
    model's file (BertForMaskedLM's `bert.`, MPNetForMaskedLM's `mpnet.`) and at the top in a bare model's;
    `w.raw(key)` any tensor by its full key (a task head's). A missing tensor is an InvalidModelFile."""

    def __init__(self, f: safe_open, path: Path, prefix: str) -> None:
        self._f = f
        self._path = path
        self._name = path.name
        self.keys = set(f.keys())
        self.prefix = prefix if any(k.startswith(prefix) for k in self.keys) else ""

    def raw(self, key: str) -> np.ndarray:
        if key not in self.keys:
            raise InvalidModelFile(f"{self._name} lacks tensor {key!r}", param="model_path")
        return tensor_f32(self._f, self._path, key)

    def __call__(self, name: str) -> np.ndarray:
        return self.raw(self.prefix + name)


@contextmanager
def open_weights(path: Path, prefix: str) -> Iterator[Weights]:
    """The weights at `path` for the span of the block; a truncated or corrupt file is an InvalidModelFile,
    whenever in the block it shows."""
    try:
        with safe_open(path, framework="numpy") as f:
            yield Weights(f, path, prefix)
    except SafetensorError as exc:
        raise InvalidModelFile(f"Cannot read {path.name} (truncated or corrupt?): {exc}", param="model_path") from exc


def linear(b: GraphBuilder, x: str, weight: np.ndarray, bias: np.ndarray | None, name: str) -> str:
    """x @ weight.T (+ bias): a torch Linear, its weight stored transposed once."""
    w = b.init(f"{name}.weight_t", np.ascontiguousarray(weight.T.astype(np.float32)))
    y = b.op("MatMul", [x, w])
    return y if bias is None else b.op("Add", [y, b.init(f"{name}.bias", bias.astype(np.float32))])


def layer_norm(b: GraphBuilder, x: str, weight: np.ndarray, bias: np.ndarray | None, eps: float, name: str) -> str:
    inputs = [x, b.init(f"{name}.weight", weight.astype(np.float32))]
    if bias is not None:
        inputs.append(b.init(f"{name}.bias", bias.astype(np.float32)))
    return b.op("LayerNormalization", inputs, axis=-1, epsilon=eps)


def gelu(b: GraphBuilder, x: str) -> str:
    """0.5 * x * (1 + erf(x / sqrt(2))): the exact GELU of BERT and its kin."""
    scaled = b.op("Div", [x, b.const(math.sqrt(2.0))])
    return b.op("Mul", [b.op("Mul", [x, b.op("Add", [b.op("Erf", [scaled]), b.const(1.0)])]), b.const(0.5)])


def gelu_tanh(b: GraphBuilder, x: str) -> str:
    """0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x^3))): the tanh approximation of GELU
    (transformers' gelu_new and gelu_pytorch_tanh)."""
    cubic = b.op("Mul", [b.op("Mul", [b.op("Mul", [x, x]), x]), b.const(0.044715)])
    inner = b.op("Mul", [b.op("Add", [x, cubic]), b.const(math.sqrt(2.0 / math.pi))])
    return b.op("Mul", [b.op("Mul", [x, b.op("Add", [b.op("Tanh", [inner]), b.const(1.0)])]), b.const(0.5)])


# transformers' ACT2FN names of the GELUs: the exact (erf) one, and its tanh approximation
ERF_GELU = ("gelu", "gelu_python")
TANH_GELU = ("gelu_new", "gelu_pytorch_tanh", "gelu_fast")


def activation(name: str) -> Callable[[GraphBuilder, str], str]:
    """The graph function of config.json's `hidden_act` (`hidden_activation`); GELUs only."""
    if name in ERF_GELU:
        return gelu
    if name in TANH_GELU:
        return gelu_tanh
    raise InvalidModelFile(f"Activation `{name}` is not supported (GELU only)", param="model_path")


@dataclass(frozen=True)
class LayerNames:
    """Where a post-LayerNorm transformer layer (BERT's and its kin's) keeps each of its parts, relative to the
    layer's prefix; each is a torch Linear or LayerNorm with `.weight` and `.bias`."""

    q: str
    k: str
    v: str
    o: str  # the attention's output projection
    attn_ln: str  # LayerNorm after attention + residual
    up: str  # the feed-forward's first Linear (GELU follows)
    down: str
    out_ln: str  # LayerNorm after the feed-forward + residual


def encoder_layer(
    b: GraphBuilder,
    x: str,
    attn_bias: str,
    tensor: Callable[[str], np.ndarray],
    names: LayerNames,
    *,
    heads: int,
    eps: float,
    tag: str,
    act: Callable[[GraphBuilder, str], str] = gelu,
) -> str:
    """One post-LayerNorm encoder layer on `x` ([batch, tokens, hidden]): self-attention whose scaled scores get
    `attn_bias` added (the padding mask, [batch, 1, 1, tokens], or that plus a relative position bias,
    [batch, heads, tokens, tokens]), then residual + LayerNorm, a feed-forward with `act` (config.json's GELU),
    residual + LayerNorm.
    `tensor(name)` gives this layer's weights by their name under the layer (e.g. `attention.self.query.weight`)."""

    def dense(part: str, src: str, role: str) -> str:
        return linear(b, src, tensor(f"{part}.weight"), tensor(f"{part}.bias"), f"{tag}.{role}")

    def norm(part: str, src: str, role: str) -> str:
        return layer_norm(b, src, tensor(f"{part}.weight"), tensor(f"{part}.bias"), eps, f"{tag}.{role}")

    hidden = int(tensor(f"{names.q}.weight").shape[0])
    head_dim = hidden // heads
    split = b.const([0, 0, heads, head_dim], np.int64)

    def heads_of(t: str, perm: list[int]) -> str:
        return b.op("Transpose", [b.op("Reshape", [t, split])], perm=perm)

    q = heads_of(dense(names.q, x, "q"), [0, 2, 1, 3])
    k = heads_of(dense(names.k, x, "k"), [0, 2, 3, 1])
    v = heads_of(dense(names.v, x, "v"), [0, 2, 1, 3])
    scores = b.op("Add", [b.op("Mul", [b.op("MatMul", [q, k]), b.const(1.0 / math.sqrt(head_dim))]), attn_bias])
    ctx = b.op("MatMul", [b.op("Softmax", [scores], axis=-1), v])
    ctx = b.op("Reshape", [b.op("Transpose", [ctx], perm=[0, 2, 1, 3]), b.const([0, 0, hidden], np.int64)])
    x = norm(names.attn_ln, b.op("Add", [dense(names.o, ctx, "o"), x]), "attn_ln")
    up = act(b, dense(names.up, x, "up"))
    return norm(names.out_ln, b.op("Add", [dense(names.down, up, "down"), x]), "out_ln")


def sequential_positions(b: GraphBuilder) -> str:
    """BERT's position ids: 0, 1, ... ([tokens], the same for every row)."""
    seq_len = b.op("Gather", [b.op("Shape", ["input_ids"]), b.const(1, np.int64)])
    return b.op("Range", [b.const(0, np.int64), seq_len, b.const(1, np.int64)])


def positions_after_padding(b: GraphBuilder, pad: int) -> str:
    """RoBERTa's (and XLM-R's, MPNet's) position ids, as transformers' create_position_ids_from_input_ids
    numbers them from `input_ids`: the running count of non-padding tokens plus the padding index `pad`, and
    `pad` itself for padding tokens ([batch, tokens]); a row `<s> a b </s>` gets 2, 3, 4, 5 with `pad` 1."""
    real = b.op("Cast", [b.op("Not", [b.op("Equal", ["input_ids", b.const(pad, np.int64)])])], to=TensorProto.INT64)
    return b.op("Add", [b.op("Mul", [b.op("CumSum", [real, b.const(1, np.int64)]), real]), b.const(pad, np.int64)])


def padding_mask(b: GraphBuilder) -> tuple[str, str]:
    """(the attention mask as float [batch, tokens], an attention bias [batch, 1, 1, tokens]: 0 where a
    token is attended, a large negative where it is padding)."""
    mask_f = b.op("Cast", ["attention_mask"], to=TensorProto.FLOAT)
    unsq = b.op("Unsqueeze", [mask_f, b.const([1, 2], np.int64)])
    bias = b.op("Mul", [b.op("Sub", [b.const(1.0), unsq]), b.const(-3.4e38)])
    return mask_f, bias


def pool(b: GraphBuilder, x: str, mask_f: str, pooling: str, *, skip_prompt: bool = False) -> str:
    """sentence-transformers' Pooling of the token vectors `x` ([batch, tokens, hidden]) over the real tokens
    (`mask_f`, [batch, tokens], 1 for a real token and 0 for padding), one of `cortex.engine.base.POOLINGS`,
    computed as its `Pooling.forward` (6.x) does. `skip_prompt` (a model whose Pooling has include_prompt
    false) pools each row from its `pool_start` input on; only such graphs have that input."""
    if pooling == "cls":  # the first token pooled: [CLS], or the first after a prompt left out
        return _token_at(b, x, POOL_START) if skip_prompt else b.op("Gather", [x, b.const(0, np.int64)], axis=1)
    if pooling == "last":
        count = b.op("ReduceSum", [b.op("Cast", ["attention_mask"], to=TensorProto.INT64), b.const([1], np.int64)],
                     keepdims=0)  # fmt: skip
        return _token_at(b, x, b.op("Sub", [count, b.const(1, np.int64)]))
    pooled = _after_pool_start(b, x, mask_f) if skip_prompt else mask_f
    mask3 = b.op("Unsqueeze", [pooled, b.const([2], np.int64)])
    if pooling == "max":  # padding set to -1e9 first, as sentence-transformers does
        real = b.op("Cast", [mask3], to=TensorProto.BOOL)
        return b.op("ReduceMax", [b.op("Where", [real, x, b.const(-1e9)])], axes=[1], keepdims=0)
    if pooling == "weightedmean":  # position i (from 1) weighs i; padding 0
        n = b.op("Shape", [x], start=1, end=2)
        positions = b.op("Range", [b.const(1, np.int64), b.op("Add", [b.op("Squeeze", [n]), b.const(1, np.int64)]),
                                   b.const(1, np.int64)])  # fmt: skip
        weights = b.op("Mul", [mask3, b.op("Unsqueeze", [b.op("Cast", [positions], to=TensorProto.FLOAT),
                                                         b.const([0, 2], np.int64)])])  # fmt: skip
        summed = b.op("ReduceSum", [b.op("Mul", [x, weights]), b.const([1], np.int64)], keepdims=0)
        total = b.op("ReduceSum", [weights, b.const([1], np.int64)], keepdims=0)
        return b.op("Div", [summed, b.op("Max", [total, b.const(1e-9)])])
    summed = b.op("ReduceSum", [b.op("Mul", [x, mask3]), b.const([1], np.int64)], keepdims=0)
    count = b.op("Max", [b.op("ReduceSum", [mask3, b.const([1], np.int64)], keepdims=0), b.const(1e-9)])
    if pooling == "mean":
        return b.op("Div", [summed, count])
    if pooling == "mean_sqrt_len":  # the sum over the square root of the count: mean's direction, a longer vector
        return b.op("Div", [summed, b.op("Sqrt", [count])])
    raise ValueError(f"unknown pooling {pooling!r}")  # st_folder and kinds.choose admit only POOLINGS


def _token_at(b: GraphBuilder, x: str, index: str) -> str:
    """Row r's token vector at position `index[r]` ([batch] int64): [batch, hidden]."""
    idx = b.op("Expand", [b.op("Unsqueeze", [index, b.const([1, 2], np.int64)]),
                          b.op("Concat", [b.op("Shape", [x], start=0, end=1), b.const([1], np.int64),
                                          b.op("Shape", [x], start=2, end=3)], axis=0)])  # fmt: skip
    return b.op("Squeeze", [b.op("GatherElements", [x, idx], axis=1), b.const([1], np.int64)])


def _after_pool_start(b: GraphBuilder, x: str, mask_f: str) -> str:
    """`mask_f` with each row's tokens before its `pool_start` set to 0 (a prompt left out of the pooling)."""
    positions = b.op("Range", [b.const(0, np.int64), b.op("Squeeze", [b.op("Shape", [x], start=1, end=2)]),
                               b.const(1, np.int64)])  # fmt: skip
    start = b.op("Unsqueeze", [POOL_START, b.const([1], np.int64)])
    pooled = b.op("Cast", [b.op("GreaterOrEqual", [positions, start])], to=TensorProto.FLOAT)
    return b.op("Mul", [mask_f, pooled])


def save_embedding_graph(b: GraphBuilder, out: Path, x: str, mask_f: str, model: STModel, *, name: str) -> None:
    """An embedding model's graph: the token vectors `x` pooled as its Pooling module says (the prompt left out
    where `include_prompt` is false), saved as the `embeddings` output."""
    pooled = pool(b, x, mask_f, model.pooling, skip_prompt=not model.include_prompt)
    save_graph(b, out, pooled, output="embeddings", width=model.n_embd, name=name)


def save_graph(b: GraphBuilder, out: Path, result: str, *, output: str, width: int, name: str) -> None:
    """Name `result` as the graph's one output (`embeddings` or `logits`, [batch, width]), write the graph at
    `out` (its weights in `out`.data) and check it."""
    b.nodes.append(helper.make_node("Identity", [result], [output]))
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "tokens"])
              for n in ("input_ids", "attention_mask")]  # fmt: skip
    for name in (POOL_START, PAIR_START):  # the per-row starts the graph reads, if any
        if any(name in node.input for node in b.nodes):
            inputs.append(helper.make_tensor_value_info(name, TensorProto.INT64, ["batch"]))
    graph = helper.make_graph(
        b.nodes,
        name,
        inputs,
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["batch", width])],
        b.inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="cortex")
    # A graph is one protobuf message, which cannot pass 2 GiB (XLM-R large: 560M weights): the weights go to a
    # file beside it, and the checker reads the graph by path, as it reads a large one.
    onnx.save_model(proto, out, save_as_external_data=True, all_tensors_to_one_file=True,
                    location=f"{out.name}.data", size_threshold=1024)  # fmt: skip
    onnx.checker.check_model(str(out))
