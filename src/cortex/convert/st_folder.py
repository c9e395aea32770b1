"""Read a sentence-transformers (or plain transformers) model folder: architecture, hyper-parameters,
WordPiece vocabulary, pooling, normalisation and context length. No torch.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from cortex.errors import InvalidModelFile

SUPPORTED_ARCHITECTURES = ("bert",)
_BERT_CLASSES = {"BertModel", "BertForMaskedLM", "BertForPreTraining", "BertForSequenceClassification"}


@dataclass(frozen=True)
class STModel:
    """Everything the converters need to know about a folder."""

    folder: Path
    weights: Path
    config: dict
    vocab: list[str]  # token strings by id, as WordPiece spells them (`##` continuations)
    special_ids: frozenset[int]  # tokens the tokenizer marks special ([CLS], [SEP], [PAD], ...)
    pooling: str  # mean | cls | last
    normalize: bool
    max_seq_length: int
    name: str

    @property
    def n_embd(self) -> int:
        return int(self.config["hidden_size"])


def _json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise InvalidModelFile(f"Cannot read {path.name}: {exc}", param="model_path") from exc
    if not isinstance(data, dict):
        raise InvalidModelFile(f"{path.name} is not a JSON object", param="model_path")
    return data


def is_st_folder(path: Path) -> bool:
    return path.is_dir() and (path / "config.json").is_file()


def _architecture(config: dict) -> str:
    model_type = str(config.get("model_type", "")).lower()
    classes = set(config.get("architectures") or [])
    if model_type == "bert" or classes & _BERT_CLASSES:
        return "bert"
    shown = model_type or ", ".join(sorted(classes)) or "unknown"
    raise InvalidModelFile(
        f"Architecture `{shown}` is not supported. Supported: {', '.join(SUPPORTED_ARCHITECTURES)} "
        "(e.g. all-MiniLM-L6-v2, bge-small/base/large-en, e5 English, BERT-based gte).",
        param="model_path",
    )


def _vocab(folder: Path) -> tuple[list[str], frozenset[int], bool]:
    """(tokens by id, special ids, lowercase) from tokenizer.json, else vocab.txt."""
    tok_json = folder / "tokenizer.json"
    if tok_json.is_file():
        tok = _json(tok_json)
        model = tok.get("model") or {}
        if model.get("type") != "WordPiece" or not isinstance(model.get("vocab"), dict):
            raise InvalidModelFile(
                f"tokenizer.json holds a {model.get('type')} tokenizer; BERT models need WordPiece", param="model_path"
            )
        by_id = {int(i): str(t) for t, i in model["vocab"].items()}
        for added in tok.get("added_tokens") or []:
            by_id.setdefault(int(added["id"]), str(added["content"]))
        special = frozenset(int(a["id"]) for a in tok.get("added_tokens") or [] if a.get("special"))
        normalizer = tok.get("normalizer") or {}
        lowercase = bool(normalizer.get("lowercase", True)) if normalizer.get("type") == "BertNormalizer" else True
    elif (folder / "vocab.txt").is_file():
        lines = (folder / "vocab.txt").read_text(encoding="utf-8").splitlines()
        by_id = dict(enumerate(lines))
        special = frozenset(i for i, t in by_id.items() if t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"))
        cfg = folder / "tokenizer_config.json"
        lowercase = bool(_json(cfg).get("do_lower_case", True)) if cfg.is_file() else True
    else:
        raise InvalidModelFile(
            f"No tokenizer in {folder.name}: it needs tokenizer.json or vocab.txt", param="model_path"
        )
    if not by_id or sorted(by_id) != list(range(len(by_id))):
        raise InvalidModelFile("The vocabulary's token ids are not contiguous from 0", param="model_path")
    return [by_id[i] for i in range(len(by_id))], special, lowercase


def _pooling(folder: Path) -> str:
    cfg_path = folder / "1_Pooling" / "config.json"
    modules = folder / "modules.json"
    if modules.is_file():
        raw = json.loads(modules.read_text(encoding="utf-8"))
        for module in raw if isinstance(raw, list) else []:
            if str(module.get("type", "")).endswith("Pooling") and module.get("path"):
                cfg_path = folder / str(module["path"]) / "config.json"
    if not cfg_path.is_file():
        return "mean"  # sentence-transformers' default for a plain transformers folder
    cfg = _json(cfg_path)
    if cfg.get("pooling_mode_mean_tokens"):
        return "mean"
    if cfg.get("pooling_mode_cls_token"):
        return "cls"
    if cfg.get("pooling_mode_lasttoken"):
        return "last"
    modes = ", ".join(k for k, v in cfg.items() if k.startswith("pooling_mode") and v) or "none"
    raise InvalidModelFile(f"Pooling `{modes}` is not supported: use mean, cls or last token", param="model_path")


def _normalize(folder: Path) -> bool:
    modules = folder / "modules.json"
    if not modules.is_file():
        return True  # a plain transformers folder: serve unit vectors, as OpenAI does
    raw = json.loads(modules.read_text(encoding="utf-8"))
    return any(str(m.get("type", "")).endswith("Normalize") for m in (raw if isinstance(raw, list) else []))


def read_st_folder(folder: Path) -> STModel:
    """Describe `folder`, or raise InvalidModelFile saying what is missing or unsupported."""
    folder = folder.resolve()
    config = _json(folder / "config.json")
    _architecture(config)
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
        if not isinstance(config.get(key), int) or config[key] <= 0:
            raise InvalidModelFile(f"config.json lacks a positive integer `{key}`", param="model_path")
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise InvalidModelFile("Only absolute position embeddings are supported", param="model_path")
    if config.get("hidden_act", "gelu") not in ("gelu", "gelu_new", "gelu_pytorch_tanh"):
        raise InvalidModelFile(f"Activation `{config.get('hidden_act')}` is not supported", param="model_path")
    weights = folder / "model.safetensors"
    if not weights.is_file():
        raise InvalidModelFile(f"No model.safetensors in {folder.name}", param="model_path")
    vocab, special, lowercase = _vocab(folder)
    if not lowercase:
        raise InvalidModelFile(
            "Cased WordPiece vocabularies are not supported: llama.cpp's BERT tokenizer lower-cases all text",
            param="model_path",
        )
    max_pos = int(config.get("max_position_embeddings", 512))
    max_seq = max_pos
    st_cfg = folder / "sentence_bert_config.json"
    if st_cfg.is_file():
        value = _json(st_cfg).get("max_seq_length")
        if isinstance(value, int) and value > 0:
            max_seq = min(value, max_pos)
    return STModel(
        folder=folder,
        weights=weights,
        config=config,
        vocab=vocab,
        special_ids=special,
        pooling=_pooling(folder),
        normalize=_normalize(folder),
        max_seq_length=max_seq,
        name=str(config.get("_name_or_path") or folder.name).rsplit("/", 1)[-1],
    )
