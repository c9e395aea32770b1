"""sentence-transformers BERT folder -> GGUF, with the `gguf` library that llama.cpp publishes.

What llama.cpp's `bert` architecture expects, as its own converter writes it: hyper-parameters under
`bert.*`, every tensor under llama.cpp's names (`gguf.TensorNameMap`), the WordPiece vocabulary in
"phantom space" form (a word-initial piece gets a leading U+2581, a `##` continuation loses its `##`),
special token ids, and the pooling type. The position table is cut to the context we serve.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np
from safetensors import SafetensorError, safe_open

from cortex.convert.safetensors_f32 import tensor_f32
from cortex.convert.st_folder import STModel
from cortex.errors import InvalidModelFile

_FILE_TYPE = {
    "f32": gguf.LlamaFileType.ALL_F32,
    "f16": gguf.LlamaFileType.MOSTLY_F16,
    "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0,
}
_POOLING = {"mean": gguf.PoolingType.MEAN, "cls": gguf.PoolingType.CLS, "last": gguf.PoolingType.LAST}
_SKIP = ("embeddings.position_ids", "pooler.", "cls.")  # buffers and heads that embeddings do not use

Progress = Callable[[int, int], None]


def _phantom(token: str) -> str:
    if token.startswith("[") and token.endswith("]"):
        return token
    if token.startswith("##"):
        return token[2:]
    return "\u2581" + token


# llama.cpp adds the token-type row straight onto the embeddings (no get_rows), which needs f32.
_KEEP_F32 = ("token_types.weight",)
# q8_0 quantises the attention and up-projection matrices of each block. The embedding tables and
# ffn_down stay f16: ffn_down's 1536-wide inputs lose most to llama.cpp's 8-bit activations, and with
# it quantised all-MiniLM-L6-v2 falls to cosine 0.9990 against sentence-transformers (0.9993 without).


def _convert_tensor(name: str, data: np.ndarray, outtype: str) -> tuple[np.ndarray, gguf.GGMLQuantizationType | None]:
    """(data to write, raw type when pre-quantised). Vectors (norms, biases) always stay f32."""
    data = data.astype(np.float32, copy=False)
    if data.ndim < 2 or outtype == "f32" or name in _KEEP_F32:
        return data, None
    if outtype == "q8_0" and name.startswith("blk.") and ".ffn_down." not in name and data.shape[-1] % 32 == 0:
        return gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0
    return data.astype(np.float16), None


def write_bert_gguf(model: STModel, out: Path, outtype: str = "f16", progress: Progress | None = None) -> None:
    """Write `model` as a llama.cpp `bert` GGUF at `out`."""
    if outtype not in _FILE_TYPE:
        raise InvalidModelFile(f"Unknown outtype {outtype!r}; use one of {', '.join(_FILE_TYPE)}", param="outtype")
    cfg = model.config
    n_layers = int(cfg["num_hidden_layers"])
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, n_layers)
    writer = gguf.GGUFWriter(out, "bert")
    writer.add_name(model.name)
    writer.add_context_length(model.max_seq_length)
    writer.add_embedding_length(int(cfg["hidden_size"]))
    writer.add_feed_forward_length(int(cfg["intermediate_size"]))
    writer.add_block_count(n_layers)
    writer.add_head_count(int(cfg["num_attention_heads"]))
    writer.add_layer_norm_eps(float(cfg.get("layer_norm_eps", 1e-12)))
    writer.add_causal_attention(False)
    writer.add_pooling_type(_POOLING[model.pooling])
    writer.add_file_type(_FILE_TYPE[outtype])
    writer.add_token_type_count(int(cfg.get("type_vocab_size", 2)))
    writer.add_tokenizer_model("bert")
    writer.add_tokenizer_pre("default")
    writer.add_token_list([_phantom(t) for t in model.vocab])
    writer.add_token_types(
        [gguf.TokenType.CONTROL if i in model.special_ids else gguf.TokenType.NORMAL for i in range(len(model.vocab))]
    )
    gguf.SpecialVocab(model.folder, load_merges=False, n_vocab=len(model.vocab)).add_to_gguf(writer)

    try:
        with safe_open(model.weights, framework="numpy") as f:
            keys = [k for k in f.keys() if not k.removeprefix("bert.").startswith(_SKIP)]  # noqa: SIM118
            if progress:
                progress(0, len(keys))
            for done, key in enumerate(keys, 1):
                name = names.get_name(key, try_suffixes=(".weight", ".bias"))
                if name is None:
                    raise InvalidModelFile(f"Unexpected tensor {key!r} in {model.weights.name}", param="model_path")
                data = tensor_f32(f, model.weights, key)
                if name == "position_embd.weight":
                    data = data[: model.max_seq_length]
                array, raw_type = _convert_tensor(name, data, outtype)
                if raw_type is None:
                    writer.add_tensor(name, array)
                else:
                    writer.add_tensor(name, array, raw_shape=array.shape, raw_dtype=raw_type)
                if progress:
                    progress(done, len(keys))
    except (SafetensorError, OSError) as exc:
        writer.close()
        raise InvalidModelFile(
            f"Cannot read {model.weights.name} (truncated or corrupt?): {exc}", param="model_path"
        ) from exc
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
