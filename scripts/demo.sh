#!/bin/sh
# Builds flowc and runs its main job on an example: check a RealNVP model,
# make weights, draw samples with their log-densities, score them again,
# build a shared object and use it from a C program.
set -eu
cd "$(dirname "$0")/.."
sh scripts/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)"
F=build/flowc
OUT=build/demo
mkdir -p $OUT
set -x
$F check examples/moons.flow
$F init examples/moons.flow --seed 1 -o $OUT/moons.safetensors
$F sample examples/moons.flow -w $OUT/moons.safetensors -n 1000 --seed 7 -o $OUT/x.npy --logprob $OUT/lp_sample.npy
$F logprob examples/moons.flow -w $OUT/moons.safetensors --data $OUT/x.npy -o $OUT/lp.npy
$F encode examples/moons.flow -w $OUT/moons.safetensors --data $OUT/x.npy -o $OUT/z.npy --logdet $OUT/ld.npy
$F build examples/moons.flow -w $OUT/moons.safetensors -o $OUT/libmoons.so
cc examples/use_so.c -I$OUT -L$OUT -lmoons -Wl,-rpath,"$PWD/$OUT" -o $OUT/use_so
$OUT/use_so 5 7
$F bench examples/moons.flow -w $OUT/moons.safetensors --batch 65536 --op logprob
