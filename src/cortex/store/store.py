"""The model store: `models/<folder>/model.yml` plus the weights, one folder per model id.

A model enters the store whole or not at all: it is assembled in a staging folder (weights
copied, checked, model.yml written and fsynced), then the folder is renamed into place. Deletion
renames the folder away before removing it. Leftovers of a crash are swept on open, which is safe only
for the one server that holds the data folder's lock (`cortex.data_folder.lock_folder`): another
server's sweep would delete a live import's staging folder.

It only stores: reading sources, converting and probing are the import pipeline's (`cortex.importer`),
and what differs between engine kinds is `cortex.engine.kinds`'.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, Field, ValidationError, model_validator

from cortex.errors import (
    Conflict,
    InsufficientStorage,
    InvalidModelFile,
    ModelNotFound,
    ModelUnavailable,
    ReadOnlyDataFolder,
)
from cortex.files import read_regular_file
from cortex.store.atomic import fsync_dir, write_atomic
from cortex.store.ids import close_ids, folder_name, id_of_folder, split_tag

log = logging.getLogger(__name__)

MODEL_FILE = "model.yml"
_STAGING = ".staging-"
_TRASH = ".trash-"
_RECORD_LIMIT = 64 << 10  # a model.yml is under 1 KiB; a larger one is not ours


class _Unusable(ValueError):
    """A model folder whose model.yml cannot be used: unreadable, invalid, or naming another id."""


class ModelRecord(BaseModel):
    """The contents of a model's model.yml."""

    id: str
    name: str
    engine: str = Field("llama-cpp", description="The engine kind that serves it (cortex.engine.kinds)")
    files: list[str]
    architecture: str
    task: Literal["embed", "rerank"] = Field(
        "embed", description="embed: a bi-encoder's vectors; rerank: a cross-encoder's score per (query, document)"
    )
    activation: Literal["sigmoid", "identity"] | None = Field(
        None, description="rerank: the default score of a logit (sentence-transformers' activation_fn)"
    )
    pooling: str
    ctx_len: int = Field(gt=0)
    n_ctx_train: int = Field(gt=0)
    n_embd: int = Field(gt=0)
    normalize: bool = Field(
        True, description="L2-normalise vectors unless a request says not (sentence-transformers' Normalize module)"
    )
    prompts: dict[str, str] = Field(
        default_factory=dict, description="Prompts by name (config_sentence_transformers.json), for `prompt_name`"
    )
    default_prompt_name: str | None = Field(None, description="The prompt used when a request names none")
    include_prompt: bool = Field(
        True, description="A prompt's tokens are pooled with the text's (false: left out, as the Pooling config says)"
    )
    source_format: Literal["gguf", "sentence-transformers"] = "gguf"
    outtype: str | None = Field(None, description="llama-cpp: weight type chosen when converting a folder to GGUF")
    precision: Literal["fp32", "bf16", "int8"] | None = Field(
        None, description="onnxruntime: fp32 (ONNX Runtime), bf16 (OpenVINO) or int8 (an int8 graph), chosen at import"
    )
    precision_min_cosine: float | None = Field(
        None, description="bf16 or int8: least cosine to the fp32 graph's vectors on the probe set, at import"
    )
    quantize: str | None = Field(None, description="Older spelling of precision int8 (written for int8 too)")
    int8_min_cosine: float | None = Field(None, description="Older spelling of precision_min_cosine for int8")
    cpu_features: list[str] | None = Field(None, description="The CPU flags the bf16 or int8 figure was measured with")
    size: int = Field(ge=0, description="Bytes of weights on disk")
    created: int = Field(description="Unix time of import")

    @model_validator(mode="before")
    @classmethod
    def _precision_from_quantize(cls, data: Any) -> Any:
        """A model.yml written before `precision`: an onnxruntime model is fp32, or int8 where it says
        `quantize: int8` (the same thing)."""
        if not isinstance(data, dict) or data.get("engine") != "onnxruntime" or data.get("precision") is not None:
            return data
        if data.get("quantize") == "int8":
            return {**data, "precision": "int8", "precision_min_cosine": data.get("int8_min_cosine")}
        return {**data, "precision": "fp32"}

    @model_validator(mode="after")
    def _default_prompt_is_a_prompt(self) -> ModelRecord:
        if self.default_prompt_name is not None and self.default_prompt_name not in self.prompts:
            raise ValueError(f"default_prompt_name {self.default_prompt_name!r} is not one of its prompts")
        return self


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
        # (root's stamp, NAME -> its NAME:TAG ids, every id)
        self._tags: tuple[tuple[int, int], dict[str, list[str]], list[str]] | None = None
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

    def verified_files(self, record: ModelRecord) -> Path:
        """The model's folder, after checking its files are still the ones imported (present, same total
        size). Errors name the model, never a server path; the engine kind checks the contents."""
        folder = self.folder(record.id)
        try:
            size = sum((folder / f).stat().st_size for f in record.files)
        except OSError as exc:
            raise ModelUnavailable(record.id, "its weights file is missing") from exc
        if size != record.size:
            raise ModelUnavailable(record.id, f"its weights file changed size ({size} bytes, imported {record.size})")
        return folder

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
        NAME the only NAME:TAG stored. `NAME:latest`, not stored, names what NAME does (Ollama's clients
        add `:latest` to a bare name). Every route and the registry resolve through here."""
        if (self.folder(model_id) / MODEL_FILE).is_file():  # folder() validates the id: the only check it needs
            return model_id
        name, tag = split_tag(model_id)
        if tag == "latest":
            try:
                return self.resolve(name)
            except ModelNotFound:
                pass  # the 404 names what was asked for
        if tag is None:
            matches = self._tagged().get(name, [])
            if len(matches) == 1:
                return matches[0]
            if matches:
                raise ModelNotFound(model_id, f" It could mean {', '.join(matches)}: name one with its tag.")
        raise ModelNotFound(model_id, suggestions=close_ids(model_id, self._ids()))

    def _tagged(self) -> dict[str, list[str]]:
        """NAME -> the stored NAME:TAG ids. Rebuilt when the store's folder changes (an import, a delete,
        a folder moved in by hand all rename an entry of it, which moves its mtime), so a bare name costs
        one stat per request, not a read of every model.yml."""
        st = self.root.stat()
        stamp = (st.st_ino, st.st_mtime_ns)
        if self._tags is None or self._tags[0] != stamp:
            tags: dict[str, list[str]] = {}
            ids = [record.id for record in self.list()]
            for model_id in ids:
                name, tag = split_tag(model_id)
                if tag is not None:
                    tags.setdefault(name, []).append(model_id)
            self._tags = (stamp, tags, ids)
        return self._tags[1]

    def _ids(self) -> list[str]:
        """Every stored id, cached as `_tagged` is (a 404's "did you mean" reads no model.yml)."""
        if not self.root.is_dir():  # a read-only data folder may have no models/
            return []
        self._tagged()
        assert self._tags is not None
        return self._tags[2]

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

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A new private folder in the store to assemble a model in; removed at the end unless committed."""
        self.require_writable()
        folder = self.root / f"{_STAGING}{uuid.uuid4().hex}"
        folder.mkdir(mode=0o700)
        try:
            yield folder
        finally:
            if folder.exists():
                shutil.rmtree(folder, ignore_errors=True)

    def commit(self, staging: Path, record: ModelRecord) -> ModelRecord:
        """Write model.yml into `staging` (fsynced) and rename the folder into place: atomic, and it fails
        if another import of the id won the race."""
        write_atomic(staging / MODEL_FILE, yaml.safe_dump(record.model_dump(), sort_keys=False).encode())
        try:
            os.rename(staging, self.folder(record.id))
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
