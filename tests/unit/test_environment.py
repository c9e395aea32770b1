"""The product runs without torch: not installed, and not imported by any cortex module."""

from __future__ import annotations

import importlib.util
import subprocess
import sys


def test_torch_is_not_installed() -> None:
    assert importlib.util.find_spec("torch") is None


def test_cortex_imports_no_torch_or_transformers() -> None:
    code = (
        "import sys, cortex.api.app, cortex.cli.main, cortex.convert.bert_gguf, cortex.engine.llama;"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'sentence_transformers')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
