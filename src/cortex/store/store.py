"""The model store: `models/<folder>/model.yml` plus the weights, one folder per model id.

A model enters the store whole or not at all: it is assembled in a staging folder (weights
copied, checked, model.yml written and fsynced), then the folder is renamed into place. Deletion
renames the folder away before removing it. Leftovers of a crash are swept on open, which is safe only
for the one server that holds the data folder's lock (`cortex.data_folder.lock_folder`): another
server's sweep would delete a live import's staging folder.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import shutil
import stat
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, Field, ValidationError

from cortex.convert.bert_gguf import write_bert_gguf
from cortex.convert.onnx_model import FILES as ONNX_FILES
from cortex.convert.onnx_model import write_onnx_model
from cortex.convert.st_folder import STModel, read_st_folder
from cortex.engine.probe import probe_gguf
from cortex.errors import (
    Conflict,
    InsufficientStorage,
    InvalidModelFile,
    InvalidRequest,
    ModelNotFound,
    ModelUnavailable,
    ReadOnlyDataFolder,
)
from cortex.files import read_regular_file
from cortex.store.atomic import fsync_dir, write_atomic
from cortex.store.gguf_info import inspect_gguf
from cortex.store.ids import folder_name, id_of_folder, split_tag, validate_model_id

log = logging.getLogger(__name__)

Progress = Callable[[str, int, int], None]  # (stage, done, total)

Pooling = Literal["mean", "cls", "last"]
POOLINGS: tuple[str, ...] = ("mean", "cls", "last")
ENGINES: tuple[str, ...] = ("onnxruntime", "llama-cpp")
MODEL_FILE = "model.yml"
WEIGHTS_FILE = "model.gguf"
_STAGING = ".staging-"
_TRASH = ".trash-"
_RECORD_LIMIT = 64 << 10  # a model.yml is under 1 KiB; a larger one is not ours
# Staging space an import needs, as a multiple of its source: the ONNX build holds the full graph and the
# external-data copy at once (2x); int8 adds the fp32 copy it measures against and the quantised graph.
_ONNX_SPACE = 2.2
_ONNX_INT8_SPACE = 3.5


class _Unusable(ValueError):
    """A model folder whose model.yml cannot be used: unreadable, invalid, or naming another id."""


class ModelRecord(BaseModel):
    """The contents of a model's model.yml."""

    id: str
    name: str
    engine: Literal["llama-cpp", "onnxruntime"] = "llama-cpp"
    files: list[str]
    architecture: str
    pooling: Pooling
    ctx_len: int = Field(gt=0)
    n_ctx_train: int = Field(gt=0)
    n_embd: int = Field(gt=0)
    normalize: bool = Field(True, description="L2-normalise vectors (sentence-transformers' Normalize module)")
    source_format: Literal["gguf", "sentence-transformers"] = "gguf"
    outtype: str | None = Field(None, description="Weight type chosen when converting a folder to GGUF")
    quantize: str | None = Field(None, description="onnxruntime: int8 graph, if chosen at import")
    int8_min_cosine: float | None = Field(None, description="int8 vs fp32 graph on the probe set, at import")
    cpu_features: list[str] | None = Field(None, description="The CPU flags the int8 figure was measured with")
    size: int = Field(ge=0, description="Bytes of weights on disk")
    created: int = Field(description="Unix time of import")


