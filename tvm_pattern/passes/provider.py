"""Where the pattern-sparse pass gets each layer's kernel: a ``KernelProvider``.

The pass plans every conv it can replace (weights packed, epilogue matched) into a ``ConvLayer`` and asks its
provider for the kernel. ``DefaultKernels`` gives the templates' default kernels (``schedules.sparse_conv2d``);
tuning supplies others (``tune.DatabaseKernels``: the best schedule of a database; ``tune`` collects tasks the
same way), so the pass knows nothing of tuning, as TVM's own lowering leaves the database to
``MetaScheduleApplyDatabase``.

``DenseKernels`` (dense conv2d, depthwise conv2d, dense layers) works the same way with a ``DenseLayer`` and a
``DenseKernelProvider``; ``DefaultDenseKernels`` gives ``schedules.dense_cpu``'s default kernels.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import numpy as np
import tvm
from tvm.target import Target

from ..kernels.pattern_conv2d import pooled_shape
from ..schedules import dense_cpu, family_name, sparse_conv2d, winograd, x86
from ..sparsity.format import PackedConv, unpack

__all__ = ["ConvLayer", "DefaultDenseKernels", "DefaultKernels", "DenseKernelProvider", "DenseLayer", "KernelProvider",
           "ProvidedKernel", "density", "runs_winograd", "sparse_winograd_block"]  # fmt: skip


@dataclass(frozen=True)
class ConvLayer:
    """One conv the pass replaces: its packed weight, shapes, absorbed epilogue and target."""

    name: str
    packed: PackedConv
    data_shape: tuple[int, int, int, int]
    strides: tuple[int, int]
    padding: tuple[int, int, int, int]
    bias: np.ndarray | None  # (O,), the absorbed bias (batch_norm shift included)
    relu: bool
    out_shape: tuple[int, ...]
    target: Target | None  # None: the current target
    pool: bool = False  # a 2x2 / stride-2 max-pool follows; the kernel may store its result instead (``pooled``)


@dataclass(frozen=True)
class ProvidedKernel:
    """A layer's kernel: ``func(data, *arrays, out)``; ``arrays`` hold every argument between (bias included)."""

    func: tvm.tirx.PrimFunc
    arrays: tuple[np.ndarray, ...]
    tuned: bool = False  # the best schedule of a tuning database
    winograd: bool = False  # a Winograd F(4x4, 3x3) kernel (``schedules.winograd``)
    pooled: bool = False  # it stores the 2x2 max-pool of the conv's output (the layer asked, ``ConvLayer.pool``)


@runtime_checkable
class KernelProvider(Protocol):
    """Gives the pass a kernel per layer; raises ``errors.PatternError`` for a layer it cannot run (the pass
    leaves it dense and says why)."""

    def kernel(self, layer: ConvLayer) -> ProvidedKernel: ...


def density(packed: PackedConv) -> float:
    """The fraction of a 3x3 weight's taps that are kept."""
    return packed.nnz * packed.n / max(1, packed.out_channels * packed.in_channels * 9)


def runs_winograd(layer: ConvLayer | DenseLayer) -> bool:
    """Whether the default kernel of ``layer`` is Winograd F(4x4, 3x3), dense (``schedules.winograd.unsuited``) or
    connectivity-sparse (``sparse_winograd_block``); tuning skips such layers, as its templates are the direct
    kernels."""
    target = _target(layer)
    if isinstance(layer, ConvLayer):
        return _winograd_block(layer) is not None
    return layer.op == "conv2d" and winograd.unsuited(layer.weight.shape, layer.data_shape, layer.strides, 1.0,
                                                      target) is None  # fmt: skip


def sparse_winograd_block(layer: ConvLayer) -> int:
    """Filters per block if ``layer`` runs as connectivity-sparse Winograd (``schedules.winograd.sparse_block``),
    else 0; a layer dense enough for the dense Winograd kernel takes that one."""
    return _winograd_block(layer) or 0


def _winograd_block(layer: ConvLayer) -> int | None:
    """How ``layer`` runs as Winograd: 0 dense, G > 0 connectivity-sparse in blocks of G; None: it does not."""
    target = _target(layer)
    shape = (layer.packed.out_channels, layer.packed.in_channels, 3, 3)
    if winograd.unsuited(shape, layer.data_shape, layer.strides, density(layer.packed), target) is None:
        return 0
    if winograd.unsuited(shape, layer.data_shape, layer.strides, 1.0, target) is not None:
        return None  # cheap checks first: unpacking the weight is not
    block = winograd.sparse_block(unpack(layer.packed), layer.data_shape, layer.strides, target)[0]
    return block if block > 0 else None


def _target(layer: ConvLayer | DenseLayer) -> Target | None:
    return layer.target if layer.target is not None else Target.current(allow_none=True)


