"""sentence-transformers BERT folder -> ONNX graph, built op by op with the `onnx` package (no torch).

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
import onnx
from onnx import TensorProto, helper, numpy_helper
from safetensors import SafetensorError, safe_open

from cortex.convert.st_folder import STModel
from cortex.errors import InvalidModelFile

OPSET = 17  # LayerNormalization
Progress = Callable[[int, int], None]


class _Builder:
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

    def op(self, op_type: str, inputs: list[str], **attrs: object) -> str:
        out = self.name(op_type.lower())
        self.nodes.append(helper.make_node(op_type, inputs, [out], **attrs))
        return out


def _linear(b: _Builder, x: str, weight: np.ndarray, bias: np.ndarray, name: str) -> str:
    w = b.init(f"{name}.weight_t", np.ascontiguousarray(weight.T.astype(np.float32)))
    return b.op("Add", [b.op("MatMul", [x, w]), b.init(f"{name}.bias", bias.astype(np.float32))])


def _layer_norm(b: _Builder, x: str, weight: np.ndarray, bias: np.ndarray, eps: float, name: str) -> str:
    return b.op(
        "LayerNormalization",
        [x, b.init(f"{name}.weight", weight.astype(np.float32)), b.init(f"{name}.bias", bias.astype(np.float32))],
        axis=-1, epsilon=eps,
    )  # fmt: skip


def _gelu(b: _Builder, x: str) -> str:
    """0.5 * x * (1 + erf(x / sqrt(2))): BERT's exact GELU."""
    scaled = b.op("Div", [x, b.init(b.name("sqrt2"), np.array(math.sqrt(2.0), dtype=np.float32))])
    one = b.init(b.name("one"), np.array(1.0, dtype=np.float32))
    half = b.init(b.name("half"), np.array(0.5, dtype=np.float32))
    return b.op("Mul", [b.op("Mul", [x, b.op("Add", [b.op("Erf", [scaled]), one])]), half])


