"""The model store (cortex.store.store.ModelStore) over model folders written by hand: list, get, resolve,
reserve, delete, the sweep of leftovers, read-only stores, and the checks before weights are served."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cortex.config import Settings
from cortex.engine.kinds import kind_of
from cortex.errors import (
    Conflict,
    InsufficientStorage,
    InvalidRequest,
    ModelNotFound,
    ModelUnavailable,
    ReadOnlyDataFolder,
)
from cortex.importer import Importer
from cortex.store.store import ModelStore
from tests.unit.support import write_model


@pytest.fixture
def root(tmp_path: Path) -> Path:
    path = tmp_path / "models"
    path.mkdir()
    return path


def test_list_holds_every_intact_model_sorted_by_id(root: Path) -> None:
    for model_id in ("zeta:1", "alpha", "acme/x:F16"):
        write_model(root, model_id)
    (root / ".downloads").mkdir()  # the pull manager's, not a model
    (root / "no-record").mkdir()
    records = ModelStore(root).list()
    assert [r.id for r in records] == ["acme/x:F16", "alpha", "zeta:1"]
    assert records[0].n_embd == 8 and records[0].files == ["model.gguf"]


@pytest.mark.parametrize(
    "content", [b"id: [unclosed\n", b"- a list\n", b"\xff\xfe not text", b"id: x\n" + b"#" * 100_000, b""]
)
def test_a_broken_model_yml_is_skipped(root: Path, content: bytes) -> None:
    write_model(root, "good:1")
    write_model(root, "broken:1")
    (root / "broken@1" / "model.yml").write_bytes(content)
    store = ModelStore(root)
    assert [r.id for r in store.list()] == ["good:1"]
    with pytest.raises(ModelNotFound):
        store.get("broken:1")


def test_a_folder_whose_record_names_another_id_is_skipped(root: Path) -> None:
    """A folder copied by hand keeps the original's model.yml: it must not be listed, served or deleted."""
    write_model(root, "orig:1")
    (root / "copy").mkdir()
    (root / "copy" / "model.yml").write_bytes((root / "orig@1" / "model.yml").read_bytes())
    store = ModelStore(root)
    assert [r.id for r in store.list()] == ["orig:1"]
    for call in (store.get, store.delete):
        with pytest.raises(ModelNotFound):
            call("copy")
    assert (root / "orig@1" / "model.yml").is_file()


def test_an_exact_id_wins_and_a_bare_name_means_its_only_tag(root: Path) -> None:
    write_model(root, "mini:l6")
    store = ModelStore(root)
    assert store.resolve("mini") == "mini:l6" and store.get("mini").id == "mini:l6"
    write_model(root, "mini")  # the exact id now exists: it wins over the tag
    assert store.resolve("mini") == "mini" and store.get("mini").id == "mini"
    assert store.resolve("mini:l6") == "mini:l6"


def test_a_bare_name_with_two_tags_is_ambiguous_and_unknown_ids_are_404(root: Path) -> None:
    write_model(root, "mini:a")
    store = ModelStore(root)
    assert store.resolve("mini") == "mini:a"
    write_model(root, "mini:b")  # seen at once: the store's folder changed
    with pytest.raises(ModelNotFound) as caught:
        store.resolve("mini")
    assert "could mean mini:a, mini:b" in caught.value.message and caught.value.code == "model_not_found"
    for unknown in ("mini:c", "other", "acme/mini"):
        with pytest.raises(ModelNotFound):
            store.get(unknown)


@pytest.mark.parametrize("bad_id", ["../escape", "/abs", "a\\b", "a\x00b", "..", "a:b:c", "x" * 300, "", "pull/x"])
def test_ids_that_could_leave_the_store_are_refused_before_any_path_is_built(root: Path, bad_id: str) -> None:
    store = ModelStore(root)
    for call in (store.resolve, store.get, store.reserve, store.delete):
        with pytest.raises(InvalidRequest) as caught:
            call(bad_id)
        assert caught.value.param == "model"


