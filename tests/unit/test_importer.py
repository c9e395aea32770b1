"""The import pipeline in process: what it refuses before anything is written, and how it names the
user's file."""

from __future__ import annotations

from pathlib import Path

import pytest

from cortex.errors import InvalidModelFile
from cortex.importer import Importer
from cortex.store.store import ModelStore


@pytest.mark.parametrize("content", [b"hello, I am a text file" * 100, b"GGUF" + bytes(60), b""])
def test_a_bad_gguf_is_named_by_the_path_the_user_gave(tmp_path: Path, content: bytes) -> None:
    """Issue 14: import errors named the store's own file (`model.gguf`), not the user's."""
    given = tmp_path / "my models" / "notes.gguf"
    given.parent.mkdir()
    given.write_bytes(content)
    store = ModelStore(tmp_path / "models")
    with pytest.raises(InvalidModelFile) as caught:
        Importer(store).run("bad:1", given)
    assert str(given) in caught.value.message and "model.gguf" not in caught.value.message
    assert store.list() == [] and not [p for p in store.root.iterdir() if p.name.startswith(".staging-")]
