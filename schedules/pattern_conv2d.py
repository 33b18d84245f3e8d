"""One pattern-sparse conv layer for a target: its knobs, its scheduled kernel, or its tuning task.

The composed API (``kernels.pattern_conv2d`` generates, the target's family of ``registry`` schedules).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import tvm

from tvm_pattern.kernels.pattern_conv2d import SparseConvKernel, check_layer, conv_out_shape
from tvm_pattern.sparsity.format import PackedConv

from .base import Knobs
from .registry import family
from .space import TuningTask

__all__ = ["layer_config", "sparse_conv2d", "tuning_task"]


def layer_config(packed: PackedConv, data_shape, strides=(1, 1), padding=(1, 1, 1, 1), target=None,
                 config: Mapping | None = None) -> Knobs:
    """The knobs used for one layer: the target family's defaults overridden by ``config``."""
    data_shape, strides, padding = check_layer(packed, data_shape, strides, padding)
    out_shape = conv_out_shape(data_shape, packed.out_channels, strides, padding)
    return family(target).default_config(packed, data_shape, out_shape, target).with_overrides(config)


def sparse_conv2d(
    packed: PackedConv,
    data_shape: tuple[int, int, int, int],
    strides: tuple[int, int] = (1, 1),
    padding: tuple[int, int, int, int] = (1, 1, 1, 1),
    bias: bool = False,
    relu: bool = False,
    target: tvm.target.Target | None = None,
    config: Mapping | None = None,
) -> SparseConvKernel:
    """Generate and schedule the pattern-sparse conv for one layer; ``config`` overrides default knobs.

    CPU targets: params of ``func`` are ``(data, offsets, channels, weights, perm, tsplit, [bias (O,)], out)``;
    the five arrays are ``arrays`` in that order (``tsplit``: filter-group boundaries); Mali kernels take no
    ``tsplit``. ``bias`` is 1-D (O,).
    """
    return family(target).generate(packed, data_shape, strides, padding, bias, relu, target, config)


def tuning_task(
    packed: PackedConv,
    data_shape: tuple[int, int, int, int],
    strides: tuple[int, int] = (1, 1),
    padding: tuple[int, int, int, int] = (1, 1, 1, 1),
    bias: np.ndarray | bool = False,
    relu: bool = False,
    target: tvm.target.Target | None = None,
) -> TuningTask:
    """The layer as a ``schedules.space.TuningTask`` for the target family's template (``tvm_pattern.tune``)."""
    data_shape, strides, padding = check_layer(packed, data_shape, strides, padding)
    return family(target).tuning_task(packed, data_shape, strides, padding, bias, relu, target)
