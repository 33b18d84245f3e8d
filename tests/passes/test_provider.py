"""The pass takes its kernels from a provider and knows no tuner."""

from __future__ import annotations

import ast
from pathlib import Path

import numpy as np
import pytest
import tvm
from helpers.cnn_models import library8, prune_weight
from tvm import relax

import tvm_pattern.passes
from tvm_pattern.errors import PatternError
from tvm_pattern.passes import ConvLayer, DefaultKernels, KernelProvider, PatternSparseConv2d, ProvidedKernel


def conv_bias_relu(weight: np.ndarray, bias: np.ndarray, data_shape=(1, 4, 8, 8)) -> tvm.IRModule:
    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType(data_shape, "float32"))
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, relax.const(weight), padding=1))
            y = bb.emit(relax.op.add(y, relax.const(bias.reshape(1, -1, 1, 1))))
            out = bb.emit_output(relax.op.nn.relu(y))
        bb.emit_func_output(out)
    return bb.get()


class Recording:
    """A provider that records the layers it is asked for and hands out the default kernels."""

    def __init__(self) -> None:
        self.layers: list[ConvLayer] = []

    def kernel(self, layer: ConvLayer) -> ProvidedKernel:
        self.layers.append(layer)
        return DefaultKernels().kernel(layer)


class Refusing:
    def kernel(self, layer: ConvLayer) -> ProvidedKernel:
        raise PatternError("no kernel for this one")


def test_provider_gets_the_planned_layer():
    rng = np.random.default_rng(0)
    weight = prune_weight(rng.standard_normal((8, 4, 3, 3)).astype(np.float32), library8(), keep=0.5)
    bias = rng.standard_normal(8).astype(np.float32)
    provider = Recording()
    assert isinstance(provider, KernelProvider)
    sparse = PatternSparseConv2d(library8(), target="x86", provider=provider)
    sparse(conv_bias_relu(weight, bias))
    (layer,) = provider.layers
    assert layer.data_shape == (1, 4, 8, 8) and layer.out_shape == (1, 8, 8, 8) and layer.relu
    np.testing.assert_array_equal(layer.bias, bias)
    assert sparse.summary[0].rewritten and sparse.summary[0].epilogue == ("bias", "relu")


def test_a_refused_layer_stays_dense_or_fails_strict():
    rng = np.random.default_rng(1)
    weight = prune_weight(rng.standard_normal((8, 4, 3, 3)).astype(np.float32), library8(), keep=0.5)
    mod = conv_bias_relu(weight, np.zeros(8, np.float32))
    sparse = PatternSparseConv2d(library8(), target="x86", provider=Refusing())
    sparse(mod)
    assert not sparse.summary[0].rewritten and "no kernel for this one" in sparse.summary[0].reason
    with pytest.raises(PatternError, match="no kernel for this one"):
        PatternSparseConv2d(library8(), strict=True, target="x86", provider=Refusing())(mod)


def test_passes_import_no_tuner():
    """Lowering knows nothing of tuning: no module of ``tvm_pattern.passes`` imports ``tvm_pattern.tune``."""
    for path in Path(tvm_pattern.passes.__file__).parent.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom):
                assert "tune" not in (node.module or "").split("."), path
