#!/usr/bin/env python3
"""gdr2-verify port adapter for PyTorch kernels (docs/ports.md).

Wraps any function with the ecosystem's common signature

    fn(q, k, v, g, b, w, scale, initial_state, output_final_state) -> (o, final_state)

q, k, g, b: [B, T, H, K]; v, w: [B, T, HV, V]; initial_state / final_state: [N, HV, K, V] fp32
(flash-linear-attention's layout), as a gdr2-verify port:

    gdr2-verify --port-cmd "python3 verify/ports/torch_port.py --kernel mypackage.ops:chunk_gdr2"

Options:
    --kernel MODULE:FUNCTION   the function to wrap (imported with importlib; MODULE may be a file path)
    --device DEVICE            where tensors go (default: cuda when available, else cpu)
    --varlen                   the function takes cu_seqlens=... (packed batches); then varlen=1 is announced
    --no-grad                  do not announce gradients (default: gradients through torch.autograd)
    --no-gva                   the function needs HV == H (e.g. flash-linear-attention's chunk_gdn2): announce gva=0
    --max-dk N, --max-dv N     limits announced in the handshake (default 256)

Gradients: the tool's do and dht are fed to torch.autograd.backward on (o, final_state); dq, dk, dv, dg, db, dw,
dh0 are the .grad of the inputs (g and h0 are fp32 leaves). Needs torch; reads and writes safetensors itself
(so the `safetensors` package is not required).
"""
import argparse
import importlib
import importlib.util
import json
import os
import struct
import sys

DTYPE_NAMES = {"F32": "float32", "F16": "float16", "BF16": "bfloat16", "F64": "float64", "I64": "int64", "I32": "int32"}
ELEMENT_SIZE = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I64": 8, "I32": 4}


def load_function(spec):
    module_name, _, function_name = spec.partition(":")
    if not function_name:
        raise SystemExit("--kernel must be MODULE:FUNCTION, got %r" % spec)
    if module_name.endswith(".py") and os.path.exists(module_name):
        loader = importlib.util.spec_from_file_location("gdr2_port_kernel", module_name)
        module = importlib.util.module_from_spec(loader)
        loader.loader.exec_module(module)
    else:
        module = importlib.import_module(module_name)
    return getattr(module, function_name)


def load(torch, path, device):
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    meta = header.pop("__metadata__", {})
    tensors, dtypes = {}, {}
    for name, info in header.items():
        begin, end = info["data_offsets"]
        dtype = getattr(torch, DTYPE_NAMES[info["dtype"]])
        raw = bytearray(data[8 + n + begin:8 + n + end])
        t = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        tensors[name] = t.reshape(info["shape"]).to(device)
        dtypes[name] = info["dtype"]
    return tensors, dtypes, meta


def save(torch, path, tensors):
    """tensors: name -> (safetensors dtype, tensor)."""
    header, blobs, offset = {}, [], 0
    for name, (dtype, t) in tensors.items():
        t = t.detach().to("cpu", getattr(torch, DTYPE_NAMES[dtype])).contiguous()
        raw = t.view(torch.uint8).numpy().tobytes() if t.numel() else b""
        header[name] = {"dtype": dtype, "shape": list(t.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)) + text + b"".join(blobs))


def run_case(torch, fn, args, in_path, out_path):
    x, dtypes, meta = load(torch, in_path, args.device)
    io = dtypes["q"]
    want_grad = meta.get("want_grad", "0") == "1"
    scale = float(meta["scale"])
    names = ["q", "k", "v", "g", "b", "w"]
    inputs = {n: x[n].clone().requires_grad_(want_grad) for n in names}
    B, T, H, K = x["q"].shape
    HV, V = x["v"].shape[2], x["v"].shape[3]
    N = x["cu_seqlens"].numel() - 1 if "cu_seqlens" in x else B
    h0 = x.get("h0")
    if h0 is not None:
        h0 = h0.clone().requires_grad_(want_grad)
    kwargs = {}
    if "cu_seqlens" in x:
        if not args.varlen:
            raise ValueError("packed (cu_seqlens) case but --varlen not given")
        kwargs["cu_seqlens"] = x["cu_seqlens"]
    with torch.set_grad_enabled(want_grad):
        o, ht = fn(inputs["q"], inputs["k"], inputs["v"], inputs["g"], inputs["b"], inputs["w"], scale, h0, True, **kwargs)
    if ht is None:
        raise ValueError("the kernel returned no final state although output_final_state=True")
    out = {"o": (io, o), "ht": ("F32", ht)}
    if want_grad:
        torch.autograd.backward([o, ht], [x["do"].to(o.dtype), x["dht"].to(ht.dtype)])
        for n in names:
            grad = inputs[n].grad if inputs[n].grad is not None else torch.zeros_like(inputs[n])
            out["d" + n] = ("F32" if n == "g" else io, grad)
        dh0 = h0.grad if h0 is not None and h0.grad is not None else torch.zeros(N, HV, K, V)
        out["dh0"] = ("F32", dh0)
    save(torch, out_path, out)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--kernel", required=True)
    parser.add_argument("--device", default=None)
    parser.add_argument("--varlen", action="store_true")
    parser.add_argument("--no-grad", action="store_true")
    parser.add_argument("--no-gva", action="store_true")
    parser.add_argument("--max-dk", type=int, default=256)
    parser.add_argument("--max-dv", type=int, default=256)
    args = parser.parse_args()
    import torch  # imported here so that --help works without torch
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    fn = load_function(args.kernel)
    print("gdr2-port 1 dtypes=f32,bf16,f16 grad=%d varlen=%d gva=%d max_dk=%d max_dv=%d state=KV"
          % (0 if args.no_grad else 1, 1 if args.varlen else 0, 0 if args.no_gva else 1, args.max_dk, args.max_dv), flush=True)
    for line in sys.stdin:
        parts = line.split()
        try:
            if len(parts) != 2:
                raise ValueError("expected '<input path> <output path>'")
            run_case(torch, fn, args, parts[0], parts[1])
            answer = "ok"
        except Exception as e:  # report, never die: the tool names the case
            answer = "error " + (type(e).__name__ + ": " + str(e)).replace("\n", " ")
        print(answer, flush=True)


if __name__ == "__main__":
    main()
