"""``compile_file``: an ONNX model to a deployable library, all or nothing; ``compile_command`` reports per conv.

The entrance of ``tvm-pattern compile``: the target is resolved here, once, and passed down as a ``Target``.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from ..devices.cross import export_options
from ..errors import TvmPatternError
from ..frontend import import_onnx
from ..passes import BlockSparseReport, ConvReport, DenseReport, DepthwiseReport
from ..sparsity.library import PatternLibrary
from ..targets import resolve_target
from ..tune import open_database
from .build import build

__all__ = ["compile_command", "compile_file"]


def compile_file(
    onnx_path: str | os.PathLike,
    target: object,
    out_path: str | os.PathLike,
    patterns: PatternLibrary | str | os.PathLike | None = None,
    strict: bool = False,
    reports: list[ConvReport] | None = None,
    database=None,
    dense_reports: list[DenseReport] | None = None,
    tuned_dense: list[str] | None = None,
    sparse_reports: list[DepthwiseReport | BlockSparseReport] | None = None,
) -> Path:
    """Compile an ONNX model to a shared library at ``out_path``; nothing is left half-written.

    ``reports`` receives a ``ConvReport`` per conv2d (the pattern pass), ``sparse_reports`` a ``DepthwiseReport``
    per depthwise conv and a ``BlockSparseReport`` per 1x1 conv / dense layer, ``dense_reports`` a ``DenseReport``
    per conv2d / matmul the dense-kernel pass saw (llvm targets).

    ``database``: a tuning job's work directory (or a MetaSchedule database) whose best schedules to use
    (``tuned_dense`` receives the names of the dense layers that got a tuned kernel).
    """
    target = resolve_target(target)
    out = Path(out_path)
    if not out.parent.is_dir():
        raise TvmPatternError(f"output directory {out.parent} does not exist")
    options = export_options(target)  # before the long build: fail fast without a cross compiler
    if isinstance(database, (str, os.PathLike)):
        database = open_database(database)  # before the long build too
    executable = build(import_onnx(onnx_path), target, patterns, strict, reports, database=database,
                       dense_reports=dense_reports, tuned_dense=tuned_dense, sparse_reports=sparse_reports)  # fmt: skip
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp{out.suffix or '.so'}")
    try:
        executable.export_library(str(tmp), **options)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def compile_command(
    model: str | os.PathLike,
    target: str,
    out: str | os.PathLike,
    patterns: str | os.PathLike | None = None,
    strict: bool = False,
    echo: Callable[[str], None] = print,
    database: str | os.PathLike | None = None,
) -> Path:
    """``tvm-pattern compile``: compile, print what happened to every conv, return the library's path."""
    reports: list[ConvReport] = []
    sparse_reports: list[DepthwiseReport | BlockSparseReport] = []
    dense_reports: list[DenseReport] = []
    tuned_dense: list[str] = []
    path = compile_file(model, target, out, patterns, strict, reports, database=database, dense_reports=dense_reports,
                        tuned_dense=tuned_dense, sparse_reports=sparse_reports)  # fmt: skip
    for report in final_reports([reports, sparse_reports, dense_reports]):
        echo(f"  {report}")
    taken = {r.name for r in dense_reports if r.rewritten}
    tuned = ""
    if database is not None:
        tuned = (f", {sum(r.tuned for r in reports)} with tuned kernels, {len(tuned_dense)} dense layer(s) with "
                 f"tuned kernels and the other ops' tuned schedules from {database}")  # fmt: skip
    dense = f", {len(taken)}/{len(dense_reports)} conv2d / dense by generated dense kernels" if dense_reports else ""
    others = "".join(f", {sum(r.rewritten for r in sparse_reports if isinstance(r, kind))} {what}"
                     for kind, what in ((DepthwiseReport, "depthwise pattern-sparse"),
                                        (BlockSparseReport, "1x1 conv / dense block-sparse")))  # fmt: skip
    echo(f"{sum(r.sparse for r in reports)}/{len(reports)} conv2d pattern-sparse{others}{tuned}{dense}; wrote {path}")
    return path


def final_reports(stages: list[list]) -> list:
    """One report per op, in first-seen order: the pass that rewrote it, else the last pass that saw it (each pass
    sees what the earlier ones left: the dense pass's reason is the final word on an op nobody took)."""
    chosen: dict[str, object] = {}
    for stage in stages:
        for report in stage:
            current = chosen.get(report.name)
            if current is None or not current.rewritten:
                chosen[report.name] = report
    return list(chosen.values())
