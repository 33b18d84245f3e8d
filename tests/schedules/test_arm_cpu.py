"""Arm CPU code run on the emulated aarch64 phone (qemu-user + TVM RPC): sparse convs and a pruned CNN equal PyTorch.

The first run sets the phone up (downloads ~110 MB, cached in ~/.cache/tvm-pattern/phone).
"""

from __future__ import annotations

import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import tvm
from helpers.cases import CASES
from helpers.cnn_models import SmallCNN, export_onnx, library8, prune_model, torch_out
from helpers.kernels import DENSE, pruned, reference
from tvm import relax

from tvm_pattern import cross
from tvm_pattern.compiler import compile_file
from tvm_pattern.errors import TvmPatternError
from tvm_pattern.phone import EmulatedPhone
from tvm_pattern.schedules import arm_cpu, for_target
from tvm_pattern.sparse_conv import layer_config, sparse_conv2d
from tvm_pattern.sparsity.format import pack
from tvm_pattern.targets import arm_target

TOL = {"atol": 1e-4, "rtol": 1e-4}
TARGET = arm_target()


@pytest.fixture(autouse=True)
def debian_cross_compiler(monkeypatch):
    """Link with Debian's aarch64 g++ even where an Android NDK is configured: the phone runs glibc, not bionic."""
    monkeypatch.delenv("TVM_NDK_CC", raising=False)
    monkeypatch.delenv("ANDROID_NDK_HOME", raising=False)


@pytest.fixture(scope="module")
def phone_server():
    """One RPC server on the emulated phone for the module (starting one takes ~20 s under emulation)."""
    phone = EmulatedPhone()
    phone.setup()
    with phone.server() as server:
        yield server


def upload(server, executable: tvm.runtime.Executable, path: Path):
    """Link ``executable`` for aarch64, upload it to the phone; returns (session, remote module)."""
    executable.export_library(str(path), **cross.export_options(TARGET))
    remote = server.connect()
    remote.upload(str(path))
    return remote, remote.load_module(path.name)


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_sparse_conv_on_phone(phone_server, tmp_path, case):
    """The kernel for the Arm target, cross-linked, run over RPC on the phone, equals torch's conv2d."""
    (o, i, h, w_, batch), stride, padding, taps, has_bias, relu = CASES[case]
    rng = np.random.default_rng(len(case))
    if taps == 9:
        weight, library = rng.standard_normal((o, i, 3, 3)).astype(np.float32), DENSE
    else:
        weight, library = pruned(rng, o, i, 8, taps, 1 / 3.6 if o >= 32 else 0.5)
    x = rng.standard_normal((batch, i, h, w_)).astype(np.float32)
    bias = rng.standard_normal(o).astype(np.float32) if has_bias else None
    kernel = sparse_conv2d(pack(weight, library), x.shape, (stride, stride), padding, has_bias, relu, TARGET)
    executable = tvm.compile(tvm.IRModule({"main": kernel.func}), target=TARGET)
    remote, module = upload(phone_server, executable, tmp_path / "kernel.so")
    dev = remote.cpu()
    args = [tvm.runtime.tensor(a, dev) for a in (x, *kernel.arrays, *([bias] if has_bias else []))]
    out = tvm.runtime.tensor(np.full(kernel.out_shape, np.nan, np.float32), dev)
    with phone_server.errors():
        module["main"](*args, out)
        got = out.numpy()
    np.testing.assert_allclose(got, reference(x, weight, bias, stride, padding, relu), **TOL)


@pytest.mark.slow
def test_pruned_cnn_on_phone(phone_server, tmp_path):
    """compile_file(..., "arm") -> the library on the phone -> Relax VM over RPC equals PyTorch."""
    torch.manual_seed(3)
    model = prune_model(SmallCNN(), library8())
    x = torch.randn(1, 3, 16, 16)
    reports: list = []
    path = compile_file(export_onnx(model, x, tmp_path / "small.onnx"), "arm", tmp_path / "small_arm.so",
                        patterns=library8(), reports=reports)  # fmt: skip
    assert sum(r.sparse for r in reports) == 3
    remote = phone_server.connect()
    remote.upload(str(path))
    dev = remote.cpu()
    with phone_server.errors():
        vm = relax.VirtualMachine(remote.load_module(path.name), dev)
        got = vm["main"](tvm.runtime.tensor(x.numpy(), dev)).numpy()
    expected = torch_out(model, x)
    np.testing.assert_allclose(got, expected, **TOL)
    assert np.abs(expected).max() > 1e-2


