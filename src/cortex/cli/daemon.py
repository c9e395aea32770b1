"""Start, find and stop the server process that serves a data folder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

import httpx

from cortex.config import Settings


class DaemonError(Exception):
    """A server could not be started or stopped; the message says why."""


@dataclass(frozen=True)
class ServerInfo:
    pid: int
    host: str
    port: int
    tls: bool = False

    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        if host in ("0.0.0.0", "[::]"):
            host = "127.0.0.1"
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}"


def _pid_alive(pid: int) -> bool:
    """True if `pid` runs; a zombie (exited, not yet reaped by its parent) counts as gone."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()[0] != b"Z"
    except (OSError, IndexError):
        return True


def _health_pid(base_url: str, timeout: float = 2.0) -> int | None:
    """The pid that /healthz reports, or None if nothing cortex-like answers."""
    try:
        r = httpx.get(f"{base_url}/healthz", timeout=timeout, verify=False)
        return int(r.json()["pid"]) if r.status_code == 200 else None
    except (httpx.HTTPError, ValueError, KeyError, TypeError):
        return None


def running_server(settings: Settings) -> ServerInfo | None:
    """The live server recorded in server.json, or None. A stale record (its process gone, or the
    pid reused by another process) is removed."""
    path = settings.server_file
    try:
        state = json.loads(path.read_text())
        info = ServerInfo(int(state["pid"]), str(state["host"]), int(state["port"]), bool(state.get("tls")))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if _pid_alive(info.pid) and _health_pid(info.base_url) == info.pid:
        return info
    if not _pid_alive(info.pid) or _health_pid(info.base_url) is None:
        path.unlink(missing_ok=True)
    return None


def start_background(settings: Settings, flags: dict[str, object], *, timeout: float = 60.0) -> ServerInfo:
    """Spawn `cortex start --foreground` detached, its output in logs/server.log; wait for /healthz.

    The settings given as flags reach the child as CORTEX_* variables, never on its command line,
    where `ps` would show an API key to every user of the machine.
    """
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    settings.logs_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    log_path = settings.logs_dir / "server.log"
    cmd = [sys.executable, "-m", "cortex", "--data-dir", str(settings.data_dir), "start", "--foreground"]
    env = dict(os.environ)
    for key, value in flags.items():
        name = "CORTEX_API_KEY" if key == "api_keys" else f"CORTEX_{key.upper()}"
        env[name] = ",".join(map(str, value)) if isinstance(value, list) else str(value)
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )
    info = ServerInfo(proc.pid, settings.host, settings.port, settings.ssl_certfile is not None)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DaemonError(
                f"The server exited with code {proc.returncode} during start-up.\n"
                f"Last lines of {log_path}:\n{_tail(log_path)}"
            )
        if _health_pid(info.base_url, timeout=1.0) == proc.pid:
            return info
        time.sleep(0.1)
    proc.terminate()
    raise DaemonError(f"The server did not answer on {info.base_url} within {timeout:.0f}s; see {log_path}")


def stop_server(info: ServerInfo, *, timeout: float = 40.0) -> None:
    """SIGTERM (uvicorn finishes in-flight requests), then wait for the process to exit."""
    try:
        os.kill(info.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not _pid_alive(info.pid):
            return
        time.sleep(0.1)
    raise DaemonError(f"The server (pid {info.pid}) did not exit within {timeout:.0f}s")


def _tail(path: os.PathLike, lines: int = 15) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 8192))
            return "\n".join(f.read().decode(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
