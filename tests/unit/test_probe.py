"""Native crashes explain themselves: the import probe's child dies of a signal, and the error names the file,
the signal and what to try (moved from tests/e2e/test_machine.py: no server is involved)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from cortex.engine import probe
from cortex.engine.probe import crash_reason
from cortex.errors import InvalidModelFile
from cortex.importer import Importer
from cortex.store.store import ModelStore


@pytest.mark.parametrize(
    ("sig", "words"),
    [
        (signal.SIGILL, "an instruction this CPU refused"),
        (signal.SIGSEGV, "a memory fault"),
        (signal.SIGBUS, "cut short"),
        (signal.SIGABRT, "llama.cpp aborted"),
    ],
)
def test_a_probe_that_dies_names_the_file_the_signal_and_what_to_try(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, gemma_gguf: Path, sig: signal.Signals, words: str
) -> None:
    """The import probe's child really dies of `sig` (a stand-in interpreter kills itself with it)."""
    crasher = tmp_path / "python"
    crasher.write_text(f"#!/bin/sh\necho 'GGML_ASSERT(x) failed' >&2\nkill -{sig.name[3:]} $$\n")
    crasher.chmod(0o755)
    monkeypatch.setattr(probe.sys, "executable", str(crasher))
    store = ModelStore(tmp_path / "models")
    with pytest.raises(InvalidModelFile) as caught:
        Importer(store).run("crashy:1", gemma_gguf)
    message = caught.value.message
    assert str(gemma_gguf) in message and "model.gguf" not in message.replace(gemma_gguf.name, "")
    assert words in message and sig.name in message
    assert "cortex hardware" in message and "--engine onnxruntime" in message and "quantisation" in message
    assert ("GGML_ASSERT" in message) == (sig == signal.SIGABRT)
    assert store.list() == []  # nothing entered the store


def test_crash_reason_in_words() -> None:
    assert crash_reason(-signal.SIGILL) == "it used an instruction this CPU refused (SIGILL)"
    assert crash_reason(-signal.SIGKILL).startswith("it was killed")
    assert crash_reason(-signal.SIGUSR1) == "signal SIGUSR1"
    assert crash_reason(3) == "exit code 3"
