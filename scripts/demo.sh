#!/bin/sh
# Builds flowc and runs its main job on an example: make two-moons data,
# train the RealNVP of examples/moons.flow on it (train and validation NLL
# printed), draw samples with their log-densities, score held-out data,
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
$F toy moons -n 20000 --seed 1 -o $OUT/train.npy
$F toy moons -n 5000 --seed 2 -o $OUT/valid.npy
$F train examples/moons.flow --data $OUT/train.npy --valid $OUT/valid.npy --steps 3000 \
    --batch 256 --lr 2e-3 --schedule cosine --seed 1 -o $OUT/moons.safetensors
$F logprob examples/moons.flow -w $OUT/moons.safetensors --data $OUT/valid.npy -o $OUT/lp.npy
$F sample examples/moons.flow -w $OUT/moons.safetensors -n 2000 --seed 7 -o $OUT/samples.npy --logprob $OUT/samples_lp.npy
$F build examples/moons.flow -w $OUT/moons.safetensors -o $OUT/libmoons.so
cc examples/use_so.c -I$OUT -L$OUT -lmoons -Wl,-rpath,"$PWD/$OUT" -o $OUT/use_so
$OUT/use_so 5 7
set +x
echo "samples: $OUT/samples.npy (2000 x 2); weights: $OUT/moons.safetensors"