class Reservation:
    """An id held by one import or pull until `release` (or the end of a `with` block)."""

    def __init__(self, store: ModelStore, model_id: str) -> None:
        self._store = store
        self.model_id = model_id

    def release(self) -> None:
        self._store._release(self.model_id)

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class ModelStore:
    """Models on disk under `root`; safe against crashes and hostile ids.

    A `read_only` store (a data folder this process cannot write) is served as it is: nothing is
    created or swept, and imports and deletes raise ReadOnlyDataFolder.
    """

    def __init__(
        self, root: Path, *, default_ctx_len: int = 2048, min_free_bytes: int = 0, read_only: bool = False
    ) -> None:
        self.root = root
        self.default_ctx_len = default_ctx_len
        self.min_free_bytes = min_free_bytes
        self.read_only = read_only
        self._reserved: set[str] = set()  # ids being imported or pulled right now
        self._reserve_lock = threading.Lock()
        self._tags: tuple[tuple[int, int], dict[str, list[str]]] | None = None  # (root's stamp, name -> ids)
        if not read_only:
            root.mkdir(parents=True, exist_ok=True)
            self._sweep()

    def require_writable(self) -> None:
        """Raise ReadOnlyDataFolder if this store cannot change."""
        if self.read_only:
            raise ReadOnlyDataFolder()

    def _sweep(self) -> None:
        """Remove staging and trash folders left by an interrupted import or delete."""
        for entry in self.root.iterdir():
            if entry.name.startswith((_STAGING, _TRASH)):
                shutil.rmtree(entry, ignore_errors=True)

    def folder(self, model_id: str) -> Path:
        """The folder of `model_id`: always a direct child of the store."""
        return self.root / folder_name(model_id)

    def weights_path(self, record: ModelRecord) -> Path:
        return self.folder(record.id) / record.files[0]

    def verified_weights(self, record: ModelRecord) -> Path:
        """The weights path, after checking the file is still the one imported (present, same size,
        a sound GGUF). Errors name the model, never a server path."""
        path = self.weights_path(record)
        try:
            size = sum((self.folder(record.id) / f).stat().st_size for f in record.files)
        except OSError as exc:
            raise ModelUnavailable(record.id, "its weights file is missing") from exc
        if size != record.size:
            raise ModelUnavailable(record.id, f"its weights file changed size ({size} bytes, imported {record.size})")
        if record.engine == "llama-cpp":
            try:
                inspect_gguf(path)
            except InvalidModelFile as exc:
                raise ModelUnavailable(record.id, "its weights file is no longer a valid GGUF") from exc
        return path

    def list(self) -> list[ModelRecord]:
        """Every intact model, sorted by id. A folder whose model.yml is broken, or names another id
        than its folder does (a folder copied by hand), is logged and skipped."""
        records = []
        for entry in sorted(self.root.iterdir()) if self.root.is_dir() else ():  # read-only: models/ may be absent
            if entry.name.startswith(".") or not (entry / MODEL_FILE).is_file():
                continue
            try:
                records.append(self._read(entry))
            except _Unusable as exc:
                log.warning("skipping folder %s: %s", entry.name, exc)
        return sorted(records, key=lambda r: r.id)

    def _read(self, folder: Path) -> ModelRecord:
        """The record in `folder`, which must be the folder of the id it names."""
        try:
            raw = yaml.safe_load(read_regular_file(folder / MODEL_FILE, _RECORD_LIMIT, param=None))
            record = ModelRecord.model_validate(raw)
        except (InvalidModelFile, yaml.YAMLError, ValidationError, UnicodeDecodeError) as exc:
            raise _Unusable(f"unreadable {MODEL_FILE} ({exc})") from exc
        if id_of_folder(folder.name) != record.id:
            raise _Unusable(f"its {MODEL_FILE} names the id `{record.id}`, which is not this folder's")
        return record

    def resolve(self, model_id: str) -> str:
        """The stored id that `model_id` names: itself if stored (an exact id always wins), or for a bare
        NAME the only NAME:TAG stored. Every route and the registry resolve through here."""
        validate_model_id(model_id)
        if (self.folder(model_id) / MODEL_FILE).is_file():
            return model_id
        name, tag = split_tag(model_id)
        if tag is None:
            matches = self._tagged().get(name, [])
            if len(matches) == 1:
                return matches[0]
            if matches:
                raise ModelNotFound(model_id, f" It could mean {', '.join(matches)}: name one with its tag.")
        raise ModelNotFound(model_id)

    def _tagged(self) -> dict[str, list[str]]:
        """NAME -> the stored NAME:TAG ids. Rebuilt when the store's folder changes (an import, a delete,
        a folder moved in by hand all rename an entry of it, which moves its mtime), so a bare name costs
        one stat per request, not a read of every model.yml."""
        st = self.root.stat()
        stamp = (st.st_ino, st.st_mtime_ns)
        if self._tags is None or self._tags[0] != stamp:
            tags: dict[str, list[str]] = {}
            for record in self.list():
                name, tag = split_tag(record.id)
                if tag is not None:
                    tags.setdefault(name, []).append(record.id)
            self._tags = (stamp, tags)
        return self._tags[1]

    def get(self, model_id: str) -> ModelRecord:
        """The record of `model_id` (see `resolve`), or ModelNotFound."""
        resolved = self.resolve(model_id)
        try:
            return self._read(self.folder(resolved))
        except _Unusable as exc:
            log.warning("model %s is not served: %s", resolved, exc)
            raise ModelNotFound(model_id) from exc

    def reserve(self, model_id: str) -> Reservation:
        """Hold `model_id` for an import or a pull from start to end (release it, or use it as a context
        manager): a second import or pull of the same id meanwhile is a 409 at once, not a full download
        that fails at its last step."""
        with self._reserve_lock:
            if model_id in self._reserved:
                raise Conflict(f"`{model_id}` is being imported or pulled right now.", param="model")
            if self.folder(model_id).exists():
                raise Conflict(f"A model with id `{model_id}` already exists.", param="model")
            self._reserved.add(model_id)
        return Reservation(self, model_id)

    def _release(self, model_id: str) -> None:
        with self._reserve_lock:
            self._reserved.discard(model_id)

    def is_reserved(self, model_id: str) -> bool:
        return model_id in self._reserved

    def check_space(self, needed: int, what: str) -> None:
        """InsufficientStorage unless `needed` bytes fit and `min_free_bytes` stay free."""
        free = shutil.disk_usage(self.root).free
        if free - needed < self.min_free_bytes:
            raise InsufficientStorage(
                f"Not enough disk space to {what}: it needs {needed} bytes, {free} are free, "
                f"and {self.min_free_bytes} must stay free (min_free_disk_bytes)."
            )

    def import_model(
        self,
        model_id: str,
        source: Path | Callable[[Path], None],
        *,
        name: str | None = None,
        pooling: str | None = None,
        ctx_len: int | None = None,
        outtype: str | None = None,
        progress: Progress | None = None,
        move: bool = False,
        engine: str | None = None,
        quantize: str | None = None,
        label: str | None = None,
        reserved: bool = False,
    ) -> ModelRecord:
        """Add a model under `model_id`, whole or not at all.

        `source` is a GGUF file to copy, a sentence-transformers folder to convert (to ONNX, or to GGUF
        with `outtype` f32, f16 or q8_0), or a function that writes GGUF weights to the path it is given.
        The written file is inspected, not the original, so the file checked is the file served.
        `progress(stage, done, total)` is called from this thread as work advances; it may raise
        `Cancelled` to stop the import (its client went away), which leaves nothing behind. With `move`,
        a GGUF file (a finished download) is moved into the store instead of copied. Errors name the
        source as `label` (default: the path given), never the store's own file names. The id is
        reserved for the import's duration unless the caller holds it already (`reserved`, a pull).
        """
        self.require_writable()
        validate_model_id(model_id)
        if pooling is not None and pooling not in POOLINGS:
            raise InvalidRequest(f"Unknown pooling {pooling!r}; use one of {', '.join(POOLINGS)}.", param="pooling")
        if ctx_len is not None and ctx_len <= 0:
            raise InvalidRequest("ctx_len must be a positive number of tokens.", param="ctx_len")
        with contextlib.nullcontext() if reserved else self.reserve(model_id):
            return self._import(
                model_id, source, name=name, pooling=pooling, ctx_len=ctx_len, outtype=outtype, progress=progress,
                move=move, engine=engine, quantize=quantize, label=label,
            )  # fmt: skip

    def _import(
        self,
        model_id: str,
        source: Path | Callable[[Path], None],
        *,
        name: str | None,
        pooling: str | None,
        ctx_len: int | None,
        outtype: str | None,
        progress: Progress | None,
        move: bool,
        engine: str | None,
        quantize: str | None,
        label: str | None,
    ) -> ModelRecord:
        if label is None and isinstance(source, Path):
            label = str(source)
        final = self.folder(model_id)
        if final.exists():
            raise Conflict(f"A model with id `{model_id}` already exists.", param="model")
        folder: STModel | None = None
        if isinstance(source, Path):
            source = _resolve_source(source)
            if source.is_dir():
                folder = read_st_folder(source)
                if pooling is not None:  # an override reaches whichever converter runs
                    folder = dataclasses.replace(folder, pooling=pooling)
            else:
                inspect_gguf(source)  # a file that is no GGUF is refused before a byte of it is copied
        engine = _choose_engine(folder is not None, engine, outtype, quantize)
        self.check_space(_space_needed(source, folder, engine, quantize, move), f"import `{model_id}`")
        staging = self.root / f"{_STAGING}{uuid.uuid4().hex}"
        staging.mkdir(mode=0o700)
        try:
            if engine == "onnxruntime":
                assert folder is not None
                extra = write_onnx_model(folder, staging, quantize, progress=_stage(progress, "convert"))
                record = ModelRecord(
                    id=model_id, name=name or folder.name, engine="onnxruntime", files=list(ONNX_FILES),
                    architecture="bert", pooling=folder.pooling,
                    ctx_len=min(ctx_len or folder.max_seq_length, folder.max_seq_length),
                    n_ctx_train=folder.max_seq_length, n_embd=folder.n_embd, normalize=folder.normalize,
                    source_format="sentence-transformers", size=sum((staging / f).stat().st_size for f in ONNX_FILES),
                    created=int(time.time()), **extra,
                )  # fmt: skip
                return self._commit(staging, final, record)
            weights = staging / WEIGHTS_FILE
            if folder is not None:
                write_bert_gguf(folder, weights, outtype or "f16", progress=_stage(progress, "convert"))
            elif isinstance(source, Path) and move:
                os.replace(source, weights)
            elif isinstance(source, Path):
                _copy_file(source, weights, _stage(progress, "copy"))
            else:
                source(weights)
            info = inspect_gguf(weights)
            probe_gguf(
                weights,
                pooling or info.pooling or "mean",
                min(ctx_len or self.default_ctx_len, info.n_ctx_train),
                label=label or model_id,
            )
            record = ModelRecord(
                id=model_id,
                name=name or (folder.name if folder else None) or info.name or model_id,
                files=[WEIGHTS_FILE],
                architecture=info.architecture,
                pooling=pooling or info.pooling or "mean",
                ctx_len=min(ctx_len or self.default_ctx_len, info.n_ctx_train),
                n_ctx_train=info.n_ctx_train,
                n_embd=info.n_embd,
                normalize=folder.normalize if folder else True,
                source_format="sentence-transformers" if folder else "gguf",
                outtype=(outtype or "f16") if folder else None,
                size=weights.stat().st_size,
                created=int(time.time()),
            )
            return self._commit(staging, final, record)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)

    def _commit(self, staging: Path, final: Path, record: ModelRecord) -> ModelRecord:
        """Write model.yml into the staging folder and rename it into place."""
        write_atomic(staging / MODEL_FILE, yaml.safe_dump(record.model_dump(), sort_keys=False).encode())
        try:
            os.rename(staging, final)  # atomic; fails if another import of this id won the race
        except OSError as exc:
            raise Conflict(f"A model with id `{record.id}` already exists.", param="model") from exc
        fsync_dir(self.root)
        return record

    def delete(self, model_id: str) -> str:
        """Remove a model; returns the id removed. Callers unload it first (the registry does)."""
        self.require_writable()
        resolved = self.get(model_id).id
        trash = self.root / f"{_TRASH}{uuid.uuid4().hex}"
        os.rename(self.folder(resolved), trash)
        fsync_dir(self.root)
        shutil.rmtree(trash, ignore_errors=True)
        return resolved


