"""Loading llama.cpp's CPU code once per process, and saying which code that is.

cortex installs llama.cpp built with runtime CPU dispatch (`scripts/llama-cpp-wheel.sh`): the CPU
backend exists once per x86-64 level, as `libggml-cpu-<variant>.so` beside `libllama.so`, and ggml
loads the best variant the running CPU supports, so one build runs on an AVX2-only laptop, an AMD Zen
and an Intel Xeon alike. The AMX variant is not built: its kernels crash on Xeons (llama.cpp PR 26954).

Those backends load only when asked, and only from the package's own folder: ggml's default search
also looks in the current directory, where a stray library must never be loaded. A llama.cpp built
without variants (`pip install llama-cpp-python` from source, `-march=native`) links its one CPU
backend and needs no loading; `build` then says "native" so `cortex hardware` shows it.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import re
import threading
from dataclasses import dataclass
from pathlib import Path

_VARIANT = re.compile(r"/libggml-cpu-([A-Za-z0-9_.]+)\.so")
_GGML = re.compile(r"(/\S*/libggml\.so[.0-9]*)$")
_lock = threading.Lock()
_backend: LlamaBackend | None = None


@dataclass(frozen=True)
class LlamaBackend:
    """What llama.cpp runs on here."""

    version: str  # llama-cpp-python's
    build: str  # "runtime-dispatch" (CPU variants chosen at load) or "native" (one CPU backend, built for its builder)
    variant: str | None  # the CPU variant loaded (e.g. "zen4", "haswell"); None for a native build
    variants: tuple[str, ...]  # the CPU variants installed
    features: tuple[str, ...]  # the instruction sets its kernels use, as llama.cpp reports them (AVX2, AVX512, ...)


def _mapped(pattern: re.Pattern[str]) -> list[str]:
    """Groups of `pattern` in the shared objects this process has mapped."""
    try:
        lines = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return []
    return sorted({m.group(1) for line in lines if (m := pattern.search(line))})


def _features(system_info: str) -> tuple[str, ...]:
    """`AVX2 = 1 | AVX512 = 1 | ...` from llama_print_system_info -> ("AVX2", "AVX512", ...)."""
    found = re.findall(r"([A-Z][A-Z0-9_]*) = 1", system_info)
    return tuple(dict.fromkeys(f for f in found if f not in ("LLAMAFILE", "OPENMP", "REPACK")))


def init_backend() -> LlamaBackend:
    """Load llama.cpp's best CPU backend for this CPU (once per process) and describe it."""
    global _backend
    with _lock:
        if _backend is not None:
            return _backend
        import llama_cpp
        from llama_cpp import _logger

        _logger.set_verbose(False)  # llama.cpp logs every load step to stderr otherwise
        lib_dir = Path(llama_cpp.__file__).parent / "lib"
        variants = tuple(sorted(p.name[len("libggml-cpu-") : -len(".so")] for p in lib_dir.glob("libggml-cpu-*.so")))
        if variants:
            # the libggml that libllama linked (a second copy would hold a second, empty backend registry)
            ggml = ctypes.CDLL((_mapped(_GGML) or [str(lib_dir / "libggml.so")])[0])
            load = ggml.ggml_backend_load_all_from_path
            load.argtypes = [ctypes.c_char_p]
            load.restype = None
            load(str(lib_dir).encode())
        llama_cpp.llama_backend_init()
        loaded = _mapped(_VARIANT)
        info = llama_cpp.llama_print_system_info().decode(errors="replace")
        _backend = LlamaBackend(
            version=llama_cpp.__version__,
            build="runtime-dispatch" if variants else "native",
            variant=loaded[0] if loaded else None,
            variants=variants,
            features=_features(info),
        )
        return _backend


if __name__ == "__main__":  # `python -m cortex.engine.llama_backend`: the report, from a process that may crash
    print(json.dumps(dataclasses.asdict(init_backend())))
