"""What the bench scripts share: free ports, waiting for a server to answer, a cortex server to measure, and
resident memory read from /proc (of one process, or of a process and everything it started)."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_ready(url: str, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{proc.args[0]} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise TimeoutError(url)


def start_cortex(
    imports: dict[str, dict], threads: int, port: int, data_dir: Path, env: dict[str, str] | None = None
) -> subprocess.Popen:
    """A cortex server (default configuration, every check on) with each of `imports` loaded, its
    environment ours plus `env`. Stopped again if it does not start or an import fails."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORTEX_")} | (env or {})
    env.update(CORTEX_DATA_DIR=str(data_dir), CORTEX_N_THREADS=str(threads))
    cmd = [sys.executable, "-m", "cortex", "start", "--foreground", "--port", str(port)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(f"{base}/healthz", proc)
        with httpx.Client(base_url=base, timeout=300) as c:
            for model_id, body in imports.items():
                c.post("/v1/models/import", json={"model": model_id, **body}).raise_for_status()
                c.post("/v1/models/start", json={"model": model_id}).raise_for_status()
    except BaseException:
        proc.terminate()
        proc.wait(timeout=60)
        raise
    return proc


@contextlib.contextmanager
def cortex_server(
    imports: dict[str, dict], threads: int, prefix: str, env: dict[str, str] | None = None
) -> Iterator[tuple[subprocess.Popen, str]]:
    """`start_cortex` on a free port with a fresh data folder (`prefix`...); yields the process and its base
    URL, and stops it on the way out."""
    port = free_port()
    proc = start_cortex(imports, threads, port, Path(tempfile.mkdtemp(prefix=prefix)), env)
    try:
        yield proc, f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=60)


def source_of(rev: str) -> Path:
    """A temporary folder holding `src/` of git revision `rev` of this repository: put it first on a server's
    PYTHONPATH (`env` of `start_cortex`) to measure that revision's cortex in the same environment."""
    folder = Path(tempfile.mkdtemp(prefix="cortex-rev-"))
    repo = Path(__file__).resolve().parent.parent
    archive = subprocess.run(["git", "-C", str(repo), "archive", rev, "src"], capture_output=True, check=True)
    subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    return folder / "src"


def process_rss_mib(pid: int) -> float:
    """Resident memory of process `pid` alone, in MiB (a cortex server is one process)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for process {pid}")


def tree_rss_mib(pid: int) -> float:
    """Resident memory of process `pid` and all its descendants, in MiB (Infinity runs under a shell); a
    process that ends while it is read counts as 0."""
    total = 0.0
    for p in [pid, *_descendants(pid)]:
        with contextlib.suppress(OSError, RuntimeError):
            total += process_rss_mib(p)
    return total


def _descendants(pid: int) -> list[int]:
    try:
        kids = [int(k) for k in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
    return kids + [g for k in kids for g in _descendants(k)]
