#!/usr/bin/python3
"""bench/torch_pi0.py: the pi0 action head of examples/pi0_head.flow in
PyTorch, on the same weights as flowc, for bench/pi0_bench.sh (and as an
independent reference for examples/pi0_demo.sh).

Usage:
  torch_pi0.py prepare OUT.safetensors Z.npy [--init W0.safetensors]
                       [--hidden 1024,1024,1024] [--dim 350] [--context 512]
                       [--temb 32] [--seed S] [--rows N]
      Weights for the bench: with --init, flowc init's weights with the last
      linear layer (zero at initialisation, which would make the flow the
      identity) drawn N(0, 0.1^2) (the flow then moves z by about 0.1 a value);
      without it, every layer drawn here by PyTorch's nn.Linear default,
      U(-1/sqrt(in), 1/sqrt(in)) for weight and bias (hidden sizes, dim,
      context and embedding width from the options). Writes N (64) rows of N(0, 1) base draws to Z.npy
      (the first 4 times 3, to reach the tails).
  torch_pi0.py run -w W.safetensors --z Z.npy --ctx C.npy --x X.npy [--x X2.npy]
                   [--threads T] [--steps 10] [--temb 32] [--batch 1]
      Decodes Z.npy (contexts C.npy) in eager mode and TorchScript and
      refuses (exit 1) if the result differs from every X.npy (flowc's
      decode of the same z: `flowc decode`, the built .so) by TOL or more;
      then times decode at --batch rows and prints one JSON line per mode:
      config, batch, threads, s_per_call, samples_per_s, max_abs_diff.
  torch_pi0.py train --data X.npy --context C.npy [-w W0.safetensors]
                     [--hidden 1024,1024,1024] [--temb 32] [--steps N]
                     [--batch B] [--lr LR] [--time-dist uniform|beta(A,B)]
                     [--threads T] [--seed S] [-o W.safetensors]
      Flow-matching training of the same network (Adam 0.9/0.999/1e-8),
      from W0 or from a fresh initialisation (flowc's rule: nn.Linear
      defaults, last layer zero); prints one JSON line: samples_per_s (steps
      * batch / wall time of the loop), loss (mean of the last 10 steps),
      threads, steps, batch, seconds; -o writes the trained weights.
  torch_pi0.py sample -w W.safetensors --context C.npy -o X.npy [--seed S]
                      [--steps 10] [--temb 32]
      One sample per context row (z from torch.randn), for checking a
      demo's numbers without flowc.
  torch_pi0.py table FLOWC.txt TORCH.json...
      The comparison table (see pi0_bench.sh).

The mathematics is flow-language.md section 7:
  v(z, t, c) = net([z, c, temb(t)]), net the mlp (linear layers
  flow.0.net.J, weight [out, in], activation after all but the last;
  gelu is the exact, erf one), temb the sincos(K) embedding: n = K/2,
  period_k = 4e-3 * (4 / 4e-3)^(k / (n - 1)), w_k = 2 pi / period_k,
  temb(t) = [sin(w_0 t) .. sin(w_{n-1} t), cos(w_0 t) .. cos(w_{n-1} t)]
  (in double, then float32, as flowc). Sampling: Euler from t = 0 (z) to
  t = 1 with h = 1/steps at t_n = n/steps: z <- z + h v(z, t_n, c).
  Flow matching: z0 ~ N(0, I), x1 data, t ~ the time distribution,
  x_t = (1 - t) z0 + t x1, loss = mean over the batch of
  ||v(x_t, t, c) - (x1 - z0)||^2.

Timing: warm-up calls, then the median of single-call times over at least
1 s and 50 calls (5 calls minimum when a call takes over 0.1 s).

Exit status 0; 1 mismatch or bad input; 2 usage; 77 torch or numpy missing.
"""
import json
import math
import re
import statistics
import sys
import time
from typing import List

try:
    import numpy as np
    import torch
    import torch.nn.functional as F
    from torch import Tensor
except Exception as e:  # pragma: no cover - environment dependent
    if len(sys.argv) > 1 and sys.argv[1] == "table":   # needs neither
        Tensor = object
    else:
        print("torch_pi0: torch/numpy not available (%s)" % e, file=sys.stderr)
        sys.exit(77)

TOL = 1e-4           # as bench/torch_maf.py; flowc and PyTorch agree to about 5e-7 here
ACTS = ["relu", "tanh", "gelu", "silu", "elu", "softplus", "lipswish", "gelu_tanh"]

