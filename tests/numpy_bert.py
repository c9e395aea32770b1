"""A BERT forward pass in float64 numpy, straight from a folder's safetensors, and sentence-transformers'
pooling modes over its token vectors: an implementation independent of cortex's ONNX graphs to check them
against (what sentence-transformers computes, without torch)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
from safetensors import safe_open


def _gelu(x: np.ndarray) -> np.ndarray:
    return 0.5 * x * (1 + np.vectorize(math.erf)(x / math.sqrt(2)))


def _layer_norm(x: np.ndarray, w: np.ndarray, b: np.ndarray, eps: float) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(((x - mean) ** 2).mean(-1, keepdims=True) + eps) * w + b


def token_vectors(folder: Path, ids: list[int]) -> np.ndarray:
    """BertModel's last hidden states ([tokens, hidden]) for one unpadded sequence of `ids`, from the folder's
    config.json and model.safetensors (any dtype, computed in float64)."""
    cfg = json.loads((folder / "config.json").read_text())
    hidden, heads, eps = cfg["hidden_size"], cfg["num_attention_heads"], cfg.get("layer_norm_eps", 1e-12)
    head_dim = hidden // heads
    with safe_open(folder / "model.safetensors", framework="numpy") as f:
        w = {k.removeprefix("bert."): f.get_tensor(k).astype(np.float64) for k in f.keys()}  # noqa: SIM118
    n = len(ids)
    x = w["embeddings.word_embeddings.weight"][ids] + w["embeddings.position_embeddings.weight"][:n]
    x = _layer_norm(x + w["embeddings.token_type_embeddings.weight"][0], w["embeddings.LayerNorm.weight"],
                    w["embeddings.LayerNorm.bias"], eps)  # fmt: skip
    for i in range(cfg["num_hidden_layers"]):
        p = f"encoder.layer.{i}."

        def lin(t: np.ndarray, name: str, p: str = p) -> np.ndarray:
            return t @ w[p + name + ".weight"].T + w[p + name + ".bias"]

        q, k, v = (lin(x, f"attention.self.{m}").reshape(n, heads, head_dim).transpose(1, 0, 2)
                   for m in ("query", "key", "value"))  # fmt: skip
        scores = q @ k.transpose(0, 2, 1) / math.sqrt(head_dim)
        attn = np.exp(scores - scores.max(-1, keepdims=True))
        ctx = (attn / attn.sum(-1, keepdims=True) @ v).transpose(1, 0, 2).reshape(n, hidden)
        x = _layer_norm(lin(ctx, "attention.output.dense") + x, w[p + "attention.output.LayerNorm.weight"],
                        w[p + "attention.output.LayerNorm.bias"], eps)  # fmt: skip
        x = _layer_norm(lin(_gelu(lin(x, "intermediate.dense")), "output.dense") + x, w[p + "output.LayerNorm.weight"],
                        w[p + "output.LayerNorm.bias"], eps)  # fmt: skip
    return x


def pooled(tokens: np.ndarray, pooling: str, start: int = 0) -> np.ndarray:
    """sentence-transformers' Pooling of one sequence's token vectors ([tokens, hidden], no padding), by
    cortex's name for the mode (cortex.engine.base.POOLINGS); the tokens before `start` (a prompt, with
    `include_prompt: false`) are left out, positions still counted from the first token."""
    n = len(tokens)
    kept = tokens[start:]
    if pooling == "cls":
        return kept[0]
    if pooling == "last":
        return tokens[-1]
    if pooling == "max":
        return kept.max(0)
    if pooling == "mean":
        return kept.sum(0) / len(kept)
    if pooling == "mean_sqrt_len":
        return kept.sum(0) / math.sqrt(len(kept))
    if pooling == "weightedmean":
        weights = np.arange(start + 1, n + 1, dtype=np.float64)
        return (kept * weights[:, None]).sum(0) / weights.sum()
    raise ValueError(pooling)
