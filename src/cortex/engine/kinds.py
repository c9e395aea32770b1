"""Engine kinds as data: per kind, what it imports, which options it takes, how an import writes and
checks its files, and how a stored model is opened and batched.

The import pipeline, the registry, the API's request validation and the CLI's choices all read this
table, so adding an engine kind touches this file, the engine, and its converter: nothing else. Heavy
modules (llama.cpp, ONNX Runtime, the converters) are imported inside the functions, so that the CLI,
which reads the table for its choices, does not load them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cortex.engine.base import POOLINGS, Engine
from cortex.errors import InvalidModelFile, InvalidRequest, ModelUnavailable

if TYPE_CHECKING:
    from cortex.config import Settings
    from cortex.convert.st_folder import STModel
    from cortex.store.store import ModelRecord

Progress = Callable[[str, int, int], None]  # (stage, done, total)


@dataclass(frozen=True)
class Source:
    """What an import starts from, read and checked by the pipeline: a GGUF file, a sentence-transformers
    folder, or a function that writes a GGUF (a built-in model)."""

    file: Path | None = None
    folder: STModel | None = None
    writer: Callable[[Path], None] | None = None
    move: bool = False  # the file may be moved into the store (a finished download), not copied
    label: str = ""  # how errors name it: the user's path, or the pulled repository and file


@dataclass(frozen=True)
class ImportOptions:
    """What a client may choose at import; None means the model's own or the kind's default.
    `engine_options` holds the options that only some kinds take (see `EngineKind.options`)."""

    name: str | None = None
    pooling: str | None = None
    ctx_len: int | None = None
    engine_options: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Option:
    """An import option that only some kinds take."""

    values: tuple[str, ...]
    help: str
    folders_only: bool = False  # it says how to convert a folder; a GGUF file is taken as it is


@dataclass(frozen=True, kw_only=True)
class EngineKind:
    name: str
    summary: str
    files: bool  # imports GGUF files
    folders: bool  # imports sentence-transformers folders
    tasks: tuple[str, ...] = ("embed",)  # what its models may do (ModelRecord.task): embed, rerank
    poolings: tuple[str, ...] = POOLINGS  # the pooling modes it computes (cortex.engine.base.POOLINGS)
    # why it cannot convert a folder it otherwise takes (None: it can), e.g. an architecture it lacks
    refuses: Callable[[STModel], str | None] = field(default=lambda folder: None, repr=False)
    options: dict[str, Option] = field(default_factory=dict)  # ImportOptions fields this kind takes
    settings: tuple[str, ...] = ()  # the Settings fields that shape how it batches
    # (source, options, staging folder, progress, default context) -> model.yml fields of the written files
    write: Callable[[Source, ImportOptions, Path, Progress | None, int], dict[str, Any]] = field(repr=False)
    space: Callable[[Source, ImportOptions], int] = field(repr=False)  # peak bytes an import writes
    open: Callable[[Path, ModelRecord, Settings], Engine] = field(repr=False)  # (model folder, record, settings)


# --- llama-cpp: GGUF files, and sentence-transformers folders converted to a `bert` GGUF -------------

_GGUF_FILE = "model.gguf"


def _write_gguf(source: Source, opts: ImportOptions, staging: Path, progress: Progress | None, ctx: int) -> dict:
    from cortex.convert.bert_gguf import write_bert_gguf
    from cortex.engine.probe import probe_gguf
    from cortex.store.gguf_info import inspect_gguf

    weights = staging / _GGUF_FILE
    folder = source.folder
    outtype = opts.engine_options.get("outtype", "f16")
    if folder is not None:
        write_bert_gguf(folder, weights, outtype, progress=_stage(progress, "convert"))
    elif source.writer is not None:
        source.writer(weights)
    elif source.move:
        source.file.replace(weights)  # type: ignore[union-attr]
    else:
        _copy_file(source.file, weights, _stage(progress, "copy"))  # type: ignore[arg-type]
    info = inspect_gguf(weights)  # the written file, not the original: the file checked is the file served
    pooling = opts.pooling or info.pooling or "mean"
    ctx_len = min(opts.ctx_len or ctx, info.n_ctx_train)
    probe_gguf(weights, pooling, ctx_len, label=source.label)
    return {
        "name": opts.name or (folder.name if folder else None) or info.name,
        "files": [_GGUF_FILE],
        "architecture": info.architecture,
        "pooling": pooling,
        "ctx_len": ctx_len,
        "n_ctx_train": info.n_ctx_train,
        "n_embd": info.n_embd,
        "normalize": folder.normalize if folder else True,
        **(_prompt_fields(folder) if folder else {}),
        "source_format": "sentence-transformers" if folder else "gguf",
        "outtype": outtype if folder else None,
    }


def _prompt_fields(folder: STModel) -> dict[str, Any]:
    """The model.yml fields of a folder's prompts (config_sentence_transformers.json), whichever kind serves it."""
    return {
        "prompts": dict(folder.prompts),
        "default_prompt_name": folder.default_prompt_name,
        "include_prompt": folder.include_prompt,
    }


