"""Start, find and stop the server process that serves a data folder."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field

import httpx
from pydantic import ValidationError

from cortex.config import Settings, config_path
from cortex.data_folder import folder_id, lock_holder, writable
from cortex.schemas import Health


class DaemonError(Exception):
    """A server could not be started or stopped; the message says why."""


@dataclass(frozen=True)
class ServerInfo:
    pid: int
    host: str
    port: int
    tls: bool = False
    api_key: str | None = field(default=None, repr=False)  # for this folder's CLI: server.json is 0600

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


def _health(base_url: str, timeout: float = 2.0) -> Health | None:
    """What /healthz answers, or None if nothing cortex-like answers."""
    try:
        r = httpx.get(f"{base_url}/healthz", timeout=timeout, verify=False)
        return Health.model_validate_json(r.content) if r.status_code == 200 else None
    except (httpx.HTTPError, ValidationError):
        return None


class NotAnswering(DaemonError):
    """This folder's server runs (it holds the folder's lock) but does not answer: busy or hung."""

    def __init__(self, info: ServerInfo) -> None:
        super().__init__(
            f"The cortex server at {info.base_url} (pid {info.pid}) does not answer: it is starting, busy "
            "(all its connections in use) or hung. No other server is started for this data folder; "
            "`cortex stop` stops it."
        )
        self.info = info


def running_server(settings: Settings) -> ServerInfo | None:
    """The live server of this data folder that server.json records, or None.

    A record is stale, and removed, when its process is gone, or when the server at its address serves
    another folder (a copied data folder holds the original's record) or is another process. A live
    process that does not answer but holds this folder's lock is its server, busy or hung: the record
    is kept, so that no second server starts over it, and NotAnswering is raised.
    """
    path = settings.server_file
    try:
        state = json.loads(path.read_text())
        info = ServerInfo(
            int(state["pid"]), str(state["host"]), int(state["port"]), bool(state.get("tls")), state.get("api_key")
        )
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if _pid_alive(info.pid):
        health = _health(info.base_url)
        if health is None:
            if lock_holder(settings.data_dir) == info.pid:
                raise NotAnswering(info)
        elif (health.pid, health.data_folder) == (info.pid, folder_id(settings.data_dir)):
            return info
    with contextlib.suppress(OSError):  # a read-only data folder keeps its stale record
        path.unlink()
    return None


def check_port_free(settings: Settings) -> None:
    """DaemonError, saying how to choose another port, if another program listens on the server's port."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            settings.host, settings.port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except (OSError, IndexError):  # a host name that does not resolve: the server says so itself
        return
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn binds
        try:
            probe.bind(address)
        except OSError as exc:
            if exc.errno != errno.EADDRINUSE:
                return
            raise DaemonError(
                f"Port {settings.port} on {settings.host} is in use by another program. Choose another port "
                f"with --port PORT or CORTEX_PORT=PORT (or `port: PORT` in {config_path(settings.data_dir)})."
            ) from None


def start_background(settings: Settings, flags: dict[str, object], *, timeout: float = 60.0) -> ServerInfo:
    """Spawn `cortex start --foreground` detached; wait for /healthz. It writes its log to logs/server.log
    itself (rotated); its raw stdout and stderr, what a start-up crash prints, go to logs/server.out,
    emptied at each start.

    The settings given as flags reach the child as CORTEX_* variables, never on its command line,
    where `ps` would show an API key to every user of the machine.
    """
    settings.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    if not writable(settings.data_dir, settings.models_dir):  # no log, no server.json: the CLI would lose it
        raise DaemonError(
            f"The data folder {settings.data_dir} is read-only. `cortex start --foreground` serves it read-only."
        )
    settings.logs_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    log_path = settings.logs_dir / "server.out"
    cmd = [sys.executable, "-m", "cortex", "--data-dir", str(settings.data_dir), "start", "--foreground"]
    env = dict(os.environ)
    for key, value in flags.items():
        name = "CORTEX_API_KEY" if key == "api_keys" else f"CORTEX_{key.upper()}"
        if isinstance(value, bool):
            value = str(value).lower()
        env[name] = ",".join(map(str, value)) if isinstance(value, list) else str(value)
    with open(log_path, "wb") as log:
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
        health = _health(info.base_url, timeout=1.0)
        if health is not None and health.pid == proc.pid:
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
