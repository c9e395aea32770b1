#!/usr/bin/env bash
# Copied from the shared peers folder: starts Infinity on a sentence-transformers folder.
# Starts Infinity (infinity-emb 0.0.78, its ONNX Runtime "optimum" engine) on a sentence-transformers
# folder, as a second peer to measure side by side. Infinity wants an ONNX file in the folder; this script
# exports one with torch (CPU build) into a cached copy of the folder. Infinity's OpenAI route is
# /embeddings (no /v1), and its usage counts characters, not tokens: compare inputs/s, not tokens/s.
# usage: infinity.sh MODEL_DIR PORT [NAME]    (runs in the foreground; ~3 minutes to set up the first time)
set -euo pipefail
src=$(cd "$1" && pwd); port=$2; name=${3:-$(basename "$src")}
cache=${PEERS_CACHE:-$HOME/.cache/peers}
venv=$cache/infinity-0.0.78
if [ ! -x "$venv/bin/infinity_emb" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q torch==2.13.0 >&2
  "$venv/bin/pip" install -q "infinity-emb[server,optimum]==0.0.78" >&2
fi
dir=$cache/infinity-models/$(printf %s "$src" | sha256sum | cut -c1-16)
if [ ! -f "$dir/model.onnx" ]; then
  rm -rf "$dir" && mkdir -p "$(dirname "$dir")" && cp -r "$src" "$dir"
  HF_HUB_OFFLINE=1 "$venv/bin/python" - "$dir" >&2 <<'PY'
import sys, torch
from transformers import AutoModel
d = sys.argv[1]
m = AutoModel.from_pretrained(d, attn_implementation="eager").eval()
class Hidden(torch.nn.Module):
    def __init__(self, m):
        super().__init__(); self.m = m
    def forward(self, input_ids, attention_mask, token_type_ids):
        return self.m(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).last_hidden_state
x = torch.ones(2, 8, dtype=torch.long)
names = ["input_ids", "attention_mask", "token_type_ids"]
torch.onnx.export(Hidden(m), (x, x, torch.zeros_like(x)), f"{d}/model.onnx", input_names=names,
                  output_names=["last_hidden_state"], opset_version=17, dynamo=False,
                  dynamic_axes={k: {0: "batch", 1: "seq"} for k in names + ["last_hidden_state"]})
PY
fi
cd "$dir"  # Infinity matches ONNX files by their path relative to the model id
exec env HF_HUB_OFFLINE=1 INFINITY_ANONYMOUS_USAGE_STATS=0 "$venv/bin/infinity_emb" v2 --model-id . \
  --served-model-name "$name" --engine optimum --device cpu --host 127.0.0.1 --port "$port" --batch-size 32