def _gguf_space(source: Source, opts: ImportOptions) -> int:
    if source.folder is not None:
        return source.folder.weights.stat().st_size  # from f32 safetensors: f32 at most
    if source.file is not None and not source.move:
        return source.file.stat().st_size
    return 0  # moved within the store's disk, or written by a function of unknown size


def _gguf_refuses(folder: STModel) -> str | None:
    """What llama.cpp's BERT path cannot serve exactly: other architectures, vocabularies its WordPiece
    tokenizer would split differently (it lower-cases all text), and prompts left out of the pooling."""
    if folder.architecture != "bert":
        return f"its converter writes BERT models only, and this is {folder.architecture}"
    reasons = []
    if folder.tokenizer_model != "WordPiece":
        reasons.append(f"its BERT tokenizer is WordPiece, and this folder's is {folder.tokenizer_model}")
    if not folder.lowercase:
        reasons.append("its BERT tokenizer lower-cases all text, and this vocabulary is cased")
    if folder.prompts and not folder.include_prompt:
        reasons.append("it pools every token, and this model leaves its prompt out (include_prompt: false)")
    return "; and ".join(reasons) or None


def _open_llama(folder: Path, record: ModelRecord, settings: Settings) -> Engine:
    from cortex.engine.llama import LlamaCppEngine
    from cortex.hardware import llama_cpp_report
    from cortex.store.gguf_info import inspect_gguf

    weights = folder / record.files[0]
    try:
        inspect_gguf(weights)  # llama.cpp aborts on some malformed files: check the header walk first
    except InvalidModelFile as exc:
        raise ModelUnavailable(record.id, "its weights file is no longer a valid GGUF") from exc
    llama = llama_cpp_report()
    if llama.error is not None:
        why = f"llama.cpp cannot run on this machine ({llama.error}); see `cortex hardware`"
        raise ModelUnavailable(record.id, why)
    return LlamaCppEngine(
        weights,
        pooling=record.pooling,
        ctx_len=record.ctx_len,
        n_threads=settings.n_threads,
        max_batch_tokens=settings.llama_max_batch_tokens,
        max_batch_seqs=settings.llama_max_batch_seqs,
    )


# --- onnxruntime: sentence-transformers folders converted to an ONNX graph ---------------------------

# Staging space as a multiple of the safetensors: the build holds the full graph and its external-data
# copy at once (2x); int8 adds the fp32 copy it is measured against and the quantised graph.
_ONNX_SPACE = 2.2
_ONNX_INT8_SPACE = 3.5


def _write_onnx(source: Source, opts: ImportOptions, staging: Path, progress: Progress | None, ctx: int) -> dict:
    from cortex.convert.onnx_model import FILES, write_onnx_model

    folder = source.folder
    assert folder is not None  # the pipeline sends only folders to a kind without `files`
    precision = _precision(opts, folder)
    extra = write_onnx_model(folder, staging, "int8" if precision == "int8" else None, _stage(progress, "convert"),
                             compare=_accuracy)  # fmt: skip
    if precision == "int8":  # also under the older names, which older clients and cortex versions read
        extra["int8_min_cosine"] = extra.get("precision_min_cosine")
    elif precision == "bf16":  # the same fp32 graph, served by OpenVINO at bf16: measured here
        extra |= _accuracy(staging, staging, folder.max_seq_length, "bf16")
    ctx_len = min(opts.ctx_len or folder.max_seq_length, folder.max_seq_length)
    rerank = folder.task == "rerank"  # a cross-encoder: one logit per pair, from the pooler on [CLS]
    return {
        "name": opts.name or folder.name,
        "files": list(FILES),
        "architecture": folder.architecture,
        "task": folder.task,
        "activation": folder.activation,
        "pooling": "cls" if rerank else folder.pooling,
        "ctx_len": ctx_len,
        "n_ctx_train": folder.max_seq_length,
        "n_embd": 1 if rerank else folder.n_embd,
        "normalize": False if rerank else folder.normalize,
        **_prompt_fields(folder),
        "source_format": "sentence-transformers",
        "precision": precision,
        **extra,
    }


