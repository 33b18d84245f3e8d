"""Tuning tasks of the dense-op kernels (dense / depthwise conv2d, dense layers on CPUs): their knobs as
MetaSchedule decisions, like the pattern-sparse template's (``space``).

A dense kernel is generated code whose structure *is* its knobs (the register block, the lanes, the tiles, the
thread split), so, as for the sparse template, every knob is a ``sample_categorical`` recorded on the root block
of the workload (the layer's default kernel, described by ``space.TEMPLATE``), and ``materialize`` generates the
kernel a sample selects. What differs from the sparse template:

- the weights are arguments, not part of the code: the workload is the layer's *shape* (op, weight and data
  shapes, strides, padding, bias / residual flags, activation), so layers of equal shape share one task and one
  record serves them all; ``kernel`` generates the tuned kernel for a layer's real weights;
- the packed weight array's size depends on the block (``wp`` holds whole blocks), so a candidate's arguments
  are those of its materialized kernel (``DenseTuningTask.measure_args``), not the workload's.

Knobs (each list holds the default, which the design space's own trace carries as its decisions):

- conv2d: ``block`` (an MR x NV register block, flat-pitch or row mode, among those that fit the registers),
  ``panel`` (im2col panel per pixel block, flat-pitch mode only), ``oc_scale`` / ``px_scale`` (channel /
  pixel blocks per tile, in quarters of the default's), ``threads``;
- depthwise: ``block`` (rows x vectors x lanes), ``threads``;
- dense: ``mo`` (output rows per block), ``lanes``, ``threads``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np
import tvm
from tvm import s_tir
from tvm.ir import IRModule
from tvm.s_tir import meta_schedule as ms

from tvm_pattern.errors import TvmPatternError
from tvm_pattern.kernels.dense import DenseKnobs
from tvm_pattern.kernels.dense_common import DenseKernel
from tvm_pattern.kernels.dense_conv2d import blocks, geometry
from tvm_pattern.kernels.depthwise_conv2d import DepthwiseKnobs
from tvm_pattern.kernels.depthwise_conv2d import geometry as dw_geometry
from tvm_pattern.targets import resolve_target

from . import dense_cpu
from .registry import build as build_templates
from .space import TuningTask, design_space, materialize_template, template, template_mod

__all__ = ["FAMILY", "OPS", "DenseTuningTask", "build", "kernel", "knob_values", "materialize", "materialize_module",
           "tuning_task"]  # fmt: skip

FAMILY = "dense_cpu"
OPS = ("conv2d", "depthwise", "dense")
SCALES = (4, 2, 8)  # tile sizes in quarters of the default's: as is, half, double


@dataclass(frozen=True)
class DenseTuningTask(TuningTask):
    """A dense layer's ``TuningTask``. ``arrays``: the default kernel's (``inputs`` inputs come before them);
    ``measure_args``: the argument infos of a scheduled workload's kernel (its packed weights' size follows the
    block), which runners must allocate."""

    inputs: int = 1  # data [, residual]
    measure_args: Callable[[IRModule], list] | None = None


def _threads(cores: int) -> list[int]:
    return [cores, 2 * cores]


def _conv2d_choices(desc: dict, target) -> tuple[dict, dict, list]:
    """(choices, default knob values, blocks [mr, nv, rows]) of a conv2d layer."""
    args = (desc["weight_shape"], desc["data_shape"], desc["strides"], desc["padding"])
    g = geometry(*args)
    info = dense_cpu.cpu_info(target)
    default = dense_cpu.conv2d_knobs(*args, target)
    found: list[list[int]] = []
    for rows in (False, True) if g.wq != g.ow else (False,):
        for mr, nv in dense_cpu.candidate_knobs(g, info):
            k = dense_cpu.conv2d_block_knobs(*args, mr, nv, rows, target)
            if [k.mr, k.nv, int(k.rows)] not in found and k.lanes == default.lanes:
                found.append([k.mr, k.nv, int(k.rows)])
    picked = [default.mr, default.nv, int(default.rows)]
    if picked not in found:
        found.insert(0, picked)
    choices = {"block": list(range(len(found))), "panel": [int(default.panel), 1 - int(default.panel)],
               "oc_scale": list(SCALES), "px_scale": list(SCALES), "threads": _threads(info.cores)}  # fmt: skip
    knobs = {"block": found.index(picked), "panel": int(default.panel), "oc_scale": SCALES[0],
             "px_scale": SCALES[0], "threads": info.cores}  # fmt: skip
    return choices, knobs, found


def _lanes(lanes: int, span: int) -> int:
    while lanes > 1 and lanes > span:
        lanes //= 2
    return lanes


def _depthwise_choices(desc: dict, target) -> tuple[dict, dict, list]:
    """(choices, default knob values, blocks [rows, nv, lanes]) of a depthwise layer."""
    g = dw_geometry(desc["weight_shape"], desc["data_shape"], desc["strides"], desc["padding"])
    info = dense_cpu.cpu_info(target)
    default = dense_cpu.depthwise_knobs(desc["weight_shape"], desc["data_shape"], desc["strides"], desc["padding"],
                                        target)  # fmt: skip
    budget = max(4, info.registers - g.kh * g.kw - 2)
    found = []
    for lanes in sorted({_lanes(info.lanes, g.ow), _lanes(4, g.ow)}):
        for nv in (1, 2, 4):
            for rows in range(1, min(g.oh, 6) + 1):
                if rows * nv <= budget and (nv == 1 or nv * lanes <= g.ow):
                    found.append([rows, nv, lanes])
    picked = [default.rows, default.nv, default.lanes]
    if picked not in found:
        found.insert(0, picked)
    choices = {"block": list(range(len(found))), "threads": _threads(info.cores)}
    return choices, {"block": found.index(picked), "threads": info.cores}, found


def _dense_choices(desc: dict, target) -> tuple[dict, dict, list]:
    """(choices, default knob values, []) of a dense layer."""
    info = dense_cpu.cpu_info(target)
    o, batch = desc["weight_shape"][0], desc["data_shape"][0]
    default = dense_cpu.dense_knobs(desc["weight_shape"], batch, target)
    rows = [mo for mo in range(1, 17) if mo * batch + min(mo, batch) + 2 <= info.registers and mo <= o]
    if default.mo not in rows:
        rows.insert(0, default.mo)
    lanes = sorted({info.lanes, 4})
    choices = {"mo": rows, "lanes": lanes, "threads": _threads(info.cores)}
    return choices, {"mo": default.mo, "lanes": default.lanes, "threads": info.cores}, []


_CHOICES = {"conv2d": _conv2d_choices, "depthwise": _depthwise_choices, "dense": _dense_choices}


def knob_values(description: dict, picked: dict[str, int]):
    """The typed knobs (``ConvKnobs`` / ``DepthwiseKnobs`` / ``DenseKnobs``) that sampled values select
    (missing ones: the defaults recorded in the description)."""
    values = {**description["knobs"], **picked}
    op, threads = description["op"], int(values["threads"])
    if op == "dense":
        return DenseKnobs(int(values["mo"]), int(values["lanes"]), threads)
    block = description["blocks"][int(values["block"])]
    if op == "depthwise":
        return DepthwiseKnobs(block[0], block[1], block[2], threads)
    args = (description["weight_shape"], description["data_shape"], description["strides"], description["padding"])
    mr, nv, rows = block
    base = dense_cpu.conv2d_block_knobs(*args, mr, nv, bool(rows), _target(description))
    g = geometry(*args)
    nob, npb = blocks(g, base.mr, base.nv * base.lanes, base.rows)
    oc = max(1, min(nob, round(base.oc_blocks * int(values["oc_scale"]) / 4)))
    px = max(1, min(npb, round(base.px_blocks * int(values["px_scale"]) / 4)))
    return replace(base, oc_blocks=oc, px_blocks=px, threads=threads, panel=bool(values["panel"]) and not base.rows)


def _target(description: dict) -> tvm.target.Target:
    return tvm.target.Target(description["target"])


def _activation(value):
    return tuple(value) if isinstance(value, list) else value


def kernel(description: dict, picked: dict[str, int], weight: np.ndarray, bias: np.ndarray | None) -> DenseKernel:
    """The kernel of a dense layer's template for sampled knobs, with the layer's ``weight`` and ``bias``."""
    op, knobs = description["op"], knob_values(description, picked)
    if bias is None and description["bias"]:
        raise TvmPatternError(f"the {op} template takes a bias")
    common = {"bias": bias, "activation": _activation(description["activation"]), "target": _target(description)}
    if op == "dense":
        return dense_cpu.linear(weight, description["data_shape"][0], knobs=knobs, **common)
    conv = dense_cpu.depthwise if op == "depthwise" else dense_cpu.conv2d
    return conv(weight, description["data_shape"], description["strides"], description["padding"],
                residual=description["residual"], knobs=knobs, **common)  # fmt: skip


def _generate(description: dict, picked: dict[str, int]) -> tvm.tirx.PrimFunc:
    """The kernel function only: the weights are arguments, so zero placeholders of their shape do."""
    weight = np.zeros(description["weight_shape"], np.float32)
    bias = np.zeros(description["weight_shape"][0], np.float32) if description["bias"] else None
    return kernel(description, picked, weight, bias).func


def materialize(mod: IRModule | tvm.tirx.PrimFunc) -> tvm.tirx.PrimFunc:
    """The kernel a scheduled dense template selects (the function itself if it is no dense template)."""
    func = mod["main"] if isinstance(mod, IRModule) else mod
    description = template(func)
    if description is None or description.get("family") != FAMILY:
        return func
    return materialize_template(func, _generate)


def materialize_module(mod: IRModule) -> IRModule:
    """Every dense template PrimFunc of ``mod`` replaced by the kernel it selects."""
    updates = {gv: materialize(f) for gv, f in mod.functions_items()
               if isinstance(f, tvm.tirx.PrimFunc) and (template(f) or {}).get("family") == FAMILY}  # fmt: skip
    if not updates:
        return mod
    mod = mod.clone()
    for gvar, func in updates.items():
        mod.update_func(gvar, func.with_attr("global_symbol", gvar.name_hint))
    return mod


def build(mod: IRModule, target: tvm.target.Target, _params=None) -> tvm.runtime.Module:
    """A MetaSchedule builder's ``f_build`` for every task kind: dense templates and pattern-sparse templates
    materialized, any other (MetaSchedule-scheduled) function built as it is."""
    return build_templates(materialize_module(mod), target)


def _with_root(func: tvm.tirx.PrimFunc) -> tvm.tirx.PrimFunc:
    """``func`` with its body inside a root block (the generated dense kernels have none), which carries the
    template's description and knob samples."""
    if isinstance(func.body, s_tir.SBlockRealize):
        return func
    root = s_tir.SBlock([], [], [], "root", func.body)
    return func.with_body(s_tir.SBlockRealize([], True, root))