# --------------------------------------------------------------------------
# safetensors and .npy, by hand (no safetensors package assumed)

from torch_st import st_read, st_write  # noqa: E402  (bench/torch_st.py)


def load_rows(path):
    a = np.load(path).astype(np.float32)
    return torch.from_numpy(np.ascontiguousarray(a.reshape(a.shape[0], -1)))


# --------------------------------------------------------------------------
# the model (TorchScript-compatible functions)


def act_fn(h: Tensor, act: int) -> Tensor:
    if act == 0:
        return torch.relu(h)
    if act == 1:
        return torch.tanh(h)
    if act == 2:
        return F.gelu(h)
    if act == 3:
        return F.silu(h)
    if act == 4:
        return F.elu(h)
    if act == 5:
        return F.softplus(h)
    if act == 6:
        return F.silu(h) / 1.1
    return F.gelu(h, approximate="tanh")


def mlp(x: Tensor, Ws: List[Tensor], bs: List[Tensor], act: int) -> Tensor:
    h = x
    n = len(Ws)
    for j in range(n):
        h = F.linear(h, Ws[j], bs[j])
        if j < n - 1:
            h = act_fn(h, act)
    return h


def velocity(z: Tensor, c: Tensor, te: Tensor, Ws: List[Tensor], bs: List[Tensor],
             act: int) -> Tensor:
    """v(z, t, c) = net([z, c, temb(t)]); te is temb(t), [1, K] or [B, K]."""
    return mlp(torch.cat([z, c, te.expand(z.shape[0], te.shape[1])], dim=1), Ws, bs, act)


def decode(z: Tensor, c: Tensor, temb_tab: Tensor, Ws: List[Tensor], bs: List[Tensor],
           act: int) -> Tensor:
    """Euler from t = 0 to 1: temb_tab[n] = temb(n / steps), steps rows."""
    steps = temb_tab.shape[0]
    h = 1.0 / steps
    x = z
    for n in range(steps):
        x = x + h * velocity(x, c, temb_tab[n:n + 1], Ws, bs, act)
    return x


def temb_np(t, K):
    """sincos(K) of times t (any shape), in double; [..., K]."""
    n = K // 2
    k = np.arange(n, dtype=np.float64)
    w = 2 * math.pi / (4e-3 * (4 / 4e-3) ** (k / (n - 1)))
    a = np.asarray(t, dtype=np.float64)[..., None] * w
    return np.concatenate([np.sin(a), np.cos(a)], axis=-1)


def temb_torch(t: Tensor, freqs: Tensor) -> Tensor:
    """sincos of a [B, 1] float32 tensor of times, freqs [1, n] (training)."""
    a = t * freqs
    return torch.cat([torch.sin(a), torch.cos(a)], dim=1)


def temb_table(steps, K):
    return torch.from_numpy(temb_np(np.arange(steps, dtype=np.float64) / steps, K).astype(np.float32))


# --------------------------------------------------------------------------
# weights


def net_of(w):
    """Ws, bs of flow.0.net.J (J = 0, 1, ...) from a weights dict."""
    Ws, bs = [], []
    j = 0
    while "flow.0.net.%d.weight" % j in w:
        Ws.append(w["flow.0.net.%d.weight" % j].contiguous())
        bs.append(w["flow.0.net.%d.bias" % j].contiguous())
        j += 1
    if not Ws:
        raise SystemExit("torch_pi0: no flow.0.net.0.weight in the weights")
    for j in range(1, len(Ws)):
        if Ws[j].shape[1] != Ws[j - 1].shape[0]:
            raise SystemExit("torch_pi0: flow.0.net.%d.weight is %s after %s"
                             % (j, list(Ws[j].shape), list(Ws[j - 1].shape)))
    return Ws, bs


def sizes(Ws, K, C=None):
    """(D, C) of a velocity net: out = D, in = D + C + K."""
    D = Ws[-1].shape[0]
    Cn = Ws[0].shape[1] - D - K
    if Cn < 0 or (C is not None and Cn != C):
        raise SystemExit("torch_pi0: net input %d is not dim %d + context %s + temb %d"
                         % (Ws[0].shape[1], D, C if C is not None else "C", K))
    return D, Cn


def linear_default(n_out, n_in, g):
    bound = 1.0 / math.sqrt(n_in) if n_in > 0 else 0.0
    W = (torch.rand(n_out, n_in, generator=g) * 2 - 1) * bound
    b = (torch.rand(n_out, generator=g) * 2 - 1) * bound
    return W, b