def build_bert_onnx(model: STModel, out: Path, progress: Progress | None = None) -> None:
    """Write the ONNX graph of `model` at `out` (weights inside the file)."""
    cfg = model.config
    hidden = int(cfg["hidden_size"])
    heads = int(cfg["num_attention_heads"])
    layers = int(cfg["num_hidden_layers"])
    eps = float(cfg.get("layer_norm_eps", 1e-12))
    head_dim = hidden // heads
    try:
        with safe_open(model.weights, framework="numpy") as f:
            keys = set(f.keys())
            prefix = "bert." if "bert.embeddings.word_embeddings.weight" in keys else ""

            def tensor(key: str) -> np.ndarray:
                if key not in keys:
                    raise InvalidModelFile(f"{model.weights.name} lacks tensor {key!r}", param="model_path")
                return f.get_tensor(key).astype(np.float32)

            def w(name: str) -> np.ndarray:  # the encoder's tensors, under `bert.` in a task model's weights
                return tensor(prefix + name)

            b = _Builder()
            total = layers + 2
            # embeddings
            word = b.init("word_embeddings", w("embeddings.word_embeddings.weight"))
            pos = b.init("position_embeddings", w("embeddings.position_embeddings.weight")[: model.max_seq_length])
            if model.task == "rerank":
                types = b.op("Gather", [b.init("token_types", w("embeddings.token_type_embeddings.weight")),
                                        _pair_token_types(b, model)])  # fmt: skip
            else:
                types = b.init("token_type_0", w("embeddings.token_type_embeddings.weight")[0])
            seq_len = b.op("Gather", [b.op("Shape", ["input_ids"]), b.init("one_i", np.array(1, dtype=np.int64))])
            positions = b.op("Range", [b.init("zero_i", np.array(0, dtype=np.int64)), seq_len,
                                       b.init("step_i", np.array(1, dtype=np.int64))])  # fmt: skip
            x = b.op(
                "Add", [b.op("Add", [b.op("Gather", [word, "input_ids"]), b.op("Gather", [pos, positions])]), types]
            )
            x = _layer_norm(b, x, w("embeddings.LayerNorm.weight"), w("embeddings.LayerNorm.bias"), eps, "emb_ln")
            # attention bias from the padding mask: 0 where attended, a large negative where padded
            mask_f = b.op("Cast", ["attention_mask"], to=TensorProto.FLOAT)
            unsq = b.op("Unsqueeze", [mask_f, b.init("axes_12", np.array([1, 2], dtype=np.int64))])
            neg = b.init("neg_big", np.array(-3.4e38, dtype=np.float32))
            bias = b.op("Mul", [b.op("Sub", [b.init("one_f", np.array(1.0, dtype=np.float32)), unsq]), neg])
            split_shape = b.init("split_heads", np.array([0, 0, heads, head_dim], dtype=np.int64))
            merge_shape = b.init("merge_heads", np.array([0, 0, hidden], dtype=np.int64))
            scale = b.init("attn_scale", np.array(1.0 / math.sqrt(head_dim), dtype=np.float32))
            if progress:
                progress(1, total)
            for i in range(layers):
                p = f"encoder.layer.{i}."

                def heads_of(t: str, perm: list[int]) -> str:
                    return b.op("Transpose", [b.op("Reshape", [t, split_shape])], perm=perm)

                q = heads_of(_linear(b, x, w(p + "attention.self.query.weight"), w(p + "attention.self.query.bias"),
                                     f"l{i}.q"), [0, 2, 1, 3])  # fmt: skip
                k = heads_of(_linear(b, x, w(p + "attention.self.key.weight"), w(p + "attention.self.key.bias"),
                                     f"l{i}.k"), [0, 2, 3, 1])  # fmt: skip
                v = heads_of(_linear(b, x, w(p + "attention.self.value.weight"), w(p + "attention.self.value.bias"),
                                     f"l{i}.v"), [0, 2, 1, 3])  # fmt: skip
                scores = b.op("Add", [b.op("Mul", [b.op("MatMul", [q, k]), scale]), bias])
                ctx = b.op("MatMul", [b.op("Softmax", [scores], axis=-1), v])
                ctx = b.op("Reshape", [b.op("Transpose", [ctx], perm=[0, 2, 1, 3]), merge_shape])
                attn = _linear(b, ctx, w(p + "attention.output.dense.weight"), w(p + "attention.output.dense.bias"),
                               f"l{i}.o")  # fmt: skip
                x = _layer_norm(b, b.op("Add", [attn, x]), w(p + "attention.output.LayerNorm.weight"),
                                w(p + "attention.output.LayerNorm.bias"), eps, f"l{i}.attn_ln")  # fmt: skip
                up = _gelu(b, _linear(b, x, w(p + "intermediate.dense.weight"), w(p + "intermediate.dense.bias"),
                                      f"l{i}.up"))  # fmt: skip
                down = _linear(b, up, w(p + "output.dense.weight"), w(p + "output.dense.bias"), f"l{i}.down")
                x = _layer_norm(b, b.op("Add", [down, x]), w(p + "output.LayerNorm.weight"),
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
        output, width = "logits", 1
        b.nodes.append(helper.make_node("Identity", [head], [output]))
    else:
        output, width = "embeddings", hidden
        b.nodes.append(helper.make_node("Identity", [_pool(b, x, mask_f, model.pooling)], [output]))
    graph = helper.make_graph(
        b.nodes,
        "cortex-bert",
        [
            helper.make_tensor_value_info(n, TensorProto.INT64, ["batch", "tokens"])
            for n in ("input_ids", "attention_mask")
        ],
        [helper.make_tensor_value_info(output, TensorProto.FLOAT, ["batch", width])],
        b.inits,
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="cortex")
    onnx.checker.check_model(proto)
    onnx.save_model(proto, out)
    if progress:
        progress(total, total)


def _pair_token_types(b: _Builder, model: STModel) -> str:
    """Token types of `[CLS] query [SEP] document [SEP]` rows: 0 up to and including the first [SEP], 1 after
    it (padding gets 1, and is masked). The count of [SEP]s strictly before each position, capped at 1."""
    if "[SEP]" not in model.vocab:
        raise InvalidModelFile("A cross-encoder's vocabulary needs a [SEP] token", param="model_path")
    sep = b.init("sep_id", np.array(model.vocab.index("[SEP]"), dtype=np.int64))
    is_sep = b.op("Cast", [b.op("Equal", ["input_ids", sep])], to=TensorProto.INT64)
    before = b.op("CumSum", [is_sep, b.init("types_axis", np.array(1, dtype=np.int64))], exclusive=1)
    return b.op("Min", [before, b.init("type_one", np.array(1, dtype=np.int64))])


def _classifier(b: _Builder, x: str, pooler: tuple[np.ndarray, np.ndarray], head: tuple[np.ndarray, np.ndarray]) -> str:
    """BertForSequenceClassification's head: the pooler (dense + tanh on [CLS]), then the one-label classifier
    (`pooler` and `head` are each a weight and a bias)."""
    if head[0].shape[0] != 1:
        raise InvalidModelFile(f"The classifier has {head[0].shape[0]} outputs; a cross-encoder has one",
                               param="model_path")  # fmt: skip
    cls = b.op("Gather", [x, b.init("cls_index", np.array(0, dtype=np.int64))], axis=1)
    pooled = b.op("Tanh", [_linear(b, cls, *pooler, "pooler")])
    return _linear(b, pooled, *head, "classifier")


def _pool(b: _Builder, x: str, mask_f: str, pooling: str) -> str:
    if pooling == "cls":
        return b.op("Gather", [x, b.init("first", np.array(0, dtype=np.int64))], axis=1)
    if pooling == "last":
        last = b.op("Sub", [b.op("ReduceSum", [b.op("Cast", ["attention_mask"], to=TensorProto.INT64),
                                               b.init("ax1_last", np.array([1], dtype=np.int64))], keepdims=1),
                            b.init("one_last", np.array(1, dtype=np.int64))])  # fmt: skip
        idx = b.op("Expand", [b.op("Unsqueeze", [last, b.init("ax2_last", np.array([2], dtype=np.int64))]),
                              b.op("Concat", [b.op("Shape", [x], start=0, end=1),
                                              b.init("one_one", np.array([1], dtype=np.int64)),
                                              b.op("Shape", [x], start=2, end=3)], axis=0)])  # fmt: skip
        gathered = b.op("GatherElements", [x, idx], axis=1)
        return b.op("Squeeze", [gathered, b.init("ax1_sq", np.array([1], dtype=np.int64))])
    mask3 = b.op("Unsqueeze", [mask_f, b.init("ax2", np.array([2], dtype=np.int64))])
    summed = b.op("ReduceSum", [b.op("Mul", [x, mask3]), b.init("ax1", np.array([1], dtype=np.int64))], keepdims=0)
    count = b.op("ReduceSum", [mask3, b.init("ax1b", np.array([1], dtype=np.int64))], keepdims=0)
    return b.op("Div", [summed, b.op("Max", [count, b.init("tiny", np.array(1e-9, dtype=np.float32))])])
