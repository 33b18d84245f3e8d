"""``tvm-pattern bench``: every 3x3 conv of a suite, PyTorch dense vs TVM dense vs our pattern-sparse kernel.

Weights are random, pruned to 8 patterns of 4 taps (a library extracted from the suite's own random
kernels) and, at 8x, to 1/3.6 of each layer's kernels (largest norm kept), in blocks of filters sharing their
kept input channels where ``prune`` and ``bench --model`` use them (``sparsity.blocks.kernel_block_of``).
All three sides run the same pruned weights at 224x224, batch 1.

Measuring: PyTorch runs in a subprocess (its OpenMP threads and TVM's pool spin and disturb each other in
one process), after the TVM phases, with pauses between phases; every number is a median of repeats.
The untuned TVM dense conv (default Relax pipeline) is ~70x slower than PyTorch, so it gets few repeats.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from ..errors import TvmPatternError
from ..sparsity.blocks import AUTO, kernel_block_of
from ..sparsity.library import PatternLibrary, best_fit

__all__ = ["SUITES", "Layer", "block_connectivity", "prune_suite", "run_bench", "run_tuned_bench"]

CONNECTIVITY = 3.6
PAUSE_S = 1.0


@dataclass(frozen=True)
class Layer:
    """One 3x3 conv (padding 1) of a suite; ``pool`` marks a 2x2 max-pool after it (VGG)."""

    name: str
    cin: int
    cout: int
    size: int  # input height = width
    stride: int = 1
    pool: bool = False

    @property
    def out_size(self) -> int:
        return (self.size + 2 - 3) // self.stride + 1


def _vgg16() -> list[Layer]:
    cfg = [(2, 64, 224), (2, 128, 112), (3, 256, 56), (3, 512, 28), (3, 512, 14)]
    layers, cin = [], 3
    for stage, (reps, cout, size) in enumerate(cfg, start=1):
        for i in range(1, reps + 1):
            layers.append(Layer(f"conv{stage}_{i}", cin, cout, size, 1, pool=i == reps))
            cin = cout
    return layers


def _resnet(blocks: list[int], bottleneck: bool) -> list[Layer]:
    """The 3x3 convs of torchvision ResNet-18/50 (stride on the 3x3 conv, v1.5) at 224x224."""
    layers, size = [], 56
    for stage, reps in enumerate(blocks, start=1):
        width = 64 * 2 ** (stage - 1)
        for b in range(reps):
            stride = 2 if stage > 1 and b == 0 else 1
            cin = width // 2 if (not bottleneck and stage > 1 and b == 0) else width
            layers.append(Layer(f"layer{stage}.{b}.conv{2 if bottleneck else 1}", cin, width, size, stride))
            size = (size + 2 - 3) // stride + 1
            if not bottleneck:
                layers.append(Layer(f"layer{stage}.{b}.conv2", width, width, size, 1))
    return layers


SUITES: dict[str, list[Layer]] = {
    "vgg16": _vgg16(),
    "resnet18": _resnet([2, 2, 2, 2], bottleneck=False),
    "resnet50": _resnet([3, 4, 6, 3], bottleneck=True),
}


def prune_suite(layers: list[Layer], compression: float, seed: int = 0) -> tuple[list[np.ndarray], PatternLibrary]:
    """Random He-initialised weights pruned to 8 four-tap patterns, and at 8x to 1/3.6 of the kernels."""
    if compression not in (2.25, 8.0):
        raise TvmPatternError(f"compression must be 2.25 or 8, got {compression}")
    rng = np.random.default_rng(seed)
    dense = [
        (rng.standard_normal((ly.cout, ly.cin, 3, 3)) * math.sqrt(2.0 / (9 * ly.cin))).astype(np.float32)
        for ly in layers
    ]
    library = PatternLibrary.extract(np.concatenate([w.reshape(-1, 3, 3) for w in dense]), k=8, n=4)
    pruned = []
    for w in dense:
        kernels = w.reshape(-1, 3, 3)
        kernels = kernels * library.patterns[best_fit(kernels, library.patterns)]
        if compression == 8.0:
            block = kernel_block_of(AUTO, w.shape[1])
            kernels = kernels * block_connectivity(kernels.reshape(w.shape), block).reshape(-1, 1, 1)
        pruned.append(kernels.reshape(w.shape).astype(np.float32))
    return pruned, library


def block_connectivity(weight: np.ndarray, block: int) -> np.ndarray:
    """(O, C) mask keeping 1/``CONNECTIVITY`` of the kernels as whole (block of ``block`` filters, channel) groups
    of largest L2 norm: ``prune.projection.connectivity_mask`` in numpy (this process does not load torch)."""
    o, c = weight.shape[:2]
    energy = np.square(weight.astype(np.float64)).reshape(o, c, -1).sum(axis=2)
    rows = np.arange(o) // block
    groups = np.zeros((rows[-1] + 1, c))
    np.add.at(groups, rows, energy)
    order = np.argsort(-groups.reshape(-1), kind="stable")
    held = np.cumsum(np.repeat(np.bincount(rows), c)[order])
    count = int(np.argmin(np.abs(held - max(1, round(o * c / CONNECTIVITY))))) + 1
    chosen = np.zeros(groups.size, bool)
    chosen[order[:count]] = True
    return chosen.reshape(groups.shape)[rows]


# ---------------------------------------------------------------------------------------------- TVM side


def _target(threads: int):
    from ..targets import host_target

    return host_target(threads)


def _time_tvm(fn, args: list, repeats: int, min_s: float = 0.05) -> float:
    """Median ms of ``fn(*args)`` over ``repeats`` runs, each averaging enough calls to last ``min_s``."""
    t0 = time.perf_counter()
    fn(*args)
    one = max(time.perf_counter() - t0, 1e-6)
    number = max(1, int(min_s / one))
    samples = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(number):
            fn(*args)
        samples.append((time.perf_counter() - t0) / number)
    return float(np.median(samples) * 1e3)


def _compile_prim(func, target):
    import tvm

    return tvm.compile(tvm.IRModule({"main": func}), target=target)["main"]


def _sparse_layer(layer: Layer, weight: np.ndarray, library, target, relu: bool = False, winograd: bool = True):
    """(compiled fn, argument tensors) for our kernel on a random input: the one ``compile`` runs (the provider's
    default: Winograd at pattern-only densities or on block-pruned wide layers), or with ``winograd`` off the pattern
    kernel (the tuned template).
    """
    import tvm

    from ..kernels.pattern_conv2d import conv_out_shape
    from ..passes import ConvLayer, DefaultKernels
    from ..schedules import sparse_conv2d
    from ..sparsity.format import pack

    packed = pack(weight, library)
    shape, strides, padding = (1, layer.cin, layer.size, layer.size), (layer.stride,) * 2, (1, 1, 1, 1)
    out_shape = conv_out_shape(shape, layer.cout, strides, padding)
    if winograd:
        kernel = DefaultKernels().kernel(ConvLayer(layer.name, packed, shape, strides, padding, None, relu,
                                                   out_shape, target))  # fmt: skip
    else:
        kernel = sparse_conv2d(packed, shape, strides, padding, relu=relu, target=target)
    dev = tvm.cpu()
    x = np.random.default_rng(1).standard_normal((1, layer.cin, layer.size, layer.size)).astype(np.float32)
    args = [tvm.runtime.tensor(x, dev), *[tvm.runtime.tensor(a, dev) for a in kernel.arrays]]
    args.append(tvm.runtime.tensor(np.zeros(out_shape, np.float32), dev))
    return _compile_prim(kernel.func, target), args


def _tvm_dense_layer(layer: Layer, weight: np.ndarray, target):
    """The default Relax pipeline on a legalized dense conv2d (untuned)."""
    import tvm
    from tvm import relax

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, layer.cin, layer.size, layer.size), "float32"))
    w = relax.Var("w", relax.TensorType(weight.shape, "float32"))
    with bb.function("main", [x, w]):
        with bb.dataflow():
            y = bb.emit_output(relax.op.nn.conv2d(x, w, strides=layer.stride, padding=1))
        bb.emit_func_output(y)
    vm = relax.VirtualMachine(tvm.compile(bb.get(), target=target), tvm.cpu())
    dev = tvm.cpu()
    xs = np.random.default_rng(1).standard_normal((1, layer.cin, layer.size, layer.size)).astype(np.float32)
    return vm["main"], [tvm.runtime.tensor(xs, dev), tvm.runtime.tensor(weight, dev)]


def _maxpool(shape: tuple[int, int, int, int], target):
    """A 2x2 / stride-2 max-pool, parallel over channels, vectorized along output rows."""
    from tvm import s_tir, te, tirx

    n, c, h, w = (tirx.IntImm("int64", v) for v in shape)
    x = te.placeholder((n, c, h, w), "float32", name="x")

    def pool(b, ch, i, j):
        top = te.max(x[b, ch, i * 2, j * 2], x[b, ch, i * 2, j * 2 + 1])
        return te.max(top, te.max(x[b, ch, i * 2 + 1, j * 2], x[b, ch, i * 2 + 1, j * 2 + 1]))

    y = te.compute((n, c, h // 2, w // 2), pool, "pool")
    sch = s_tir.Schedule(te.create_prim_func([x, y]))
    b, ch, _, j = sch.get_loops(sch.get_sblock("pool"))
    sch.parallel(sch.fuse(b, ch))
    lanes = next(v for v in (8, 4, 2, 1) if (shape[3] // 2) % v == 0)
    sch.vectorize(sch.split(j, [None, lanes])[1])
    return _compile_prim(sch.mod["main"], target)


# ---------------------------------------------------------------------------------------------- torch side


def _torch_worker(spec_path: str, out_path: str) -> None:
    """Subprocess body: time PyTorch's dense conv2d per layer and the VGG conv stack."""
    import torch
    import torch.nn.functional as F

    spec = np.load(spec_path, allow_pickle=False)
    meta = json.loads(str(spec["meta"]))
    torch.set_num_threads(meta["threads"])
    repeats = meta["repeats"]
    weights = [torch.from_numpy(spec[f"w{i}"]) for i in range(len(meta["layers"]))]

    def median_ms(fn) -> float:
        with torch.no_grad():
            for _ in range(3):
                fn()
            samples = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                fn()
                samples.append(time.perf_counter() - t0)
        return float(np.median(samples) * 1e3)

    layers = [Layer(**ly) for ly in meta["layers"]]
    per_layer = []
    for ly, w in zip(layers, weights, strict=True):
        x = torch.randn(1, ly.cin, ly.size, ly.size)
        per_layer.append(median_ms(lambda x=x, w=w, s=ly.stride: F.conv2d(x, w, stride=s, padding=1)))
    stack = None
    if meta["stack"]:
        first = torch.from_numpy(spec["first_dense"])
        x0 = torch.from_numpy(spec["stack_input"])

        def run_stack() -> torch.Tensor:
            x = x0
            for i, ly in enumerate(layers):
                x = F.relu(F.conv2d(x, first if i == 0 else weights[i], stride=ly.stride, padding=1))
                if ly.pool:
                    x = F.max_pool2d(x, 2)
            return x

        stack = median_ms(run_stack)
        with torch.no_grad():
            np.save(out_path + ".npy", run_stack().numpy())
    Path(out_path).write_text(json.dumps({"per_layer": per_layer, "stack": stack}))