class DefaultKernels:
    """The templates' default kernels for the layer's target; ``config`` overrides knobs for every layer.

    Without ``config``, a layer that keeps most of its taps runs as Winograd F(4x4, 3x3) where that is faster
    (``runs_winograd``); ``config`` asks for the pattern kernel with those knobs everywhere.
    """

    def __init__(self, config: Mapping | None = None) -> None:
        self.config = config

    def kernel(self, layer: ConvLayer) -> ProvidedKernel:
        block = None if self.config is not None else _winograd_block(layer)  # one look at the weight per layer
        use_winograd = block is not None
        pooled = not use_winograd and layer.pool and _fuses_pool(layer)
        if use_winograd:  # its arrays hold the bias already
            kernel = winograd.conv2d(unpack(layer.packed), layer.data_shape, layer.padding, layer.bias,
                                     "relu" if layer.relu else None, target=layer.target, block=block)  # fmt: skip
            arrays = tuple(kernel.arrays)
        else:
            args = (layer.packed, layer.data_shape, layer.strides, layer.padding)
            kw = {"bias": layer.bias is not None, "relu": layer.relu, "target": layer.target, "config": self.config}
            kernel = x86.generate(*args, **kw, pool=True) if pooled else sparse_conv2d(*args, **kw)
            arrays = (*kernel.arrays, *(() if layer.bias is None else (layer.bias,)))
        expected = pooled_shape(layer.out_shape) if pooled else tuple(layer.out_shape)
        if tuple(kernel.out_shape) != tuple(expected):
            raise ValueError(f"{layer.name}: sparse kernel output shape {kernel.out_shape} != {expected}")
        return ProvidedKernel(kernel.func, arrays, winograd=use_winograd, pooled=pooled)


def _fuses_pool(layer: ConvLayer) -> bool:
    """Whether ``layer``'s kernel should store the max-pool after it: x86 only (the Arm and Mali kernels could,
    but their speed cannot be measured here), when the block cost model says so (``x86.fuses_pool``)."""
    target = _target(layer)
    if family_name(target) != x86.NAME:
        return False
    return x86.fuses_pool(layer.packed, layer.data_shape, layer.out_shape, target)


@dataclass(frozen=True)
class DenseLayer:
    """One dense op ``DenseKernels`` replaces: ``op`` is "conv2d", "depthwise" or "dense".

    ``weight``: (O, C, KH, KW), (C, 1, KH, KW) or (O, I), batch_norm's scale folded in; ``data_shape``: the
    input's (N, C, H, W) or (B, I); ``activation``: None, "relu" or ("clip", lo, hi); ``residual``: the kernel
    takes a second input of ``out_shape`` added before the activation.
    """

    name: str
    op: str
    weight: np.ndarray
    data_shape: tuple[int, ...]
    strides: tuple[int, int]
    padding: tuple[int, int, int, int]
    bias: np.ndarray | None
    activation: object
    residual: bool
    out_shape: tuple[int, ...]
    target: Target | None


@runtime_checkable
class DenseKernelProvider(Protocol):
    """Gives ``DenseKernels`` a kernel per layer: ``func(data, [residual], *arrays, out)``; raises
    ``errors.TvmPatternError`` for a layer it cannot run (the pass leaves it to TVM and says why)."""

    def kernel(self, layer: DenseLayer) -> ProvidedKernel: ...


class DefaultDenseKernels:
    """``schedules.dense_cpu``'s kernels with the target's default knobs."""

    def kernel(self, layer: DenseLayer) -> ProvidedKernel:
        common = {"bias": layer.bias, "activation": layer.activation, "target": layer.target}
        use_winograd = runs_winograd(layer)
        if use_winograd:
            kernel = winograd.conv2d(layer.weight, layer.data_shape, layer.padding, layer.bias, layer.activation,
                                     layer.residual, layer.target)  # fmt: skip
        elif layer.op == "dense":
            kernel = dense_cpu.linear(layer.weight, layer.data_shape[0], **common)
        elif layer.op == "depthwise":
            kernel = dense_cpu.depthwise(layer.weight, layer.data_shape, layer.strides, layer.padding,
                                         residual=layer.residual, **common)  # fmt: skip
        else:
            kernel = dense_cpu.conv2d(layer.weight, layer.data_shape, layer.strides, layer.padding,
                                      residual=layer.residual, **common)  # fmt: skip
        if tuple(kernel.out_shape) != tuple(layer.out_shape):
            raise ValueError(f"{layer.name}: kernel output shape {kernel.out_shape} != {layer.out_shape}")
        return ProvidedKernel(kernel.func, tuple(kernel.arrays), winograd=use_winograd)
