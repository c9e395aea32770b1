"""Server fixtures: one real cortex process with the real Gemma 3 270M GGUF, shared by the API tests."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests import DATA
from tests.e2e.helpers import MODEL, MODEL_LAST, ServerProcess


@pytest.fixture(scope="session")
def reference() -> dict:
    """llama.cpp's own vectors for Gemma 3 270M (see the file's `computed_with`)."""
    return json.loads((DATA / "gemma-3-270m-q4_k_m.reference.json").read_text())


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, gemma_gguf: Path) -> Iterator[ServerProcess]:
    """One server for the API tests, with Gemma imported twice: mean pooling and last pooling."""
    with ServerProcess(tmp_path_factory.mktemp("api") / "data") as srv:
        srv.import_models(
            {"model": MODEL, "model_path": str(gemma_gguf)},
            {"model": MODEL_LAST, "model_path": str(gemma_gguf), "pooling": "last"},
        )
        yield srv


@pytest.fixture
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


@pytest.fixture
def openai_client(server: ServerProcess):
    from openai import OpenAI

    return OpenAI(base_url=f"{server.base_url}/v1", api_key="not-needed", max_retries=0)