def _precision(opts: ImportOptions, folder: STModel | None) -> str:
    """The precision asked for: `precision`, or `quantize int8` (its older spelling, the same thing); fp32
    when neither. 400 when the two disagree, for a cross-encoder at other than fp32 (its accuracy is measured
    on embeddings' cosines, and a reranker's order is what it is for), and for bf16 on a CPU without bf16."""
    from cortex.hardware import bf16_available

    given, quantize = opts.engine_options.get("precision"), opts.engine_options.get("quantize")
    if quantize is not None and given not in (None, quantize):
        raise InvalidRequest(f"quantize {quantize} is the older spelling of precision {quantize}, and precision "
                             f"{given} was asked too; give one.", param="precision")  # fmt: skip
    precision = given or quantize or "fp32"
    param = "precision" if given is not None else "quantize"
    if precision != "fp32" and folder is not None and folder.task == "rerank":
        raise InvalidRequest(f"precision {precision} is for embedding models; a cross-encoder is served in fp32.",
                             param=param)  # fmt: skip
    if precision == "bf16" and not bf16_available():
        raise InvalidRequest(
            "precision bf16 needs a CPU with bf16 units (AVX512-BF16 or AMX-BF16), and this one has neither "
            "(see `cortex hardware`); import with --precision fp32 (exact) or int8 (fastest, lossier).",
            param="precision",
        )
    return precision


def _accuracy(reference: Path, candidate: Path, ctx_len: int, precision: str = "int8") -> dict:
    """The least cosine of `candidate`'s vectors (an int8 graph on ONNX Runtime, or the fp32 graph on
    OpenVINO at bf16) against the fp32 graph's on the probe texts, with the CPU features it was measured on
    (kernels differ with VNNI, AVX512-BF16, AMX)."""
    import numpy as np

    from cortex.convert.onnx_model import GRAPH_FILE, PROBE_TEXTS, TOKENIZER_FILE
    from cortex.engine.base import l2_normalize
    from cortex.engine.onnx import OnnxEngine
    from cortex.engine.openvino import OpenVinoEngine
    from cortex.hardware import kernel_flags

    def vectors(engine: Engine) -> np.ndarray:
        try:
            return l2_normalize(np.concatenate([engine.embed([engine.tokenize(t)]) for t in PROBE_TEXTS]))
        finally:
            engine.close()

    a = vectors(OnnxEngine(reference / GRAPH_FILE, reference / TOKENIZER_FILE, ctx_len=ctx_len, n_threads=1))
    graph, tokenizer = candidate / GRAPH_FILE, candidate / TOKENIZER_FILE
    if precision == "bf16":
        b = vectors(OpenVinoEngine(graph, tokenizer, ctx_len=ctx_len, n_threads=1, precision="bf16"))
    else:
        b = vectors(OnnxEngine(graph, tokenizer, ctx_len=ctx_len, n_threads=1))
    return {"precision_min_cosine": round(float(np.min(np.sum(a * b, axis=1))), 6), "cpu_features": kernel_flags()}


def _onnx_space(source: Source, opts: ImportOptions) -> int:
    size = source.folder.weights.stat().st_size if source.folder is not None else 0
    int8 = "int8" in (opts.engine_options.get("precision"), opts.engine_options.get("quantize"))
    return int(size * (_ONNX_INT8_SPACE if int8 else _ONNX_SPACE))


def _onnx_refuses(folder: STModel) -> str | None:
    """The ONNX engine tokenizes with the `tokenizers` library, which reads tokenizer.json only."""
    if not (folder.folder / "tokenizer.json").exists():
        return "it tokenizes with the folder's tokenizer.json, and this folder has only vocab.txt"
    return None


def _open_onnx(folder: Path, record: ModelRecord, settings: Settings) -> Engine:
    from cortex.engine.onnx import OnnxEngine

    graph, _, tokenizer = record.files  # as convert.onnx_model.FILES orders them
    if record.precision == "bf16":
        return _open_bf16(folder / graph, folder / tokenizer, record, settings)
    return OnnxEngine(
        folder / graph,
        folder / tokenizer,
        ctx_len=record.ctx_len,
        n_threads=settings.n_threads,
        precision=record.precision or "fp32",
    )


