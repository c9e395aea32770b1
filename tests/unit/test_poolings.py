"""Every pooling mode of sentence-transformers' Pooling module, as the ONNX graph computes it (checked against
a numpy forward pass, on a padded batch), how a folder's Pooling config is read, and what is refused: several
modes at once, unknown modes, poolings llama.cpp lacks, architectures cortex does not build."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from cortex.convert.onnx_model import write_onnx_model
from cortex.convert.st_folder import POOLING_KEYS, read_st_folder
from cortex.engine.base import POOLINGS
from cortex.engine.kinds import ImportOptions, Source, choose
from cortex.engine.onnx import OnnxEngine
from cortex.errors import InvalidModelFile, InvalidRequest
from tests import DATA
from tests.numpy_bert import pooled, token_vectors

CASED = DATA / "arch" / "bert-cased"
# lengths differ, so that a batch of them is padded: padding must not reach any pooling
TEXTS = ["A man is eating food.", "Python's Pooling: CLS, Max and WeightedMean!", "x"]


def _with_pooling(tmp_path: Path, **modes: bool) -> Path:
    """A copy of the cased BERT fixture whose Pooling config turns on `modes` (every other mode off)."""
    folder = tmp_path / "model"
    shutil.copytree(CASED, folder)
    cfg = json.loads((folder / "1_Pooling" / "config.json").read_text())
    cfg.update({key: False for key in POOLING_KEYS.values()} | modes)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(cfg))
    return folder


def test_every_pooling_has_its_sentence_transformers_key() -> None:
    assert tuple(POOLING_KEYS) == POOLINGS
    assert all(key.startswith("pooling_mode_") for key in POOLING_KEYS.values())


@pytest.mark.parametrize("pooling", POOLINGS)
def test_the_graph_pools_as_sentence_transformers_does(tmp_path: Path, pooling: str) -> None:
    """Each mode, on a padded batch and alone, from the first token and (a prompt left out) from the fourth."""
    folder = _with_pooling(tmp_path, include_prompt=False, **{POOLING_KEYS[pooling]: True})
    model = read_st_folder(folder)
    assert model.pooling == pooling
    out = tmp_path / "onnx"
    out.mkdir()
    write_onnx_model(model, out, None)
    engine = OnnxEngine(out / "model.onnx", out / "tokenizer.json", ctx_len=256, n_threads=1)
    try:
        seqs = [engine.tokenize(t) for t in TEXTS]
        for start in (0, 3):
            starts = [min(start, len(s) - 1) for s in seqs]
            batch = engine.embed(seqs, starts=starts)  # padded to the longest
            alone = np.concatenate([engine.embed([s], starts=[n]) for s, n in zip(seqs, starts, strict=True)])
            expected = np.array(
                [pooled(token_vectors(folder, s), pooling, n) for s, n in zip(seqs, starts, strict=True)]
            )
            np.testing.assert_allclose(batch, expected, rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(alone, expected, rtol=1e-4, atol=1e-4)
            assert np.abs(expected).max() > 0.5  # not a degenerate vector: the comparison can fail
        np.testing.assert_allclose(engine.embed(seqs), engine.embed(seqs, starts=[0, 0, 0]), rtol=1e-6)
    finally:
        engine.close()


def test_only_a_graph_that_leaves_the_prompt_out_takes_pool_start(tmp_path: Path) -> None:
    """The pooling of every other model is as before: no extra input, no extra work on the hot path."""
    import onnx

    for include_prompt in (True, False):
        out = tmp_path / str(include_prompt)
        out.mkdir()
        write_onnx_model(read_st_folder(_with_pooling(out, include_prompt=include_prompt)), out, None)
        inputs = [i.name for i in onnx.load(str(out / "model.onnx"), load_external_data=False).graph.input]
        assert ("pool_start" in inputs) is not include_prompt


@pytest.mark.parametrize(
    ("config", "pooling"),
    [({"pooling_mode": "mean_sqrt_len_tokens"}, "mean_sqrt_len"), ({"pooling_mode": ["lasttoken"]}, "last"),
     ({"pooling_mode": "weightedmean"}, "weightedmean"), ({}, "mean")],
)  # fmt: skip
def test_sentence_transformers_6_configs_and_no_mode_at_all(tmp_path: Path, config: dict, pooling: str) -> None:
    """sentence-transformers 6 writes `pooling_mode` (a name or a list); a config that turns nothing on is mean."""
    folder = _with_pooling(tmp_path)
    (folder / "1_Pooling" / "config.json").write_text(json.dumps({"embedding_dimension": 64, **config}))
    assert read_st_folder(folder).pooling == pooling


def test_poolings_differ_from_each_other(tmp_path: Path) -> None:
    """The numpy reference itself tells the modes apart on this model (so each graph test above is specific)."""
    engine_ids = [101, 138, 1299, 1110, 5497, 2094, 119, 102]
    tokens = token_vectors(CASED, engine_ids)
    vectors = {p: pooled(tokens, p) for p in POOLINGS}
    for a in POOLINGS:
        for b in POOLINGS:
            if a < b:
                assert not np.allclose(vectors[a], vectors[b], rtol=1e-3), (a, b)


@pytest.mark.parametrize(
    ("modes", "words"),
    [
        ({"pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": True}, "concatenates several pooling modes"),
        ({"pooling_mode": ["cls", "mean"]}, "concatenates several pooling modes (cls, mean)"),
        ({"pooling_mode": "median"}, "pooling `median` is not one cortex computes"),
        ({"pooling_mode_attention": True}, "pooling `pooling_mode_attention` is not one cortex computes"),
    ],
)
def test_pooling_configs_cortex_cannot_compute_are_refused_with_what_it_can(
    tmp_path: Path, modes: dict, words: str
) -> None:
    with pytest.raises(InvalidModelFile, match=re.escape(words)) as refused:
        read_st_folder(_with_pooling(tmp_path, **modes))
    assert refused.value.param == "model_path"
    assert all(f"{name} ({key})" in refused.value.message for name, key in POOLING_KEYS.items())


@pytest.mark.parametrize("pooling", ["max", "mean_sqrt_len", "weightedmean"])
def test_llama_cpp_refuses_poolings_it_lacks(tmp_path: Path, pooling: str) -> None:
    folder = Source(folder=read_st_folder(_with_pooling(tmp_path, **{POOLING_KEYS[pooling]: True})))
    assert choose(None, folder, ImportOptions()).name == "onnxruntime"
    with pytest.raises(InvalidRequest, match=f"its pooling is {pooling}, and this engine pools by mean, cls, last"):
        choose("llama-cpp", folder, ImportOptions())
    gguf = Source(file=Path("model.gguf"))
    with pytest.raises(InvalidRequest, match="pools by mean, cls, last") as refused:
        choose(None, gguf, ImportOptions(pooling=pooling))
    assert refused.value.param == "pooling" and "GGUF file" in refused.value.message
    assert choose(None, gguf, ImportOptions(pooling="last")).name == "llama-cpp"


def test_a_cased_vocabulary_goes_to_onnxruntime() -> None:
    model = read_st_folder(CASED)
    assert (model.lowercase, model.tokenizer_model, model.pooling, model.max_seq_length) == (
        False, "WordPiece", "mean_sqrt_len", 256,
    )  # fmt: skip
    assert choose(None, Source(folder=model), ImportOptions()).name == "onnxruntime"


@pytest.mark.parametrize(
    ("config", "words"),
    [
        ({"model_type": "gpt2", "architectures": ["GPT2Model"]}, "Architecture `gpt2` is not supported. Supported: "),
        ({"model_type": "custom", "auto_map": {"AutoModel": "modeling.Custom"}}, "trust_remote_code"),
        ({"model_type": "bert", "position_embedding_type": "relative_key"}, "absolute position embeddings"),
    ],
)
def test_architectures_cortex_does_not_build_are_refused(tmp_path: Path, config: dict, words: str) -> None:
    folder = _with_pooling(tmp_path, pooling_mode_mean_tokens=True)
    base = json.loads((folder / "config.json").read_text())
    base.pop("architectures")
    (folder / "config.json").write_text(json.dumps(base | config))
    with pytest.raises(InvalidModelFile, match=words) as refused:
        read_st_folder(folder)
    assert refused.value.param == "model_path"
