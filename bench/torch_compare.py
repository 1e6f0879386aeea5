#!/usr/bin/python3
"""bench/torch_compare.py: the PyTorch side of bench/compare.sh.

A plain PyTorch formulation of a RealNVP made of K affine couplings (scale
tanh, mlp conditioner with ReLU) each followed by permute(reverse), read from
a flowc weights file (safetensors: flow.K.net.J.weight [out, in] and
flow.K.net.J.bias [out]; the couplings sit at even K, the reversals at odd K).
The mathematics is section 4 of flow-language.md: D the dim, d = D // 2,
h = net(u[:, :d]) of size 2(D - d), s = tanh(h[:, :D-d]), t = h[:, D-d:];
generative y[:, d:] = u[:, d:] * exp(s) + t, density direction
u[:, d:] = (y[:, d:] - t) * exp(-s) with log-det -sum(s); base N(0, I).

Subcommands:
  perturb IN.safetensors OUT.safetensors [--sigma 0.05] [--seed 0]
      adds N(0, sigma^2) noise to every float tensor (flowc init zeroes the
      last layer of each network, which makes every coupling the identity)
  randn OUT.npy --rows N --dim D [--seed 0]
      standard normal float32 rows
  verify -w W --z Z.npy --xz XZ.npy --lp-xz LPX.npy --lp-z LPZ.npy [--tol 1e-3]
      XZ = flowc decode of Z, LPX / LPZ = flowc logprob of XZ / Z: checks
      that this model's sample(Z) equals XZ and its log_prob (eager and
      scripted) equals LPX (max abs diff < tol), and LPZ to tol relative to
      max(1, |LPZ|) (N(0, 1) points can lie far from the model's data, log p
      down to -1e3); also that the flow is not the identity; exit 1, loudly,
      otherwise
  time -w W --name NAME --threads T [--modes eager,script,frozen] [--reps 3]
      times log_prob (batch 1, 256, 65536), sampling (65536, torch.randn
      included) and one training step (batch 256: forward, backward, Adam
      lr 1e-3 on -mean log p of rows drawn from the model) in each mode;
      prints one JSON line a case and mode. Run it with OMP_NUM_THREADS and
      OPENBLAS_NUM_THREADS equal to T (bench/compare.sh does).
  script-time -w W
      milliseconds to torch.jit.script the log_prob module (best of 3)
  report --dir DIR --nproc N [--pi0 exists|none] [--load L0 L1] [--seconds S]
      the table of bench/compare.sh from the files it wrote in DIR

Modes: eager; script (torch.jit.script of the module, profiling executor
warmed up); frozen (script + torch.jit.freeze + optimize_for_inference,
inference only, batches up to --frozen-max-batch: above, it is slower than
script). Batches above --chunk (4096) are timed in row blocks of --chunk rows
(torch.split, results concatenated; sampling draws each block's normals),
which keeps activations in cache as flowc's tiles do (1.5-4x faster than one
whole-batch call here); with --whole-batch also whole, in eager mode.
Training: eager and script, Adam with and without foreach. Inference runs
under torch.inference_mode() (no_grad without version counting). Timing:
warm-up calls, then the median per-call time of blocks of calls (blocks of
about 50 ms for short calls; single calls, --reps of them, for calls over
0.1 s).
"""
import argparse
import json
import math
import os
import re
import struct
import sys
import time

import numpy as np
import torch
from torch import nn, Tensor
from typing import List, Tuple

LOG_2PI = math.log(2 * math.pi)
NP_DTYPES = {"F32": np.float32, "F64": np.float64, "F16": np.float16}


# ---- safetensors -------------------------------------------------------

def st_read(path):
    """(header dict, raw bytes of the file, offset of the data section)."""
    with open(path, "rb") as f:
        raw = bytearray(f.read())
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    return header, raw, 8 + n


