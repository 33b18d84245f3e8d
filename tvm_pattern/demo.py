"""The demo's compiler half: compile the pruned ONNX with TVM, check it against PyTorch, time it.

An edge module: it holds both the PyTorch model and the TVM-compiled one, to compare them.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import tvm
from torch import nn
from tqdm.auto import tqdm

from . import pipeline
from .frontend import import_onnx
from .prune.data import Split
from .targets import resolve_target


def median_ms(fn, repeats: int = 200, warmup: int = 20) -> float:
    """Median wall time of ``fn()`` in milliseconds."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times))


def predict(model, split: Split, progress: bool) -> np.ndarray:
    """Logits of a batch-1 compiled model over a split."""
    return np.stack([model(x[None])[0] for x in tqdm(split.images, desc="TVM: test set", disable=not progress)])


def check_and_time(out: Path, model: nn.Module, test_split: Split, progress: bool = True, log=print) -> dict:
    """Compile ``out/model.onnx`` (pattern-sparse, strict), compare with ``model``, time both; writes demo.json."""
    # PyTorch first: TVM's thread pool keeps spinning after use and would slow PyTorch's OpenMP threads.
    model, x = model.eval(), test_split.images[:1]
    with torch.no_grad():
        torch_logits = model(torch.from_numpy(test_split.images)).numpy()
        torch_ms = median_ms(lambda: model(torch.from_numpy(x)))
    time.sleep(0.5)  # let PyTorch's OpenMP workers go idle before TVM's pool runs

    library = out / "patterns.json"
    compiled_path = pipeline.compile_command(out / "model.onnx", "x86", out / "model.so", library, strict=True)
    ours = pipeline.load(compiled_path)
    tvm_logits = predict(ours, test_split, progress)
    labels = test_split.labels
    result = {
        "torch_accuracy": float((torch_logits.argmax(1) == labels).mean()),
        "tvm_accuracy": float((tvm_logits.argmax(1) == labels).mean()),
        "same_prediction": float((torch_logits.argmax(1) == tvm_logits.argmax(1)).mean()),
        "max_abs_logit_diff": float(np.abs(torch_logits - tvm_logits).max()),
        "torch_ms": torch_ms,
    }

    stock = tvm.compile(import_onnx(out / "model.onnx"), target=resolve_target("x86"))
    dense = pipeline.CompiledModel(stock)
    result["tvm_dense_ms"] = median_ms(lambda: dense(x), repeats=50, warmup=5)
    result["sparse_ms"] = median_ms(lambda: ours(x))
    (out / "demo.json").write_text(json.dumps(result, indent=2))
    log(
        f"\n  TVM (pattern-sparse) accuracy {100 * result['tvm_accuracy']:.2f}%, PyTorch "
        f"{100 * result['torch_accuracy']:.2f}%; same prediction on {100 * result['same_prediction']:.2f}% "
        f"of images; max |logit difference| {result['max_abs_logit_diff']:.2e}"
    )
    log("\n  batch-1 latency (median)      ms    vs PyTorch")
    for label, key in (("PyTorch dense", "torch_ms"), ("TVM dense (stock pipeline)", "tvm_dense_ms"),
                       ("TVM pattern-sparse", "sparse_ms")):  # fmt: skip
        log(f"  {label:<27} {result[key]:7.3f}   {result['torch_ms'] / result[key]:5.2f}x")
    return result