def _run_torch(layers: list[Layer], weights: list[np.ndarray], first_dense: np.ndarray | None,
               stack_input: np.ndarray | None, threads: int, repeats: int) -> dict:
    """PyTorch's timings (and its conv-stack output, to check ours against) from a subprocess."""
    with tempfile.TemporaryDirectory() as tmp:
        spec, out = os.path.join(tmp, "spec.npz"), os.path.join(tmp, "out.json")
        meta = {"threads": threads, "repeats": repeats, "layers": [asdict(ly) for ly in layers],
                "stack": first_dense is not None}
        arrays = {f"w{i}": w for i, w in enumerate(weights)}
        if first_dense is not None:
            arrays["first_dense"], arrays["stack_input"] = first_dense, stack_input
        np.savez(spec, meta=np.array(json.dumps(meta)), **arrays)
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        command = [sys.executable, "-m", "tvm_pattern.bench.layers", "--torch-worker", spec, out]
        subprocess.run(command, check=True, env=env)
        result = json.loads(Path(out).read_text())
        result["stack_output"] = np.load(out + ".npy") if first_dense is not None else None
        return result


# ---------------------------------------------------------------------------------------------- phases


def _progress(iterable, desc: str, enabled: bool):
    if not enabled:
        return iterable
    from tqdm import tqdm

    return tqdm(iterable, desc=desc, leave=False, file=sys.stderr)