def _open_bf16(graph: Path, tokenizer: Path, record: ModelRecord, settings: Settings) -> Engine:
    """A model imported at bf16, on OpenVINO; ModelUnavailable on a CPU without bf16 units (a data folder
    copied from another machine): neither a crash nor another precision than the one recorded."""
    from cortex.engine.graph_file import without_final_normalization
    from cortex.engine.openvino import OpenVinoEngine
    from cortex.hardware import bf16_available

    if not bf16_available():
        why = ("it was imported at precision bf16, and this CPU has no bf16 units (AVX512-BF16 or AMX-BF16; see "
               "`cortex hardware`); import its folder again with --precision fp32 or int8")  # fmt: skip
        raise ModelUnavailable(record.id, why)
    # bf16 is refused at import for these two; a model.yml edited to say bf16 is not served otherwise than asked
    if record.task != "embed":
        raise ModelUnavailable(record.id, "its model.yml says bf16, and a cross-encoder is served in fp32 only")
    if without_final_normalization(graph) is not None:
        why = "its graph, written by an older cortex, normalises inside; import its folder again to serve it at bf16"
        raise ModelUnavailable(record.id, why)
    return OpenVinoEngine(graph, tokenizer, ctx_len=record.ctx_len, n_threads=settings.n_threads, precision="bf16")


KINDS: dict[str, EngineKind] = {
    kind.name: kind
    for kind in (
        EngineKind(
            name="onnxruntime",
            summary="ONNX Runtime: sentence-transformers folders converted to an ONNX graph (default for folders); "
            "at precision bf16 the graph runs on OpenVINO",
            files=False,
            folders=True,
            tasks=("embed", "rerank"),
            refuses=_onnx_refuses,
            options={
                "precision": Option(
                    ("fp32", "bf16", "int8"),
                    "fp32 (default: exact), bf16 (OpenVINO on the CPU's bf16 units, AVX512-BF16 or AMX; refused on a "
                    "CPU without them) or int8 (an int8 graph); bf16's and int8's least cosine to fp32 is recorded",
                ),
                "quantize": Option(("int8",), "the older spelling of --precision int8: the same thing"),
            },
            write=_write_onnx,
            space=_onnx_space,
            open=_open_onnx,
        ),
        EngineKind(
            name="llama-cpp",
            summary="llama.cpp: GGUF files, and sentence-transformers folders converted to GGUF",
            files=True,
            folders=True,
            options={  # the weight types convert.bert_gguf writes
                "outtype": Option(("f32", "f16", "q8_0"), "weight type of a converted folder (default f16)", True)
            },
            poolings=("mean", "cls", "last"),  # llama.cpp's pooling types that sentence-transformers has
            settings=("llama_max_batch_tokens", "llama_max_batch_seqs"),
            refuses=_gguf_refuses,
            write=_write_gguf,
            space=_gguf_space,
            open=_open_llama,
        ),
    )
}
ENGINE_NAMES: tuple[str, ...] = tuple(KINDS)
OPTION_NAMES: tuple[str, ...] = tuple(dict.fromkeys(name for k in KINDS.values() for name in k.options))


def option_values(option: str) -> tuple[str, ...]:
    """Every value that some kind accepts for `option` (for the API's schema and the CLI's choices)."""
    return tuple(dict.fromkeys(v for k in KINDS.values() if option in k.options for v in k.options[option].values))


def option_owners(option: str) -> str:
    """The kinds that take `option`, for help texts: `llama-cpp`."""
    return ", ".join(k.name for k in KINDS.values() if option in k.options)


def option_help(option: str) -> str:
    """`llama-cpp: weight type of ...`: who takes `option`, and what it does."""
    first = next(k.options[option] for k in KINDS.values() if option in k.options)
    return f"{option_owners(option)}: {first.help}"


def kind_of(name: str, model_id: str) -> EngineKind:
    """The kind a stored model names; ModelUnavailable for one this cortex does not know."""
    kind = KINDS.get(name)
    if kind is None:
        raise ModelUnavailable(model_id, f"its engine `{name}` is not one this cortex has ({', '.join(KINDS)})")
    return kind