def st_tensors(path):
    header, raw, base = st_read(path)
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        a, b = info["data_offsets"]
        dt = info["dtype"]
        if dt not in NP_DTYPES:
            continue   # perm (I64) and friends: not used by this model
        arr = np.frombuffer(bytes(raw[base + a:base + b]), dtype=NP_DTYPES[dt]).astype(np.float32)
        out[name] = arr.reshape(info["shape"])
    return out


def cmd_perturb(a):
    header, raw, base = st_read(a.inp)
    rng = np.random.default_rng(a.seed)
    for name in sorted(k for k in header if k != "__metadata__"):
        info = header[name]
        if info["dtype"] != "F32":
            continue
        s, e = info["data_offsets"]
        v = np.frombuffer(bytes(raw[base + s:base + e]), dtype="<f4")
        v = (v + rng.normal(0.0, a.sigma, v.shape)).astype("<f4")
        raw[base + s:base + e] = v.tobytes()
    with open(a.out, "wb") as f:
        f.write(raw)
    return 0


def cmd_randn(a):
    rng = np.random.default_rng(a.seed)
    np.save(a.out, rng.standard_normal((a.rows, a.dim)).astype(np.float32))
    return 0


# ---- the model ---------------------------------------------------------

class Coupling(nn.Module):
    def __init__(self, D: int, weights: List[np.ndarray], biases: List[np.ndarray]):
        super().__init__()
        self.D, self.d = D, D // 2
        layers: List[nn.Module] = []
        for j, (w, b) in enumerate(zip(weights, biases)):
            lin = nn.Linear(w.shape[1], w.shape[0])
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(w))
                lin.bias.copy_(torch.from_numpy(b))
            layers.append(lin)
            if j + 1 < len(weights):
                layers.append(nn.ReLU())
        self.net = nn.Sequential(*layers)

    def forward(self, u: Tensor) -> Tensor:
        """Generative direction, no log-det (sampling does not need it)."""
        d, D = self.d, self.D
        h = self.net(u[:, :d])
        s = torch.tanh(h[:, :D - d])
        t = h[:, D - d:]
        return torch.cat([u[:, :d], u[:, d:] * torch.exp(s) + t], dim=1)

    def inverse(self, y: Tensor) -> Tuple[Tensor, Tensor]:
        """Density direction: u and sum(s) (log|det du/dy| = -sum(s))."""
        d, D = self.d, self.D
        h = self.net(y[:, :d])
        s = torch.tanh(h[:, :D - d])
        t = h[:, D - d:]
        u = torch.cat([y[:, :d], (y[:, d:] - t) * torch.exp(-s)], dim=1)
        return u, s.sum(dim=1)


class LogProb(nn.Module):
    """log p(x): the layers' inverses from the last (a reversal) to the first."""

    def __init__(self, couplings: List[Coupling], D: int):
        super().__init__()
        self.rev = nn.ModuleList(list(reversed(couplings)))
        self.D = D
        self.log_norm = -0.5 * D * LOG_2PI

    def forward(self, x: Tensor) -> Tensor:
        u = x
        ld = torch.zeros(x.shape[0], dtype=x.dtype)
        for c in self.rev:
            u = u.flip(1)              # inverse of permute(reverse)
            u, s = c.inverse(u)
            ld = ld - s
        return -0.5 * (u * u).sum(dim=1) + self.log_norm + ld


class Sample(nn.Module):
    """x from z: each coupling, then its reversal, in generative order."""

    def __init__(self, couplings: List[Coupling]):
        super().__init__()
        self.fwd = nn.ModuleList(couplings)

    def forward(self, z: Tensor) -> Tensor:
        u = z
        for c in self.fwd:
            u = c(u)
            u = u.flip(1)
        return u


