"""The Mali (OpenCL) pattern-sparse conv, run on PoCL through pyopencl, equals torch's conv2d (fp32, 1e-4).

Also: every schedule drawn from the Mali design space passes TVM's GPU code check and computes the same
conv; the Relax pass works unchanged with the Mali target; a machine without OpenCL gets a clear error.
"""

from __future__ import annotations

import math
import re
import sys
import zlib

import numpy as np
import pyopencl as cl
import pytest
import torch
import torch.nn.functional as F
import tvm
from helpers.cases import CASES as ARM_CASES
from tvm import relax, s_tir

from tvm_pattern import opencl
from tvm_pattern.errors import PatternError
from tvm_pattern.schedules import mali
from tvm_pattern.schedules.space import knobs
from tvm_pattern.sparse_conv import sparse_conv2d
from tvm_pattern.sparsity.format import PackedConv, pack
from tvm_pattern.sparsity.library import PatternLibrary, best_fit
from tvm_pattern.targets import mali_target
from tvm_pattern.transform import PatternSparseConv2d

TARGET = mali.local_target()  # OpenCL for Mali, host code for this machine: the kernels run on PoCL


def pruned(rng, o: int, i: int, k: int, n: int, keep: float) -> tuple[np.ndarray, PackedConv]:
    """A random (o, i, 3, 3) weight pruned to ``k`` patterns of ``n`` taps, ``keep`` of its kernels kept."""
    w = rng.standard_normal((o, i, 3, 3)).astype(np.float32)
    lib = PatternLibrary.extract(w.reshape(-1, 3, 3), k=min(k, math.comb(8, n - 1)), n=n)
    w = (w.reshape(-1, 3, 3) * lib.patterns[best_fit(w.reshape(-1, 3, 3), lib.patterns)]).reshape(w.shape)
    w[rng.random((o, i)) >= keep] = 0
    return w, pack(w, lib)


def reference(x, w, bias, strides, padding, relu) -> np.ndarray:
    top, left, bottom, right = padding
    xt = F.pad(torch.from_numpy(x), (left, right, top, bottom))
    y = F.conv2d(xt, torch.from_numpy(w), None if bias is None else torch.from_numpy(bias), stride=strides)
    return (torch.relu(y) if relu else y).numpy()


def run(kernel, x: np.ndarray, bias: np.ndarray | None) -> tuple[np.ndarray, opencl.OpenCLProgram]:
    """The kernel's output on PoCL; the output buffer starts as NaN so unwritten elements show."""
    prog = opencl.OpenCLProgram(kernel.func, TARGET)
    out = np.full(kernel.out_shape, np.nan, np.float32)
    return prog(x, *kernel.arrays, *([bias] if bias is not None else []), out)[-1], prog


# id, batch, out ch, in ch, h, w, strides, padding (t, l, b, r), bias, relu, patterns k, taps n, keep, knobs
CASES = [
    ("s1-bias-relu-odd-channels", 1, 5, 3, 9, 11, (1, 1), (1, 1, 1, 1), True, True, 8, 4, 0.5, None),
    ("s2-batch2-R4-NV2-unroll2", 2, 7, 4, 13, 10, (2, 2), (1, 1, 1, 1), False, True, 4, 4, 0.5,
     {"rows": 4, "vectors": 2, "unroll": 2}),
    ("s2-asymmetric-pad-2-wide-output-unroll4", 1, 3, 2, 5, 5, (2, 2), (0, 1, 2, 0), True, False, 4, 4, 0.6,
     {"rows": 2, "vectors": 1, "unroll": 4}),
    ("1x1-output-no-pad", 1, 4, 3, 3, 3, (1, 1), (0, 0, 0, 0), True, True, 2, 4, 1.0, None),
    ("strides-2x1-5-taps-256-threads", 1, 6, 5, 7, 6, (2, 1), (1, 2, 1, 0), False, False, 3, 5, 0.5,
     {"wg_filters": 8, "wg_space": 32}),
    ("strides-1x3-three-column-phases", 1, 4, 3, 6, 20, (1, 3), (1, 1, 1, 1), True, True, 4, 4, 0.6,
     {"vectors": 2}),
    ("dense-9-taps", 1, 4, 6, 8, 9, (1, 1), (1, 1, 1, 1), True, False, 1, 9, 1.0, None),
]


