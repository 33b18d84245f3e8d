"""End to end: pruned CNNs from ONNX and torch.export, compiled with the sparse pass, equal to PyTorch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import tvm
from helpers.cnn_models import VGG16, ResNet18, SmallCNN, export_onnx, import_torch, library8, prune_model, torch_out

from tvm_pattern.compiler import (
    CompiledModel,
    ParallelizeDense,
    build,
    compile_command,
    compile_file,
    import_onnx,
    load,
)
from tvm_pattern.errors import ModelError, PatternError, TvmPatternError
from tvm_pattern.sparsity.library import PatternLibrary, candidate_patterns
from tvm_pattern.targets import host_target, is_host, resolve_target

TOL = {"atol": 1e-4, "rtol": 1e-4}
NETS = {"vgg16": (VGG16, 32, 12), "resnet18": (ResNet18, 64, 16)}  # net, input size, sparse 3x3 convs


@pytest.fixture(scope="module")
def nets():
    """Pruned VGG-16 / ResNet-18 with an input each and PyTorch's output."""
    out = {}
    for name, (net, size, _) in NETS.items():
        torch.manual_seed(1)
        model = prune_model(net(), library8())
        x = torch.randn(1, 3, size, size)
        out[name] = (model, x, torch_out(model, x))
    return out


@pytest.fixture(scope="module")
def compiled(nets, tmp_path_factory):
    """(name, importer) -> (CompiledModel, reports); built once for the module. ``dense=True``: the dense-kernel
    pass's reports instead of the pattern pass's."""
    cache: dict = {}
    dense_cache: dict = {}

    def get(name: str, importer: str, dense: bool = False):
        if (name, importer) not in cache:
            model, x, _ = nets[name]
            if importer == "onnx":
                mod = import_onnx(export_onnx(model, x, tmp_path_factory.mktemp(name) / f"{name}.onnx"))
            else:
                mod = import_torch(model, x)
            reports: list = []
            dense_cache[name, importer] = []
            lib = build(mod, "x86", library8(), reports=reports, dense_reports=dense_cache[name, importer])
            cache[name, importer] = (CompiledModel(lib), reports)
        model, reports = cache[name, importer]
        return (model, dense_cache[name, importer]) if dense else (model, reports)

    return get


@pytest.mark.slow
@pytest.mark.parametrize("importer", ["onnx", "torch"])
@pytest.mark.parametrize("name", list(NETS))
def test_pruned_net_equals_pytorch(nets, compiled, name, importer):
    _, x, expected = nets[name]
    model, reports = compiled(name, importer)
    assert sum(r.sparse for r in reports) == NETS[name][2]  # every 3x3 conv but the first
    np.testing.assert_allclose(model(x.numpy()), expected, **TOL)
    assert np.abs(expected).max() > 1e-2  # pruning kept the signal alive: the comparison is not vacuous


