"""Issue 17: the `precision` import option (fp32 | bf16 | int8) of sentence-transformers folders: its
parsing, `quantize int8` as its older spelling, the refusal of bf16 on a CPU without bf16 units (at import,
and when a stored bf16 model is opened on such a CPU), and the OpenVINO engine that serves bf16.

These run on every CPU: a CPU without bf16 is played by monkeypatching the one test of it,
`cortex.hardware.bf16_available`. The bf16 path end to end (real server, real weights) is
tests/e2e/test_precision.py."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import yaml

from cortex import hardware
from cortex.config import Settings
from cortex.convert.onnx_model import DATA_FILE, GRAPH_FILE, TOKENIZER_FILE
from cortex.engine.kinds import KINDS, ImportOptions, Source, choose
from cortex.engine.onnx import OnnxEngine
from cortex.engine.openvino import OpenVinoEngine
from cortex.errors import InvalidModelFile, InvalidRequest
from cortex.importer import Importer
from cortex.store.store import ModelRecord, ModelStore
from tests import DATA
from tests.unit.support import serve

FIXTURE = DATA / "arch" / "bert-cased"  # a tiny random-weight BERT: imports in a second
TEXTS = ["The quick brown fox.", "short", "Embeddings map text to vectors that capture meaning.", "1 2 3"]


def _no_bf16(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hardware, "bf16_available", lambda: False)


def _folder(task: str = "embed") -> Source:
    from types import SimpleNamespace

    described = {"task": task, "architecture": "bert", "tokenizer_model": "WordPiece", "lowercase": True,
                 "pooling": "mean", "prompts": {}, "include_prompt": True, "folder": FIXTURE}  # fmt: skip
    return Source(folder=SimpleNamespace(**described))  # type: ignore[arg-type]


def test_precision_is_an_option_of_the_default_kind_for_folders_with_three_values() -> None:
    assert KINDS["onnxruntime"].options["precision"].values == ("fp32", "bf16", "int8")
    assert "older spelling of --precision int8" in KINDS["onnxruntime"].options["quantize"].help
    for value in ("fp32", "bf16", "int8"):
        assert choose(None, _folder(), ImportOptions(engine_options={"precision": value})).name == "onnxruntime"
    with pytest.raises(InvalidRequest, match="Unknown precision 'fp16'") as caught:
        choose(None, _folder(), ImportOptions(engine_options={"precision": "fp16"}))
    assert caught.value.param == "precision"
    with pytest.raises(InvalidRequest, match="onnxruntime engine") as caught:  # llama-cpp has outtype instead
        choose("llama-cpp", _folder(), ImportOptions(engine_options={"precision": "bf16"}))
    assert caught.value.param == "precision"


def test_quantize_int8_is_precision_int8_and_the_two_may_not_disagree(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    for model_id, options in (("a:1", {"quantize": "int8"}), ("b:1", {"precision": "int8", "quantize": "int8"})):
        record = Importer(store).run(model_id, FIXTURE, ImportOptions(engine_options=options))
        assert (record.precision, record.quantize) == ("int8", "int8")
        assert 0.9 <= record.precision_min_cosine == record.int8_min_cosine < 1  # type: ignore[operator]
    with pytest.raises(InvalidRequest, match="older spelling") as caught:
        Importer(store).run("c:1", FIXTURE, ImportOptions(engine_options={"precision": "bf16", "quantize": "int8"}))
    assert caught.value.param == "precision"
    fp32 = Importer(store).run("d:1", FIXTURE)
    assert (fp32.precision, fp32.precision_min_cosine, fp32.quantize) == ("fp32", None, None)
    assert [r.id for r in store.list()] == ["a:1", "b:1", "d:1"]


def test_a_model_yml_from_before_precision_reads_as_fp32_or_int8() -> None:
    old = {"id": "m:1", "name": "m", "engine": "onnxruntime", "files": ["model.onnx", "model.onnx.data", "t.json"],
           "architecture": "bert", "pooling": "mean", "ctx_len": 8, "n_ctx_train": 8, "n_embd": 4,
           "source_format": "sentence-transformers", "quantize": "int8", "int8_min_cosine": 0.98, "size": 1,
           "created": 1}  # fmt: skip
    record = ModelRecord.model_validate(old)
    assert (record.precision, record.precision_min_cosine) == ("int8", 0.98)
    assert ModelRecord.model_validate({**old, "quantize": None, "int8_min_cosine": None}).precision == "fp32"
    assert ModelRecord.model_validate({**old, "engine": "llama-cpp", "quantize": None}).precision is None


def test_bf16_is_refused_at_import_on_a_cpu_without_bf16(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _no_bf16(monkeypatch)
    assert hardware.precisions() == ["fp32", "int8"]
    store = ModelStore(tmp_path / "models")
    with pytest.raises(InvalidRequest) as caught:
        Importer(store).run("m:bf16", FIXTURE, ImportOptions(engine_options={"precision": "bf16"}))
    assert caught.value.status == 400 and caught.value.param == "precision"
    assert "AVX512-BF16" in caught.value.message and "--precision fp32" in caught.value.message
    assert "int8" in caught.value.message
    assert store.list() == [] and not [p for p in store.root.iterdir() if p.name.startswith(".staging-")]


def test_bf16_and_int8_are_refused_for_a_cross_encoder(tmp_path: Path) -> None:
    folder = DATA / "cross-encoder-tiny"
    store = ModelStore(tmp_path / "models")
    for option, value in (("precision", "bf16"), ("precision", "int8"), ("quantize", "int8")):
        with pytest.raises(InvalidRequest, match="a cross-encoder is served in fp32") as caught:
            Importer(store).run("ce:1", folder, ImportOptions(engine_options={option: value}))
        assert caught.value.param == option
    assert Importer(store).run("ce:1", folder, ImportOptions(engine_options={"precision": "fp32"})).task == "rerank"


@pytest.mark.anyio
async def test_the_api_refuses_bf16_without_bf16_with_a_400_and_says_so(
    settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    _no_bf16(monkeypatch)
    async with serve(settings()) as api:
        body = {"model": "m:bf16", "model_path": str(FIXTURE), "precision": "bf16"}
        r = await api.post("/v1/models/import", json=body)
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["param"] == "precision" and "bf16 units" in err["message"] and "fp32" in err["message"]
        assert (await api.get("/v1/models")).json()["data"] == []
        info, hw = (await api.get("/info")).json(), (await api.get("/v1/hardware")).json()
        assert info["precisions"] == hw["precisions"] == ["fp32", "int8"]


@pytest.mark.anyio
async def test_a_stored_bf16_model_on_a_cpu_without_bf16_is_unavailable_not_another_precision(
    settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A data folder copied from a machine with bf16 to one without: the model says why it cannot load."""
    async with serve(settings()) as api:
        r = await api.post("/v1/models/import", json={"model": "m:bf16", "model_path": str(FIXTURE)})
        assert r.status_code == 200, r.text
        record_file = Path(settings().data_dir) / "models" / "m@bf16" / "model.yml"
        record = yaml.safe_load(record_file.read_text())
        record.update(precision="bf16", precision_min_cosine=0.99999)  # as an import on a bf16 CPU writes it
        record_file.write_text(yaml.safe_dump(record, sort_keys=False))
        _no_bf16(monkeypatch)
        r = await api.post("/v1/embeddings", json={"model": "m:bf16", "input": "hello"})
        assert r.status_code == 500, r.text
        err = r.json()["error"]
        assert err["code"] == "model_unavailable" and "precision bf16" in err["message"]
        assert "no bf16 units" in err["message"] and "--precision fp32" in err["message"]
        assert (await api.get("/v1/models/m:bf16")).json()["precision"] == "bf16"


