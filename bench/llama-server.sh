#!/usr/bin/env bash
# Copied from the shared peers folder: builds llama-server from the llama.cpp that llama-cpp-python vendors.
# Builds llama.cpp's own llama-server, from the llama.cpp source that the llama-cpp-python sdist
# vendors, so the project can be measured side by side with it on the same model and threads.
# usage: llama-server.sh [VERSION]    (default: the llama-cpp-python version that pip sees, else 0.3.36)
# Prints the path of the built binary on its last line. Takes about 8 minutes on 2 cores the first time;
# the build is kept in ~/.cache/peers/ and reused.
set -euo pipefail
ver=${1:-$(python3 -c 'import importlib.metadata as m; print(m.version("llama-cpp-python"))' 2>/dev/null || echo 0.3.36)}
dest=${PEERS_CACHE:-$HOME/.cache/peers}/llama-server-$ver
bin=$dest/src/vendor/llama.cpp/build/bin/llama-server
if [ ! -x "$bin" ]; then
  mkdir -p "$dest"
  python3 -m pip download -q --no-deps --no-binary=:all: "llama-cpp-python==$ver" -d "$dest" >&2
  rm -rf "$dest/src" && mkdir -p "$dest/src"
  tar xzf "$dest"/llama_cpp_python-"$ver".tar.gz -C "$dest/src" --strip-components=1
  cd "$dest/src/vendor/llama.cpp"
  cmake -B build -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF >&2
  cmake --build build --target llama-server -j"$(nproc)" >&2
fi
echo "$bin"
