"""What this machine offers the engines: CPU, the instruction sets that matter, memory, and which code
each engine runs on it. Served as `GET /v1/hardware`, printed by `cortex hardware`, logged at start."""

from __future__ import annotations

import functools
import json
import logging
import os
import platform
import subprocess
import sys
import threading
from pathlib import Path

from cortex.config import available_cores
from cortex.engine.probe import crash_reason
from cortex.schemas import Cpu, Hardware, LlamaCpp, Memory, OnnxRuntime

log = logging.getLogger(__name__)

# /proc/cpuinfo flag -> the name people use. The matrix and vector units the engines' kernels use.
CPU_FEATURES = {
    "sse4_2": "SSE4.2", "avx": "AVX", "avx2": "AVX2", "fma": "FMA", "f16c": "F16C", "avx_vnni": "AVX-VNNI",
    "avx512f": "AVX-512", "avx512_vnni": "AVX-512 VNNI", "avx512_bf16": "AVX-512 BF16", "avx512_fp16": "AVX-512 FP16",
    "amx_tile": "AMX", "amx_int8": "AMX-INT8", "amx_bf16": "AMX-BF16",
}  # fmt: skip


def _cpuinfo() -> tuple[str, set[str]]:
    model, flags = platform.processor() or platform.machine(), set()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return model, flags
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and value.strip():
            model = value.strip()
        elif key == "flags":
            flags = set(value.split())
            break  # every core reports the same
    return model, flags


# The flags of the bf16 units OpenVINO's CPU plugin runs bf16 on: AVX512-BF16 (VDPBF16PS) or AMX tiles.
BF16_FLAGS = ("avx512_bf16", "amx_bf16")
# The `precision` values of a sentence-transformers import (cortex.engine.kinds); bf16 needs BF16_FLAGS.
PRECISIONS = ("fp32", "bf16", "int8")
# The flags that change the fp32, int8 (VNNI) and bf16 kernels: recorded beside a precision's measured cosine.
KERNEL_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", *BF16_FLAGS)


def bf16_available() -> bool:
    """Whether this CPU has bf16 units: the one test of it, at import (a refusal) and at load (a model
    imported at bf16 on another machine). Without them OpenVINO would emulate or quietly run fp32."""
    return bool(set(BF16_FLAGS) & _cpuinfo()[1])


def kernel_flags() -> list[str]:
    """This CPU's KERNEL_FLAGS: what a bf16 or int8 model's recorded cosine was measured with."""
    present = _cpuinfo()[1]
    return [flag for flag in KERNEL_FLAGS if flag in present]


def precisions() -> list[str]:
    """The import precisions this CPU runs: bf16 only where `bf16_available`."""
    return [p for p in PRECISIONS if p != "bf16" or bf16_available()]


def _meminfo() -> Memory:
    values: dict[str, int] = {}
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            key, _, rest = line.partition(":")
            if rest.strip().endswith("kB"):
                values[key] = int(rest.split()[0]) * 1024
    except (OSError, ValueError):
        pass
    limit = None
    try:
        raw = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        limit = None if raw == "max" else int(raw)
    except (OSError, ValueError):
        pass
    return Memory(total_bytes=values.get("MemTotal"), available_bytes=values.get("MemAvailable"), limit_bytes=limit)


_llama_lock = threading.Lock()


def llama_cpp_report() -> LlamaCpp:
    """llama.cpp's CPU code path, found in a child process: a llama.cpp that cannot run on this CPU
    (SIGILL) is then reported, not fatal. Computed once per process (about 0.2 s), even when the start-up
    log and a first llama.cpp model load ask at the same time."""
    with _llama_lock:
        return _llama_cpp_report()


@functools.cache
def _llama_cpp_report() -> LlamaCpp:
    cmd = [sys.executable, "-m", "cortex.engine.llama_backend"]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise RuntimeError(f"loading it failed: {crash_reason(proc.returncode)} {proc.stderr.strip()[-300:]}")
        b = json.loads(proc.stdout.strip().splitlines()[-1])
    except (RuntimeError, OSError, ValueError, IndexError, subprocess.TimeoutExpired) as exc:
        log.warning("llama.cpp cannot run here: %s", exc)
        return LlamaCpp(version=None, build=None, cpu_variant=None, variants=[], features=[], error=str(exc).strip())
    return LlamaCpp(
        version=b["version"], build=b["build"], cpu_variant=b["variant"], variants=b["variants"], features=b["features"]
    )


_ORT_QUERY = "import json, onnxruntime as o; print(json.dumps([o.__version__, o.get_available_providers()]))"


@functools.cache
def _onnxruntime() -> OnnxRuntime:
    """ONNX Runtime's version and providers, asked in a child process once per process: imported here, it
    would stay resident (~18 MiB, bench/memory.py) in a server that serves no ONNX model."""
    try:
        cmd = [sys.executable, "-c", _ORT_QUERY]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, check=True)
        version, providers = json.loads(proc.stdout.strip().splitlines()[-1])
    except (OSError, ValueError, IndexError, subprocess.SubprocessError):  # ask here, as a model load would
        import onnxruntime as ort

        version, providers = ort.__version__, ort.get_available_providers()
    return OnnxRuntime(version=version, providers=providers, in_use=["CPUExecutionProvider"])


def hardware_report() -> Hardware:
    """The report (blocking: the first call per process asks a child process about llama.cpp)."""
    model, flags = _cpuinfo()
    cpu = Cpu(
        model=model,
        architecture=platform.machine(),
        logical_cores=os.cpu_count() or 1,
        usable_cores=available_cores(),
        features=[name for flag, name in CPU_FEATURES.items() if flag in flags],
    )
    return Hardware(
        cpu=cpu, memory=_meminfo(), llama_cpp=llama_cpp_report(), onnxruntime=_onnxruntime(), precisions=precisions()
    )


def summary(h: Hardware) -> str:
    """One log line: CPU, cores, features, memory, and each engine's code path."""
    gib = (h.memory.total_bytes or 0) / 2**30
    llama = h.llama_cpp
    llama_text = (
        f"llama.cpp {llama.version} {llama.build}" + (f" ({llama.cpu_variant})" if llama.cpu_variant else "")
        if llama.error is None
        else f"llama.cpp unavailable ({llama.error})"
    )
    return (
        f"{h.cpu.model}, {h.cpu.usable_cores} of {h.cpu.logical_cores} cores, "
        f"{', '.join(h.cpu.features) or 'no SIMD'}; "
        f"{gib:.1f} GiB memory; {llama_text}; onnxruntime {h.onnxruntime.version} on "
        f"{', '.join(h.onnxruntime.in_use)}; import precisions {', '.join(h.precisions)}"
    )
