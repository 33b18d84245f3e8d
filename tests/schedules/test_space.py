"""The CPU design space: every sampled schedule of a layer's template materializes into a correct kernel."""

from __future__ import annotations

import numpy as np
import pytest
import tvm
import tvm_ffi
from helpers.kernels import TARGET, pruned, reference, run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tvm import s_tir
from tvm.s_tir import meta_schedule as ms

from tvm_pattern.schedules import space
from tvm_pattern.sparse_conv import sparse_conv2d, tuning_task
from tvm_pattern.sparsity.format import pack
from tvm_pattern.targets import arm_target


def design_trace(task) -> s_tir.Trace:
    context = ms.TuneContext(mod=task.mod, target=TARGET, space_generator=task.space, num_threads=1)
    (design,) = context.generate_design_space()
    return design.trace


def sampled(task, seed: int) -> s_tir.Schedule:
    """A schedule of the template with every knob drawn afresh (what the evolutionary search does)."""
    trace = design_trace(task)
    sch = s_tir.Schedule(task.mod, seed=seed)
    s_tir.Trace(trace.insts, {}).apply_to_schedule(sch, remove_postproc=True)
    return sch


def layer(seed: int, o=10, i=7, h=11, w=17, stride=1, bias=True):
    rng = np.random.default_rng(seed)
    weight, lib = pruned(rng, o, i, k=4, n=4, keep=0.4)
    b = rng.standard_normal(o).astype(np.float32) if bias else None
    x = rng.standard_normal((1, i, h, w)).astype(np.float32)
    return weight, pack(weight, lib), b, x, (stride, stride)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(1, 2**30), stride=st.sampled_from([1, 2]), relu=st.booleans(), bias=st.booleans())
@pytest.mark.slow
def test_sampled_schedules_match_torch(seed, stride, relu, bias):
    weight, packed, b, x, strides = layer(seed % 1000, stride=stride, bias=bias)
    padding = (1, 1, 1, 1)
    task = tuning_task(packed, x.shape, strides, padding, b if bias else False, relu, TARGET)
    sch = sampled(task, seed)
    knobs = space.knobs(sch.mod["main"])
    assert set(knobs) == {"block", "lanes", "peel", "threads", "unroll"}
    kernel = task.materialize(sch.mod)
    want = reference(x, weight, b, strides, padding, relu)
    got = run(kernel, task.arrays[:5], x, task.arrays[5] if bias else None, want.shape)
    np.testing.assert_allclose(got, want, atol=1e-4, rtol=1e-4, err_msg=str(knobs))


def test_bare_template_is_the_default_kernel():
    """No knob sampled: the template materializes into exactly what ``sparse_conv2d`` builds untuned."""
    _, packed, _, x, strides = layer(3)
    task = tuning_task(packed, x.shape, strides, (1, 1, 1, 1), False, True, TARGET)
    default = sparse_conv2d(packed, x.shape, strides, (1, 1, 1, 1), False, True, TARGET,
                            {"max_groups": space.template(task.mod["main"])["max_groups"]})
    tvm.ir.assert_structural_equal(task.materialize(task.mod).without_attr("global_symbol"),
                                   default.func.without_attr("global_symbol"))
    for got, want in zip(task.arrays, default.arrays, strict=True):
        np.testing.assert_array_equal(got, want)


def test_template_is_deterministic_and_per_layer():
    """The database finds a layer's records by its template: same layer, same workload; other weights, other."""
    _, packed, _, x, strides = layer(4)
    a = tuning_task(packed, x.shape, strides, (1, 1, 1, 1), False, False, TARGET)
    b = tuning_task(packed, x.shape, strides, (1, 1, 1, 1), False, False, TARGET)
    assert tvm_ffi.structural_equal(a.mod, b.mod) and a.name == b.name
    _, other, _, _, _ = layer(5)
    c = tuning_task(other, x.shape, strides, (1, 1, 1, 1), False, False, TARGET)
    assert not tvm_ffi.structural_equal(a.mod, c.mod)


def test_design_space_trace_is_the_untuned_kernel():
    """The design space's own decisions are the default knobs: a tuner measures the untuned kernel first."""
    _, packed, _, x, strides = layer(6, h=16, w=32)
    task = tuning_task(packed, x.shape, strides, (1, 1, 1, 1), False, False, TARGET)
    sch = s_tir.Schedule(task.mod)
    design_trace(task).apply_to_schedule(sch, remove_postproc=True)
    default = sparse_conv2d(packed, x.shape, strides, (1, 1, 1, 1), False, False, TARGET,
                            {"max_groups": space.template(task.mod["main"])["max_groups"]})
    assert space.knobs(sch.mod["main"])
    tvm.ir.assert_structural_equal(task.materialize(sch.mod).without_attr("global_symbol"),
                                   default.func.without_attr("global_symbol"))


@pytest.mark.parametrize("stride", [1, 2])
def test_arm_template_materializes_for_aarch64(stride):
    """The Arm family shares the template: its knobs and kernels build for aarch64 (run on the phone in test_arm)."""
    _, packed, _, x, strides = layer(7, stride=stride)
    target = arm_target()
    task = tuning_task(packed, x.shape, strides, (1, 1, 1, 1), False, True, target)
    assert space.template(task.mod["main"])["family"] == "arm_cpu"
    sch = s_tir.Schedule(task.mod, seed=11)
    s_tir.Trace(design_trace(task).insts, {}).apply_to_schedule(sch, remove_postproc=True)
    ex = tvm.compile(tvm.IRModule({"main": task.materialize(sch.mod)}), target=target)
    assert "fmla" in ex.mod.inspect_source("asm")


def test_mutation_moves_exactly_one_knob():
    """The evolutionary search's mutator: one knob to another of its values, the others kept."""
    _, packed, _, x, strides = layer(8, h=16, w=32)
    task = tuning_task(packed, x.shape, strides, (1, 1, 1, 1), False, False, TARGET)
    trace = design_trace(task)
    before = space.knobs(sampled_with(task, trace).mod["main"])
    mutator = space.MutateKnob(seed=3)
    for _ in range(6):
        after = space.knobs(sampled_with(task, mutator.apply(trace)).mod["main"])
        assert sum(before[k] != after[k] for k in before) == 1


def sampled_with(task, trace: s_tir.Trace) -> s_tir.Schedule:
    sch = s_tir.Schedule(task.mod)
    trace.apply_to_schedule(sch, remove_postproc=True)
    return sch