def _choose_engine(is_folder: bool, engine: str | None, outtype: str | None, quantize: str | None) -> str:
    """The engine for an import: onnxruntime for folders unless --outtype (a llama-cpp option) says else."""
    if engine is None:
        engine = "llama-cpp" if (not is_folder or outtype is not None) else "onnxruntime"
    if engine not in ENGINES:
        raise InvalidRequest(f"Unknown engine {engine!r}; use one of {', '.join(ENGINES)}.", param="engine")
    if engine == "onnxruntime" and not is_folder:
        raise InvalidRequest("The onnxruntime engine imports sentence-transformers folders, not GGUF files.",
                             param="engine")  # fmt: skip
    if engine == "onnxruntime" and outtype is not None:
        raise InvalidRequest("'outtype' is the llama-cpp engine's option; with onnxruntime use 'quantize'.",
                             param="outtype")  # fmt: skip
    if engine == "llama-cpp" and quantize is not None:
        raise InvalidRequest("'quantize' is the onnxruntime engine's option; with llama-cpp use 'outtype'.",
                             param="quantize")  # fmt: skip
    if not is_folder and outtype is not None:
        raise InvalidRequest("'outtype' applies to sentence-transformers folders, not GGUF files.", param="outtype")
    return engine


def _space_needed(
    source: Path | Callable[[Path], None], folder: STModel | None, engine: str, quantize: str | None, move: bool
) -> int:
    """Bytes an import writes into the store at its peak (0 where it cannot be known beforehand)."""
    if folder is not None:
        size = folder.weights.stat().st_size
        if engine == "onnxruntime":
            return int(size * (_ONNX_INT8_SPACE if quantize else _ONNX_SPACE))
        return size  # GGUF from f32 safetensors: f32 at most
    if isinstance(source, Path) and not move:
        return source.stat().st_size
    return 0


def _resolve_source(path: Path) -> Path:
    """The real path of a regular file or a folder (symlinks resolved); no devices, FIFOs or /proc."""
    try:
        real = path.resolve(strict=True)
        st = real.stat()
    except (OSError, RuntimeError) as exc:
        raise InvalidModelFile(f"Cannot read {str(path)!r}: no such file or folder.", param="model_path") from exc
    if real.parts[:2] in (("/", "proc"), ("/", "sys"), ("/", "dev")) or not (
        stat.S_ISREG(st.st_mode) or stat.S_ISDIR(st.st_mode)
    ):
        raise InvalidModelFile(f"{str(path)!r} is not a regular file or a model folder.", param="model_path")
    return real


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