def test_a_reserved_id_is_refused_until_released(root: Path) -> None:
    store = ModelStore(root)
    with store.reserve("new:1"):
        assert store.is_reserved("new:1")
        with pytest.raises(Conflict, match="being imported or pulled"):
            store.reserve("new:1")
        with pytest.raises(Conflict, match="being imported or pulled"):
            Importer(store).run("new:1", root / "absent.gguf")
    assert not store.is_reserved("new:1")
    store.reserve("new:1").release()
    write_model(root, "old:1")
    with pytest.raises(Conflict, match="already exists"):
        store.reserve("old:1")


def test_delete_removes_the_folder_it_resolves_to(root: Path) -> None:
    write_model(root, "gone:1")
    write_model(root, "kept:1")
    store = ModelStore(root)
    assert store.delete("gone") == "gone:1"  # a bare name, resolved
    assert not (root / "gone@1").exists() and [r.id for r in store.list()] == ["kept:1"]
    assert not [p for p in root.iterdir() if p.name.startswith(".trash-")]
    with pytest.raises(ModelNotFound):
        store.delete("gone:1")


def test_leftovers_of_a_crash_are_swept_when_the_store_opens(root: Path) -> None:
    write_model(root, "m:1")
    for leftover in (".staging-abc", ".trash-def"):
        (root / leftover).mkdir()
        (root / leftover / "model.gguf").write_bytes(b"GGUF")
    ModelStore(root, read_only=True)  # a read-only store sweeps nothing
    assert (root / ".staging-abc").exists() and (root / ".trash-def").exists()
    ModelStore(root)
    assert sorted(p.name for p in root.iterdir()) == ["m@1"]


def test_a_read_only_store_serves_but_refuses_changes(root: Path, tmp_path: Path) -> None:
    write_model(root, "m:1")
    store = ModelStore(root, read_only=True)
    assert store.get("m").id == "m:1"
    for change in (lambda: store.delete("m:1"), lambda: Importer(store).run("n:1", root / "m@1" / "model.gguf")):
        with pytest.raises(ReadOnlyDataFolder) as caught:
            change()
        assert caught.value.status == 403 and str(root) not in caught.value.message
    assert (root / "m@1").is_dir()
    assert ModelStore(tmp_path / "absent", read_only=True).list() == []  # nothing created either
    assert not (tmp_path / "absent").exists()


def test_weights_are_checked_before_they_are_served(root: Path) -> None:
    store = ModelStore(root)
    write_model(root, "ok:1", engine="onnxruntime")  # not a GGUF: only its size is checked
    assert store.verified_files(store.get("ok:1")) == root / "ok@1"

    write_model(root, "gone:1")
    record = store.get("gone:1")
    os.unlink(root / "gone@1" / "model.gguf")
    write_model(root, "resized:1")
    (root / "resized@1" / "model.gguf").write_bytes(b"GGUF")
    write_model(root, "foreign:1", weights=b"NOPE" + bytes(60))
    for model_id, got, words in (
        ("gone:1", record, "missing"),
        ("resized:1", store.get("resized:1"), "changed size (4 bytes, imported 64)"),
        ("foreign:1", store.get("foreign:1"), "no longer a valid GGUF"),
    ):
        with pytest.raises(ModelUnavailable) as caught:  # the store checks presence and size, the kind the rest
            kind_of(got.engine, got.id).open(store.verified_files(got), got, Settings())
        err = caught.value
        assert (err.status, err.code) == (500, "model_unavailable") and words in err.message, err.message
        assert model_id in err.message and str(root) not in err.message


def test_space_is_checked_against_what_must_stay_free(root: Path) -> None:
    ModelStore(root).check_space(1, "import `x`")
    with pytest.raises(InsufficientStorage) as caught:
        ModelStore(root, min_free_bytes=1 << 62).check_space(1, "import `x`")
    assert caught.value.status == 507 and "min_free_disk_bytes" in caught.value.message
