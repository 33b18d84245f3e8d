"""From an ONNX file (or a Relax module) to a runnable library: sparse pass, Relax pipeline, export, load.

``compile_file`` backs ``tvm-pattern compile MODEL.onnx --target x86 --out FILE``; ``load`` runs the
result with numpy in and out, through the Relax VirtualMachine.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import tvm
from tvm import relax
from tvm.ir import IRModule

from .cross import export_options
from .errors import ModelError, TvmPatternError
from .schedules.x86 import runtime_threads
from .sparsity.library import PatternLibrary
from .targets import resolve_target
from .transform import OPAQUE, ConvReport, PatternSparseConv2d

__all__ = ["CompiledModel", "ParallelizeDense", "build", "compile_command", "compile_file", "import_onnx", "load"]

log = logging.getLogger(__name__)


def import_onnx(path: str | os.PathLike, batch: int = 1) -> IRModule:
    """Relax module of an ONNX model, weights as constants; symbolic input dims become ``batch``.

    Static shapes matter: the sparse kernel is generated per layer shape.
    """
    import onnx
    from tvm.relax.frontend.onnx import from_onnx

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"ONNX model {path} does not exist")
    try:
        onnx.checker.check_model(str(path))  # by path: also works for models with external data
        model = onnx.load(str(path))
    except Exception as err:  # onnx raises several unrelated types for a bad file
        raise ModelError(f"{path} is not a valid ONNX model: {err}") from err
    try:
        return from_onnx(model, shape_dict=_static_inputs(model, batch))
    except Exception as err:
        raise ModelError(f"TVM cannot import {path}: {err}") from err


def _static_inputs(model, batch: int) -> dict[str, list[int]]:
    """Input shapes with every symbolic dim set to ``batch`` (logged: the library is then fixed-shape)."""
    initializers = {init.name for init in model.graph.initializer}
    shapes = {}
    for inp in model.graph.input:
        if inp.name in initializers:
            continue
        dims = inp.type.tensor_type.shape.dim
        shape = [d.dim_value if d.HasField("dim_value") else batch for d in dims]
        if any(not d.HasField("dim_value") for d in dims):
            log.warning("input %r has symbolic dims %s: compiling for shape %s", inp.name, list(dims), shape)
        shapes[inp.name] = shape
    return shapes


def build(
    mod: IRModule,
    target: object = "x86",
    library: PatternLibrary | str | os.PathLike | None = None,
    strict: bool = False,
    reports: list[ConvReport] | None = None,
    dense_kernel: bool = True,
    database=None,
) -> tvm.runtime.Executable:
    """Rewrite the pattern-sparse convs, then compile with the target's standard Relax pipeline.

    The standard CPU pipeline leaves every dense op unscheduled (single-threaded): ``dense_kernel`` runs
    unpruned 3x3 convs through the generated kernel (one 9-tap pattern), and ``ParallelizeDense`` spreads
    the other dense ops over the cores. ``reports``, if given, receives one ``ConvReport`` per conv2d.
    ``database``: a tuning job's work directory (``tvm-pattern tune``) or a MetaSchedule database; layers
    it has records for get their best tuned kernel.
    """
    target = resolve_target(target)
    sparse = PatternSparseConv2d(library, strict=strict, target=target, dense_kernel=dense_kernel, database=database)
    with target:
        mod = sparse(mod)
    if reports is not None:
        reports.extend(sparse.summary)
    pipeline = _cpu_pipeline(target) if target.kind.name == "llvm" else relax.get_default_pipeline(target)
    return tvm.compile(mod, target=target, relax_pipeline=pipeline)


def _cpu_pipeline(target: tvm.target.Target) -> tvm.transform.Pass:
    """TVM's CPU pipeline with ``ParallelizeDense`` after fusion (the stock one schedules nothing)."""
    from tvm.relax.backend.cpu_generic import pipeline as cpu_generic

    passes = (
        cpu_generic.library_dispatch_passes(target)
        + cpu_generic.legalize_passes(target)
        + [ParallelizeDense(int(target.attrs.get("num-cores", 1)))]
        + cpu_generic.dataflow_lower_passes(target)
        + cpu_generic.finalize_passes(target)
    )

    @tvm.transform.module_pass(opt_level=0, name="PatternCPUPipeline")
    def _pipeline(mod: IRModule, _ctx: tvm.transform.PassContext) -> IRModule:
        with target:
            return tvm.transform.Sequential(passes)(mod)

    return _pipeline


@tvm.transform.module_pass(opt_level=0, name="ParallelizeDense")
class ParallelizeDense:
    """Run the outer spatial loops of every unscheduled PrimFunc in parallel.

    Why: without tuning, TVM's CPU pipeline runs dense ops (remaining convs, pooling, dense layers)
    on one core. This is no tuned schedule, only the cheap part of one; already scheduled functions
    (the sparse kernel, any loop already parallel) are left alone.
    """

    def __init__(self, cores: int = 1) -> None:
        self.cores = max(1, cores)

    def transform_module(self, mod: IRModule, _ctx: tvm.transform.PassContext) -> IRModule:
        updates = {}
        for gvar, func in mod.functions_items():
            if isinstance(func, tvm.tirx.PrimFunc) and int((func.attrs or {}).get("op_pattern", 0)) != OPAQUE:
                scheduled = _parallelize(func, self.cores)
                if scheduled is not None:
                    updates[gvar] = scheduled
        if not updates:
            return mod
        mod = mod.clone()  # a pass must not change its input module
        for gvar, func in updates.items():
            mod.update_func(gvar, func)
        return mod


