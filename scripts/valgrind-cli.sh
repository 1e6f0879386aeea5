#!/bin/sh
# Runs the CLI's commands under valgrind; any leak or memory error fails.
set -eu
cd "$(dirname "$0")/.."
B=${1:-build}
F=$B/flowc
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
VG="valgrind -q --leak-check=full --errors-for-leak-kinds=definite --error-exitcode=99"
$VG $F check examples/glow.flow >/dev/null
$VG $F init examples/conditional.flow --seed 1 -o "$T/w.safetensors"
printf '0.5,1,2\n' > "$T/c.csv"
$VG $F sample examples/conditional.flow -w "$T/w.safetensors" -n 300 --seed 2 --context "$T/c.csv" -o "$T/x.npy" --logprob "$T/lp.npy"
$VG $F logprob examples/conditional.flow -w "$T/w.safetensors" --data "$T/x.npy" --context "$T/c.csv" -o "$T/lp2.npy"
$VG $F build examples/moons.flow -o "$T/libmoons.so" 2>&1
# wrong weights for the model: exit 1 (refused), not 99 (a leak on the error path)
set +e
$VG $F logprob examples/moons.flow -w "$T/w.safetensors" --data "$T/x.npy" -o "$T/bad.npy" 2>/dev/null
rc=$?
set -e
[ "$rc" -eq 1 ] || { echo "valgrind-cli: refusing bad weights exited $rc"; exit 1; }
echo "valgrind-cli: 1 passed, 0 failed"