def _sparse_stack(layers, weights, first_dense, stack_input, library, target, repeats: int) -> tuple[float, np.ndarray]:
    """Our VGG conv stack end to end: our kernel per conv (ReLU fused; the first one 9-tap dense), TVM pools.

    Returns the median ms and the stack's output (checked against PyTorch's).
    """
    import tvm

    dense_lib = PatternLibrary(np.ones((1, 3, 3), bool))
    calls = []
    x = tvm.runtime.tensor(stack_input, tvm.cpu())
    for i, ly in enumerate(layers):
        fn, args = _sparse_layer(ly, first_dense if i == 0 else weights[i], dense_lib if i == 0 else library,
                                 target, relu=True)
        args[0] = x
        calls.append((fn, args))
        x = args[-1]
        if ly.pool:
            shape = tuple(int(d) for d in x.shape)
            pooled = tvm.runtime.tensor(np.zeros((*shape[:2], shape[2] // 2, shape[3] // 2), np.float32), tvm.cpu())
            calls.append((_maxpool(shape, target), [x, pooled]))
            x = pooled

    def run() -> None:
        for fn, args in calls:
            fn(*args)

    ms = _time_tvm(run, [], repeats)
    return ms, x.numpy()


def _table(rows: list[dict]) -> str:
    head = f"{'layer':<18}{'shape':>24}{'torch ms':>11}{'tvm dense':>11}{'ours ms':>10}{'vs torch':>10}{'vs tvm':>9}"
    lines = [head, "-" * len(head)]
    for r in rows:
        shape = f"{r['cin']}->{r['cout']} {r['size']}/{r['stride']}"
        lines.append(
            f"{r['name']:<18}{shape:>24}{r['torch_ms']:>11.2f}{r['tvm_dense_ms']:>11.1f}{r['sparse_ms']:>10.2f}"
            f"{r['speedup_vs_torch']:>9.2f}x{r['speedup_vs_tvm_dense']:>8.1f}x"
        )
    return "\n".join(lines)


def run_bench(
    suite: str,
    compression: float,
    json_path: str | None,
    threads: int | None = None,
    repeats: int = 15,
    progress: bool = True,
    tvm_dense_repeats: int = 2,
) -> dict:
    """Benchmark every 3x3 conv of ``suite`` at ``compression`` (2.25 or 8); print a table, write JSON."""
    if suite not in SUITES:
        raise TvmPatternError(f"unknown suite {suite!r}; choose one of {sorted(SUITES)}")
    from ..targets import host_cores, runtime_threads

    threads = threads or host_cores()
    runtime_threads(threads)
    layers = SUITES[suite]
    weights, library = prune_suite(layers, float(compression))
    target = _target(threads)
    stack = suite == "vgg16"
    first_dense = (np.random.default_rng(3).standard_normal((64, 3, 3, 3)) * math.sqrt(2 / 27)).astype(
        np.float32) if stack else None
    stack_input = np.random.default_rng(2).standard_normal((1, 3, 224, 224)).astype(np.float32) if stack else None

    sparse_ms = []
    for ly, w in _progress(list(zip(layers, weights, strict=True)), "ours (compile + run)", progress):
        fn, args = _sparse_layer(ly, w, library, target)
        sparse_ms.append(_time_tvm(fn, args, repeats))
    e2e_sparse, e2e_out = (
        _sparse_stack(layers, weights, first_dense, stack_input, library, target, repeats) if stack else (None, None)
    )
    time.sleep(PAUSE_S)
    dense_ms = []
    for ly, w in _progress(list(zip(layers, weights, strict=True)), "tvm dense (untuned)", progress):
        fn, args = _tvm_dense_layer(ly, w, target)
        dense_ms.append(_time_tvm(fn, args, tvm_dense_repeats, min_s=0.0))
    time.sleep(PAUSE_S)
    torch_res = _run_torch(layers, weights, first_dense, stack_input, threads, repeats)

    rows = []
    for ly, w, t_ms, d_ms, s_ms in zip(layers, weights, torch_res["per_layer"], dense_ms, sparse_ms, strict=True):
        rows.append({
            **asdict(ly), "out_size": ly.out_size,
            "kept_kernels": int(w.any(axis=(2, 3)).sum()), "total_kernels": ly.cin * ly.cout,
            "torch_ms": t_ms, "tvm_dense_ms": d_ms, "sparse_ms": s_ms,
            "speedup_vs_torch": t_ms / s_ms, "speedup_vs_tvm_dense": d_ms / s_ms,
        })
    scored = rows[1:] if suite == "vgg16" else rows
    result = {
        "suite": suite, "compression": float(compression), "threads": threads, "repeats": repeats,
        "target": str(target), "cpu": _cpu_name(),
        "method": "medians; PyTorch timed in a subprocess after the TVM phases; TVM dense untuned "
                  f"({tvm_dense_repeats} repeats)",
        "batch": 1, "input": [224, 224], "patterns": library.to_json()["patterns"],
        "layers": rows,
        "geomean_speedup_vs_torch": float(np.exp(np.mean([np.log(r["speedup_vs_torch"]) for r in scored]))),
        "geomean_over": "layers after the first" if suite == "vgg16" else "all layers",
        "end_to_end": _end_to_end(rows, torch_res["stack"], e2e_sparse),
    }
    if e2e_out is not None:
        ref = torch_res["stack_output"]
        result["end_to_end"]["max_abs_err_vs_torch"] = float(np.abs(e2e_out - ref).max())
        result["end_to_end"]["max_abs_ref"] = float(np.abs(ref).max())
    print(_table(rows))
    print(f"geomean speedup vs torch ({result['geomean_over']}): {result['geomean_speedup_vs_torch']:.2f}x")
    e2e = result["end_to_end"]
    print(f"end to end ({e2e['kind']}): torch {e2e['torch_ms']:.1f} ms, ours {e2e['sparse_ms']:.1f} ms, "
          f"{e2e['speedup_vs_torch']:.2f}x" + (f"; max |ours - torch| {e2e['max_abs_err_vs_torch']:.2e}"
                                              if "max_abs_err_vs_torch" in e2e else ""))
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=1))
    return result


def run_tuned_bench(
    names: list[str],
    trials: int = 64,
    work_dir: str | None = None,
    compression: float = 8.0,
    threads: int | None = None,
    repeats: int = 15,
    progress: bool = True,
    json_path: str | None = None,
) -> dict:
    """Tuned vs untuned (default knobs) pattern-sparse kernel for some VGG-16 layers (``bench --tuned``).

    All layers are tuned in one job (``trials`` each; an existing ``work_dir`` database is continued; each
    task's best record is confirmed against the default kernel, ``tune.confirm``), then each layer's untuned
    kernel and the kernel the database selects (``tuned_kernel``: the default one where confirmation rejected
    the record) are checked to agree and timed interleaved, ``repeats`` rounds (the order alternating, each
    sample ~50 ms of calls). Prints median latencies, ratio, confirmation verdict and tuning time.
    """
    from ..schedules import tuning_task
    from ..sparsity.format import pack
    from ..targets import host_cores, runtime_threads
    from ..tune import open_database, tune

    layers = SUITES["vgg16"]
    unknown = sorted(set(names) - {ly.name for ly in layers})
    if unknown or not names:
        raise TvmPatternError(f"unknown VGG-16 layer(s) {unknown or names}; choose from {[ly.name for ly in layers]}")
    threads = threads or host_cores()
    runtime_threads(threads)
    weights, library = prune_suite(layers, float(compression))
    chosen = [(ly, w) for ly, w in zip(layers, weights, strict=True) if ly.name in names]
    target = _target(threads)
    work = Path(work_dir) if work_dir else Path(tempfile.mkdtemp(prefix="tvm-pattern-tuned-bench-"))
    tasks = [tuning_task(pack(w, library), (1, ly.cin, ly.size, ly.size), (ly.stride,) * 2, (1, 1, 1, 1),
                         False, False, target) for ly, w in chosen]  # fmt: skip
    results = tune(tasks, target, work, trials, progress=progress)
    database = open_database(work)
    time.sleep(PAUSE_S)
    rows = [_tuned_row(ly, w, library, task, result, database, target, repeats)
            for (ly, w), task, result in zip(chosen, tasks, results, strict=True)]  # fmt: skip
    print(f"{'layer':<10}{'untuned ms':>12}{'tuned ms':>10}{'speedup':>9}{'trials':>8}{'tuning s':>10}"
          f"{'record':>9}{'confirm':>13}")  # fmt: skip
    for r in rows:
        confirm = f"{r['confirm_default_ms']:.3f}/{r['confirm_tuned_ms']:.3f}" if r["confirm_tuned_ms"] else "-"
        print(f"{r['name']:<10}{r['untuned_ms']:>12.3f}{r['tuned_ms']:>10.3f}{r['speedup']:>8.2f}x"
              f"{r['trials']:>8}{r['tuning_s']:>10.0f}{'tuned' if r['kept'] else 'default':>9}{confirm:>13}")
    out = {"suite": "vgg16", "compression": float(compression), "threads": threads, "repeats": repeats,
           "target": str(target), "cpu": _cpu_name(), "work_dir": str(work),
           "method": f"untuned and selected kernels timed interleaved, {repeats} rounds (order alternating), "
                     "each sample the mean of >= 50 ms of calls; medians",
           "layers": rows}  # fmt: skip
    if json_path:
        Path(json_path).write_text(json.dumps(out, indent=1))
    return out


def _tuned_row(ly: Layer, w: np.ndarray, library, task, result, database, target, rounds: int) -> dict:
    """One layer of ``bench --tuned``: the untuned kernel and the one the database selects, checked to agree,
    then timed interleaved."""
    import tvm
    import tvm_ffi

    from ..tune import tuned_kernel
    from ..tune.confirm import interleaved

    fn, args = _sparse_layer(ly, w, library, target, winograd=False)
    fn(*args)
    untuned_out = args[-1].numpy()
    default = task.materialize(task.mod)
    func = tuned_kernel(task, database, target)
    kept = func is not None and not tvm_ffi.structural_equal(func, default)  # the best record may be the default
    if func is None:  # no record, or confirmation kept the default: what ``compile --db`` runs
        func = default
    dev = tvm.cpu()
    tuned_args = [args[0], *[tvm.runtime.tensor(a, dev) for a in task.arrays],
                  tvm.runtime.tensor(np.zeros(untuned_out.shape, np.float32), dev)]  # fmt: skip
    tuned_fn = _compile_prim(func, target)
    tuned_fn(*tuned_args)
    err = float(np.abs(tuned_args[-1].numpy() - untuned_out).max())
    untuned_s, tuned_s = interleaved([lambda: fn(*args), lambda: tuned_fn(*tuned_args)], rounds)
    untuned_ms, tuned_ms = float(np.median(untuned_s)), float(np.median(tuned_s))
    confirmation = result.confirmation
    return {"name": ly.name, "untuned_ms": untuned_ms, "tuned_ms": tuned_ms, "speedup": untuned_ms / tuned_ms,
            "trials": result.trials, "tuning_s": result.seconds, "max_abs_diff": err, "kept": kept,
            "tuned_faster_rounds": int(sum(t < u for u, t in zip(untuned_s, tuned_s, strict=True))),
            "rounds": rounds, "untuned_samples_ms": untuned_s, "tuned_samples_ms": tuned_s,
            "confirm_default_ms": confirmation.default_ms if confirmation else None,
            "confirm_tuned_ms": confirmation.tuned_ms if confirmation else None,
            "confirm_kept": confirmation.kept if confirmation else None,
            "confirmation": str(confirmation) if confirmation else "none needed (the default is best)"}  # fmt: skip


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def _end_to_end(rows: list[dict], torch_stack: float | None, sparse_stack: float | None) -> dict:
    if torch_stack is not None and sparse_stack is not None:
        kind = "conv stack: first conv dense, ReLUs, 2x2 max-pools"
        t, s = torch_stack, sparse_stack
    else:
        kind = "sum of the 3x3 layers"
        t, s = sum(r["torch_ms"] for r in rows), sum(r["sparse_ms"] for r in rows)
    return {"kind": kind, "torch_ms": t, "sparse_ms": s, "speedup_vs_torch": t / s}


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "--torch-worker":
        _torch_worker(sys.argv[2], sys.argv[3])
    else:
        sys.exit("usage: python -m tvm_pattern.bench.layers --torch-worker SPEC.npz OUT.json (use `tvm-pattern bench`)")
