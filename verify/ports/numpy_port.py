#!/usr/bin/env python3
"""gdr2-verify port in Python/numpy: the Gated Delta Rule-2, token by token (docs/ports.md).

Run it through gdr2-verify:   gdr2-verify --port-cmd "python3 verify/ports/numpy_port.py"
It needs only numpy (Debian: python3-numpy). The forward runs in float32 (states in float32, as kernels keep
them), the backward (spec section 6, token-by-token) in float64. `--bug erase-k` seeds a bug (the read uses k
instead of b * k) so that the tests can check gdr2-verify catches it through this port too.
"""
import json
import struct
import sys

import numpy as np

DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64, "I32": np.int32}


# ---- safetensors (8-byte little-endian header length, JSON header, raw little-endian data) ----------------------

def bf16_to_f32(bits):
    return (bits.astype(np.uint32) << 16).view(np.float32)


def f32_to_bf16(x):
    bits = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounding = ((bits >> 16) & 1) + 0x7FFF  # round to nearest even
    return ((bits + rounding) >> 16).astype(np.uint16)


def load(path):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    meta = header.pop("__metadata__", {})
    tensors, dtypes = {}, {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        raw = data[8 + n + begin:8 + n + end]
        if info["dtype"] == "BF16":
            arr = bf16_to_f32(np.frombuffer(raw, dtype="<u2"))
        else:
            arr = np.frombuffer(raw, dtype=np.dtype(DTYPES[info["dtype"]]).newbyteorder("<"))
        tensors[name] = arr.reshape(info["shape"]).astype(np.float64 if info["dtype"] != "I64" else np.int64)
        dtypes[name] = info["dtype"]
    return tensors, dtypes, meta


def save(path, tensors):
    """tensors: name -> (dtype string, array)."""
    header, blobs, offset = {}, [], 0
    for name, (dtype, arr) in tensors.items():
        if dtype == "BF16":
            raw = f32_to_bf16(arr.astype(np.float32)).astype("<u2").tobytes()
        else:
            raw = np.ascontiguousarray(arr, dtype=np.dtype(DTYPES[dtype]).newbyteorder("<")).tobytes()
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


# ---- the operator -------------------------------------------------------------------------------------------------

def forward_head(q, k, v, g, b, w, s0, scale, bug):
    """o (T x V) and final state (K x V) in float32. Eq. 8-10: decay, read, edit, output."""
    f = np.float32
    S = s0.astype(f)
    o = np.zeros((q.shape[0], v.shape[1]), dtype=f)
    for t in range(q.shape[0]):
        S = np.exp(g[t].astype(f))[:, None] * S          # Sbar_t = Diag(exp g_t) S_{t-1}
        e = (k[t] if bug == "erase-k" else b[t] * k[t]).astype(f)
        r = S.T @ e                                      # r_t = Sbar_t^T e_t
        S = S + np.outer(k[t].astype(f), (w[t] * v[t]).astype(f) - r)   # S_t = Sbar_t + k_t (z_t - r_t)^T
        o[t] = f(scale) * (S.T @ q[t].astype(f))          # o_t = scale S_t^T q_t
    return o, S


def backward_head(q, k, v, g, b, w, s0, scale, do, dht):
    """Token-by-token backward of spec section 6, float64."""
    T = q.shape[0]
    prev, after = [], []
    S = s0.copy()
    for t in range(T):
        prev.append(S)
        S = np.exp(g[t])[:, None] * S
        S = S + np.outer(k[t], w[t] * v[t] - S.T @ (b[t] * k[t]))
        after.append(S)
    dq, dk, dg, db = (np.zeros_like(q) for _ in range(4))
    dv, dw = np.zeros_like(v), np.zeros_like(v)
    dS = dht.copy()
    for t in reversed(range(T)):
        alpha = np.exp(g[t])
        Sbar = alpha[:, None] * prev[t]
        e, z = b[t] * k[t], w[t] * v[t]
        dS = dS + scale * np.outer(q[t], do[t])
        dq[t] = scale * after[t] @ do[t]
        delta = z - Sbar.T @ e
        ddelta = dS.T @ k[t]
        dSbar = dS - np.outer(e, ddelta)
        de = -Sbar @ ddelta
        dk[t] = dS @ delta + de * b[t]
        dw[t], dv[t], db[t] = ddelta * v[t], ddelta * w[t], de * k[t]
        dg[t] = alpha * np.sum(dSbar * prev[t], axis=1)
        dS = alpha[:, None] * dSbar
    return dq, dk, dv, dg, db, dw, dS


def run_case(in_path, out_path, bug):
    x, dtypes, meta = load(in_path)
    if meta.get("state_layout", "KV") != "KV":
        raise ValueError("this port reads states as KV only")
    io = dtypes["q"]
    q, k, g, b, v, w = (x[n] for n in ("q", "k", "g", "b", "v", "w"))
    B, T, H, K = q.shape
    HV, V = v.shape[2], v.shape[3]
    scale = float(meta["scale"])
    want_grad = meta.get("want_grad", "0") == "1"
    cu = x.get("cu_seqlens")
    seqs = [(int(cu[i]), int(cu[i + 1])) for i in range(len(cu) - 1)] if cu is not None else None
    N = len(seqs) if seqs is not None else B
    h0 = x.get("h0", np.zeros((N, HV, K, V)))
    o = np.zeros((B, T, HV, V))
    ht = np.zeros((N, HV, K, V))
    grads = {n: np.zeros(q.shape) for n in ("dq", "dk", "dg", "db")}
    grads.update({n: np.zeros(v.shape) for n in ("dv", "dw")})
    grads["dh0"] = np.zeros((N, HV, K, V))
    group = HV // H
    for n in range(N):
        bi, (t0, t1) = (0, seqs[n]) if seqs is not None else (n, (0, T))
        for hv in range(HV):
            h = hv // group
            args = (q[bi, t0:t1, h], k[bi, t0:t1, h], v[bi, t0:t1, hv], g[bi, t0:t1, h], b[bi, t0:t1, h],
                    w[bi, t0:t1, hv], h0[n, hv], scale)
            o[bi, t0:t1, hv], ht[n, hv] = forward_head(*args, bug)
            if want_grad:
                dq, dk, dv, dg, db, dw, dh0 = backward_head(*args, x["do"][bi, t0:t1, hv], x["dht"][n, hv])
                for name, val in (("dq", dq), ("dk", dk), ("dg", dg), ("db", db)):
                    grads[name][bi, t0:t1, h] += val  # shared by the value heads of a group: summed
                grads["dv"][bi, t0:t1, hv], grads["dw"][bi, t0:t1, hv], grads["dh0"][n, hv] = dv, dw, dh0
    out = {"o": (io, o), "ht": ("F32", ht)}
    if want_grad:
        for name in ("dq", "dk", "db", "dv", "dw"):
            out[name] = (io, grads[name])
        out["dg"] = ("F32", grads["dg"])
        out["dh0"] = ("F32", grads["dh0"])
    save(out_path, out)


def main():
    bug = sys.argv[sys.argv.index("--bug") + 1] if "--bug" in sys.argv else "none"
    print("gdr2-port 1 dtypes=f32,bf16,f16 grad=1 varlen=1 gva=1 max_dk=256 max_dv=256 state=KV", flush=True)
    for line in sys.stdin:
        parts = line.split()
        try:
            if len(parts) != 2:
                raise ValueError("expected '<input path> <output path>'")
            run_case(parts[0], parts[1], bug)
            answer = "ok"
        except Exception as e:  # report, never die: the tool names the case
            answer = "error " + (type(e).__name__ + ": " + str(e)).replace("\n", " ")
        print(answer, flush=True)


if __name__ == "__main__":
    main()
