"""A server holds only the modules it uses (bench/memory.py: each engine's runtime and huggingface_hub take
7 to 35 MiB resident): `cortex start` with no model imports neither engine nor huggingface_hub, and loading
an ONNX model imports ONNX Runtime but not llama.cpp. Each case runs in a fresh interpreter, because
sys.modules of this one holds whatever other tests imported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

HEAVY = ("onnxruntime", "onnx", "llama_cpp", "huggingface_hub")

# the app as `cortex start` builds it (cortex.cli.main parses the flags), its lifespan run and requests
# served (/v1/hardware reports on both engines); prints the modules then imported, as JSON
_SERVE = """
import asyncio, json, sys
import cortex.cli.main, cortex.api.server
from tests.unit.support import serve
from cortex.config import Settings

async def main():
    settings = Settings(data_dir=sys.argv[1], n_threads=1)
    async with serve(settings) as c:
        for path in ("/healthz", "/v1/models", "/metrics", "/api/tags", "/v1/hardware"):
            assert (await c.get(path)).status_code == 200, path
        if len(sys.argv) > 2:
            body = {"model": "m", "model_path": sys.argv[2]}
            assert (await c.post("/v1/models/import", json=body)).status_code == 200
            assert (await c.post("/v1/embeddings", json={"model": "m", "input": "hi"})).status_code == 200

asyncio.run(main())
print(json.dumps(sorted(sys.modules)))
"""


def _heavy_after(tmp_path: Path, *args: str) -> list[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORTEX_")}
    out = subprocess.run(
        [sys.executable, "-c", _SERVE, str(tmp_path / "data"), *args],
        capture_output=True, text=True, env=env, cwd=Path(__file__).parents[2], timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr[-3000:]
    imported = set(json.loads(out.stdout.strip().splitlines()[-1]))
    return [m for m in HEAVY if m in imported]


def test_a_server_without_models_imports_no_engine_and_no_hub_client(tmp_path: Path) -> None:
    assert _heavy_after(tmp_path) == []


def test_an_onnx_model_brings_onnx_runtime_and_not_llama_cpp(tmp_path: Path) -> None:
    from tests import DATA

    assert _heavy_after(tmp_path, str(DATA / "arch" / "bert-cased")) == ["onnxruntime", "onnx"]