def test_kernel_uses_neon_fma():
    """The aarch64 assembly of the sparse kernel multiplies-adds on 4-lane fp32 NEON vectors."""
    rng = np.random.default_rng(0)
    weight, library = pruned(rng, 16, 8, 8, 4, 0.5)
    kernel = sparse_conv2d(pack(weight, library), (1, 8, 16, 16), target=TARGET)
    asm = tvm.compile(tvm.IRModule({"main": kernel.func}), target=TARGET).mod.inspect_source("asm")
    assert re.search(r"fmla\s+v\d+\.4s", asm), "no NEON fmla on .4s vectors in the kernel's assembly"


def test_arm_default_config():
    """Arm targets get the NEON template: 4 lanes, blocks within 32 registers, one thread per target core."""
    rng = np.random.default_rng(1)
    weight, library = pruned(rng, 16, 8, 8, 4, 0.5)
    packed = pack(weight, library)
    assert for_target(TARGET) is arm_cpu
    cfg = layer_config(packed, (1, 8, 28, 28), target=TARGET)
    assert cfg["vector"] == 4 and cfg["threads"] == 4 and cfg["cols"] % 4 == 0
    assert 1 < cfg["rows"] * cfg["cols"] // 4 <= arm_cpu.NEON_REGISTERS - packed.n - 2
    candidates = arm_cpu.candidate_configs(packed, (1, 8, 28, 28), (1, 16, 28, 28), TARGET)
    assert {"rows": cfg["rows"], "cols": cfg["cols"]} in [{"rows": c["rows"], "cols": c["cols"]} for c in candidates]


def test_cross_linker_choice(monkeypatch, tmp_path):
    """Debian's g++ by default; the NDK's clang when ANDROID_NDK_HOME or TVM_NDK_CC says so; None for the host."""
    assert cross.linker(tvm.target.Target({"kind": "llvm"})) is None
    assert cross.linker(TARGET).command.endswith("aarch64-linux-gnu-g++")
    bin_dir = tmp_path / "ndk" / "toolchains" / "llvm" / "prebuilt" / "linux-x86_64" / "bin"
    bin_dir.mkdir(parents=True)
    monkeypatch.setenv("ANDROID_NDK_HOME", str(tmp_path / "ndk"))
    with pytest.raises(TvmPatternError, match="aarch64-linux-android28-clang"):
        cross.linker(TARGET)
    clang = bin_dir / "aarch64-linux-android28-clang++"
    clang.write_text("#!/bin/sh\n")
    clang.chmod(0o755)
    assert cross.linker(TARGET).command == str(clang)
    monkeypatch.setenv("TVM_NDK_CC", str(tmp_path / "missing-clang"))
    with pytest.raises(TvmPatternError, match=r"TVM_NDK_CC=.*missing-clang"):
        cross.linker(TARGET)


def test_builder_export_links_for_aarch64(tmp_path):
    """MetaSchedule's f_export for the Arm target survives pickling (builder workers) and writes an aarch64 ELF."""
    rng = np.random.default_rng(2)
    weight, library = pruned(rng, 4, 3, 8, 4, 0.5)
    kernel = sparse_conv2d(pack(weight, library), (1, 3, 8, 8), target=TARGET)
    export = pickle.loads(pickle.dumps(cross.builder_export(TARGET)))
    path = Path(export(tvm.tirx.build(tvm.IRModule({"main": kernel.func}), target=TARGET)))
    try:
        header = path.read_bytes()[:20]
        assert header[:4] == b"\x7fELF" and int.from_bytes(header[18:20], "little") == 183  # EM_AARCH64
    finally:
        shutil.rmtree(path.parent)
