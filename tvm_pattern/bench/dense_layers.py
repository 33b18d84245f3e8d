"""Per-layer benchmark of the dense kernels against PyTorch (oneDNN), interleaved in rounds.

    python -m tvm_pattern.bench.dense_layers [--model resnet50|mobilenetv2|vgg16fc] [--rounds 5]

PyTorch runs in its own subprocess (``torch.set_num_threads``); ours in this one with ``TVM_NUM_THREADS``
set before TVM starts its pool. Per round and layer: PyTorch times the layer, then we do (medians of
repeats, a pause between so neither runtime's spinning threads disturb the other). Reports per layer the
medians over rounds, ours / PyTorch, our GFLOP/s (GB/s of weights for batch-1 linear layers), and the
whole-model sums of the dense ops weighted by how often each shape occurs.

The layers: the distinct dense-op shapes of torchvision's ResNet-50 (v1.5), MobileNet-V2 and VGG-16's FCs,
each a dict ``kind`` ("conv" | "dw" | "linear"), its shape, ``act`` / ``residual`` as the model uses them
(BN folded into weights + bias) and ``count``: how often the shape occurs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np
import tvm

from ..schedules import dense_cpu
from ..targets import resolve_target

# ---------------------------------------------------------------------------------------------- layers

def _conv(c, oc, hw, k, s, count, act="relu", residual=False):
    return {"kind": "conv", "c": c, "oc": oc, "hw": hw, "k": k, "s": s, "p": k // 2, "count": count,
            "act": act, "residual": residual}


def _dw(c, hw, s, count):
    return {"kind": "dw", "c": c, "hw": hw, "s": s, "count": count, "act": "relu6"}


def _linear(i, o, count=1, batch=1, act=None):
    return {"kind": "linear", "in": i, "out": o, "batch": batch, "count": count, "act": act}


def resnet50() -> list[dict]:
    return [
        _conv(3, 64, 224, 7, 2, 1),
        _conv(64, 64, 56, 1, 1, 1), _conv(64, 64, 56, 3, 1, 3), _conv(64, 256, 56, 1, 1, 4, residual=True),
        _conv(256, 64, 56, 1, 1, 2),
        _conv(256, 128, 56, 1, 1, 1), _conv(128, 128, 56, 3, 2, 1), _conv(128, 512, 28, 1, 1, 4, residual=True),
        _conv(256, 512, 56, 1, 2, 1, act=None), _conv(512, 128, 28, 1, 1, 3), _conv(128, 128, 28, 3, 1, 3),
        _conv(512, 256, 28, 1, 1, 1), _conv(256, 256, 28, 3, 2, 1), _conv(256, 1024, 14, 1, 1, 6, residual=True),
        _conv(512, 1024, 28, 1, 2, 1, act=None), _conv(1024, 256, 14, 1, 1, 5), _conv(256, 256, 14, 3, 1, 5),
        _conv(1024, 512, 14, 1, 1, 1), _conv(512, 512, 14, 3, 2, 1), _conv(512, 2048, 7, 1, 1, 3, residual=True),
        _conv(1024, 2048, 14, 1, 2, 1, act=None), _conv(2048, 512, 7, 1, 1, 2), _conv(512, 512, 7, 3, 1, 2),
        _linear(2048, 1000),
    ]


def mobilenetv2() -> list[dict]:
    r6 = "relu6"
    pw = [  # (in, out, hw, count, act, residual)
        (32, 16, 112, 1, None, False), (16, 96, 112, 1, r6, False), (96, 24, 56, 1, None, False),
        (24, 144, 56, 2, r6, False), (144, 24, 56, 1, None, True), (144, 32, 28, 1, None, False),
        (32, 192, 28, 3, r6, False), (192, 32, 28, 2, None, True), (192, 64, 14, 1, None, False),
        (64, 384, 14, 4, r6, False), (384, 64, 14, 3, None, True), (384, 96, 14, 1, None, False),
        (96, 576, 14, 3, r6, False), (576, 96, 14, 2, None, True), (576, 160, 7, 1, None, False),
        (160, 960, 7, 3, r6, False), (960, 160, 7, 2, None, True), (960, 320, 7, 1, None, False),
        (320, 1280, 7, 1, r6, False),
    ]
    dws = [(32, 112, 1, 1), (96, 112, 2, 1), (144, 56, 1, 1), (144, 56, 2, 1), (192, 28, 1, 2), (192, 28, 2, 1),
           (384, 14, 1, 4), (576, 14, 1, 2), (576, 14, 2, 1), (960, 7, 1, 3)]
    return ([_conv(3, 32, 224, 3, 2, 1, act=r6)]
            + [_conv(i, o, hw, 1, 1, n, act=a, residual=r) for i, o, hw, n, a, r in pw]
            + [_dw(c, hw, s, n) for c, hw, s, n in dws]
            + [_linear(1280, 1000)])


def vgg16fc() -> list[dict]:
    return [_linear(25088, 4096, act="relu"), _linear(4096, 4096, act="relu"), _linear(4096, 1000),
            _linear(25088, 4096, batch=4, count=0, act="relu"), _linear(4096, 4096, batch=4, count=0, act="relu")]


MODELS = {"resnet50": resnet50, "mobilenetv2": mobilenetv2, "vgg16fc": vgg16fc}


def flops(layer: dict) -> float:
    """Multiply-adds x 2 of one occurrence of the layer."""
    if layer["kind"] == "linear":
        return 2.0 * layer["in"] * layer["out"] * layer["batch"]
    oh = (layer["hw"] + 2 * (layer.get("p", 1)) - layer.get("k", 3)) // layer["s"] + 1
    if layer["kind"] == "dw":
        return 2.0 * layer["c"] * oh * oh * 9
    return 2.0 * layer["c"] * layer["oc"] * oh * oh * layer["k"] ** 2


def name(layer: dict) -> str:
    if layer["kind"] == "linear":
        return f"fc {layer['in']}->{layer['out']} b{layer['batch']}"
    if layer["kind"] == "dw":
        return f"dw3x3 {layer['c']}@{layer['hw']}/{layer['s']}"
    k = layer["k"]
    return f"conv{k}x{k} {layer['c']}->{layer['oc']}@{layer['hw']}/{layer['s']}"


# ---------------------------------------------------------------------------------------------- timing

def _torch_args(layer: dict, rng):
    import torch

    f = torch.nn.functional
    if layer["kind"] == "linear":
        x = torch.tensor(rng.standard_normal((layer["batch"], layer["in"]), dtype=np.float32))
        w = torch.tensor(rng.standard_normal((layer["out"], layer["in"]), dtype=np.float32))
        b = torch.tensor(rng.standard_normal(layer["out"], dtype=np.float32))
        return lambda: f.linear(x, w, b)
    hw = layer["hw"]
    if layer["kind"] == "dw":
        x = torch.tensor(rng.standard_normal((1, layer["c"], hw, hw), dtype=np.float32))
        w = torch.tensor(rng.standard_normal((layer["c"], 1, 3, 3), dtype=np.float32))
        b = torch.tensor(rng.standard_normal(layer["c"], dtype=np.float32))
        return lambda: f.conv2d(x, w, b, layer["s"], 1, 1, layer["c"])
    x = torch.tensor(rng.standard_normal((1, layer["c"], hw, hw), dtype=np.float32))
    w = torch.tensor(rng.standard_normal((layer["oc"], layer["c"], layer["k"], layer["k"]), dtype=np.float32))
    b = torch.tensor(rng.standard_normal(layer["oc"], dtype=np.float32))
    return lambda: f.conv2d(x, w, b, layer["s"], layer["p"])


CLOCK = {"wall": time.perf_counter, "cpu": time.thread_time}


def _time(fn, repeats: int, min_s: float = 0.005, best: bool = False, clock: str = "wall") -> float:
    """Median (or with ``best`` the least) ms of ``repeats`` timings, each of enough calls to last ``min_s``.

    ``clock="cpu"``: the calling thread's CPU time, which excludes time the OS gave other processes;
    only meaningful with one thread (both runtimes then compute in the calling thread).
    """
    now = CLOCK[clock]
    fn()
    t0 = now()
    fn()
    one = max(now() - t0, 1e-6)
    number = max(1, int(min_s / one))
    out = []
    for _ in range(repeats):
        t0 = now()
        for _ in range(number):
            fn()
        out.append((now() - t0) / number * 1e3)
    return float(min(out) if best else np.median(out))


def torch_worker(threads: int, clock: str = "wall") -> None:
    """Serve timing requests: stdin ``index repeats`` lines, stdout one ms value each."""
    import torch

    torch.set_num_threads(threads)
    layers = json.loads(sys.stdin.readline())
    rng = np.random.default_rng(0)
    fns = [_torch_args(layer, rng) for layer in layers]
    print("ready", flush=True)
    with torch.no_grad():
        for line in sys.stdin:
            i, repeats, best = (int(x) for x in line.split())
            print(_time(fns[i], repeats, best=bool(best), clock=clock), flush=True)


def make_kernel(layer: dict, rng, target=None):
    """Our kernel for one layer, and its arguments (random data and weights)."""
    if layer["kind"] == "linear":

        w = rng.standard_normal((layer["out"], layer["in"]), dtype=np.float32)
        b = rng.standard_normal(layer["out"], dtype=np.float32)
        k = dense_cpu.linear(w, layer["batch"], bias=b, activation=layer.get("act"), target=target)
        data = [rng.standard_normal((layer["batch"], layer["in"]), dtype=np.float32)]
    elif layer["kind"] == "dw":

        shape = (1, layer["c"], layer["hw"], layer["hw"])
        w = rng.standard_normal((layer["c"], 1, 3, 3), dtype=np.float32)
        b = rng.standard_normal(layer["c"], dtype=np.float32)
        k = dense_cpu.depthwise(w, shape, layer["s"], 1, bias=b, activation=layer["act"], target=target)
        data = [rng.standard_normal(shape, dtype=np.float32)]
    else:

        shape = (1, layer["c"], layer["hw"], layer["hw"])
        w = rng.standard_normal((layer["oc"], layer["c"], layer["k"], layer["k"]), dtype=np.float32)
        b = rng.standard_normal(layer["oc"], dtype=np.float32)
        k = dense_cpu.conv2d(w, shape, layer["s"], layer["p"], bias=b, activation=layer["act"],
                   residual=layer.get("residual", False), target=target)
        data = [rng.standard_normal(shape, dtype=np.float32)]
        if layer.get("residual"):
            data.append(rng.standard_normal(k.out_shape, dtype=np.float32))
    return k, data


def ours(layer: dict, target=None):
    """A zero-argument callable running our kernel for ``layer``."""
    rng = np.random.default_rng(1)
    k, data = make_kernel(layer, rng, target)
    ex = tvm.compile(tvm.IRModule({"main": k.func}), resolve_target(target))
    f = ex["main"]
    args = [tvm.runtime.tensor(a) for a in (*data, *k.arrays)]
    out = tvm.runtime.tensor(np.zeros(k.out_shape, np.float32))
    return lambda: f(*args, out)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", choices=sorted(MODELS), default="resnet50")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--best", action="store_true",
                   help="per round the fastest repeat instead of the median (robust to other load on the cores)")
    p.add_argument("--clock", choices=["wall", "cpu"], default="wall",
                   help="cpu: thread CPU time, robust to other processes on the cores (use with --threads 1)")
    p.add_argument("--only", default="", help="comma-separated substrings of layer names to keep")
    p.add_argument("--json", default="", help="write the table here")
    p.add_argument("--torch-worker", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.torch_worker:
        return torch_worker(a.threads, a.clock)
    os.environ["TVM_NUM_THREADS"] = str(a.threads)
    layers = MODELS[a.model]()
    if a.only:
        keys = a.only.split(",")
        layers = [x for x in layers if any(k in name(x) for k in keys)]
    worker = subprocess.Popen([sys.executable, "-m", "tvm_pattern.bench.dense_layers", "--torch-worker",
                               "--threads", str(a.threads), "--clock", a.clock],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    worker.stdin.write(json.dumps(layers) + "\n")
    worker.stdin.flush()
    assert worker.stdout.readline().strip() == "ready"
    t0 = time.time()
    fns = [ours(x) for x in layers]
    print(f"compiled {len(layers)} kernels in {time.time() - t0:.1f} s", file=sys.stderr)
    tt = [[] for _ in layers]
    to = [[] for _ in layers]
    for _ in range(a.rounds):
        for i, fn in enumerate(fns):
            worker.stdin.write(f"{i} {a.repeats} {int(a.best)}\n")
            worker.stdin.flush()
            tt[i].append(float(worker.stdout.readline()))
            time.sleep(0.05)
            to[i].append(_time(fn, a.repeats, best=a.best, clock=a.clock))
            time.sleep(0.05)
    worker.stdin.close()
    worker.wait()
    rows, sum_t, sum_o, sum_bt, sum_bo = [], 0.0, 0.0, 0.0, 0.0
    print(f"{'layer':32s} {'n':>2s} {'torch ms':>9s} {'ours ms':>9s} {'ours/torch':>10s} {'ours GF/s':>9s} "
          f"{'torch GF/s':>10s} {'best-round ratio':>16s}")
    for x, a_t, a_o in zip(layers, tt, to, strict=True):
        mt, mo = float(np.median(a_t)), float(np.median(a_o))
        gf = flops(x) / mo / 1e6
        extra = ""
        if x["kind"] == "linear":
            nbytes = x["in"] * x["out"] * 4
            extra = f"  weights {nbytes / mo / 1e6:.1f} GB/s (torch {nbytes / mt / 1e6:.1f})"
        best = min(a_o) / min(a_t)
        print(f"{name(x):32s} {x['count']:2d} {mt:9.3f} {mo:9.3f} {mo / mt:10.2f} {gf:9.1f} "
              f"{flops(x) / mt / 1e6:10.1f} {best:16.2f}{extra}")
        sum_bt += x["count"] * min(a_t)
        sum_bo += x["count"] * min(a_o)
        sum_t += x["count"] * mt
        sum_o += x["count"] * mo
        rows.append({"layer": name(x), **x, "torch_ms": mt, "ours_ms": mo, "torch_all": a_t, "ours_all": a_o})
    print(f"{'whole model (dense ops, x count)':35s} {sum_t:9.2f} {sum_o:9.2f} {sum_o / max(sum_t, 1e-9):10.2f}")
    print(f"{'  from each layer best round':35s} {sum_bt:9.2f} {sum_bo:9.2f} {sum_bo / max(sum_bt, 1e-9):10.2f}")
    if a.json:
        with open(a.json, "w") as fh:
            json.dump({"model": a.model, "rows": rows, "torch_total_ms": sum_t, "ours_total_ms": sum_o,
                       "torch_best_total_ms": sum_bt, "ours_best_total_ms": sum_bo}, fh, indent=1)


if __name__ == "__main__":
    main()