def _measure_args(mod: IRModule) -> list:
    return list(ms.arg_info.ArgInfo.from_prim_func(materialize(mod)))


def tuning_task(op: str, weight_shape, data_shape, strides=(1, 1), padding=(0, 0, 0, 0), bias: bool = False,
                activation=None, residual: bool = False, target=None) -> DenseTuningTask:
    """A dense layer's shape as a ``DenseTuningTask``: the default kernel as template, every knob a sample."""
    if op not in OPS:
        raise TvmPatternError(f"no dense template for op {op!r}: use one of {list(OPS)}")
    target = resolve_target(target)
    description = {
        "family": FAMILY, "op": op, "weight_shape": [int(d) for d in weight_shape],
        "data_shape": [int(d) for d in data_shape], "strides": [int(s) for s in strides],
        "padding": [int(p) for p in padding], "bias": bool(bias), "residual": bool(residual) and op != "dense",
        "activation": list(activation) if isinstance(activation, tuple) else activation,
        "target": json.loads(str(target)),
    }
    choices, default, found = _CHOICES[op](description, target)
    description.update(blocks=found, knobs=default, kernel={"out_channels": description["weight_shape"][0],
                                                             "k": int(np.prod(description["weight_shape"][1:]))})
    weight = np.zeros(description["weight_shape"], np.float32)
    bias_values = np.zeros(description["weight_shape"][0], np.float32) if description["bias"] else None
    untuned = kernel(description, {}, weight, bias_values)
    act = "" if activation is None else f"_{activation if isinstance(activation, str) else 'clip'}"
    name = (f"dense_{op}_{'x'.join(map(str, description['data_shape']))}_w{'x'.join(map(str, weight_shape))}"
            f"_s{''.join(map(str, description['strides']))}_p{''.join(map(str, description['padding']))}"
            f"{'_bias' if bias else ''}{'_res' if description['residual'] else ''}{act}")
    return DenseTuningTask(name, template_mod(_with_root(untuned.func), description), design_space(choices, default),
                           tuple(untuned.arrays), materialize, 2 if description["residual"] else 1,
                           _measure_args)  # fmt: skip