@pytest.mark.parametrize("case", list(ARM_CASES))
def test_the_phone_tests_shapes_on_pocl(case) -> None:
    """The layers ``test_arm`` runs on the emulated phone's CPU, here as Mali kernels on PoCL."""
    (o, i, h, w, batch), stride, padding, taps, has_bias, relu = ARM_CASES[case]
    rng = np.random.default_rng(zlib.crc32(case.encode()))
    k, keep = (1, 1.0) if taps == 9 else (8, 1 / 3.6 if o >= 32 else 0.5)
    weight, packed = pruned(rng, o, i, k, taps, keep)
    x = rng.standard_normal((batch, i, h, w)).astype(np.float32)
    bias = rng.standard_normal(o).astype(np.float32) if has_bias else None
    kernel = sparse_conv2d(packed, x.shape, (stride, stride), padding, has_bias, relu, TARGET)
    got, prog = run(kernel, x, bias)
    want = reference(x, weight, bias, (stride, stride), padding, relu)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4)
    assert prog.verify(mali.gpu_limits(TARGET))


@pytest.mark.parametrize("case", CASES, ids=[c[0] for c in CASES])
def test_matches_torch_on_pocl(case) -> None:
    _, batch, o, i, h, w, strides, padding, has_bias, relu, k, n, keep, config = case
    rng = np.random.default_rng(zlib.crc32(case[0].encode()))
    weight, packed = pruned(rng, o, i, k, n, keep)
    x = rng.standard_normal((batch, i, h, w)).astype(np.float32)
    bias = rng.standard_normal(o).astype(np.float32) if has_bias else None
    kernel = sparse_conv2d(packed, x.shape, strides, padding, has_bias, relu, TARGET, config)  # delegates to mali
    got, prog = run(kernel, x, bias)
    np.testing.assert_allclose(got, reference(x, weight, bias, strides, padding, relu), atol=1e-4, rtol=1e-4)
    assert prog.verify(mali.gpu_limits(TARGET))
    pad, conv = prog.launches  # two kernels, in this order
    assert pad.local_size == (mali.PAD_THREADS, 1, 1) and conv.local_size[2] == 1


def test_empty_filters_and_all_zero_weight_give_bias() -> None:
    rng = np.random.default_rng(5)
    weight, packed = pruned(rng, 6, 4, 4, 4, 0.5)
    weight[[1, 4]] = 0
    x = rng.standard_normal((1, 4, 9, 9)).astype(np.float32)
    bias = rng.standard_normal(6).astype(np.float32)
    packed = pack(weight, packed.library)
    got, _ = run(mali.generate(packed, x.shape, (1, 1), (1, 1, 1, 1), True, False), x, bias)
    np.testing.assert_allclose(got, reference(x, weight, bias, 1, (1, 1, 1, 1), False), atol=1e-4, rtol=1e-4)
    zero = np.zeros_like(weight)
    got, _ = run(mali.generate(pack(zero, packed.library), x.shape, (2, 2), (0, 1, 0, 1), True, True), x, bias)
    np.testing.assert_allclose(got, reference(x, zero, bias, 2, (0, 1, 0, 1), True), atol=1e-4, rtol=1e-4)


def _kernel_sources(source: str) -> dict[str, str]:
    """OpenCL kernel name -> its body text."""
    bodies = re.split(r"(?=__kernel void \w+\([^;{]*\{)", source)
    header = re.compile(r"__kernel void (\w+)\([^;]*\{")
    return {header.match(b).group(1): b for b in bodies if header.match(b)}


