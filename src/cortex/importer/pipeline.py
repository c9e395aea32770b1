"""One import, as a straight line: reserve the id -> read and check the source -> choose the engine kind
-> check free space -> write into staging (convert or copy, then probe) -> commit to the store.

Everything that depends on the engine kind is in `cortex.engine.kinds`; the store only stores."""

from __future__ import annotations

import contextlib
import dataclasses
import stat
import time
from collections.abc import Callable
from pathlib import Path

from cortex.convert.st_folder import read_st_folder
from cortex.engine.kinds import ImportOptions, Progress, Source, choose
from cortex.errors import InvalidModelFile
from cortex.store.gguf_info import inspect_gguf
from cortex.store.store import ModelRecord, ModelStore


class Importer:
    """Imports into one store; `default_ctx_len` is the context given when an import names none."""

    def __init__(self, store: ModelStore, default_ctx_len: int = 2048) -> None:
        self.store = store
        self.default_ctx_len = default_ctx_len

    def run(
        self,
        model_id: str,
        source: Path | Callable[[Path], None],
        options: ImportOptions = ImportOptions(),
        *,
        engine: str | None = None,
        progress: Progress | None = None,
        move: bool = False,
        label: str | None = None,
        reserved: bool = False,
    ) -> ModelRecord:
        """Add a model under `model_id`, whole or not at all.

        `source` is a GGUF file, a sentence-transformers folder, or a function that writes a GGUF to the
        path it is given. `progress(stage, done, total)` is called from this thread as work advances; it
        may raise `Cancelled` to stop the import (its client went away), which leaves nothing behind. With
        `move`, a GGUF file (a finished download) is moved into the store instead of copied. Errors name
        the source as `label` (default: the path given), never the store's own file names. The id is
        reserved for the import's duration unless the caller holds it already (`reserved`: a pull).
        """
        self.store.require_writable()
        with contextlib.nullcontext() if reserved else self.store.reserve(model_id):
            src = _read_source(source, options, move, label or (str(source) if isinstance(source, Path) else model_id))
            kind = choose(engine, src, options)
            self.store.check_space(kind.space(src, options), f"import `{model_id}`")
            with self.store.staging() as staging:
                fields = kind.write(src, options, staging, progress, self.default_ctx_len)
                record = ModelRecord.model_validate(
                    {
                        **fields,
                        "id": model_id,
                        "name": fields.get("name") or model_id,
                        "engine": kind.name,
                        "size": sum((staging / f).stat().st_size for f in fields["files"]),
                        "created": int(time.time()),
                    }
                )
                return self.store.commit(staging, record)


def _read_source(source: Path | Callable[[Path], None], options: ImportOptions, move: bool, label: str) -> Source:
    """The source read and checked before anything is written: a folder's description (with the
    pooling override), or a GGUF's header (a file that is no GGUF is refused before a byte is copied)."""
    if not isinstance(source, Path):
        return Source(writer=source, label=label)
    real = _regular_file_or_folder(source)
    if real.is_dir():
        folder = read_st_folder(real)
        if options.pooling is not None:  # an override reaches whichever converter runs
            folder = dataclasses.replace(folder, pooling=options.pooling)
        return Source(folder=folder, label=label)
    inspect_gguf(real, label)
    return Source(file=real, move=move, label=label)


def _regular_file_or_folder(path: Path) -> Path:
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
