"""Model ids: the one place a name becomes a path."""

from __future__ import annotations

import pytest

from cortex.errors import InvalidRequest
from cortex.store.ids import folder_name, validate_model_id


@pytest.mark.parametrize(
    ("model_id", "folder"),
    [
        ("gemma3:270m", "gemma3@270m"),
        ("llama3.1:8b-gguf-q4-km", "llama3.1@8b-gguf-q4-km"),
        ("all-minilm", "all-minilm"),
        ("org/repo", "org+repo"),
        ("org/repo:Q4_K_M", "org+repo@Q4_K_M"),
    ],
)
def test_valid_ids_map_to_one_folder_level(model_id: str, folder: str) -> None:
    assert folder_name(model_id) == folder
    assert "/" not in folder and "\\" not in folder and folder not in (".", "..")


@pytest.mark.parametrize(
    "model_id",
    ["", "..", "../x", "a/../b", "/etc/passwd", "a\\b", "a\x00b", ".hidden", "a:b:c", "a/b/c", "a:", ":b",
     "a b", "x" * 201, "a" * 100 + ":" + "b" * 100, "ü", "a/.."],
)  # fmt: skip
def test_ids_that_could_escape_are_refused(model_id: str) -> None:
    with pytest.raises(InvalidRequest) as exc:
        folder_name(model_id)
    assert exc.value.param == "model"


def test_non_string_ids_are_refused() -> None:
    for bad in (None, 3, ["a"]):
        with pytest.raises(InvalidRequest):
            validate_model_id(bad)


def test_distinct_ids_get_distinct_folders() -> None:
    ids = ["a:b", "a/b", "a-b", "a_b", "a.b", "ab", "a/b:c", "a:b-c", "a-b:c"]
    assert len({folder_name(i) for i in ids}) == len(ids)


def test_close_ids_finds_typos_closest_first_and_nothing_unrelated() -> None:
    from cortex.store.ids import close_ids

    stored = ["all-minilm:l6-v2", "gemma3:270m", "llama3.1:8b-gguf-q4-km", "acme/minilm-gguf:F16"]
    assert close_ids("all-minlm", stored) == ["all-minilm:l6-v2"]
    assert close_ids("ALL-MINILM:L6-V3", stored) == ["all-minilm:l6-v2"]
    assert close_ids("llama3.1:8bb-gguf-q4-km", stored) == ["llama3.1:8b-gguf-q4-km"]
    assert close_ids("minilm:q8", stored) == [] and close_ids("nomic-embed-text", stored) == []
    assert close_ids("gemma3:270m", stored) == []  # the id itself is no suggestion