def _parallelize(func: tvm.tirx.PrimFunc, cores: int) -> tvm.tirx.PrimFunc | None:
    """``func`` with each top-level loop nest's outer spatial loops fused and parallel, or None."""
    if cores < 2:
        return None
    try:
        sch = tvm.s_tir.Schedule(func)
        blocks = sch.get_child_blocks(sch.get_sblock("root"))
    except Exception:  # not a TensorIR function with a root block (hand-written kernels)
        return None
    changed = False
    for block in blocks:
        changed |= _parallelize_nest(sch, block, cores)
    return sch.mod["main"] if changed else None


def _parallelize_nest(sch: tvm.s_tir.Schedule, block, cores: int) -> bool:
    """Fuse the leading data-parallel loops of ``block`` until there is work for the cores, then parallelise.

    Unscheduled TE functions nest one loop per block iter, in order, so the leading spatial iters name the
    loops that are safe to run in parallel; the schedule re-checks and refuses anything else.
    """
    loops = sch.get_loops(block)
    iters = sch.get(block).iter_vars
    if not loops or len(loops) != len(iters) or any(sch.get(loop).kind != tvm.tirx.ForKind.SERIAL for loop in loops):
        return False
    work, count = 1, 0
    for loop, iter_var in zip(loops, iters, strict=True):
        extent = sch.get(loop).extent
        if iter_var.iter_type != 0 or not isinstance(extent, tvm.tirx.IntImm) or work >= 4 * cores:
            break  # 0 = kDataPar
        work, count = work * int(extent), count + 1
    if count == 0 or work < 2:
        return False
    try:
        sch.parallel(sch.fuse(*loops[:count]) if count > 1 else loops[0])
    except Exception:  # ScheduleError: a check we did not foresee; leave this nest serial
        return False
    return True


def compile_file(
    onnx_path: str | os.PathLike,
    target: object,
    out_path: str | os.PathLike,
    patterns: PatternLibrary | str | os.PathLike | None = None,
    strict: bool = False,
    reports: list[ConvReport] | None = None,
    database=None,
) -> Path:
    """Compile an ONNX model to a shared library at ``out_path``; nothing is left half-written.

    ``database``: a tuning job's work directory (or a MetaSchedule database) whose best schedules to use.
    """
    target = resolve_target(target)
    out = Path(out_path)
    if not out.parent.is_dir():
        raise TvmPatternError(f"output directory {out.parent} does not exist")
    options = _export_options(target)  # before the long build: fail fast without a cross compiler
    if isinstance(database, (str, os.PathLike)):
        from .tune import open_database

        database = open_database(database)  # before the long build too
    executable = build(import_onnx(onnx_path), target, patterns, strict, reports, database=database)
    tmp = out.with_name(f".{out.name}.{os.getpid()}.tmp{out.suffix or '.so'}")
    try:
        executable.export_library(str(tmp), **options)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def _export_options(target: tvm.target.Target) -> dict:
    """A cross compiler for targets this machine cannot link for (arm, mali's aarch64 host); see ``cross``."""
    return export_options(target)


class CompiledModel:
    """A compiled model on a device: ``model(x, ...)`` takes and returns numpy arrays."""

    def __init__(self, executable: tvm.runtime.Executable, device: str = "cpu", entry: str = "main") -> None:
        runtime_threads()  # before the first run: TVM's pool would otherwise use one thread on some VMs
        self.device = tvm.device(device)
        self.vm = relax.VirtualMachine(executable, self.device)
        self.entry = entry

    def __call__(self, *inputs: np.ndarray) -> np.ndarray | tuple[np.ndarray, ...]:
        args = [tvm.runtime.tensor(np.ascontiguousarray(x), self.device) for x in inputs]
        return _to_numpy(self.vm[self.entry](*args))


def _to_numpy(value) -> np.ndarray | tuple:
    if isinstance(value, tvm.runtime.Tensor):
        return value.numpy()
    if isinstance(value, Sequence):
        return tuple(_to_numpy(v) for v in value)
    raise TvmPatternError(f"unexpected model output of type {type(value).__name__}")


def load(path: str | os.PathLike, device: str = "cpu") -> CompiledModel:
    """Load a library written by ``compile_file``."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"compiled model {path} does not exist")
    try:
        executable = tvm.runtime.load_module(str(path))
    except Exception as err:
        raise ModelError(f"{path} is not a library TVM can load: {err}") from err
    return CompiledModel(executable, device)


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
    path = compile_file(model, target, out, patterns, strict, reports, database=database)
    for report in reports:
        echo(f"  {report}")
    tuned = f", {sum(r.tuned for r in reports)} with tuned kernels from {database}" if database is not None else ""
    echo(f"{sum(r.sparse for r in reports)}/{len(reports)} conv2d pattern-sparse{tuned}; wrote {path}")
    return path
