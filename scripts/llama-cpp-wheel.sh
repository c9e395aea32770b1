#!/usr/bin/env bash
# Builds (once) and installs the llama-cpp-python that cortex runs: a portable build with runtime CPU dispatch.
#
# Why not `pip install llama-cpp-python`: from source it compiles ggml with -march=native, so
#  - on Intel Xeons with AMX it compiles ggml's AMX kernels, which crash there (SIGILL at the first
#    `tilezero`: llama.cpp PR 26954; seen on every GGUF model), and
#  - the wheel, which pip caches, only runs on CPUs with the builder's features (SIGILL on an older CPU).
# This build is what llama.cpp's releases and Ollama ship: GGML_BACKEND_DL + GGML_CPU_ALL_VARIANTS compiles
# the CPU backend once per x86-64 level (x64, SSE4.2, AVX, AVX2, AVX-512, VNNI, BF16, ...) as separate
# libggml-cpu-*.so files, and ggml loads the best one the running CPU supports (cortex asks for it, from the
# package's own folder: src/cortex/engine/llama_backend.py). The one variant with AMX kernels
# (sapphirerapids) is left out; on an AMX Xeon the AVX-512 VNNI/BF16 variant (cooperlake or zen4) runs.
# libmtmd (multimodal) is not built: cortex does not use it.
# One patch to llama.cpp (scripts/llama-cpp-embeddings-only.patch): a context with embeddings on and a pooling
# type of mean, cls or last leaves the output layer (the LM head) out of its graph and reserves no logits
# buffer. Stock llama.cpp computes every token's logits there and throws them away: for Gemma 3 270M
# (262,144-token vocabulary) that is 336 of every token's 536 MFLOP and 2 MiB of memory per token of the
# largest batch (one 2048-token input left the server at 4.5 GiB). Vectors are bit-for-bit those of the
# stock build (bench/llama_memory.py checks it). Upstream has the same idea as an opt-in context parameter
# (ggml-org/llama.cpp PR 25964, open); a new field would break llama-cpp-python's ctypes struct, so here it is
# what any pooled-embedding context does.
#
# usage: scripts/llama-cpp-wheel.sh PYTHON       builds the wheel if it is not cached, then installs it
# The wheel is cached in ${CORTEX_WHEEL_CACHE:-~/.cache/cortex/wheels}/KEY, KEY = version + hash of this
# script's commands (comments left out) and of the patch, so a change of build recipe never reuses an old wheel. The first
# build took 7 min 7 s on 2 cores of an AMD EPYC (Zen 4): `time bash scripts/llama-cpp-wheel.sh
# .venv/bin/python` with an empty cache.
set -euo pipefail
py=${1:?usage: llama-cpp-wheel.sh PYTHON}
ver=0.3.36
here=$(cd "$(dirname "$0")" && pwd)
patch_file="$here/llama-cpp-embeddings-only.patch"
key="$ver-$( (grep -v '^#' "$here/llama-cpp-wheel.sh"; cat "$patch_file") | sha256sum | cut -c1-12)"
dest=${CORTEX_WHEEL_CACHE:-$HOME/.cache/cortex/wheels}/$key
wheel=$(ls "$dest"/llama_cpp_python-*.whl 2>/dev/null | head -n1 || true)
if [ -z "$wheel" ]; then
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  echo "building llama-cpp-python $ver with runtime CPU dispatch (about 7 minutes on 2 cores, once)" >&2
  "$py" -m pip download -q --no-deps --no-binary=:all: "llama-cpp-python==$ver" -d "$work"
  mkdir "$work/src" && tar xzf "$work/llama_cpp_python-$ver.tar.gz" -C "$work/src" --strip-components=1
  variants="$work/src/vendor/llama.cpp/ggml/src/CMakeLists.txt"
  grep -q 'ggml_add_cpu_backend_variant(sapphirerapids' "$variants" \
    || { echo "llama-cpp-wheel.sh: the AMX variant line moved in llama.cpp; update this script" >&2; exit 1; }
  sed -i '/ggml_add_cpu_backend_variant(sapphirerapids/d' "$variants"
  patch -d "$work/src" -p1 --forward --batch --quiet < "$patch_file" \
    || { echo "llama-cpp-wheel.sh: $patch_file no longer applies to llama.cpp $ver; update it" >&2; exit 1; }
  # The CPU variants install to CMAKE_INSTALL_BINDIR: put them beside libllama.so in the package.
  CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON -DLLAVA_BUILD=OFF \
-DGGML_OPENMP=ON -DCMAKE_INSTALL_BINDIR=llama_cpp/lib -DLLAMA_BUILD_TESTS=OFF" \
  CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
    "$py" -m pip wheel -q --no-deps --no-cache-dir "$work/src" -w "$work/out"
  mkdir -p "$dest"
  mv "$work"/out/llama_cpp_python-*.whl "$dest/"
  wheel=$(ls "$dest"/llama_cpp_python-*.whl | head -n1)
fi
"$py" -m pip install -q --no-deps --force-reinstall "$wheel"
