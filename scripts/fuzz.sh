#!/bin/sh
# Builds the libFuzzer harnesses (parser, weights reader) with clang, ASan
# and UBSan, and runs each for FUZZ_SECONDS (default 30).
set -eu
cd "$(dirname "$0")/.."
CC=clang-19 cmake -S . -B build-fuzz -DFLOWC_FUZZ=ON -DFUZZ_SECONDS="${FUZZ_SECONDS:-30}" >/dev/null
cmake --build build-fuzz -j"$(nproc)" --target fuzz_parser fuzz_weights
ctest --test-dir build-fuzz --output-on-failure