def test_source_reads_the_input_with_vector_loads() -> None:
    rng = np.random.default_rng(3)
    _, packed = pruned(rng, 6, 5, 4, 4, 0.5)
    kernel = mali.generate(packed, (1, 5, 10, 12), (1, 1), (1, 1, 1, 1), False, True, config={"rows": 2})
    prog = opencl.OpenCLProgram(kernel.func, TARGET)
    conv = _kernel_sources(prog.source)[prog.launches[1].name]
    assert "vload4(" in conv and "vstore4(" in conv
    assert "xp_ptr[" not in conv  # the padded input is only read through vload4, never element by element
    assert "float4 acc_ptr[4]" in conv  # R x NV = 2 x 2 float4 accumulators, private
    assert prog.launches[1].local_size == (8, 4, 1)  # threads: 8 output blocks x 4 filters per group


@pytest.mark.slow
def test_sampled_schedules_pass_gpu_verification_and_match_torch() -> None:
    """20 schedules drawn from the design space (trace replayed with its decisions removed, so each replay
    samples every knob afresh), materialized, checked by verify_gpu_code, and run on PoCL in one build."""
    rng = np.random.default_rng(11)
    weight, packed = pruned(rng, 6, 4, 2, 4, 0.6)
    x = rng.standard_normal((1, 4, 7, 10)).astype(np.float32)
    bias = rng.standard_normal(6).astype(np.float32)
    task = mali.tuning_task(packed, x.shape, (1, 1), (1, 1, 1, 1), bias, True, TARGET)
    (design,) = task.space.generate_design_space(task.mod)
    fresh = s_tir.Trace(design.trace.insts, {})
    programs, drawn = [], []
    for i, seed in enumerate(rng.integers(1, 2**31 - 1, size=20)):
        sch = s_tir.Schedule(task.mod, seed=int(seed))
        fresh.apply_to_schedule(sch, remove_postproc=True)
        chosen = knobs(sch.mod["main"])
        prog = opencl.OpenCLProgram(task.materialize(sch.mod), TARGET, name=f"sample{i}")
        assert prog.verify(mali.gpu_limits(TARGET)), chosen
        assert prog.launches[1].local_size == (chosen["wg_space"], chosen["wg_filters"], 1)
        accumulators = chosen["rows"] * min(chosen["vectors"], 3)  # 10 columns: at most 3 float4 per row
        assert f"float4 acc_ptr[{accumulators}]" in prog.source
        programs.append(prog)
        drawn.append(tuple(sorted(chosen.items())))
    assert set(dict(drawn[0])) == {"rows", "vectors", "unroll", "wg_filters", "wg_space"}
    assert len(set(drawn)) >= 15  # the replays explore the space
    out = np.full((1, 6, 7, 10), np.nan, np.float32)
    results = opencl.run_many(programs, [[x, *task.arrays, out]] * len(programs))
    want = reference(x, weight, bias, 1, (1, 1, 1, 1), True)
    for knob_values, result in zip(drawn, results, strict=True):
        np.testing.assert_allclose(result[-1], want, atol=1e-4, rtol=1e-4, err_msg=str(knob_values))


def test_verification_rejects_oversized_work_groups() -> None:
    """The check is not vacuous: 8 x 64 threads per group exceed Mali's 256."""
    _, packed = pruned(np.random.default_rng(2), 8, 3, 2, 4, 0.5)
    cfg = {**mali.default_config(packed, (1, 3, 9, 11), (1, 8, 9, 11)), "unroll": 1}
    sch = s_tir.Schedule(mali.unscheduled(packed, (1, 3, 9, 11), (1, 1), (1, 1, 1, 1), False, False, cfg))
    mali.schedule(sch, 8, 64)
    assert not mali.verify_gpu(sch.mod["main"], TARGET)
    with pytest.raises(PatternError, match="exceeds 256"):
        mali.generate(packed, (1, 3, 9, 11), config={"wg_filters": 8, "wg_space": 64})


def _conv_module(weight: np.ndarray, bias: np.ndarray, data_shape) -> tvm.IRModule:
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(data_shape, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, relax.const(weight), padding=1))
            y = bb.emit(relax.op.add(y, relax.const(bias.reshape(1, -1, 1, 1))))
            out = bb.emit_output(bb.emit(relax.op.nn.relu(y)))
        bb.emit_func_output(out)
    return bb.get()


