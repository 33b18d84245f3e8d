"""The project-side workers of ``bench --model`` (ours, PyTorch): ``python -m tvm_pattern.bench.worker SPEC.json``.

Each runs in a fresh interpreter of the project's venv, started by ``peers.run_model_bench`` with the thread
variables already set; SPEC.json is the same as ``peer_worker``'s plus ``lib`` (ours) or ``model``/``kwargs``/
``weights`` (PyTorch).
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import numpy as np

from .peer_worker import serve


def _ours_worker(spec: dict) -> dict:
    """In a fresh project interpreter (``TVM_NUM_THREADS`` set by the parent): compile, load, time, profile."""
    import tvm

    from .. import compiler
    from ..targets import host_cores, host_target, resolve_target
    from .profile import breakdown

    threads = spec["threads"]
    os.environ["TVM_NUM_THREADS"] = str(threads)  # already set by the parent; before the first run either way
    target = "x86" if threads == host_cores() else host_target(threads)
    reports: list = []
    sparse_reports: list = []
    dense_reports: list = []
    tuned_dense: list = []
    t0, c0 = time.perf_counter(), time.process_time()
    lib = compiler.compile_file(spec["onnx"], target, spec["lib"], reports=reports, database=spec.get("db"),
                                tuned_dense=tuned_dense, sparse_reports=sparse_reports,
                                dense_reports=dense_reports)  # fmt: skip
    compile_s, compile_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    model = compiler.load(lib)
    x = tvm.runtime.tensor(np.load(spec["input"]), model.device)
    y, times = serve(lambda: model.vm["main"](x), spec["warmup"])
    np.save(spec["output"], _first(y).numpy())
    rows = breakdown(model.vm, [x], runs=spec.get("profile_runs", 3))
    return {
        "times_ms": times, "median_ms": float(np.median(times)), "version": f"tvm {tvm.__version__}",
        "setup_s": compile_s, "compile_s": compile_s, "compile_cpu_s": compile_cpu_s,
        "info": {"target": str(resolve_target(target))},
        "sparse_convs": sum(bool(getattr(r, "sparse", False)) for r in reports), "convs": len(reports),
        **sparse_layers(reports, sparse_reports, dense_reports),
        "breakdown": rows, "database": spec.get("db"),
        "tuned": {"sparse": sum(bool(getattr(r, "tuned", False)) for r in reports), "dense": len(tuned_dense)},
    }  # fmt: skip


def sparse_layers(reports: list, sparse_reports: list, dense_reports: list) -> dict:
    """How many of the model's conv / linear layers run a sparse kernel, per kind, and how many layers in all."""
    from ..passes import BlockSparseReport, ConvReport, DepthwiseReport
    from ..pipeline.compile import final_reports

    final = final_reports([reports, sparse_reports, dense_reports])
    kinds: dict[str, int] = {}
    for r in final:
        if isinstance(r, ConvReport) and r.sparse:
            kind = "3x3"
        elif isinstance(r, DepthwiseReport) and r.rewritten:
            kind = "depthwise"
        elif isinstance(r, BlockSparseReport) and r.rewritten:
            kind = "1x1" if r.op == "conv1x1" else "linear"
        else:
            continue
        kinds[kind] = kinds.get(kind, 0) + 1
    return {"sparse_layers": kinds, "layers": len(final)}


def _first(value):
    """The first output of a VM result (a tensor or a tuple of them)."""
    while isinstance(value, (list, tuple)) or (hasattr(value, "__len__") and not hasattr(value, "numpy")):
        value = value[0]
    return value


def _torch_worker(spec: dict) -> dict:
    """In a fresh project interpreter: the built-in model with the same (pruned) weights, ``torch.set_num_threads``."""
    import torch

    from . import models

    torch.set_num_threads(spec["threads"])
    torch.set_num_interop_threads(1)
    model = models.MODELS[spec["model"]](**spec["kwargs"])
    model.load_state_dict(torch.load(spec["weights"], weights_only=True))
    model.eval()
    x = torch.from_numpy(np.load(spec["input"]))
    with torch.no_grad():
        y, times = serve(lambda: model(x), spec["warmup"])
    np.save(spec["output"], y.numpy())
    return {"times_ms": times, "median_ms": float(np.median(times)), "version": torch.__version__,
            "info": {"threads": torch.get_num_threads()}}  # fmt: skip


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python -m tvm_pattern.bench.worker SPEC.json (run by `tvm-pattern bench --model`)")
    spec = json.loads(Path(sys.argv[1]).read_text())
    out = _ours_worker(spec) if spec["runtime"] == "ours" else _torch_worker(spec)
    Path(spec["result"]).write_text(json.dumps(out))
