"""Shared by the pass tests: small Relax modules around one conv, counting calls, running them, PyTorch's answer."""

from __future__ import annotations

import numpy as np
import torch
import tvm
from tvm import relax


def count_calls(mod: tvm.IRModule, op_name: str) -> int:
    """Calls of a Relax op (e.g. relax.nn.conv2d) or of call_tir to a PrimFunc whose name starts with op_name."""
    found = []

    def visit(expr):
        if not isinstance(expr, relax.Call) or not isinstance(expr.op, tvm.ir.Op):
            return
        is_tir = expr.op.name == "relax.call_tir" and expr.args[0].name_hint.startswith(op_name)
        if expr.op.name == op_name or is_tir:
            found.append(expr)

    relax.analysis.post_order_visit(mod["main"], visit)
    return len(found)


def conv_module(
    weight: np.ndarray,
    data_shape=(1, 4, 8, 8),
    dtype: str = "float32",
    layouts=("NCHW", "OIHW"),
    dilation: int = 1,
    weight_as_param: bool = False,
    bias: np.ndarray | None = None,
    relu: bool = False,
    extra_use: bool = False,
    padding=None,
    strides=(1, 1),
    pool: dict | None = None,
) -> tvm.IRModule:
    """main(x) = [max_pool2d(**pool)]([relu](conv(x, W) [+ bias]) [+ conv(x, W) when extra_use]), built with a
    BlockBuilder."""
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(data_shape, dtype))
    w_param = relax.Var("w", relax.TensorType(weight.shape, dtype))
    params = [x, w_param] if weight_as_param else [x]
    w = w_param if weight_as_param else relax.const(weight.astype(dtype))
    with bb.function("main", params):
        with bb.dataflow():
            y = conv = bb.emit(
                relax.op.nn.conv2d(
                    x,
                    w,
                    strides=strides,
                    padding=dilation if padding is None else padding,
                    dilation=dilation,
                    data_layout=layouts[0],
                    kernel_layout=layouts[1],
                ),
                name_hint="conv",
            )
            if bias is not None:
                y = bb.emit(relax.op.add(y, relax.const(bias.reshape(1, -1, 1, 1))), name_hint="biased")
            if relu:
                y = bb.emit(relax.op.nn.relu(y), name_hint="act")
            if extra_use:
                y = bb.emit(relax.op.add(y, conv), name_hint="both")
            if pool is not None:
                y = bb.emit(relax.op.nn.max_pool2d(y, **pool), name_hint="pooled")
            out = bb.emit_output(y)
        bb.emit_func_output(out)
    return bb.get()


def run(mod: tvm.IRModule, *inputs: np.ndarray) -> np.ndarray:
    """Through the stock tvm.compile pipeline: the pass result must survive it unaided."""
    vm = relax.VirtualMachine(tvm.compile(mod, target="llvm"), tvm.cpu())
    return vm["main"](*(tvm.runtime.tensor(x) for x in inputs)).numpy()


def reference(x, weight, bias=None, relu=False, extra_use=False) -> np.ndarray:
    conv = torch.nn.functional.conv2d(torch.from_numpy(x), torch.from_numpy(weight), padding=1)
    y = conv + (0 if bias is None else torch.from_numpy(bias).reshape(1, -1, 1, 1))
    y = torch.relu(y) if relu else y
    return (y + conv if extra_use else y).numpy()


