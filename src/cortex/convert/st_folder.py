"""Read a sentence-transformers (or plain transformers) model folder: architecture, hyper-parameters,
vocabulary, pooling, normalisation, context length and prompts. No torch.

What each converter can take is its own to say: the ONNX builders (`cortex.convert.onnx_model.GRAPH_BUILDERS`)
serve every architecture here, tokenizing with `tokenizers`; the GGUF converter only uncased WordPiece BERT.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from safetensors import SafetensorError, safe_open
from tokenizers import Tokenizer

from cortex.errors import InvalidModelFile
from cortex.files import is_regular_file, read_regular_file

# Bounds on what a folder's files may weigh: a config is a few KiB; a tokenizer.json of a large
# multilingual vocabulary (XLM-R, 250k tokens) is 17 MiB. Beyond these a file is refused, not read.
_CONFIG_LIMIT = 1 << 20
_TOKENIZER_LIMIT = 64 << 20
_VOCAB_LIMIT = 16 << 20

# Each architecture cortex converts: its config.json `model_type`, and the `architectures` classes that name it.
ARCHITECTURES: dict[str, frozenset[str]] = {
    "bert": frozenset({"BertModel", "BertForMaskedLM", "BertForPreTraining", "BertForSequenceClassification"}),
    "modernbert": frozenset({"ModernBertModel", "ModernBertForMaskedLM"}),
    "mpnet": frozenset({"MPNetModel", "MPNetForMaskedLM"}),
    "xlm-roberta": frozenset({"XLMRobertaModel", "XLMRobertaForMaskedLM"}),
    "roberta": frozenset({"RobertaModel", "RobertaForMaskedLM"}),
}
# Architectures whose position ids start after the padding index (transformers' create_position_ids_from_input_ids):
# the first padding_idx + 1 rows of their position table are never a text's, so they hold that many fewer tokens.
_POSITIONS_AFTER_PADDING = frozenset({"xlm-roberta", "roberta", "mpnet"})
_EMBEDDING_TABLES = ("word_embeddings.weight", "tok_embeddings.weight")  # the token embedding matrix's name
_EXAMPLES = "all-MiniLM, bge, e5, gte, multilingual-e5, bge-m3, all-mpnet-base-v2, gte-modernbert"


@dataclass(frozen=True)
class STModel:
    """Everything the converters need to know about a folder."""

    folder: Path
    weights: Path
    config: dict
    vocab: list[str]  # token strings by id, as the tokenizer spells them (WordPiece: `##` continuations)
    special_ids: frozenset[int]  # tokens the tokenizer marks special ([CLS], [SEP], [PAD], ...)
    pooling: str  # one of cortex.engine.base.POOLINGS
    normalize: bool
    max_seq_length: int
    name: str
    task: str = "embed"  # embed (a bi-encoder) | rerank (a cross-encoder: one logit per query-document pair)
    activation: str | None = None  # rerank: sigmoid | identity, what turns a logit into sentence-transformers' score
    prompts: dict[str, str] = field(default_factory=dict)  # config_sentence_transformers.json's, by name
    default_prompt_name: str | None = None
    include_prompt: bool = True  # the Pooling config's: false leaves a prompt's tokens out of the pooling
    architecture: str = "bert"  # a key of ARCHITECTURES
    tokenizer_model: str = "WordPiece"  # tokenizer.json's model type (WordPiece, Unigram, BPE)
    lowercase: bool = True  # the tokenizer lower-cases text (an uncased vocabulary)

    @property
    def n_embd(self) -> int:
        return int(self.config["hidden_size"])


def padding_index(config: dict) -> int:
    """The padding token's id, which RoBERTa-style models also use as the position before the first (MPNet's
    is 1 whatever config.json says: MPNetEmbeddings fixes it)."""
    if str(config.get("model_type", "")).lower() == "mpnet":
        return 1
    return int(config.get("pad_token_id", 1))  # RoBERTa's and XLM-R's


def _json(path: Path, limit: int = _CONFIG_LIMIT) -> dict:
    try:
        data = json.loads(read_regular_file(path, limit))
    except ValueError as exc:
        raise InvalidModelFile(f"Cannot read {path.name}: {exc}", param="model_path") from exc
    if not isinstance(data, dict):
        raise InvalidModelFile(f"{path.name} is not a JSON object", param="model_path")
    return data


def _architecture(config: dict) -> str:
    """The key of ARCHITECTURES that config.json names; a refusal listing what is supported otherwise."""
    model_type = str(config.get("model_type", "")).lower()
    classes = set(config.get("architectures") or [])
    for name, names in ARCHITECTURES.items():
        if model_type == name or classes & names:
            return name
    if config.get("auto_map"):
        raise InvalidModelFile(
            "This model needs its own code (trust_remote_code: config.json has an auto_map); cortex runs only "
            f"the architectures it builds itself: {', '.join(ARCHITECTURES)}.",
            param="model_path",
        )
    shown = model_type or ", ".join(sorted(classes)) or "unknown"
    raise InvalidModelFile(
        f"Architecture `{shown}` is not supported. Supported: {', '.join(ARCHITECTURES)} (those of {_EXAMPLES}).",
        param="model_path",
    )


def _vocab(folder: Path) -> tuple[list[str], frozenset[int], bool, str]:
    """(tokens by id, special ids, lowercase, tokenizer model type) from tokenizer.json, else vocab.txt
    (a WordPiece vocabulary)."""
    tok_json = folder / "tokenizer.json"
    if tok_json.exists():
        tok = _json(tok_json, _TOKENIZER_LIMIT)
        loaded = _check_loads(tok)
        kind = str((tok.get("model") or {}).get("type") or "unknown")
        by_id = {i: t for t, i in loaded.get_vocab(with_added_tokens=True).items()}
        special = frozenset(int(a["id"]) for a in tok.get("added_tokens") or [] if a.get("special"))
        normalizer = tok.get("normalizer") or {}
        lowercase = (
            bool(normalizer.get("lowercase", True))
            if normalizer.get("type") == "BertNormalizer"
            else (_lowercases(normalizer))
        )
    elif (folder / "vocab.txt").exists():
        try:
            lines = read_regular_file(folder / "vocab.txt", _VOCAB_LIMIT).decode("utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise InvalidModelFile("vocab.txt is not UTF-8 text", param="model_path") from exc
        by_id = dict(enumerate(lines))
        special = frozenset(i for i, t in by_id.items() if t in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"))
        cfg = folder / "tokenizer_config.json"
        lowercase = bool(_json(cfg).get("do_lower_case", True)) if cfg.exists() else True
        kind = "WordPiece"
    else:
        raise InvalidModelFile(
            f"No tokenizer in {folder.name}: it needs tokenizer.json or vocab.txt", param="model_path"
        )
    if not by_id or sorted(by_id) != list(range(len(by_id))):
        raise InvalidModelFile("The vocabulary's token ids are not contiguous from 0", param="model_path")
    return [by_id[i] for i in range(len(by_id))], special, lowercase, kind


def served_tokenizer_json(folder: Path) -> str:
    """The folder's tokenizer.json as transformers 5 (and so sentence-transformers) tokenizes with it.

    transformers 5 does not run every tokenizer.json as written: for some tokenizer classes it keeps only the
    vocabulary, the post-processor and a SentencePiece charsmap, and rebuilds the rest of the pipeline in the
    class (`_REBUILT`). Published XLM-RoBERTa files, for one, pre-tokenize with Metaspace alone, where
    transformers splits on whitespace first: `tokenizers` alone then reads " " as `<s> ▁ </s>` and a trailing
    space as one more `▁`, transformers as `<s> </s>` and nothing. The engine tokenizes with what this returns."""
    tok = _json(folder / "tokenizer.json", _TOKENIZER_LIMIT)
    cfg_path = folder / "tokenizer_config.json"
    tok_cfg = _json(cfg_path) if cfg_path.exists() else {}
    model_type = str(_json(folder / "config.json").get("model_type"))
    named = str(tok_cfg.get("tokenizer_class") or _TOKENIZER_OF.get(model_type, ""))
    rebuild = _REBUILT.get(named.removesuffix("Fast"))
    if rebuild is None:
        return json.dumps(tok, ensure_ascii=False)
    rebuilt = rebuild(tok, tok_cfg)
    _check_loads(rebuilt)
    return json.dumps(rebuilt, ensure_ascii=False)


def _xlm_roberta_tokenizer(tok: dict, tok_cfg: dict) -> dict:
    """transformers 5's XLMRobertaTokenizer around a Unigram vocabulary: the charsmap alone as normalizer, then
    whitespace split and Metaspace (a `▁` before each word unless add_prefix_space is false)."""
    if (tok.get("model") or {}).get("type") != "Unigram":
        return tok
    charsmap = next((n["precompiled_charsmap"] for n in _flat_normalizers(tok.get("normalizer"))
                     if n.get("type") == "Precompiled" and n.get("precompiled_charsmap")), None)  # fmt: skip
    scheme = "always" if tok_cfg.get("add_prefix_space", True) else "never"
    metaspace = {"type": "Metaspace", "replacement": "\u2581", "prepend_scheme": scheme, "split": True}
    return {
        **tok,
        "normalizer": {"type": "Precompiled", "precompiled_charsmap": charsmap} if charsmap else None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [{"type": "WhitespaceSplit"}, metaspace]},
        "decoder": metaspace,
    }


def _flat_normalizers(normalizer: dict | None) -> list[dict]:
    """A tokenizer.json normalizer as the list of its steps (a Sequence's, or itself)."""
    if not isinstance(normalizer, dict):
        return []
    if normalizer.get("type") == "Sequence":
        return [n for n in normalizer.get("normalizers") or [] if isinstance(n, dict)]
    return [normalizer]


# The tokenizer classes whose pipeline transformers 5 rebuilds from the vocabulary (see served_tokenizer_json),
# and the class it loads for a model_type when tokenizer_config.json names none.
_REBUILT = {"XLMRobertaTokenizer": _xlm_roberta_tokenizer}
_TOKENIZER_OF = {"xlm-roberta": "XLMRobertaTokenizer"}


def _lowercases(normalizer: dict) -> bool:
    """Whether a tokenizer.json normalizer (a Lowercase, or a Sequence holding one) lower-cases text."""
    if normalizer.get("type") == "Lowercase":
        return True
    return any(_lowercases(n) for n in normalizer.get("normalizers") or [] if isinstance(n, dict))


def _check_loads(tok: dict) -> Tokenizer:
    """The tokenizer of a tokenizer.json; refused if the `tokenizers` library (which serves it) cannot load it."""
    try:
        return Tokenizer.from_str(json.dumps(tok))
    except Exception as exc:  # tokenizers raises plain Exception for every parse error
        raise InvalidModelFile(f"tokenizer.json does not load: {exc}", param="model_path") from exc


def _modules(folder: Path) -> list:
    """modules.json's list of modules ([] when absent or not a list)."""
    path = folder / "modules.json"
    if not path.exists():
        return []
    try:
        raw = json.loads(read_regular_file(path, _CONFIG_LIMIT))
    except ValueError as exc:
        raise InvalidModelFile(f"Cannot read modules.json: {exc}", param="model_path") from exc
    return [m for m in raw if isinstance(m, dict)] if isinstance(raw, list) else []


def _pooling_config(folder: Path) -> dict | None:
    """The Pooling module's config.json (None for a plain transformers folder)."""
    cfg_path = folder / "1_Pooling" / "config.json"
    if (folder / "modules.json").exists():
        for module in _modules(folder):
            if str(module.get("type", "")).endswith("Pooling") and module.get("path"):
                cfg_path = folder / str(module["path"]) / "config.json"
    return _json(cfg_path) if cfg_path.exists() else None


# sentence-transformers' Pooling modes by the name cortex gives each (cortex.engine.base.POOLINGS): the
# boolean key a config sets it with, and its name in `pooling_mode` (as sentence-transformers 6 writes it).
POOLING_KEYS: dict[str, str] = {
    "mean": "pooling_mode_mean_tokens",
    "cls": "pooling_mode_cls_token",
    "last": "pooling_mode_lasttoken",
    "max": "pooling_mode_max_tokens",
    "mean_sqrt_len": "pooling_mode_mean_sqrt_len_tokens",
    "weightedmean": "pooling_mode_weightedmean_tokens",
}
POOLING_MODES: dict[str, str] = {
    "mean": "mean",
    "cls": "cls",
    "lasttoken": "last",
    "max": "max",
    "mean_sqrt_len_tokens": "mean_sqrt_len",
    "weightedmean": "weightedmean",
}


def _pooling(folder: Path) -> str:
    """The one pooling mode the Pooling config names, as sentence-transformers reads it: `pooling_mode` (a
    name or a list), else the `pooling_mode_*` flags, else mean. Refused, with what is supported, when it
    names several (sentence-transformers would concatenate them) or one cortex does not know."""
    cfg = _pooling_config(folder)
    if cfg is None:
        return "mean"  # sentence-transformers' default for a plain transformers folder
    named = cfg.get("pooling_mode")
    if named is not None:
        modes = [str(m) for m in named] if isinstance(named, list) else [str(named)]
        on = [POOLING_MODES.get(m, m) for m in modes]
    else:
        on = [k for k, v in cfg.items() if k.startswith("pooling_mode_") and v]
        on = [next((n for n, key in POOLING_KEYS.items() if key == k), k) for k in on] or ["mean"]
    supported = ", ".join(f"{name} ({key})" for name, key in POOLING_KEYS.items())
    if len(on) > 1:
        why = f"it concatenates several pooling modes ({', '.join(on)})"
    elif on[0] not in POOLING_KEYS:
        why = f"its pooling `{on[0]}` is not one cortex computes"
    else:
        return on[0]
    raise InvalidModelFile(f"The Pooling config is not supported: {why}. Supported: one of {supported}.",
                           param="model_path")  # fmt: skip


def _include_prompt(folder: Path) -> bool:
    """The Pooling config's `include_prompt` (true when absent): false leaves a prompt's tokens out of the pooling."""
    cfg = _pooling_config(folder) or {}
    value = cfg.get("include_prompt", True)
    if not isinstance(value, bool):
        raise InvalidModelFile("The Pooling config's include_prompt must be true or false", param="model_path")
    return value


# The sentence-transformers modules cortex computes: the encoder, its pooling, and L2 normalisation. Any other
# (Dense, WordWeights, LayerNorm, CNN...) would change the vectors, so a folder that has one is refused.
_MODULES = ("Transformer", "Pooling", "Normalize")


def _check_modules(folder: Path) -> None:
    for module in _modules(folder):
        kind = str(module.get("type", "")).rsplit(".", 1)[-1]
        if kind not in _MODULES:
            raise InvalidModelFile(
                f"modules.json has a {kind or 'nameless'} module, which cortex does not compute; it serves "
                f"models made of {', '.join(_MODULES)} modules only.",
                param="model_path",
            )


def _normalize(folder: Path) -> bool:
    if not (folder / "modules.json").exists():
        return True  # a plain transformers folder: serve unit vectors, as OpenAI does
    return any(str(m.get("type", "")).endswith("Normalize") for m in _modules(folder))


def _st_config(folder: Path) -> dict:
    """config_sentence_transformers.json ({} when absent): sentence-transformers' own record of the model."""
    path = folder / "config_sentence_transformers.json"
    return _json(path) if path.exists() else {}


def _task(folder: Path, config: dict, architecture: str) -> str:
    """rerank for a sentence-transformers CrossEncoder: one saved as such (config_sentence_transformers.json
    says `model_type: CrossEncoder`, as sentence-transformers 5.7+ writes it beside its modules.json), or a
    plain transformers sequence classifier without sentence-transformers modules; embed otherwise. A
    classifier with several labels is refused: a rerank score is one logit."""
    classes = [str(c) for c in config.get("architectures") or []]
    saved_as_cross_encoder = _st_config(folder).get("model_type") == "CrossEncoder"
    classifier = any(c.endswith("ForSequenceClassification") for c in classes)
    if not saved_as_cross_encoder and (not classifier or (folder / "modules.json").exists()):
        return "embed"
    if architecture != "bert":
        raise InvalidModelFile(
            f"This is a {architecture} cross-encoder; cortex reranks with BERT cross-encoders only.",
            param="model_path",
        )
    labels = config.get("id2label")
    n_labels = len(labels) if isinstance(labels, dict) else int(config.get("num_labels", 2))  # transformers' default
    if n_labels != 1:
        raise InvalidModelFile(
            f"This sequence classifier has {n_labels} labels; cortex reranks with cross-encoders that have one "
            "(a relevance logit per query-document pair).",
            param="model_path",
        )
    if int(config.get("type_vocab_size", 2)) < 2:
        raise InvalidModelFile("A cross-encoder needs two token types (query, document)", param="model_path")
    return "rerank"


# sentence-transformers' CrossEncoder activations (config.json names them by import path) that cortex applies.
_ACTIVATIONS = {
    "torch.nn.modules.activation.Sigmoid": "sigmoid",
    "torch.nn.modules.linear.Identity": "identity",
}


def _activation(folder: Path, config: dict) -> str:
    """The score sentence-transformers gives a cross-encoder's logit: the activation it recorded (in
    config_sentence_transformers.json from 5.7, else config.json's `sentence_transformers.activation_fn`, or
    before v4 `sbert_ce_default_activation_function`), else sigmoid, its default for one label."""
    st = config.get("sentence_transformers")
    named = _st_config(folder).get("activation_fn") or (
        st.get("activation_fn") if isinstance(st, dict) else config.get("sbert_ce_default_activation_function")
    )
    if named is None:
        return "sigmoid"
    if named not in _ACTIVATIONS:
        raise InvalidModelFile(
            f"The cross-encoder's activation `{named}` is not supported: use one of {', '.join(_ACTIVATIONS)}.",
            param="model_path",
        )
    return _ACTIVATIONS[named]


def _cross_encoder_max_length(folder: Path, max_pos: int) -> int:
    """sentence-transformers' CrossEncoder max_length: the tokenizer's model_max_length, within the positions."""
    cfg = folder / "tokenizer_config.json"
    value = _json(cfg).get("model_max_length") if cfg.exists() else None
    return min(value, max_pos) if isinstance(value, int) and value > 0 else max_pos


def _prompts(folder: Path) -> tuple[dict[str, str], str | None]:
    """(prompts by name, the default prompt's name) from config_sentence_transformers.json, as
    sentence-transformers reads them: `prompts` maps names to the text put before each input."""
    cfg = _st_config(folder)
    prompts = cfg.get("prompts") or {}
    if not isinstance(prompts, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in prompts.items()):
        raise InvalidModelFile(
            "config_sentence_transformers.json: `prompts` must map prompt names to strings", param="model_path"
        )
    default = cfg.get("default_prompt_name")
    if default is not None and (not isinstance(default, str) or default not in prompts):
        known = ", ".join(prompts) or "none"
        raise InvalidModelFile(
            f"config_sentence_transformers.json: default_prompt_name {default!r} is not one of its prompts ({known})",
            param="model_path",
        )
    return prompts, default


def _embedding_rows(weights: Path) -> int | None:
    """Rows of the token embedding matrix, read from the safetensors header (no weights read)."""
    try:
        with safe_open(weights, framework="numpy") as f:
            name = next((k for k in f.keys() if k.endswith(_EMBEDDING_TABLES)), None)  # noqa: SIM118
            return None if name is None else int(f.get_slice(name).get_shape()[0])
    except (SafetensorError, OSError, ValueError) as exc:
        why = f"Cannot read {weights.name} (truncated or corrupt?): {exc}"
        raise InvalidModelFile(why, param="model_path") from exc


def read_st_folder(folder: Path) -> STModel:
    """Describe `folder`, or raise InvalidModelFile saying what is missing or unsupported."""
    folder = folder.resolve()
    config = _json(folder / "config.json")
    architecture = _architecture(config)
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size"):
        if not isinstance(config.get(key), int) or config[key] <= 0:
            raise InvalidModelFile(f"config.json lacks a positive integer `{key}`", param="model_path")
    if config["hidden_size"] % config["num_attention_heads"]:
        raise InvalidModelFile(
            f"config.json: hidden_size {config['hidden_size']} is not a multiple of num_attention_heads "
            f"{config['num_attention_heads']}",
            param="model_path",
        )
    _check_modules(folder)
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise InvalidModelFile("Only absolute position embeddings are supported", param="model_path")
    if config.get("hidden_act", "gelu") not in ("gelu", "gelu_python", "gelu_new", "gelu_pytorch_tanh", "gelu_fast"):
        raise InvalidModelFile(f"Activation `{config.get('hidden_act')}` is not supported", param="model_path")
    weights = folder / "model.safetensors"
    if not weights.exists():
        raise InvalidModelFile(f"No model.safetensors in {folder.name}", param="model_path")
    if not is_regular_file(weights):
        raise InvalidModelFile("model.safetensors is not a regular file", param="model_path")
    vocab, special, lowercase, tokenizer_model = _vocab(folder)
    rows = _embedding_rows(weights)
    if rows is not None and len(vocab) > rows:
        raise InvalidModelFile(
            f"The tokenizer has {len(vocab)} tokens but the model embeds only {rows}: token ids beyond "
            f"{rows - 1} would have no vector. This folder's tokenizer does not belong to its weights.",
            param="model_path",
        )
    max_pos = int(config.get("max_position_embeddings", 512))
    if architecture in _POSITIONS_AFTER_PADDING:
        max_pos -= padding_index(config) + 1
    task = _task(folder, config, architecture)
    max_seq = _cross_encoder_max_length(folder, max_pos) if task == "rerank" else max_pos
    st_cfg = folder / "sentence_bert_config.json"
    if st_cfg.exists():
        value = _json(st_cfg).get("max_seq_length")
        if isinstance(value, int) and value > 0:
            max_seq = min(value, max_pos)
    if max_seq < 2:
        raise InvalidModelFile(
            f"config.json leaves {max_seq} positions for tokens (max_position_embeddings "
            f"{config.get('max_position_embeddings')}): too few for any text",
            param="model_path",
        )
    prompts, default_prompt = _prompts(folder)
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
        task=task,
        activation=_activation(folder, config) if task == "rerank" else None,
        prompts=prompts,
        default_prompt_name=default_prompt,
        include_prompt=_include_prompt(folder),
        architecture=architecture,
        tokenizer_model=tokenizer_model,
        lowercase=lowercase,
    )