def fresh(D, C, K, hidden, g, last_zero):
    w, k = {}, D + C + K
    outs = list(hidden) + [D]
    for j, n in enumerate(outs):
        W, b = linear_default(n, k, g)
        if last_zero and j == len(outs) - 1:
            W.zero_()
            b.zero_()
        w["flow.0.net.%d.weight" % j], w["flow.0.net.%d.bias" % j] = W, b
        k = n
    return w


def parse_hidden(s):
    return [int(v) for v in s.split(",") if v.strip()]


# --------------------------------------------------------------------------
# commands


def cmd_prepare(argv):
    import argparse
    ap = argparse.ArgumentParser(prog="torch_pi0.py prepare")
    ap.add_argument("dst")
    ap.add_argument("z")
    ap.add_argument("--init")
    ap.add_argument("--hidden", default="1024,1024,1024")
    ap.add_argument("--dim", type=int, default=350)
    ap.add_argument("--context", type=int, default=512)
    ap.add_argument("--temb", type=int, default=32)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rows", type=int, default=64)
    a = ap.parse_args(argv)
    g = torch.Generator().manual_seed(a.seed)
    meta = None
    if a.init:
        w, meta = st_read(a.init)
        Ws, _ = net_of(w)
        J = len(Ws) - 1
        for p in ("weight", "bias"):
            name = "flow.0.net.%d.%s" % (J, p)
            w[name] = 0.1 * torch.randn(w[name].shape, generator=g)
        D, _ = sizes(Ws, a.temb)
    else:
        D = a.dim
        w = fresh(D, a.context, a.temb, parse_hidden(a.hidden), g, last_zero=False)
    st_write(a.dst, w, meta)
    z = torch.randn(a.rows, D, generator=g)
    z[:4] *= 3.0
    np.save(a.z, z.numpy().astype(np.float32))
    return 0


def time_calls(fn, min_time=1.0, min_calls=50):
    """Median single-call time after warm-up."""
    t0 = time.perf_counter()
    fn()
    dt = time.perf_counter() - t0
    warm = 2 if dt > 0.1 else 5
    if dt > 0.1:
        min_calls = 5
    for _ in range(warm):
        fn()
    per = []
    start = time.perf_counter()
    while len(per) < min_calls or time.perf_counter() - start < min_time:
        t0 = time.perf_counter()
        fn()
        per.append(time.perf_counter() - t0)
    return statistics.median(per), len(per)


def cmd_run(argv):
    import argparse
    ap = argparse.ArgumentParser(prog="torch_pi0.py run")
    ap.add_argument("-w", required=True)
    ap.add_argument("--z", required=True)
    ap.add_argument("--ctx", required=True)
    ap.add_argument("--x", action="append", default=[], help="flowc's decode of Z (repeatable)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--temb", type=int, default=32)
    ap.add_argument("--act", default="gelu", choices=ACTS)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--model", default="pi0_head")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    w, _ = st_read(a.w)
    Ws, bs = net_of(w)
    D, C = sizes(Ws, a.temb)
    act = ACTS.index(a.act)
    tab = temb_table(a.steps, a.temb)
    z = load_rows(a.z)
    c = load_rows(a.ctx)
    if z.shape[1] != D or c.shape[1] != C or c.shape[0] not in (1, z.shape[0]):
        raise SystemExit("torch_pi0: z %s / context %s do not fit dim %d, context %d"
                         % (list(z.shape), list(c.shape), D, C))
    c = c.expand(z.shape[0], C).contiguous()
    refs = [(p, load_rows(p)) for p in a.x]
    fns = {"eager": decode}
    try:
        fns["jit"] = torch.jit.script(decode)
    except Exception as e:  # report it and go on with eager
        print("torch_pi0: torch.jit.script failed: %s" % str(e).strip().splitlines()[0], file=sys.stderr)
    rc = 0
    B = a.batch
    zb, cb = torch.randn(B, D), c[:1].expand(B, C).contiguous()
    for mode, dec in fns.items():
        with torch.inference_mode():
            for _ in range(3):      # jit: the profiling runs first
                x = dec(z, c, tab, Ws, bs, act)
        diff = 0.0
        for p, r in refs:
            d = float((x - r).abs().max()) if r.shape == x.shape else float("inf")
            if not d < TOL:
                print("torch_pi0: %s decode differs from %s by %.3g (tolerance %g)" % (mode, p, d, TOL),
                      file=sys.stderr)
                rc = 1
            diff = max(diff, d)
        if rc:
            continue
        with torch.inference_mode():
            t, calls = time_calls(lambda: dec(zb, cb, tab, Ws, bs, act))
        print(json.dumps({"model": a.model, "config": mode, "batch": B, "threads": a.threads,
                          "s_per_call": t, "samples_per_s": B / t, "calls": calls,
                          "max_abs_diff": diff}), flush=True)
    return rc


