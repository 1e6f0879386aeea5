#!/bin/sh
# Builds flowc and runs the whole test suite: the Criterion tests (including
# the independent PyTorch check and a bounded fuzz run), then the same tests
# built with AddressSanitizer and UBSan, then valgrind on the CLI.
set -eu
cd "$(dirname "$0")/.."
sh scripts/deps.sh --test
J="$(nproc)"
cmake -S . -B build -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build -j"$J"
ctest --test-dir build --output-on-failure
if [ "${FLOWC_SKIP_SANITIZE:-0}" != 1 ]; then
  cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DFLOWC_SANITIZE=ON >/dev/null
  cmake --build build-asan -j"$J"
  ASAN_OPTIONS=detect_leaks=1 ctest --test-dir build-asan --output-on-failure
fi
sh scripts/valgrind-cli.sh build
sh scripts/fuzz.sh
