"""What the end-to-end tests share: real cortex server processes on free ports (`ServerProcess`), the
`cortex` command in a child process, and the model ids of the shared `server` fixture."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import numpy as np

MODEL = "gemma3:270m"  # the shared `server` fixture's Gemma, mean pooling
MODEL_LAST = "gemma3:270m-last"  # the same weights, last-token pooling


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


def cortex(
    data_dir: Path, *args: str, check: bool = True, timeout: float = 180, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """`cortex --data-dir DATA_DIR ARGS...` in a child process, `env` added to its environment; with
    `check`, it must exit 0."""
    env = {**cortex_env(data_dir), **(env or {})}
    env["COLUMNS"] = "200"  # rich tables: no wrapping inside cells
    proc = subprocess.run(
        [sys.executable, "-m", "cortex", "--data-dir", str(data_dir), *args],
        env=env, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    if check:
        assert proc.returncode == 0, f"cortex {' '.join(args)}: {proc.stdout}\n{proc.stderr}"
    return proc


class ServerProcess:
    """`cortex start --foreground` in a child process, with its own data folder and port.

    `with ServerProcess(data_dir, **env) as srv:` starts it and always stops it (SIGTERM, then SIGKILL),
    whatever fails in the block or in the start itself; `srv.returncode` is its exit status afterwards.
    """

    def __init__(self, data_dir: Path, *, prefix: tuple[str, ...] = (), **env: str) -> None:
        """`prefix`: a command that runs the server, e.g. in a namespace (`unshare -m ...`)."""
        self.data_dir = data_dir
        self.prefix = prefix
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = data_dir.parent / f"{data_dir.name}-server.log"
        self._env = {**cortex_env(data_dir), **env}
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> ServerProcess:
        try:
            return self._start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _start(self, timeout: float = 60) -> ServerProcess:
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
        """SIGTERM (SIGKILL after 40 s); the exit status. Safe to call again, or before a start."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.returncode

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode if self.proc else None


def request_in_flight(port: int, length: int) -> socket.socket:
    """Send a request's head with `Expect: 100-continue` and wait for the 100, which comes once the app
    reads the body: the request is then surely in the app, not a connection a shutdown may refuse."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=120)
    head = (
        "POST /v1/embeddings HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n"
    )
    sock.sendall(head.encode())
    interim = b""
    while not interim.endswith(b"\r\n\r\n"):
        chunk = sock.recv(1)
        assert chunk, f"closed before 100 Continue: {interim!r}"
        interim += chunk
    assert interim.startswith(b"HTTP/1.1 100 "), interim
    return sock


def read_response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """The whole answer, read to EOF (the request said `Connection: close`); status 0 if reset or empty."""
    answer = b""
    try:
        while chunk := sock.recv(65536):
            answer += chunk
    except ConnectionResetError:
        return 0, {}, answer
    finally:
        sock.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    if not lines[0].startswith("HTTP/1.1 "):
        return 0, {}, answer
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split(" ")[1]), headers, body


def embed_vectors(c: httpx.Client, model: str, inputs: object, **extra: object) -> tuple[np.ndarray, int]:
    """(float64 vectors, usage's prompt_tokens) of a /v1/embeddings request that must succeed."""
    r = c.post("/v1/embeddings", json={"model": model, "input": inputs, **extra})
    assert r.status_code == 200, r.text
    body = r.json()
    return np.array([d["embedding"] for d in body["data"]], dtype=np.float64), body["usage"]["prompt_tokens"]


def cosines(got: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity."""
    return np.sum(got * ref, axis=1) / np.linalg.norm(got, axis=1) / np.linalg.norm(ref, axis=1)
