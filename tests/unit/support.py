"""What the unit tier shares: an engine without inference, model folders written by hand, and the app served
in process (`serve`). Stubs stand in only where inference is not what is tested: the real engines run in
tests/e2e, with real weights."""

from __future__ import annotations

import contextlib
import threading
import time
import zlib
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import httpx
import numpy as np
import yaml

from cortex.api.app import create_app
from cortex.api.guard import Guard
from cortex.config import Settings
from cortex.engine.base import Token, truncate_tokens
from cortex.store.ids import folder_name
from cortex.store.store import ModelRecord

BOS, EOS = 1, 2


class StubEngine:
    """The `Engine` protocol (cortex.engine.base) without a model.

    Each word is one token (BOS and EOS around it, special; a word's span is its bytes in the text); a
    sequence's vector is its first id, then its length, then ones (`n_embd` components, not normalised), so a
    test can tell which input gave which row. It records the batches it saw; `gate` holds every batch while
    cleared (`entered` says one got that far); a batch holding a sequence that starts with `fail_on` raises.
    Sizes are the class's unless given, e.g. `StubEngine(n_embd=8)`.
    """

    n_embd = 1
    n_ctx = 64
    n_vocab = 1000
    max_batch_tokens = 8
    max_batch_seqs = 3
    workers = 1

    def __init__(self, fail_on: int | None = None, **sizes: int) -> None:
        for name, value in sizes.items():
            if not isinstance(getattr(StubEngine, name, None), int):
                raise TypeError(f"StubEngine has no size {name!r}")
            setattr(self, name, value)
        self.batches: list[list[list[int]]] = []
        self.words: dict[int, str] = {}  # id -> word, for detokenize
        self.fail_on = fail_on
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()  # set once a batch has reached `embed`
        self.closed = False

    def tokenize(self, text: str, add_special: bool = True) -> list[int]:
        ids = [self.word_id(word) for word in text.split()]
        return [BOS, *ids, EOS] if add_special else ids

    def tokens(self, text: str, add_special: bool = True) -> list[Token]:
        words, at = [], 0
        for word in text.split():
            start = text.index(word, at)
            at = start + len(word)
            span = (len(text[:start].encode()), len(text[:at].encode()))
            words.append(Token(self.word_id(word), word.encode(), False, span))
        if not add_special:
            return words
        return [Token(BOS, b"<s>", True, None), *words, Token(EOS, b"</s>", True, None)]

    def detokenize(self, ids: Sequence[int]) -> str:
        """Words this engine has tokenized; `<s>`, `</s>`, and `<ID>` for an id it has not seen."""
        names = {BOS: "<s>", EOS: "</s>", **self.words}
        return " ".join(names.get(i, f"<{i}>") for i in ids)

    def word_id(self, word: str) -> int:
        token = 10 + zlib.crc32(word.encode()) % (self.n_vocab - 10)
        self.words[token] = word
        return token

    def truncate(self, tokens: list[int], n: int) -> list[int]:
        return truncate_tokens(tokens, n, frozenset({EOS}))

    def embed(self, seqs: Sequence[Sequence[int]]) -> np.ndarray:
        self.entered.set()
        self.gate.wait()
        self.batches.append([list(s) for s in seqs])
        if self.fail_on is not None and any(s[0] == self.fail_on for s in seqs):
            raise RuntimeError("boom")
        return np.array([self.vector(s) for s in seqs], dtype=np.float32)

    def vector(self, seq: Sequence[int]) -> list[float]:
        """The row `embed` gives `seq`."""
        return [float(seq[0]), float(len(seq)), *([1.0] * (self.n_embd - 2))][: self.n_embd]

    def memory_bytes(self) -> int:
        return 4 * self.n_embd * self.n_vocab

    def close(self) -> None:
        self.closed = True


class StubEngines(list[StubEngine]):
    """The engines the registry opened, in order. `make(record)` opens the next one: replace it to fail
    a load or to shape an engine."""

    def __init__(self) -> None:
        super().__init__()
        self.make: Callable[[ModelRecord], StubEngine] = lambda record: StubEngine(
            n_embd=record.n_embd, n_ctx=record.ctx_len, max_batch_tokens=256, max_batch_seqs=64
        )


def write_model(models_dir: Path, model_id: str, *, weights: bytes = b"GGUF" + bytes(60), **fields: object) -> Path:
    """A model folder as an import leaves it: `model.gguf` holding `weights`, and a model.yml whose record
    (cortex.store.store.ModelRecord) is a small llama-cpp model unless `fields` say otherwise."""
    folder = models_dir / folder_name(model_id)
    folder.mkdir(parents=True)
    (folder / "model.gguf").write_bytes(weights)
    record = {
        "id": model_id,
        "name": f"stub {model_id}",
        "engine": "llama-cpp",
        "files": ["model.gguf"],
        "architecture": "stub",
        "pooling": "mean",
        "ctx_len": 16,
        "n_ctx_train": 32,
        "n_embd": 8,
        "normalize": True,
        "source_format": "gguf",
        "size": len(weights),
        "created": int(time.time()),
        **fields,
    }
    (folder / "model.yml").write_text(yaml.safe_dump(record, sort_keys=False))
    return folder


@contextlib.asynccontextmanager
async def serve(settings: Settings, *, read_only: bool = False) -> AsyncIterator[httpx.AsyncClient]:
    """The app as `cortex start` assembles it (the guard around it, its lifespan run), and a client that
    calls it in process."""
    app = create_app(settings, read_only=read_only)
    async with app.router.lifespan_context(app):
        guarded = Guard(app, settings, logs_dir=settings.logs_dir, metrics=app.state.metrics)
        transport = httpx.ASGITransport(app=guarded)
        async with httpx.AsyncClient(transport=transport, base_url=f"http://127.0.0.1:{settings.port}") as client:
            yield client
