"""The unit tier's fixtures: settings on a temporary data folder, the app served in process through the
guard (its lifespan run), and stub engines behind the registry's one seam, `ModelRegistry._open_engine`."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest

from cortex.config import Settings
from cortex.runtime.registry import ModelRegistry
from cortex.store.store import ModelRecord
from tests.unit.support import StubEngine, StubEngines, serve


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"  # the server's own loop (uvloop is asyncio too)


@pytest.fixture
def settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Callable[..., Settings]:
    """`settings(**overrides)`: Settings on `tmp_path/data`, whatever CORTEX_* the environment holds."""
    for name in [n for n in os.environ if n.startswith("CORTEX_")]:
        monkeypatch.delenv(name)

    def make(**overrides: object) -> Settings:
        return Settings(**{"data_dir": tmp_path / "data", "n_threads": 1, **overrides})

    return make


@pytest.fixture
def models_dir(tmp_path: Path) -> Path:
    """The store of `settings()`: write model folders here (tests.unit.support.write_model)."""
    path = tmp_path / "data" / "models"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture
def engines(monkeypatch: pytest.MonkeyPatch) -> StubEngines:
    """Stub engines instead of llama.cpp and ONNX Runtime, for every registry in the test."""
    opened = StubEngines()

    def open_engine(registry: ModelRegistry, record: ModelRecord) -> StubEngine:
        engine = opened.make(record)
        opened.append(engine)
        return engine

    monkeypatch.setattr(ModelRegistry, "_open_engine", open_engine)
    return opened


@pytest.fixture
async def api(settings: Callable[..., Settings], engines: StubEngines) -> AsyncIterator[httpx.AsyncClient]:
    """A client of the app with default settings and stub engines; write models into `models_dir`."""
    async with serve(settings()) as client:
        yield client
