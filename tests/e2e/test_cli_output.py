"""What the CLI prints, for people and for programs (issue 14): `--json` on every listing, tables that
piped output does not cut, an empty `ps` that says so, texts from stdin, several ids to delete, and a
`stop` that says it waits."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.helpers import ServerProcess, cortex, cortex_env

LONG_ID = "a-model-id-long-enough-that-an-80-column-table-would-cut-it:with-a-long-tag"


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, gemma_gguf: Path) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path_factory.mktemp("cli-output") / "data") as s:
        s.import_models({"model": "all-minilm"}, {"model": LONG_ID, "model_path": str(gemma_gguf)})
        yield s


def _json(srv: ServerProcess, *args: str) -> dict:
    return json.loads(cortex(srv.data_dir, *args, "--json").stdout)


def test_listings_have_json(srv: ServerProcess) -> None:
    ids = [m["id"] for m in _json(srv, "models", "list")["data"]]
    assert ids == sorted([LONG_ID, "all-minilm:l6-v2"])
    assert _json(srv, "models", "get", "all-minilm")["n_embd"] == 384
    assert _json(srv, "hardware")["cpu"]["logical_cores"] >= 1
    status = _json(srv, "status")
    assert status["running"] is True and status["stored"] == 2 and status["url"] == srv.base_url


def test_piped_tables_are_not_cut(srv: ServerProcess) -> None:
    env = {k: v for k, v in cortex_env(srv.data_dir).items() if k != "COLUMNS"}
    out = subprocess.run([sys.executable, "-m", "cortex", "models", "list"], env=env, capture_output=True,
                         text=True, timeout=60, stdin=subprocess.DEVNULL).stdout  # fmt: skip
    assert LONG_ID in out, out
    table = cortex(srv.data_dir, "models", "get", "all-minilm").stdout
    assert "pooling" in table and "mean" in table and "{" not in table  # a table for people, not JSON


def test_ps_says_when_nothing_is_loaded_then_lists_what_is(srv: ServerProcess) -> None:
    cortex(srv.data_dir, "models", "stop", "all-minilm")
    cortex(srv.data_dir, "models", "stop", LONG_ID)
    assert "No model is loaded" in cortex(srv.data_dir, "ps").stdout
    assert _json(srv, "ps")["data"] == []
    proc = subprocess.run([sys.executable, "-m", "cortex", "embeddings", "all-minilm", "-", "--json"],
                          env=cortex_env(srv.data_dir), input="first text\n\nsecond text\n", capture_output=True,
                          text=True, timeout=120)  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert len(json.loads(proc.stdout)["data"]) == 2  # one text a line; the empty line is not a text
    assert [m["id"] for m in _json(srv, "ps")["data"]] == ["all-minilm:l6-v2"]


def test_delete_takes_several_ids_and_says_which_failed(srv: ServerProcess, gemma_gguf: Path) -> None:
    srv.import_models({"model": "d:1", "model_path": str(gemma_gguf)}, {"model": "d:2", "model_path": str(gemma_gguf)})
    proc = cortex(srv.data_dir, "models", "delete", "d:1", "absent:9", "d:2", check=False)
    assert proc.returncode == 1 and "Deleted d:1" in proc.stdout and "Deleted d:2" in proc.stdout
    assert "absent:9" in proc.stderr
    assert not {"d:1", "d:2"} & {m["id"] for m in _json(srv, "models", "list")["data"]}


def test_stop_says_it_waits(tmp_path: Path) -> None:
    data = tmp_path / "data"
    cortex(data, "start", "--port", str(ServerProcess(data).port))
    proc = cortex(data, "stop")
    assert "waiting for the requests in flight" in proc.stderr and "cortex stopped" in proc.stdout
