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
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17  # LayerNormalization
POOL_START = "pool_start"  # the optional input of a pooled graph: per row, the first token pooled
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


def padding_mask(b: GraphBuilder) -> tuple[str, str]:
    """(the attention mask as float [batch, tokens], an attention bias [batch, 1, 1, tokens]: 0 where a
    token is attended, a large negative where it is padding)."""
    mask_f = b.op("Cast", ["attention_mask"], to=TensorProto.FLOAT)
    unsq = b.op("Unsqueeze", [mask_f, b.const([1, 2], np.int64)])
    bias = b.op("Mul", [b.op("Sub", [b.const(1.0), unsq]), b.const(-3.4e38)])
    return mask_f, bias


def pool(b: GraphBuilder, x: str, mask_f: str, pooling: str) -> str:
    """sentence-transformers' Pooling of the token vectors `x` ([batch, tokens, hidden]) over the real tokens
    (`mask_f`, [batch, tokens], 1 for a real token and 0 for padding) from each row's `pool_start` on, one of
    `cortex.engine.base.POOLINGS`, computed as its `Pooling.forward` (6.x) does."""
    if pooling == "cls":  # the first token pooled: [CLS], or the first after a prompt left out
        return _token_at(b, x, POOL_START)
    if pooling == "last":
        count = b.op("ReduceSum", [b.op("Cast", ["attention_mask"], to=TensorProto.INT64), b.const([1], np.int64)],
                     keepdims=0)  # fmt: skip
        return _token_at(b, x, b.op("Sub", [count, b.const(1, np.int64)]))
    mask3 = b.op("Unsqueeze", [_after_pool_start(b, x, mask_f), b.const([2], np.int64)])
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


def save_graph(b: GraphBuilder, out: Path, result: str, *, output: str, width: int, name: str) -> None:
    """Name `result` as the graph's one output (`embeddings` or `logits`, [batch, width]), check the graph
    and write it at `out`, weights inside."""
    b.nodes.append(helper.make_node("Identity", [result], [output]))
    inputs = [helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "tokens"])
              for n in ("input_ids", "attention_mask")]  # fmt: skip
    if any(POOL_START in node.input for node in b.nodes):
        inputs.append(helper.make_tensor_value_info(POOL_START, TensorProto.INT64, ["batch"]))
    graph = helper.make_graph(
        b.nodes,
        name,
        inputs,
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["batch", width])],
        b.inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="cortex")
    onnx.checker.check_model(proto)
    onnx.save_model(proto, out)