def build(path):
    """Couplings from the weights file; checks the layout it assumes."""
    t = st_tensors(path)
    ks = sorted({int(n.split(".")[1]) for n in t})
    if not ks or any(k % 2 for k in ks) or ks != list(range(0, 2 * len(ks), 2)):
        sys.exit("torch_compare: %s: expected couplings at flow.0, flow.2, ... (got %s)" % (path, ks))
    couplings, D = [], None
    for k in ks:
        ws, bs, j = [], [], 0
        while "flow.%d.net.%d.weight" % (k, j) in t:
            ws.append(t["flow.%d.net.%d.weight" % (k, j)])
            bs.append(t["flow.%d.net.%d.bias" % (k, j)])
            j += 1
        if len(ws) + len(bs) != sum(1 for n in t if n.startswith("flow.%d." % k)):
            sys.exit("torch_compare: %s: flow.%d is not an mlp-conditioned coupling" % (path, k))
        d, out = ws[0].shape[1], ws[-1].shape[0]
        Dk = d + out // 2
        if D is None:
            D = Dk
        if Dk != D or d != D // 2 or out != 2 * (D - D // 2):
            sys.exit("torch_compare: %s: flow.%d sizes do not fit an affine coupling" % (path, k))
        couplings.append(Coupling(D, ws, bs))
    return couplings, D


def flops_per_row(couplings):
    """2 * in * out summed over every linear layer: one direction, one row."""
    return sum(2 * m.in_features * m.out_features for c in couplings
               for m in c.net if isinstance(m, nn.Linear))


# ---- verify ------------------------------------------------------------

def cmd_verify(a):
    couplings, D = build(a.w)
    lp_mod, smp = LogProb(couplings, D).eval(), Sample(couplings).eval()
    z = torch.from_numpy(np.load(a.z).astype(np.float32))
    xz = torch.from_numpy(np.load(a.xz).astype(np.float32))
    lpx = torch.from_numpy(np.load(a.lp_xz).astype(np.float32))
    lpz = torch.from_numpy(np.load(a.lp_z).astype(np.float32))
    ok = True
    with torch.inference_mode():
        # (what, got, want, relative): the model's own samples are checked
        # against max abs diff < tol; N(0, 1) points, far from the data for
        # some models (log p down to -1e3), against |diff| < tol * max(1, |lp|)
        # elementwise, float32 rounding growing with the value
        checks = [("sample(z) vs flowc decode", smp(z), xz, False),
                  ("log_prob(flowc samples) vs flowc logprob", lp_mod(xz), lpx, False),
                  ("log_prob(z) vs flowc logprob (relative)", lp_mod(z), lpz, True)]
        # the module actually timed must agree too
        sc = torch.jit.script(LogProb(couplings, D).eval())
        checks.append(("scripted log_prob(flowc samples) vs flowc logprob", sc(xz), lpx, False))
    for what, got, want, rel in checks:
        if got.shape != want.shape:
            print("torch_compare: VERIFY FAILED (%s): shape %s vs %s" % (what, tuple(got.shape),
                  tuple(want.shape)), file=sys.stderr)
            ok = False
            continue
        err = (got.double() - want.double()).abs()
        diff = float(err.max())
        if rel:
            err = err / want.double().abs().clamp(min=1.0)
        worst = float(err.max())
        scale = float(want.double().abs().max())
        good = math.isfinite(worst) and worst < a.tol
        ok &= good
        print("verify %s D=%d: %s: max abs diff %.3g%s (values up to %.3g, %d rows) %s"
              % (a.name, D, what, diff, ", relative %.3g" % worst if rel else "", scale,
                 want.shape[0], "ok" if good else "FAILED"), file=sys.stderr)
    moved = float((xz.double() - z.double()).abs().max())
    if not moved > 0.1:
        print("torch_compare: VERIFY FAILED: the flow is (nearly) the identity (max |x - z| %.3g):"
              " perturb the weights" % moved, file=sys.stderr)
        ok = False
    if not ok:
        print("torch_compare: VERIFY FAILED: the PyTorch model and flowc disagree (tol %g)" % a.tol,
              file=sys.stderr)
        return 1
    return 0


# ---- timing ------------------------------------------------------------

