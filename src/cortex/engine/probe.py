"""Run a GGUF once in a throw-away process: `python -m cortex.engine.probe FILE POOLING CTX`.

The header walk (`cortex.store.gguf_info`) catches files that lie about their layout, but llama.cpp
can still abort on a file whose tensors it dislikes (a wrong type where it expects f32, say), and
an abort would take the whole server with it. Import therefore loads the model and embeds one short
text here first; only a file that survives this enters the store.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from cortex.errors import InvalidModelFile


def probe_gguf(path: Path, pooling: str, ctx_len: int, timeout: float = 300.0) -> None:
    """Raise InvalidModelFile unless llama.cpp loads `path` and embeds a text in a child process."""
    cmd = [sys.executable, "-m", "cortex.engine.probe", str(path), pooling, str(ctx_len)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise InvalidModelFile(f"llama.cpp did not load {path.name} within {timeout:.0f}s", param="model_path") from exc
    if proc.returncode != 0:
        why = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit code {proc.returncode}"
        last = (proc.stdout.strip().splitlines() or [""])[-1]
        raise InvalidModelFile(
            f"llama.cpp cannot run {path.name} ({why}){': ' + last if last else ''}", param="model_path"
        )


def _main() -> int:
    from cortex.engine.llama import LlamaCppEngine

    path, pooling, ctx_len = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
    try:
        engine = LlamaCppEngine(path, pooling=pooling, ctx_len=ctx_len, n_threads=1, max_batch_tokens=64)
        vector = engine.embed([engine.tokenize("probe")])
    except Exception as exc:  # reported to the parent on stdout
        print(f"{type(exc).__name__}: {exc}")
        return 1
    if vector.shape[1] != engine.n_embd:
        print("unexpected embedding size")
        return 1
    engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(_main())
