"""Tuning tasks: one pattern-sparse layer as a MetaSchedule workload with its design space.

A ``TuningTask`` is what ``tvm_pattern.tune`` hands to MetaSchedule for one layer:

- ``mod``: the workload, the layer's template PrimFunc as ``main``; the JSON database keys records by it;
- ``space``: the design space (a ``ScheduleFn``) whose trace samples every knob of the template;
- ``arrays``: the real values of every parameter after ``data`` and before ``out`` (the FKW index and
  weight arrays, the filter split, the bias): runners must pass them, random index arrays read out of bounds;
- ``materialize``: the kernel for a schedule of ``mod`` (a trace applied).

Why templates are materialized. The generated kernel's block shape (rows x columns of accumulators held in
registers) and its thread split are the *structure* of generated code: the kernel loop of a block sits inside
the block, with data-dependent bounds, and no TensorIR primitive can re-tile around it. So the template's
knobs are sampled as trace instructions (``sample_categorical``, recorded on the root block as
``tvm_pattern.knob.<name>`` annotations), and ``materialize`` generates the kernel they select. The template
describes itself (``tvm_pattern.template`` on its root block: the family, the layer, the knob choices), so a
builder worker or a later compile needs nothing but the IRModule. MetaSchedule's search, XGBoost cost model
(fed with the knob values, which determine the kernel: ``tune.KnobFeatures``), database and replay are used
as they are. ``schedules.materialize`` finds the family of any template (builders, ``compile --db``).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import tvm
from tvm import s_tir
from tvm.ir import IRModule
from tvm.ir.utils import derived_object
from tvm.s_tir import meta_schedule as ms
from tvm.s_tir.meta_schedule.mutator import PyMutator

TEMPLATE = "tvm_pattern.template"  # root-block annotation: JSON describing the layer and its knob choices
KNOB = "tvm_pattern.knob."  # root-block annotation prefix: one sampled value per knob

__all__ = ["KNOB", "TEMPLATE", "MutateKnob", "TuningTask", "design_space", "knobs", "materialize_template",
           "template", "template_mod"]


@dataclass(frozen=True)
class TuningTask:
    """One layer to tune: workload, design space, real argument values, and how to get the kernel."""

    name: str
    mod: IRModule
    space: object  # tvm.s_tir.meta_schedule.space_generator.SpaceGenerator
    arrays: tuple[np.ndarray, ...]
    materialize: Callable[[IRModule], tvm.tirx.PrimFunc]


def _root(func: tvm.tirx.PrimFunc):
    body = func.body
    return body.block if hasattr(body, "block") else None


def template(func: tvm.tirx.PrimFunc) -> dict | None:
    """The template description of a template PrimFunc, or None for any other function."""
    root = _root(func)
    if root is None or TEMPLATE not in root.annotations:
        return None
    return json.loads(str(root.annotations[TEMPLATE]))


def knobs(func: tvm.tirx.PrimFunc) -> dict[str, int]:
    """The knob values a schedule sampled (empty for the bare template: its defaults apply)."""
    root = _root(func)
    if root is None:
        return {}
    return {str(k)[len(KNOB):]: int(v) for k, v in root.annotations.items() if str(k).startswith(KNOB)}


def template_mod(func: tvm.tirx.PrimFunc, description: dict) -> IRModule:
    """The workload: ``func`` (the kernel of the default knobs) as ``main`` with ``description`` on its root."""
    sch = s_tir.Schedule(IRModule({"main": func.with_attr("global_symbol", "main")}))
    sch.annotate(sch.get_sblock("root"), TEMPLATE, json.dumps(description, sort_keys=True))
    return sch.mod


def design_space(choices: dict[str, list[int]], default: dict[str, int] | None = None) -> ms.space_generator.ScheduleFn:
    """A ScheduleFn sampling one value per knob, uniformly, recorded on the root block.

    ``default``: the untuned knobs; the design space's own trace carries them as its decisions, so a tuner
    can measure the untuned kernel first and never return anything slower.

    No schedule rules or postprocs: the template is generated code, not a compute to tile, and the
    default ``DisallowDynamicLoop`` postproc would reject its kernel-list loops. ``MutateKnob`` is the only
    mutator: it moves one knob of a good schedule to a neighbouring program.
    """
    names = sorted(choices)

    def sample(sch: s_tir.Schedule) -> s_tir.Schedule:
        root = sch.get_sblock("root")
        for name in names:
            values = [int(v) for v in choices[name]]
            pick = (default or {}).get(name)
            decision = values.index(int(pick)) if pick is not None and int(pick) in values else None
            value = sch.sample_categorical(values, [1.0 / len(values)] * len(values), decision=decision)
            sch.annotate(root, KNOB + name, value)
        return sch

    return ms.space_generator.ScheduleFn(sample, sch_rules=[], postprocs=[], mutator_probs={MutateKnob(): 1.0})


@derived_object
class MutateKnob(PyMutator):
    """Move one sampled knob to another of its values: the evolutionary search's mutation for these templates.

    Why: MetaSchedule's mutators change tile sizes, unroll annotations, parallel extents and thread bindings
    of its own schedule rules; none changes a plain ``sample_categorical``, so without this the search would
    only draw fresh samples and never refine a good one.
    """

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        self.seed = seed
        self.rng = np.random.default_rng(seed)

    def _initialize_with_tune_context(self, context) -> None:
        pass

    def apply(self, trace: s_tir.Trace, _rand_state=None) -> s_tir.Trace | None:
        knobs = [inst for inst in trace.insts if inst.kind.name == "SampleCategorical" and len(inst.attrs[0]) > 1]
        if not knobs:
            return None
        inst = knobs[int(self.rng.integers(len(knobs)))]
        old, count = int(trace.decisions[inst]), len(inst.attrs[0])
        new = int(self.rng.integers(count - 1))
        return trace.with_decision(inst, new + (new >= old), remove_postproc=True)

    def clone(self) -> MutateKnob:
        return MutateKnob(int(self.rng.integers(2**31)))


def materialize_template(mod: IRModule | tvm.tirx.PrimFunc,
                         generate: Callable[[dict, dict[str, int]], tvm.tirx.PrimFunc]) -> tvm.tirx.PrimFunc:
    """The kernel a scheduled template selects, made by ``generate(description, knobs)`` (a family's
    ``materialize``), with the template's function attributes; the function itself if it is no template."""
    func = mod["main"] if isinstance(mod, IRModule) else mod
    description = template(func)
    if description is None:
        return func
    kernel = generate(description, knobs(func))
    attrs = {k: v for k, v in (func.attrs or {}).items() if k != "global_symbol"}
    return kernel.with_attrs(attrs) if attrs else kernel