def measure(fn, reps_big, block_s=0.05, blocks=7):
    """Median seconds per call of fn (already warmed up) and the number of
    timed calls: calls over 0.1 s are timed one by one, reps_big of them;
    shorter ones get more warm-up and are timed in `blocks` blocks of about
    block_s."""
    t0 = time.perf_counter()
    fn()
    one = time.perf_counter() - t0
    if one > 0.1:
        ts = [one]
        for _ in range(reps_big - 1):
            t0 = time.perf_counter()
            fn()
            ts.append(time.perf_counter() - t0)
        return float(np.median(ts)), len(ts)
    n = max(1, int(block_s / max(one, 1e-7)))
    for _ in range(min(n, 200)):
        fn()
    ts = []
    for _ in range(blocks):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        ts.append((time.perf_counter() - t0) / n)
    return float(np.median(ts)), n * blocks


def chunked(f, x, ch):
    """f over row blocks of ch rows, results concatenated (what a careful
    user does with a big batch: the activations of a block stay in cache)."""
    if x.shape[0] <= ch:
        return f(x)
    return torch.cat([f(c) for c in x.split(ch)])


def big_variants(B, mode, chunk, whole):
    """Row-block sizes to time at batch B (0: whole batch). Above `chunk`
    rows: blocks, and with `whole` the whole batch in eager mode too (the
    plain use: never the faster on this machine, each call costs seconds)."""
    if B <= chunk:
        return [0]
    return [0, chunk] if whole and mode == "eager" else [chunk]


def cmd_time(a):
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    couplings, D = build(a.w)
    fpr = flops_per_row(couplings)
    modes = a.modes.split(",")

    def emit(case, batch, mode, sec, n):
        print(json.dumps({"model": a.name, "D": D, "case": case, "batch": batch, "mode": mode,
                          "threads": a.threads, "us": 1e6 * sec, "calls": n,
                          "flops_per_row": fpr}), flush=True)

    # data: rows drawn from the model (as flowc bench does)
    with torch.inference_mode():
        big = Sample(couplings).eval()(torch.randn(max(a.lp_batches + [16 * a.train_batch]), D))
    for mode in modes:
        lp = LogProb(couplings, D).eval()
        smp = Sample(couplings).eval()
        if mode in ("script", "frozen"):
            lp, smp = torch.jit.script(lp), torch.jit.script(smp)
            if mode == "frozen":
                lp = torch.jit.optimize_for_inference(torch.jit.freeze(lp))
                smp = torch.jit.optimize_for_inference(torch.jit.freeze(smp))
        with torch.inference_mode():
            # small batches first: the profiling executor specialises on its
            # first calls, and those are then warm for the big ones
            for B in sorted(a.lp_batches):
                if mode == "frozen" and B > a.frozen_max_batch:
                    continue
                x = big[:B].clone()
                for ch in big_variants(B, mode, a.chunk, a.whole_batch):
                    if ch:
                        def f():
                            return chunked(lp, x, ch)
                    else:
                        def f():
                            return lp(x)
                    for _ in range(1 if B > 4096 else 3):
                        f()
                    sec, n = measure(f, a.reps)
                    emit("logprob", B, mode + (", chunks of %d" % ch if ch else ""), sec, n)
            for B in a.sample_batches:
                if mode == "frozen" and B > a.frozen_max_batch:
                    continue
                for ch in big_variants(B, mode, a.chunk, a.whole_batch):
                    if ch:
                        def draw():
                            return torch.cat([smp(torch.randn(min(ch, B - r), D))
                                              for r in range(0, B, ch)])
                    else:
                        def draw():
                            return smp(torch.randn(B, D))
                    draw()
                    sec, n = measure(draw, a.reps)
                    emit("sample", B, mode + (", chunks of %d" % ch if ch else ""), sec, n)
        if mode == "frozen":
            continue   # frozen modules hold constants: no training
        # one training step: forward, backward, Adam, on a fresh copy of the
        # weights (training moves them)
        train_cs = [Coupling(D, [m.weight.detach().numpy().copy() for m in c.net if isinstance(m, nn.Linear)],
                             [m.bias.detach().numpy().copy() for m in c.net if isinstance(m, nn.Linear)])
                    for c in couplings]
        lpt = LogProb(train_cs, D)
        if mode == "script":
            lpt = torch.jit.script(lpt)
        for foreach in (False, True):
            opt = torch.optim.Adam(lpt.parameters(), lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
                                   foreach=foreach)
            B, pool = a.train_batch, 16
            rows = big[:pool * B].clone()
            k = [0]

            def step():
                xb = rows[(k[0] % pool) * B:(k[0] % pool + 1) * B]
                k[0] += 1
                opt.zero_grad(set_to_none=True)
                loss = -lpt(xb).mean()
                loss.backward()
                opt.step()
            for _ in range(3):
                step()
            sec, n = measure(step, a.reps)
            emit("train", B, mode + (", Adam foreach" if foreach else ""), sec, n)
    return 0


