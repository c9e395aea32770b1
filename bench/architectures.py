"""Each architecture fixture (tests/data/arch/NAME) against sentence-transformers, and the engine's speed.

    .venv/bin/python bench/architectures.py [--names xlm-roberta,mpnet,...] [--inputs 256]

For each fixture, fp32 and int8 (`--quantize int8`), built by cortex's own importer: the least cosine and the
largest length difference against the vectors sentence-transformers computed (NAME.reference.json: every
short text, and the long one cut at max_seq_length as sentence-transformers cuts it), whether every token id
matches, and the ONNX Runtime engine's tokens/s on the first --inputs pydoc sentences of bench/load.py's
corpus (cut to the model's context), one caller and as many callers as cores on the
engine's one session (as cortex calls it). The fixtures have random weights and are small
(64-96 wide, 2-3 layers): the speed says what the engine's overhead is, not what a real model of that
architecture runs at.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from engines import parallel, timed  # noqa: E402
from load import corpus  # noqa: E402

from cortex.config import available_cores  # noqa: E402
from cortex.engine.kinds import ImportOptions  # noqa: E402
from cortex.engine.onnx import OnnxEngine  # noqa: E402
from cortex.importer import Importer  # noqa: E402
from cortex.runtime.embed import finish_vectors  # noqa: E402
from cortex.store.store import ModelStore  # noqa: E402

ARCH = HERE.parent / "tests" / "data" / "arch"
NAMES = ("bert-cased", "xlm-roberta", "mpnet", "modernbert")


def compare(engine: OnnxEngine, normalize: bool, reference: dict) -> tuple[float, float, bool]:
    """(least cosine, largest |length difference|, every token id equal) over the reference's texts."""
    cosines, lengths, same_ids = [], [], True
    rows = [(r["text"], r["embedding"], r["tokens"]) for r in reference["short"]]
    rows.append((reference["long"]["text"], reference["long"]["embedding"], None))
    for text, expected, ids in rows:
        tokens = engine.tokenize(text)
        same_ids &= ids is None or tokens == ids
        got = finish_vectors(
            engine.embed([engine.truncate(tokens, engine.n_ctx)]), normalize=normalize, dimensions=None
        )[0]
        want = np.asarray(expected, dtype=np.float64)
        cosines.append(float(got @ want / np.linalg.norm(got) / np.linalg.norm(want)))
        lengths.append(abs(float(np.linalg.norm(got) - np.linalg.norm(want))))
    return min(cosines), max(lengths), same_ids


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--names", default=",".join(NAMES))
    ap.add_argument("--inputs", type=int, default=256)
    args = ap.parse_args()
    store = ModelStore(Path(tempfile.mkdtemp(prefix="cortex-arch-")) / "models")
    cores = available_cores()
    sents = corpus()[: args.inputs]
    print(f"{len(sents)} pydoc sentences, {cores} cores")
    print("| architecture | weights | min cosine | max length diff | token ids | tokens/s, 1 caller | "
          f"tokens/s, {cores} callers |")  # fmt: skip
    print("|---|---|---|---|---|---|---|")
    for name in args.names.split(","):
        reference = json.loads((ARCH / f"{name}.reference.json").read_text())
        for quantize in (None, "int8"):
            options = ImportOptions(engine_options={"quantize": quantize} if quantize else {})
            record = Importer(store).run(f"{name}:{quantize or 'fp32'}", ARCH / name, options)
            graph, _, tokenizer = (store.folder(record.id) / f for f in record.files)
            engine = OnnxEngine(graph, tokenizer, ctx_len=record.ctx_len, n_threads=cores)
            cosine, length, same = compare(engine, record.normalize, reference)
            seqs = [engine.truncate(engine.tokenize(s), record.ctx_len) for s in sents]
            ntok = sum(map(len, seqs))
            parallel(engine, seqs[:16], cores)  # warm-up
            one, many = timed(ntok, parallel, engine, seqs, 1), timed(ntok, parallel, engine, seqs, cores)
            engine.close()
            print(f"| {name} | {quantize or 'fp32'} | {cosine:.7f} | {length:.1e} | {'same' if same else 'DIFFER'} "
                  f"| {one:,.0f} | {many:,.0f} |")  # fmt: skip


if __name__ == "__main__":
    main()