@pytest.mark.parametrize(
    ("importer", "first", "second"),
    [("onnx", ("bias", "relu"), ("bias",)), ("torch", ("batch_norm", "relu"), ("batch_norm",))],
)
@pytest.mark.slow
def test_resnet_epilogues(compiled, importer, first, second):
    """Block conv1 absorbs BatchNorm (folded by the ONNX exporter, by the pass for torch.export) and ReLU;
    conv2 only the BatchNorm, since the residual add comes before its ReLU."""
    _, reports = compiled("resnet18", importer)
    epilogues = [r.epilogue for r in reports if r.sparse]
    assert epilogues == [first, second] * (len(epilogues) // 2)


@pytest.mark.slow
def test_vgg_first_conv_dense_kernel(compiled):
    """build() leaves the unpruned first conv to the dense-kernel pass (faster than the 9-tap pattern kernel),
    which absorbs its bias and ReLU; every other conv / dense layer left is a generated kernel too."""
    _, reports = compiled("vgg16", "torch")
    _, dense = compiled("vgg16", "torch", dense=True)
    assert not reports[0].rewritten and reports[0].name == dense[0].name
    assert dense[0].rewritten and dense[0].op == "conv2d" and dense[0].epilogue == ("bias", "relu")
    assert dense and all(r.rewritten for r in dense)
    assert all(r.epilogue in (("bias", "relu"), ("bias", "relu", "max_pool")) for r in reports if r.sparse)


@pytest.fixture(scope="module")
def small_onnx(tmp_path_factory):
    model = prune_model(SmallCNN(), library8())
    x = torch.randn(1, 3, 16, 16)
    return export_onnx(model, x, tmp_path_factory.mktemp("small") / "small.onnx"), x, torch_out(model, x)


def test_demo_model_with_unfolded_batch_norm(tmp_path):
    """The demo's VGG-small exported as the CLI does (BatchNorm kept): the pass folds it into the kernel."""
    from tvm_pattern.prune.models import VGGSmall

    torch.manual_seed(2)
    model = prune_model(VGGSmall(), library8())
    x = torch.randn(1, 1, 28, 28)
    reports: list = []
    executable = build(import_onnx(export_onnx(model, x, tmp_path / "vgg.onnx", fold=False)), "x86", reports=reports)
    assert [r.epilogue for r in reports if r.sparse] == [("batch_norm", "relu")] * 3
    np.testing.assert_allclose(CompiledModel(executable)(x.numpy()), torch_out(model, x), **TOL)


def test_compile_command_writes_a_loadable_library(small_onnx, tmp_path):
    """compile_command (the CLI's entry) -> compile_file -> export_library; load runs it, numpy in and out."""
    path, x, expected = small_onnx
    library = tmp_path / "patterns.json"
    library8().save(library)
    lines: list[str] = []
    out = compile_command(path, "x86", tmp_path / "small.so", patterns=library, echo=lines.append)
    assert out == tmp_path / "small.so" and sorted(p.name for p in tmp_path.iterdir()) == ["patterns.json", "small.so"]
    assert len(lines) == 7 and lines[-1].startswith("3/6 conv2d pattern-sparse")
    np.testing.assert_allclose(load(out)(x.numpy()), expected, **TOL)


def test_compile_file_strict_names_the_conv(small_onnx, tmp_path):
    path, _, _ = small_onnx
    others = PatternLibrary(candidate_patterns(4)[[1, 2, 3]])
    with pytest.raises(PatternError, match=r"conv2d '\w+' in main: weight does not fit the pattern library"):
        compile_file(path, "x86", tmp_path / "m.so", patterns=others, strict=True)
    assert not list(tmp_path.iterdir())


def test_bad_files(tmp_path):
    with pytest.raises(ModelError, match="does not exist"):
        import_onnx(tmp_path / "missing.onnx")
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(ModelError, match="not a valid ONNX model"):
        import_onnx(junk)
    with pytest.raises(ModelError, match="does not exist"):
        load(tmp_path / "missing.so")
    with pytest.raises(TvmPatternError, match="output directory"):
        compile_file(junk, "x86", tmp_path / "no" / "m.so")


def test_targets():
    host = resolve_target("x86")
    assert host.kind.name == "llvm" and int(host.attrs["num-cores"]) >= 1 and "mcpu" in host.attrs
    assert str(resolve_target("llvm")) == str(host) == str(host_target()) and is_host(host)
    arm = resolve_target("arm")
    assert arm.attrs["mtriple"].startswith("aarch64") and not is_host(arm)
    mali = resolve_target("mali")
    assert mali.kind.name == "opencl" and "mali" in mali.keys and mali.host.attrs["mtriple"].startswith("aarch64")
    assert "num-cores" in resolve_target("arm/rk3399").attrs
    with pytest.raises(TvmPatternError, match="unknown target 'sparc'"):
        resolve_target("sparc")


def test_arm_compiles_for_aarch64(small_onnx, tmp_path):
    """Compile-only: the wheel's LLVM emits aarch64; exporting needs a cross compiler (a clear error if none)."""
    path, _, _ = small_onnx
    executable = build(import_onnx(path), "arm", library8())
    assert isinstance(executable, tvm.runtime.Executable)
    try:
        compile_file(path, "arm", tmp_path / "arm.so", patterns=library8())
    except TvmPatternError as err:
        assert "cross compiler" in str(err)


def test_dynamic_batch_onnx_compiles_for_batch_one(tmp_path):
    """A symbolic batch dim is fixed to 1: the sparse kernels are generated for static shapes."""
    model = prune_model(SmallCNN(), library8())
    x = torch.randn(1, 3, 16, 16)
    path = tmp_path / "dyn.onnx"
    torch.onnx.export(
        model, (x,), str(path), dynamo=False, opset_version=17, input_names=["x"], dynamic_axes={"x": {0: "batch"}}
    )
    reports: list = []
    model_tvm = CompiledModel(build(import_onnx(path), "x86", reports=reports))
    assert sum(r.sparse for r in reports) == 3
    np.testing.assert_allclose(model_tvm(x.numpy()), torch_out(model, x), **TOL)


def test_dense_ops_run_in_parallel():
    """The stock CPU pipeline leaves dense ops serial; ParallelizeDense gives their outer loops to the cores."""
    from tvm import relax

    bb = relax.BlockBuilder()
    x = relax.Var("x", relax.TensorType((1, 4, 8, 8), "float32"))
    weight = np.random.default_rng(0).standard_normal((8, 4, 3, 3)).astype(np.float32)
    with bb.function("main", [x]):
        with bb.dataflow():
            y = bb.emit(relax.op.nn.conv2d(x, relax.const(weight), padding=1))
            out = bb.emit_output(relax.op.nn.max_pool2d(relax.op.nn.relu(y), pool_size=2, strides=2))
        bb.emit_func_output(out)
    mod = relax.transform.LegalizeOps()(bb.get())
    scheduled = ParallelizeDense(2)(mod)
    funcs = [f for _, f in scheduled.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    assert funcs and all("T.parallel" in f.script() for f in funcs)
    expected = torch.nn.functional.max_pool2d(
        torch.relu(torch.nn.functional.conv2d(torch.ones(1, 4, 8, 8), torch.from_numpy(weight), padding=1)), 2
    )
    got = CompiledModel(build(bb.get(), "x86"))(np.ones((1, 4, 8, 8), np.float32))
    np.testing.assert_allclose(got, expected.numpy(), **TOL)
