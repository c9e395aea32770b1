"""The README's code blocks run and print what the text says.

Every ```python and ```bash block of README.md runs against a real server (its port in place of 39281),
unless an HTML comment right above it says why it cannot run here (`<!-- not run: REASON -->`: a build,
or the Hugging Face hub). A python line ending in `# prints: TEXT` must print TEXT."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e.helpers import ServerProcess, cortex_env

README = Path(__file__).parents[2] / "README.md"
_BLOCK = re.compile(r"(?:<!-- not run: (?P<why>[^>]*?) -->\n)?```(?P<lang>python|bash)\n(?P<code>.*?)```", re.DOTALL)


def _blocks() -> list[tuple[int, str, str, str | None]]:
    text = README.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start("code")) + 1, m["lang"], m["code"], m["why"]) for m in _BLOCK.finditer(text)]


BLOCKS = _blocks()


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path_factory.mktemp("readme") / "data") as s:
        s.import_models({"model": "all-minilm"})  # the built-in model the README's examples use
        yield s


def test_the_readme_has_blocks_that_run() -> None:
    assert sum(why is None for *_, why in BLOCKS) >= 3
    for line, _, _, why in BLOCKS:
        assert why is None or why.strip(), f"README line {line}: say why the block does not run"


@pytest.mark.parametrize(("line", "lang", "code", "why"), BLOCKS, ids=[f"line{b[0]}" for b in BLOCKS])
def test_a_readme_block_runs(srv: ServerProcess, line: int, lang: str, code: str, why: str | None) -> None:
    if why is not None:
        pytest.skip(f"README line {line}: {why}")
    code = code.replace("39281", str(srv.port))
    env = cortex_env(srv.data_dir)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # the `cortex` command
    cmd = [sys.executable, "-c", code] if lang == "python" else ["bash", "-euo", "pipefail", "-c", code]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"README line {line} failed:\n{proc.stdout}\n{proc.stderr}"
    for expected in re.findall(r"# prints: (.+)", code):
        assert expected.strip() in proc.stdout, f"README line {line} should print {expected!r}, printed {proc.stdout!r}"
