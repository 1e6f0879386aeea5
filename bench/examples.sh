#!/bin/sh
# Throughput of log_prob at batch 1 and 65536 and sampling at 65536 for each
# example, with its compile time (flowc bench prints both).
set -eu
cd "$(dirname "$0")/.."
F=${FLOWC:-build/flowc}
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
printf '0.1,0.2,0.3\n' > "$T/c.csv"
for ex in moons glow spline conditional; do
  $F init examples/$ex.flow --seed 1 -o "$T/$ex.safetensors"
  for b in 1 65536; do
    $F bench examples/$ex.flow -w "$T/$ex.safetensors" --batch $b --op logprob
  done
  $F bench examples/$ex.flow -w "$T/$ex.safetensors" --batch 65536 --op sample
done
