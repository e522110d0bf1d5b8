#!/usr/bin/env bash
# Build the native llama-server from the llama.cpp that the pinned llama-cpp-python sdist
# vendors, into a scratch folder (never committed), for bench_serving.py --llama-server.
# About 7 minutes on 2 cores. Prints the binary's path last.
#
#   scripts/build_llama_server.sh [SCRATCH_DIR]     (default /var/tmp/llama-server-build)
set -euo pipefail
cd "$(dirname "$0")/.."
version=$(sed -n 's/.*"llama-cpp-python==\([0-9.]*\)".*/\1/p' pyproject.toml)
out=${1:-/var/tmp/llama-server-build}
mkdir -p "$out"
if [ ! -x "$out/build/bin/llama-server" ]; then
    .venv/bin/pip download --quiet --no-deps --no-binary :all: \
        "llama-cpp-python==${version}" -d "$out/sdist"
    tar -xzf "$out"/sdist/llama_cpp_python-"${version}".tar.gz -C "$out"
    src="$out/llama_cpp_python-${version}/vendor/llama.cpp"
    cmake -S "$src" -B "$out/build" -DLLAMA_CURL=OFF -DLLAMA_BUILD_TESTS=OFF \
        -DLLAMA_BUILD_EXAMPLES=OFF -DCMAKE_BUILD_TYPE=Release >/dev/null
    cmake --build "$out/build" --target llama-server -j"$(nproc)" >/dev/null
fi
echo "$out/build/bin/llama-server"
