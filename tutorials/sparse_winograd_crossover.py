"""Where connectivity-sparse Winograd beats the pattern kernel: the measurement behind
``schedules.winograd.sparse_block`` (at least 256 input channels, sides 8..28).

For each ``C@S`` (C -> C channels, an S x S map): random He weights, 8 four-tap patterns, 1/3.6 of the kernels kept
in blocks of 6 filters sharing their input channels (``prune.projection.connectivity_mask``, what ``prune`` does
to convs of at least 256 channels); the pattern kernel and the sparse Winograd kernel on the same weights, ReLU,
2 threads, timed interleaved (rounds of 5 calls, medians), outputs checked against PyTorch.

    .venv/bin/python tutorials/sparse_winograd_crossover.py 512@28,512@14,256@28,256@14,256@56,128@56,128@28
"""

from __future__ import annotations

import argparse
import os
import time

os.environ.setdefault("TVM_NUM_THREADS", "2")  # TVM 0.27's pool may see one core on a VM otherwise

import numpy as np
import torch
import tvm

from tvm_pattern.prune.projection import connectivity_mask, kept_kernels
from tvm_pattern.schedules import sparse_conv2d, winograd
from tvm_pattern.sparsity.format import pack
from tvm_pattern.sparsity.library import PatternLibrary, best_fit
from tvm_pattern.targets import host_target


def pruned_weight(c: int, rng: np.random.Generator) -> np.ndarray:
    w = (rng.standard_normal((c, c, 3, 3)) * np.sqrt(2 / (9 * c))).astype(np.float32)
    kernels = w.reshape(-1, 3, 3)
    library = PatternLibrary.extract(kernels, k=8, n=4)
    w = (kernels * library.patterns[best_fit(kernels, library.patterns)]).reshape(w.shape)
    mask = connectivity_mask(torch.from_numpy(w), kept_kernels(c * c, 3.6), 6).numpy()
    return (w * mask).astype(np.float32)


def compiled(func, arrays, x: np.ndarray, out_shape, target):
    dev = tvm.cpu()
    fn = tvm.compile(tvm.IRModule({"main": func}), target=target)["main"]
    args = [tvm.runtime.tensor(x, dev), *[tvm.runtime.tensor(a, dev) for a in arrays],
            tvm.runtime.tensor(np.zeros(out_shape, np.float32), dev)]
    fn(*args)
    return fn, args


def median_ms(fn, args, calls: int = 5) -> float:
    samples = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn(*args)
        samples.append(time.perf_counter() - t0)
    return float(np.median(samples) * 1e3)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("layers", help="C@S,... (input = output channels @ map side)")
    p.add_argument("--rounds", type=int, default=9)
    args = p.parse_args()
    target, rng = host_target(2), np.random.default_rng(0)
    for spec in args.layers.split(","):
        c, side = (int(v) for v in spec.split("@"))
        w, x = pruned_weight(c, rng), rng.standard_normal((1, c, side, side)).astype(np.float32)
        want = torch.relu(torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(w), padding=1)).numpy()
        pattern = sparse_conv2d(pack(w), x.shape, relu=True, target=target)
        sparse = winograd.conv2d(w, x.shape, 1, activation="relu", target=target, block=6)
        runs = {"pattern": compiled(pattern.func, pattern.arrays, x, want.shape, target),
                "sparse Winograd": compiled(sparse.func, sparse.arrays, x, want.shape, target)}
        for name, (_, fn_args) in runs.items():
            err = np.abs(fn_args[-1].numpy() - want).max() / np.abs(want).max()
            assert err < 1e-4, f"{spec} {name}: relative error {err:.1e}"
        times = {name: [] for name in runs}
        for _ in range(args.rounds):
            for name, (fn, fn_args) in runs.items():
                times[name].append(median_ms(fn, fn_args))
        a, b = (float(np.median(times[name])) for name in runs)
        why = winograd.sparse_block(w, x.shape, (1, 1), target)[1]
        print(f"{spec}: pattern {a:.3f} ms, sparse Winograd {b:.3f} ms, {a / b:.2f}x; "
              f"the pass picks {'sparse Winograd' if why is None else 'the pattern kernel (' + why + ')'}",
              flush=True)


if __name__ == "__main__":
    main()