def _opencl_source(module) -> str:
    if module.kind == "opencl":
        return module.inspect_source()
    return "".join(_opencl_source(m) for m in module.imports)


def test_relax_pass_with_the_mali_target() -> None:
    """PatternSparseConv2d with mali_target(): the model compiles for Mali (aarch64 host), and the kernel it
    put in the module computes the conv + bias + ReLU."""
    rng = np.random.default_rng(4)
    weight, packed = pruned(rng, 8, 4, 4, 4, 0.5)
    bias = rng.standard_normal(8).astype(np.float32)
    sparse = PatternSparseConv2d(packed.library, target=mali_target())
    mod = sparse(_conv_module(weight, bias, (1, 4, 8, 8)))
    assert [r.rewritten for r in sparse.summary] == [True]
    assert "vload4(" in _opencl_source(tvm.compile(mod, target=mali_target()).mod)
    calls = []
    relax.analysis.post_order_visit(mod["main"], lambda e: calls.append(e) if isinstance(e, relax.Call) else None)
    (call,) = [c for c in calls if isinstance(c.op, tvm.ir.Op) and c.op.name == "relax.call_tir"]
    constants = [a.value.numpy() for a in call.args[1].fields[1:]]
    x = rng.standard_normal((1, 4, 8, 8)).astype(np.float32)
    out = np.full((1, 8, 8, 8), np.nan, np.float32)
    got = opencl.run_opencl(mod[call.args[0]], TARGET, [x, *constants, out])[-1]
    np.testing.assert_allclose(got, reference(x, weight, bias, 1, (1, 1, 1, 1), True), atol=1e-4, rtol=1e-4)


@pytest.fixture(scope="module")
def small_program() -> tuple[opencl.OpenCLProgram, list[np.ndarray]]:
    _, packed = pruned(np.random.default_rng(6), 4, 3, 2, 4, 0.5)
    kernel = mali.generate(packed, (1, 3, 6, 6), config={"rows": 1, "vectors": 1})
    args = [np.zeros((1, 3, 6, 6), np.float32), *kernel.arrays, np.zeros(kernel.out_shape, np.float32)]
    return opencl.OpenCLProgram(kernel.func, TARGET), args


def _no_platform() -> list:
    raise cl.LogicError("clGetPlatformIDs failed: PLATFORM_NOT_FOUND_KHR")


@pytest.mark.parametrize("get_platforms", [_no_platform, lambda: []], ids=["icd-error", "empty-list"])
def test_no_opencl_platform_is_a_clear_error(monkeypatch, small_program, get_platforms) -> None:
    prog, args = small_program
    monkeypatch.setattr(cl, "get_platforms", get_platforms)
    with pytest.raises(opencl.OpenCLError, match=r"no OpenCL platform found.*pocl-opencl-icd"):
        prog(*args)


def test_missing_pyopencl_is_a_clear_error(monkeypatch, small_program) -> None:
    prog, args = small_program
    monkeypatch.setitem(sys.modules, "pyopencl", None)  # import pyopencl now raises ImportError
    with pytest.raises(opencl.OpenCLError, match="pyopencl is not installed"):
        prog(*args)


def test_bad_arguments_are_named(small_program) -> None:
    prog, args = small_program
    with pytest.raises(opencl.OpenCLError, match=r"argument data: expected float32\[1, 3, 6, 6\]"):
        prog(np.zeros((1, 3, 6, 5), np.float32), *args[1:])
    with pytest.raises(opencl.OpenCLError, match="expected 6 arguments"):
        prog(*args[:-1])
    with pytest.raises(opencl.OpenCLError, match="target kind must be opencl"):
        opencl.OpenCLProgram(prog.func, tvm.target.Target("llvm"))
    with pytest.raises(PatternError, match="unroll must be one of"):
        mali.generate(pack(np.ones((2, 3, 3, 3), np.float32)), (1, 3, 6, 6), config={"unroll": 3})