def choose(engine: str | None, source: Source, opts: ImportOptions) -> EngineKind:
    """The kind that imports `source` with `opts`: the one named, or the first (in table order) that takes
    this source and every option given. 400 with what would work when none does."""
    if opts.pooling is not None and opts.pooling not in POOLINGS:
        raise InvalidRequest(f"Unknown pooling {opts.pooling!r}; use one of {', '.join(POOLINGS)}.", param="pooling")
    if opts.ctx_len is not None and opts.ctx_len <= 0:
        raise InvalidRequest("ctx_len must be a positive number of tokens.", param="ctx_len")
    given = list(opts.engine_options)
    unknown = [name for name in given if name not in OPTION_NAMES]
    if unknown:
        raise InvalidRequest(f"Unknown option {unknown[0]!r}; engine options: {', '.join(OPTION_NAMES)}.",
                             param=unknown[0])  # fmt: skip
    if engine is None:  # the first kind that takes the source and the options, and can serve it
        takes = [k for k in KINDS.values() if _takes(k, source)]
        fits = [k for k in takes if all(o in k.options for o in given)]
        serves = [k for k in fits or takes if _refusal(k, source, opts) is None]
        kind = (serves or fits or takes)[0]  # when none can, the refusal below says why
    elif engine in KINDS:
        kind = KINDS[engine]
    else:
        raise InvalidRequest(f"Unknown engine {engine!r}; use one of {', '.join(KINDS)}.", param="engine")
    what = "sentence-transformers folders" if source.folder is not None else "GGUF files"
    if not _takes(kind, source):
        others = ", ".join(k.name for k in KINDS.values() if _takes(k, source))
        raise InvalidRequest(f"The {kind.name} engine does not import {what}; {others} does.", param="engine")
    why = _refusal(kind, source, opts)
    if why is not None:
        others = [k.name for k in KINDS.values() if _takes(k, source) and _refusal(k, source, opts) is None]
        instead = f"; import it with the {' or '.join(others)} engine" if others else ""
        param = "pooling" if opts.pooling is not None and opts.pooling not in kind.poolings else "engine"
        this = "sentence-transformers folder" if source.folder is not None else "GGUF file"
        raise InvalidRequest(f"The {kind.name} engine cannot serve this {this}: {why}{instead}.", param=param)
    for name in given:
        option, value = kind.options.get(name), opts.engine_options[name]
        if source.folder is None and (option is None or option.folders_only):  # one answer for every such option
            raise InvalidRequest(
                f"A GGUF file is served as it is: '{name}' applies only when a sentence-transformers folder is "
                f"converted ({option_owners(name)} engine). Leave it out, or import the folder instead.",
                param=name,
            )
        if option is None:
            raise InvalidRequest(f"'{name}' is an option of the {option_owners(name)} engine, not of {kind.name}.",
                                 param=name)  # fmt: skip
        if value not in option.values:
            raise InvalidRequest(f"Unknown {name} {value!r}; use one of {', '.join(option.values)}.", param=name)
    return kind


def _refusal(kind: EngineKind, source: Source, opts: ImportOptions) -> str | None:
    """Why `kind` cannot serve `source` with `opts` (None: it can): a pooling it does not compute (the one
    asked for, else the folder's), a task it lacks, or what its `refuses` says of the folder."""
    folder = source.folder
    reasons = []
    pooling = opts.pooling or (folder.pooling if folder is not None and folder.task == "embed" else None)
    if pooling is not None and pooling not in kind.poolings:
        reasons.append(f"its pooling is {pooling}, and this engine pools by {', '.join(kind.poolings)}")
    if folder is not None and folder.task not in kind.tasks:
        reasons.append(
            f"it is a cross-encoder (a {folder.task} model), and this engine serves {', '.join(kind.tasks)} models"
        )
    elif folder is not None and (why := kind.refuses(folder)) is not None:
        reasons.append(why)
    return "; and ".join(reasons) or None


def _takes(kind: EngineKind, source: Source) -> bool:
    return kind.folders if source.folder is not None else kind.files


def _stage(progress: Progress | None, stage: str) -> Callable[[int, int], None] | None:
    return None if progress is None else lambda done, total: progress(stage, done, total)


def _copy_file(src: Path, dst: Path, progress: Callable[[int, int], None] | None = None) -> None:
    total = src.stat().st_size
    done = 0
    try:
        with open(src, "rb") as fin, open(dst, "wb") as fout:
            while chunk := fin.read(8 << 20):
                fout.write(chunk)
                done += len(chunk)
                if progress:
                    progress(done, total)
            fout.flush()
            os.fsync(fout.fileno())
    except PermissionError as exc:
        raise InvalidModelFile(f"Cannot read model file {str(src)!r}: permission denied.", param="model_path") from exc
