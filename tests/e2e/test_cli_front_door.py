"""The CLI's front door against a real server: a misspelt model id is caught before the hub, and a server
started in the background logs to logs/server.log (rotated) with its raw output apart."""

from __future__ import annotations

import time
from pathlib import Path

from tests.e2e.helpers import ServerProcess, cortex, free_port
from tests.unit.support import write_model


def test_run_with_a_misspelt_id_suggests_the_stored_one_and_never_pulls(tmp_path: Path) -> None:
    data = tmp_path / "data"
    write_model(data / "models", "all-minilm:l6-v2")
    with ServerProcess(data, HF_ENDPOINT="http://127.0.0.1:9", HF_HUB_OFFLINE="0"):  # a hub that never answers
        started = time.monotonic()
        bad = cortex(data, "run", "all-minlm", check=False, timeout=60)
        assert bad.returncode == 1, bad.stderr
        assert "Did you mean `all-minilm:l6-v2`?" in bad.stderr and "cortex pull all-minlm" in bad.stderr
        assert "pulling" not in bad.stderr and time.monotonic() - started < 30
        get = cortex(data, "models", "get", "all-minlm", check=False)
        assert get.returncode == 1 and "Did you mean `all-minilm:l6-v2`?" in get.stderr


def test_a_background_server_writes_its_own_log_and_keeps_raw_output_apart(tmp_path: Path) -> None:
    data = tmp_path / "data"
    cortex(data, "start", "--port", str(free_port()))
    try:
        cortex(data, "models", "get", "absent:1", check=False)
    finally:
        cortex(data, "stop")
    log = (data / "logs" / "server.log").read_text()
    assert "Uvicorn running" in log or "Application startup complete" in log, log
    raw = data / "logs" / "server.out"
    assert raw.exists() and "Application startup complete" not in raw.read_text()  # written once, not twice