def cmd_script_time(a):
    couplings, D = build(a.w)
    best = float("inf")
    for _ in range(3):
        m = LogProb(couplings, D).eval()
        t0 = time.perf_counter()
        torch.jit.script(m)
        best = min(best, time.perf_counter() - t0)
    print(json.dumps({"model": a.name, "script_ms": 1e3 * best}))
    return 0


# ---- report ------------------------------------------------------------

FLOWC_RE = re.compile(r"^threads=(\S+) (\S+) (logprob|sample|train) batch (\d+): ([0-9.e+-]+) samples/s, "
                      r"([0-9.e+-]+) us per (?:call|step) \(compile ([0-9.e+-]+) ms\)")
SGEMM_RE = re.compile(r"^sgemm (\d+) (\d+) (\d+) threads (\d+): ([0-9.]+) GFLOP/s")


def fmt_us(us):
    if us is None:
        return "-"
    if us >= 1000:
        return "{:,.0f}".format(us)
    return "%.3g" % us


def cmd_report(a):
    d = a.dir
    flowc = {}      # (model, case, batch) -> {threads label: (us, compile ms)}
    failed = set()
    for line in open(os.path.join(d, "flowc.txt")):
        m = FLOWC_RE.match(line.strip())
        if m:
            t, model, case, B = m.group(1), m.group(2), m.group(3), int(m.group(4))
            label = ("%s thr, default" % a.nproc) if t == "all" else "%s thr" % t
            flowc.setdefault((model, case, B), {})[label] = (float(m.group(6)), float(m.group(7)))
        elif " FAILED " in line:
            f = line.split()
            failed.add((f[2], f[3], int(f[5])))
    torch_r, info = {}, {}
    for line in open(os.path.join(d, "torch.jsonl")):
        j = json.loads(line)
        info[j["model"]] = (j["D"], j["flops_per_row"])
        label = "%d thr, %s" % (j["threads"], j["mode"])
        torch_r.setdefault((j["model"], j["case"], j["batch"]), {})[label] = j["us"]
    script = {}
    for line in open(os.path.join(d, "script.jsonl")):
        j = json.loads(line)
        script[j["model"]] = j["script_ms"]
    sg = [SGEMM_RE.match(l) for l in open(os.path.join(d, "sgemm.txt"))]
    sg = [(int(m.group(1)), int(m.group(2)), int(m.group(3)), int(m.group(4)), float(m.group(5))) for m in sg if m]
    # the peak: the best sgemm figure measured, whatever its shape and thread
    # count (on a loaded machine the all-core figure can be the lower one)
    peak_all = max([g for *_, g in sg] or [float("nan")])
    peak_n = max([g for *_, t, g in sg if t == a.nproc] or [float("nan")])
    peak_1 = max([g for *_, t, g in sg if t == 1] or [float("nan")])

    models = [m for m in ("realnvp2", "realnvp16") if m in info] + \
             sorted(m for m in info if m not in ("realnvp2", "realnvp16"))
    rows, details = [], []
    for model in models:
        D, fpr = info[model]
        big = {2: 3.0}.get(D, 1.6)
        small = {2: 50.0}.get(D, 8.0)
        cases = [("logprob", 1, small), ("logprob", 256, None), ("logprob", 65536, big),
                 ("sample", 65536, big), ("train", 256, 3.0)]
        for case, B, target in cases:
            what = {"logprob": "log_prob", "sample": "sampling", "train": "train step (Adam)"}[case]
            name = "%s D=%d batch %d" % (what, D, B)
            fc, tc = flowc.get((model, case, B), {}), torch_r.get((model, case, B), {})
            fbest = min(fc.items(), key=lambda kv: kv[1][0]) if fc else None
            tbest = min(tc.items(), key=lambda kv: kv[1]) if tc else None
            fus = fbest[1][0] if fbest else None
            tus = tbest[1] if tbest else None
            ratio = tus / fus if fus and tus else None
            peak = ""
            if B >= 65536:
                def frac(us):
                    return "%.0f%%" % (100 * fpr * B / (us * 1e-6) / 1e9 / peak_all) if us else "-"
                peak = "%s / %s" % (frac(fus), frac(tus))
            met = "-" if target is None or ratio is None else ("yes" if ratio >= target else "NO")
            rows.append((name,
                         "%s (%s)" % (fmt_us(fus), fbest[0]) if fbest else
                         ("FAILED" if (model, case, B) in failed else "-"),
                         "%s (%s)" % (fmt_us(tus), tbest[0]) if tbest else "-",
                         "%.2fx" % ratio if ratio else "-",
                         ">= %gx" % target if target else "-", met, peak))
            details.append("%s:\n    flowc:   %s\n    PyTorch: %s" % (
                name, ", ".join("%s %s" % (k, fmt_us(v[0])) for k, v in sorted(fc.items(), key=lambda kv: kv[1][0])) or "-",
                ", ".join("%s %s" % (k, fmt_us(v)) for k, v in sorted(tc.items(), key=lambda kv: kv[1])) or "-"))
        comp = sorted(v[1] for (mo, case, B), r in flowc.items() if mo == model and case != "train"
                      for v in r.values())
        compt = sorted(v[1] for (mo, case, B), r in flowc.items() if mo == model and case == "train"
                       for v in r.values())
        cm = comp[len(comp) // 2] if comp else None
        rows.append(("compile D=%d (log_prob + sample)" % D,
                     "%.0f ms (median of %d)" % (cm, len(comp)) if cm is not None else "-",
                     "%.0f ms (torch.jit.script)" % script[model] if model in script else "n/a",
                     "-", "< 100 ms", "-" if cm is None else ("yes" if cm < 100 else "NO"), ""))
        if compt:
            rows.append(("compile D=%d with training kernels" % D,
                         "%.0f ms (median of %d)" % (compt[len(compt) // 2], len(compt)),
                         "n/a", "-", "-", "-", ""))
    if a.pi0 != "none":   # bench/pi0_bench.sh's output (SAMPLE_ONLY=1)
        best = comp = None
        for line in open(a.pi0):
            m = re.match(r"best flowc ([0-9.]+) us \((.*)\), best PyTorch ([0-9.]+) us \((.*)\):", line)
            if m:
                best = m.groups()
            m = re.match(r"flowc compile \(sample kernel\): median ([0-9.]+) ms", line)
            if m:
                comp = float(m.group(1))
        if best:
            f_us, f_cfg, t_us, t_cfg = float(best[0]), best[1], float(best[2]), best[3]
            r = t_us / f_us
            rows.append(("pi0 head 10-step sampling, batch 1", "%.0f (%s)" % (f_us, f_cfg),
                         "%.0f (%s)" % (t_us, t_cfg), "%.2fx" % r, ">= 5x",
                         "yes" if r >= 5 else "NO", ""))
        else:
            rows.append(("pi0 head 10-step sampling, batch 1", "n/a (pi0_bench.sh printed no result)",
                         "", "", "", "", ""))
        if comp is not None:
            rows.append(("compile pi0 head (sample)", "%.0f ms (median)" % comp, "n/a", "-",
                         "< 1 s", "yes" if comp < 1000 else "NO", ""))
    else:
        rows.append(("pi0 head 10-step sampling, batch 1", "n/a (examples/pi0_head.flow missing "
                     "or bench/pi0_bench.sh failed)", "", "", "", "", ""))

    head = ("case", "flowc us/call (threads)", "PyTorch us/call (best config)",
            "flowc speedup", "target", "met", "% sgemm peak flowc / torch")
    w = [max(len(str(r[k])) for r in rows + [head]) for k in range(len(head))]
    line = lambda r: " | ".join(str(v).ljust(w[k]) for k, v in enumerate(r)).rstrip()
    print(line(head))
    print("-+-".join("-" * x for x in w))
    for r in rows:
        print(line(r))
    print()
    print("times: us per call (per training step for train), median after warm-up; "
          "speedup = PyTorch / flowc")
    print("sgemm peak (OpenBLAS, bench/sgemm_peak.c): best %.1f GFLOP/s at %d threads, %.1f at 1 thread;\n"
          "%% of peak = model matmul FLOPs (2*B*in*out per linear layer, one direction) / time / %.1f GFLOP/s"
          % (peak_n, a.nproc, peak_1, peak_all))
    for M, N, K, t, g in sg:
        print("  sgemm %dx%dx%d (C = A B^T), %d thread%s: %.1f GFLOP/s"
              % (M, N, K, t, "s" if t > 1 else "", g))
    for model in models:
        D, fpr = info[model]
        print("model %s: D=%d, %d matmul FLOPs per row per direction" % (model, D, fpr))
    print("load average: %s at start, %s at end; %d cores; whole run %d s"
          % (a.load[0], a.load[1], a.nproc, a.seconds))
    print()
    print("all configurations (us per call, fastest first):")
    for s in details:
        print("  " + s)
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("perturb")
    p.add_argument("inp")
    p.add_argument("out")
    p.add_argument("--sigma", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("randn")
    p.add_argument("out")
    p.add_argument("--rows", type=int, required=True)
    p.add_argument("--dim", type=int, required=True)
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("verify")
    p.add_argument("-w", required=True)
    p.add_argument("--name", default="model")
    p.add_argument("--z", required=True)
    p.add_argument("--xz", required=True)
    p.add_argument("--lp-xz", required=True)
    p.add_argument("--lp-z", required=True)
    p.add_argument("--tol", type=float, default=1e-3)
    p = sub.add_parser("time")
    p.add_argument("-w", required=True)
    p.add_argument("--name", default="model")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--modes", default="eager,script,frozen")
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--lp-batches", type=lambda s: [int(v) for v in s.split(",") if v], default=[1, 256, 65536])
    p.add_argument("--sample-batches", type=lambda s: [int(v) for v in s.split(",") if v], default=[65536])
    p.add_argument("--train-batch", type=int, default=256)
    p.add_argument("--chunk", type=int, default=4096,
                   help="big batches are also timed in row blocks of this size")
    p.add_argument("--whole-batch", action="store_true",
                   help="also time batches above --chunk whole, in eager mode")
    p.add_argument("--frozen-max-batch", type=int, default=256,
                   help="frozen mode only up to this batch (slower than script above it)")
    p = sub.add_parser("script-time")
    p.add_argument("-w", required=True)
    p.add_argument("--name", default="model")
    p = sub.add_parser("report")
    p.add_argument("--dir", required=True)
    p.add_argument("--nproc", type=int, required=True)
    p.add_argument("--pi0", default="none")
    p.add_argument("--load", nargs=2, default=["?", "?"])
    p.add_argument("--seconds", type=int, default=0)
    a = ap.parse_args()
    return {"report": cmd_report, "perturb": cmd_perturb, "randn": cmd_randn, "verify": cmd_verify,
            "time": cmd_time, "script-time": cmd_script_time}[a.cmd](a)


if __name__ == "__main__":
    sys.exit(main())
