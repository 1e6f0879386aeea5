"""Safetensors read and write by hand (no safetensors package assumed), for
the bench scripts torch_maf.py and torch_pi0.py: tensors as float32 (or
their integer type), the file's __metadata__ kept."""
import json
import struct

import torch

_DT = {"F32": "float32", "F64": "float64", "F16": "float16", "BF16": "bfloat16",
       "I64": "int64", "I32": "int32"}


def st_read(path):
    with open(path, "rb") as f:
        buf = f.read()
    (hlen,) = struct.unpack("<Q", buf[:8])
    header = json.loads(buf[8:8 + hlen].decode("utf-8"))
    meta = header.pop("__metadata__", None)
    base, out = 8 + hlen, {}
    for name, t in header.items():
        a, b = t["data_offsets"]
        dt = getattr(torch, _DT[t["dtype"]])
        raw = bytearray(buf[base + a:base + b])
        v = torch.frombuffer(raw, dtype=dt) if raw else torch.empty(0, dtype=dt)
        v = v.reshape(t["shape"])
        out[name] = v.float() if v.is_floating_point() else v
    return out, meta


def st_write(path, tensors, meta=None):
    header, blobs, off = {}, [], 0
    if meta is not None:
        header["__metadata__"] = meta
    for name in sorted(tensors):
        v = tensors[name].detach().contiguous()
        dt = {torch.float32: "F32", torch.int64: "I64", torch.int32: "I32"}[v.dtype]
        raw = v.numpy().tobytes()
        header[name] = {"dtype": dt, "shape": list(v.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    h = json.dumps(header).encode("utf-8")
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)))
        f.write(h)
        for b in blobs:
            f.write(b)