def test_openvino_serves_the_onnx_graph_as_onnx_runtime_does_from_parallel_callers(tmp_path: Path) -> None:
    """The OpenVINO engine at fp32 (every CPU has it) against ONNX Runtime on the same graph, two callers at
    once on its two infer requests; tokenization is the same code (cortex.engine.hf_tokenizer)."""
    store = ModelStore(tmp_path / "models")
    record = Importer(store).run("m:1", FIXTURE)
    folder = store.folder(record.id)
    ort = OnnxEngine(folder / GRAPH_FILE, folder / TOKENIZER_FILE, ctx_len=record.ctx_len, n_threads=1)
    ov = OpenVinoEngine(folder / GRAPH_FILE, folder / TOKENIZER_FILE, ctx_len=record.ctx_len, n_threads=2,
                        precision="fp32")  # fmt: skip
    try:
        assert (ov.workers, ov.n_embd, ov.n_vocab, ov.max_batch_seqs) == (2, ort.n_embd, ort.n_vocab, 1)
        seqs = [ov.tokenize(t) for t in TEXTS]
        assert seqs == [ort.tokenize(t) for t in TEXTS] and ov.tokens(TEXTS[0]) == ort.tokens(TEXTS[0])
        expected = np.concatenate([ort.embed([s]) for s in seqs])
        got: dict[int, np.ndarray] = {}

        def call(i: int) -> None:
            for _ in range(5):
                got[i] = ov.embed([seqs[i]])

        threads = [threading.Thread(target=call, args=(i,)) for i in range(len(seqs))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        rows = np.concatenate([got[i] for i in range(len(seqs))])
        cos = np.sum(rows * expected, axis=1) / np.linalg.norm(rows, axis=1) / np.linalg.norm(expected, axis=1)
        assert rows.dtype == np.float32 and cos.min() > 0.99999
    finally:
        ov.close()
        ort.close()


def test_openvino_refuses_a_graph_whose_weights_lie_outside_its_folder(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    folder = store.folder(Importer(store).run("m:1", FIXTURE).id)
    proto = onnx.load(str(folder / GRAPH_FILE), load_external_data=False)
    init = next(i for i in proto.graph.initializer if i.external_data)
    next(e for e in init.external_data if e.key == "location").value = f"../{DATA_FILE}"
    onnx.save(proto, str(folder / GRAPH_FILE))
    with pytest.raises(InvalidModelFile, match="points outside its folder"):
        OpenVinoEngine(folder / GRAPH_FILE, folder / TOKENIZER_FILE, ctx_len=8, n_threads=1, precision="fp32")


@pytest.mark.skipif(not hardware.bf16_available(), reason="this CPU has no bf16 units (AVX512-BF16 or AMX-BF16)")
def test_bf16_import_records_its_cosine_and_opens_on_openvino(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    record = Importer(store).run("m:bf16", FIXTURE, ImportOptions(engine_options={"precision": "bf16"}))
    assert record.precision == "bf16" and 0.999 <= record.precision_min_cosine <= 1  # type: ignore[operator]
    assert "avx512_bf16" in record.cpu_features or "amx_bf16" in record.cpu_features  # type: ignore[operator]
    assert record.quantize is None and record.int8_min_cosine is None
    engine = KINDS["onnxruntime"].open(store.folder(record.id), record, Settings(n_threads=2))
    try:
        assert isinstance(engine, OpenVinoEngine) and engine.precision == "bf16" and engine.workers == 2
        assert engine.embed([engine.tokenize("hello world")]).shape == (1, record.n_embd)
    finally:
        engine.close()


def _edit_record(data_dir: str, folder: str, **fields: object) -> None:
    record_file = Path(data_dir) / "models" / folder / "model.yml"
    record = yaml.safe_load(record_file.read_text())
    record.update(fields)
    record_file.write_text(yaml.safe_dump(record, sort_keys=False))


@pytest.mark.anyio
async def test_a_model_yml_edited_to_bf16_is_not_served_otherwise_than_it_says(
    settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Import refuses bf16 for a cross-encoder, and OpenVINO would serve an older cortex's normalising graph
    normalised whatever the request asks: a model.yml edited to say bf16 for either is unavailable, saying why,
    rather than served with other scores or another vector length."""
    monkeypatch.setattr(hardware, "bf16_available", lambda: True)  # refused before OpenVINO compiles anything
    async with serve(settings()) as api:
        for model, path in (("ce:edit", DATA / "cross-encoder-tiny"), ("old:edit", FIXTURE)):
            r = await api.post("/v1/models/import", json={"model": model, "model_path": str(path)})
            assert r.status_code == 200, r.text
        data_dir = settings().data_dir
        _edit_record(data_dir, "ce@edit", precision="bf16")
        graph_file = Path(data_dir) / "models" / "old@edit" / GRAPH_FILE
        proto = onnx.load(str(graph_file), load_external_data=False)  # end it as graphs did before issue 15
        final = proto.graph.output[0].name
        for node in proto.graph.node:
            node.output[:] = ["pooled" if o == final else o for o in node.output]
        proto.graph.node.append(onnx.helper.make_node("LpNormalization", ["pooled"], [final], axis=-1, p=2))
        onnx.save(proto, str(graph_file))
        size = sum(f.stat().st_size for f in graph_file.parent.iterdir() if f.name != "model.yml")
        _edit_record(data_dir, "old@edit", precision="bf16", size=size)
        r = await api.post("/v1/rerank", json={"model": "ce:edit", "query": "q", "documents": ["d"]})
        assert r.status_code == 500 and r.json()["error"]["code"] == "model_unavailable", r.text
        assert "cross-encoder is served in fp32" in r.json()["error"]["message"]
        r = await api.post("/v1/embeddings", json={"model": "old:edit", "input": "hello", "normalize": False})
        assert r.status_code == 500 and r.json()["error"]["code"] == "model_unavailable", r.text
        assert "normalises inside" in r.json()["error"]["message"]


@pytest.mark.anyio
@pytest.mark.parametrize("option", [{"precision": "bf16"}, {"quantize": "int8"}, {"outtype": "q8_0"}])
async def test_a_pull_refuses_import_options_rather_than_ignore_them(
    settings: Callable[..., Settings], option: dict
) -> None:
    """A pull imports with the defaults: `precision` on a pull was dropped and the model came at fp32."""
    async with serve(settings()) as api:
        r = await api.post("/v1/models/pull", json={"model": "org/repo", **option})
    assert r.status_code == 400, r.text
    (name,) = option
    assert r.json()["error"]["param"] == name and "option of `cortex models import`" in r.json()["error"]["message"]


def test_graph_feed_pads_to_a_multiple_and_masks_the_padding() -> None:
    from cortex.engine.graph_file import graph_feed

    feed = graph_feed([[5, 6, 7], [8]], "pool_start", [1, 0], multiple=8)
    assert feed["input_ids"].shape == (2, 8) and feed["input_ids"][0, :3].tolist() == [5, 6, 7]
    assert feed["attention_mask"].sum(axis=1).tolist() == [3, 1] and feed["pool_start"].tolist() == [1, 0]
    assert graph_feed([[1] * 16], None, None, multiple=8)["input_ids"].shape == (1, 16)  # already a multiple


def test_openvino_sees_input_lengths_rounded_up_but_never_past_the_context(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its per-shape cache holds at most n_ctx / 8 shapes per stream (a shape of its own per length grew a
    server by ~470 MiB, plus at most 7 for the lengths within 8 of the context's edge, which are not padded
    past it."""
    import cortex.engine.openvino as openvino

    store = ModelStore(tmp_path / "models")
    record = Importer(store).run("m:1", FIXTURE)
    folder = store.folder(record.id)
    ov = OpenVinoEngine(folder / GRAPH_FILE, folder / TOKENIZER_FILE, ctx_len=13, n_threads=1, precision="fp32")
    seen: list[int] = []
    real = openvino.graph_feed

    def spy(seqs, *args):
        feed = real(seqs, *args)
        seen.append(feed["input_ids"].shape[1])
        return feed

    monkeypatch.setattr(openvino, "graph_feed", spy)
    try:
        for n in (1, 5, 8, 9, 13):
            ov.embed([[101] + [1000] * (n - 2) + [102]] if n > 1 else [[101]])
    finally:
        ov.close()
    assert seen == [8, 8, 8, 9, 13]  # 9 would round to 16, past the context of 13