def time_dist(spec):
    """A sampler of [B, 1] times for --time-dist uniform | beta(A,B)."""
    spec = spec.replace(" ", "")
    if spec == "uniform":
        return lambda B: torch.rand(B, 1)
    m = re.fullmatch(r"beta\(([-+\d.eE]+),([-+\d.eE]+)\)", spec)
    if not m:
        raise SystemExit("torch_pi0: --time-dist uniform | beta(A,B), not %s" % spec)
    d = torch.distributions.Beta(torch.tensor(float(m.group(1))), torch.tensor(float(m.group(2))))
    return lambda B: d.sample((B, 1))


def cmd_train(argv):
    import argparse
    ap = argparse.ArgumentParser(prog="torch_pi0.py train")
    ap.add_argument("--data", required=True)
    ap.add_argument("--context", required=True)
    ap.add_argument("-w", help="initial weights (default: fresh, flowc's rule)")
    ap.add_argument("--hidden", default="1024,1024,1024")
    ap.add_argument("--temb", type=int, default=32)
    ap.add_argument("--act", default="gelu", choices=ACTS)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--time-dist", default="uniform")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--log-every", type=int, default=0)
    ap.add_argument("-o")
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    X = load_rows(a.data)
    Cx = load_rows(a.context)
    N, D = X.shape
    C = Cx.shape[1]
    if Cx.shape[0] != N:
        raise SystemExit("torch_pi0: %d data rows, %d context rows" % (N, Cx.shape[0]))
    if a.w:
        w, _ = st_read(a.w)
    else:
        w = fresh(D, C, a.temb, parse_hidden(a.hidden), torch.Generator().manual_seed(a.seed), True)
    Ws, bs = net_of(w)
    sizes(Ws, a.temb, C)
    params = [p.clone().requires_grad_(True) for p in Ws + bs]
    L = len(Ws)
    act = ACTS.index(a.act)
    n = a.temb // 2
    k = np.arange(n, dtype=np.float64)
    freqs = torch.from_numpy((2 * math.pi / (4e-3 * (4 / 4e-3) ** (k / (n - 1)))).astype(np.float32))[None]
    draw_t = time_dist(a.time_dist)
    opt = torch.optim.Adam(params, lr=a.lr, betas=(0.9, 0.999), eps=1e-8)
    B = a.batch
    perm, pos = torch.randperm(N), 0
    losses = []
    t0 = time.perf_counter()
    for s in range(a.steps):
        if pos + B > N:
            perm, pos = torch.randperm(N), 0
        idx = perm[pos:pos + B]
        pos += B
        x1, c = X[idx], Cx[idx]
        z0 = torch.randn(B, D)
        t = draw_t(B)
        xt = (1 - t) * z0 + t * x1
        v = velocity(xt, c, temb_torch(t, freqs), params[:L], params[L:], act)
        loss = ((v - (x1 - z0)) ** 2).sum(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss))
        if a.log_every and (s + 1) % a.log_every == 0:
            print("step %d loss %.4f (%.1f s)" % (s + 1, statistics.mean(losses[-a.log_every:]),
                                                 time.perf_counter() - t0), file=sys.stderr)
    el = time.perf_counter() - t0
    if a.o:
        out = {}
        for j in range(L):
            out["flow.0.net.%d.weight" % j] = params[j].detach()
            out["flow.0.net.%d.bias" % j] = params[L + j].detach()
        st_write(a.o, out, {"trained_by": "torch_pi0.py", "step": str(a.steps)})
    print(json.dumps({"samples_per_s": a.steps * B / el, "loss": statistics.mean(losses[-10:]),
                      "threads": a.threads, "steps": a.steps, "batch": B, "seconds": el}), flush=True)
    return 0


