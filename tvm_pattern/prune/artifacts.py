"""The prelude's outputs, written all-or-nothing: patterns.json, masks.pt, model.onnx, patterns.png, report.json.

Everything is first written to a temporary folder next to ``out``, then moved in, so an
error part-way leaves ``out`` as it was.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
from torch import nn

from ..sparsity.library import PatternLibrary
from . import plots

PATTERNS, MASKS, ONNX, PICTURE, REPORT = "patterns.json", "masks.pt", "model.onnx", "patterns.png", "report.json"


def write_all(out: str | os.PathLike, writers: Mapping[str, Callable[[Path], None]]) -> Path:
    """Call ``writers[name](path)`` for each file inside a temporary folder, then move them into ``out``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    staging.chmod(0o755)  # mkdtemp makes it private; the renamed folder should look like any other
    try:
        for name, writer in writers.items():
            writer(staging / name)
        if not out.exists():
            os.replace(staging, out)
            return out
        for name in writers:
            os.replace(staging / name, out / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path, opset: int = 17) -> None:
    """The pruned model as ONNX with its zeros in place (weights as initialisers)."""
    model = model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model, (example,), str(path), opset_version=opset, dynamo=False,
            input_names=["input"], output_names=["logits"], do_constant_folding=False,
        )  # fmt: skip


def save_prune_outputs(
    out: str | os.PathLike,
    model: nn.Module,
    example: torch.Tensor,
    library: PatternLibrary,
    masks: Mapping[str, torch.Tensor],
    report: dict,
) -> Path:
    """Write the five outputs of ``tvm-pattern prune`` into ``out`` atomically."""
    return write_all(
        out,
        {
            PATTERNS: library.save,
            MASKS: lambda p: torch.save({k: v.cpu() for k, v in masks.items()}, p),
            ONNX: lambda p: export_onnx(model, example, p),
            PICTURE: lambda p: plots.save(plots.library_figure(library), p),
            REPORT: lambda p: p.write_text(json.dumps(report, indent=2)),
        },
    )


def load_masks(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Masks saved by ``prune`` (conv name -> bool tensor)."""
    return torch.load(path, weights_only=True)
