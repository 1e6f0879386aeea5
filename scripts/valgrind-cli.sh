#!/bin/sh
# Runs the CLI's commands under valgrind; any leak or memory error fails.
set -eu
cd "$(dirname "$0")/.."
B=${1:-build}
F=$B/flowc
T=$(mktemp -d)
trap 'rm -rf "$T"' EXIT
# -O0: the JIT compiles in a fraction of the time under valgrind; the code
# paths of flowc itself are the same at every level.
VG="valgrind -q --leak-check=full --errors-for-leak-kinds=definite --error-exitcode=99"
$VG $F check examples/glow.flow >/dev/null
$VG $F init examples/conditional.flow --seed 1 -o "$T/w.safetensors"
printf '0.5,1,2\n' > "$T/c.csv"
$VG $F sample -O0 examples/conditional.flow -w "$T/w.safetensors" -n 300 --seed 2 --context "$T/c.csv" -o "$T/x.npy" --logprob "$T/lp.npy"
$VG $F logprob -O0 examples/conditional.flow -w "$T/w.safetensors" --data "$T/x.npy" --context "$T/c.csv" -o "$T/lp2.npy"
$VG $F build -O0 examples/moons.flow -o "$T/libmoons.so" 2>&1
$VG $F toy moons -n 600 --seed 1 -o "$T/moons.npy"
$VG $F train -O0 examples/moons.flow --data "$T/moons.npy" --steps 6 --batch 64 --eval-every 3 \
    --patience 5 --checkpoint "$T/ck.safetensors" -o "$T/m.safetensors" 2>/dev/null
$VG $F train -O0 examples/moons.flow --data "$T/moons.npy" --steps 8 --batch 64 \
    --resume "$T/ck.safetensors" -o "$T/m.safetensors" 2>/dev/null
# residual: the series estimator's noise and loop in training, the fixed-point
# inverse in sampling
$VG $F train -O0 examples/residual.flow --data "$T/moons.npy" --steps 4 --batch 32 \
    -o "$T/r.safetensors" 2>/dev/null
$VG $F sample -O0 examples/residual.flow -w "$T/r.safetensors" -n 50 --seed 3 -o "$T/rx.npy" \
    --logprob "$T/rlp.npy"
# continuous flows: flow matching's noise, training through rk4's steps with
# Hutchinson probes, the solver loops, dopri5's controller, an sde's noise
$VG $F train -O0 examples/cnf.flow --model fm --objective fm --time-dist 'beta(1.5,1)' \
    --data "$T/moons.npy" --steps 3 --batch 32 -o "$T/c.safetensors" 2>/dev/null
$VG $F train -O0 examples/cnf.flow --model ffjord --data "$T/moons.npy" --steps 2 --batch 32 \
    --init "$T/c.safetensors" -o "$T/c2.safetensors" 2>/dev/null
$VG $F sample -O0 examples/cnf.flow --model fm -w "$T/c2.safetensors" -n 40 --seed 3 \
    -o "$T/cx.npy" --logprob "$T/clp.npy"
$VG $F logprob -O0 examples/cnf.flow --model adaptive -w "$T/c2.safetensors" --data "$T/cx.npy" \
    -o "$T/clp2.npy"
$VG $F sample -O0 examples/cnf.flow --model langevin -w "$T/c2.safetensors" -n 40 --seed 3 \
    -o "$T/sx.npy"
# wrong weights for the model: exit 1 (refused), not 99 (a leak on the error path)
set +e
$VG $F logprob -O0 examples/moons.flow -w "$T/w.safetensors" --data "$T/x.npy" -o "$T/bad.npy" 2>/dev/null
rc=$?
set -e
[ "$rc" -eq 1 ] || { echo "valgrind-cli: refusing bad weights exited $rc"; exit 1; }
echo "valgrind-cli: 1 passed, 0 failed"
