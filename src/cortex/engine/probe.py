"""Run a GGUF once in a throw-away process: `python -m cortex.engine.probe FILE POOLING CTX`.

The header walk (`cortex.store.gguf_info`) catches files that lie about their layout, but llama.cpp
can still abort on a file whose tensors it dislikes (a wrong type where it expects f32, say), and
an abort would take the whole server with it. Import therefore loads the model and embeds one short
text here first; only a file that survives this enters the store.
"""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from cortex.errors import InvalidModelFile

# What a native crash means, in words a user can act on.
_SIGNALS = {
    signal.SIGILL: "it used an instruction this CPU refused (SIGILL)",
    signal.SIGSEGV: "a memory fault (SIGSEGV)",
    signal.SIGBUS: "a bus error (SIGBUS): the file changed or was cut short while it was read",
    signal.SIGABRT: "llama.cpp aborted (SIGABRT)",
    signal.SIGFPE: "an arithmetic fault (SIGFPE)",
    signal.SIGKILL: "it was killed (SIGKILL), most often for lack of memory",
}
_ADVICE = (
    "What to try: another quantisation of the model; for a sentence-transformers folder, `--engine onnxruntime`; "
    "and `cortex hardware` shows this CPU's features and which llama.cpp build runs here."
)


def crash_reason(returncode: int) -> str:
    """A child's exit status in words: 'an instruction this CPU refused (SIGILL)', 'exit code 3'."""
    if returncode >= 0:
        return f"exit code {returncode}"
    try:
        sig = signal.Signals(-returncode)
    except ValueError:
        return f"signal {-returncode}"
    return _SIGNALS.get(sig, f"signal {sig.name}")


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1][:300] if lines else ""


def probe_gguf(path: Path, pooling: str, ctx_len: int, *, label: str | None = None, timeout: float = 300.0) -> None:
    """Raise InvalidModelFile unless llama.cpp loads `path` and embeds a text in a child process.

    `label` names the file in errors as the user knows it (their path, or the pulled file), not the
    store's staging name."""
    label = label or path.name
    cmd = [sys.executable, "-m", "cortex.engine.probe", str(path), pooling, str(ctx_len)]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        raise InvalidModelFile(f"llama.cpp did not load {label} within {timeout:.0f}s", param="model_path") from exc
    if proc.returncode == 0:
        return
    if proc.returncode == 1 and (said := _last_line(proc.stdout)):  # a Python error the child reported
        raise InvalidModelFile(f"llama.cpp cannot run {label}: {said}", param="model_path")
    why = crash_reason(proc.returncode)
    native = _last_line(proc.stderr)  # an abort's GGML_ASSERT line, say
    detail = f" Its last words: {native}." if native and proc.returncode == -signal.SIGABRT else ""
    raise InvalidModelFile(
        f"llama.cpp crashed while running {label}: {why}.{detail} The server is unharmed and nothing was stored. "
        + _ADVICE,
        param="model_path",
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