def cmd_sample(argv):
    import argparse
    ap = argparse.ArgumentParser(prog="torch_pi0.py sample")
    ap.add_argument("-w", required=True)
    ap.add_argument("--context", required=True)
    ap.add_argument("-o", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--temb", type=int, default=32)
    ap.add_argument("--act", default="gelu", choices=ACTS)
    a = ap.parse_args(argv)
    torch.manual_seed(a.seed)
    w, _ = st_read(a.w)
    Ws, bs = net_of(w)
    c = load_rows(a.context)
    D, _ = sizes(Ws, a.temb, c.shape[1])
    with torch.inference_mode():
        x = decode(torch.randn(c.shape[0], D), c, temb_table(a.steps, a.temb), Ws, bs,
                   ACTS.index(a.act))
    np.save(a.o, x.numpy().astype(np.float32))
    return 0


def cmd_table(argv):
    """argv: the flowc lines file, then JSON files of torch_pi0 run / train.

    flowc lines (written by pi0_bench.sh):
      so THREADS US_PER_CALL CALLS        the built .so, decode at batch 1
      bench THREADS SAMPLES_PER_S US      flowc bench --op sample --batch 1
      train THREADS SAMPLES_PER_S         flowc train --objective fm
      benchtrain THREADS SAMPLES_PER_S    flowc bench --op train (if it ran)
      compile THREADS MS                  flowc bench's compile time of the sample kernel
    """
    fl = {"so": [], "bench": [], "train": [], "benchtrain": [], "compile": []}
    for line in open(argv[0]):
        f = line.split()
        if len(f) >= 3 and f[0] in fl:
            fl[f[0]].append([float(v) for v in f[1:]])
    lat, thr = [], []
    for path in argv[1:]:
        for line in open(path):
            if line.strip():
                j = json.loads(line)
                (lat if "config" in j else thr).append(j)
    th = lambda t: "%d thread%s" % (t, "s" if t > 1 else "")
    rows = []
    for t, us, calls in fl["so"]:
        rows.append(("flowc .so decode (%s)" % th(int(t)), us))
    for t, sps, us in fl["bench"]:
        rows.append(("flowc bench --op sample, %s" % th(int(t)), us))
    best_f = min((r for r in rows), key=lambda r: r[1]) if rows else None
    trows = [("PyTorch %s, %s" % (j["config"], th(j["threads"])), 1e6 * j["s_per_call"]) for j in lat]
    best_t = min(trows, key=lambda r: r[1]) if trows else None
    print("Sampling one action chunk (batch 1, 10 Euler steps), median time per call:")
    print("%-36s %12s %10s" % ("", "us per call", "vs PyTorch"))
    for name, us in rows + trows:
        print("%-36s %12.1f %10s" % (name, us, "%.2fx" % (best_t[1] / us) if best_t else "-"))
    if best_f and best_t:
        print("best flowc %.1f us (%s), best PyTorch %.1f us (%s): flowc is %.2fx %s"
              % (best_f[1], best_f[0], best_t[1], best_t[0],
                 best_t[1] / best_f[1] if best_t[1] >= best_f[1] else best_f[1] / best_t[1],
                 "faster" if best_t[1] >= best_f[1] else "slower"))
    if fl["compile"]:
        ms = sorted(v for _, v in fl["compile"])
        print("flowc compile (sample kernel): median %.1f ms of %d" % (ms[len(ms) // 2], len(ms)))
    if not fl["train"] and not fl["benchtrain"]:
        return 0
    print()
    print("Flow-matching training throughput (samples/s, higher is better):")
    tr = [("flowc train --objective fm, %s" % th(int(t)), sps) for t, sps in fl["train"]]
    tr += [("flowc bench --op train, %s" % th(int(t)), sps) for t, sps in fl["benchtrain"]]
    pt = [("PyTorch eager Adam, %s" % th(j["threads"]), j["samples_per_s"]) for j in thr]
    ref = max((s for _, s in pt), default=None)
    print("%-36s %12s %10s" % ("", "samples/s", "vs PyTorch"))
    for name, sps in tr + pt:
        print("%-36s %12.1f %10s" % (name, sps, "%.2fx" % (sps / ref) if ref else "-"))
    if tr and ref:
        b = max(tr, key=lambda r: r[1])
        print("best flowc %.1f samples/s (%s), best PyTorch %.1f: ratio %.2fx" % (b[1], b[0], ref, b[1] / ref))
    return 0


def main(argv):
    cmds = {"prepare": cmd_prepare, "run": cmd_run, "train": cmd_train, "sample": cmd_sample,
            "table": cmd_table}
    if len(argv) < 2 or argv[1] not in cmds:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    return cmds[argv[1]](argv[2:])


if __name__ == "__main__":
    sys.exit(main(sys.argv))
