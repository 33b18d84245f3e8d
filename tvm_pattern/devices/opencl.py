"""Run TVM-generated OpenCL kernels with pyopencl (e.g. on PoCL, OpenCL on the CPU) to check them.

Why: TVM's wheel generates OpenCL but has no OpenCL runtime, so a Mali kernel cannot run on this machine
through TVM. Here a PrimFunc is lowered once; the OpenCL source comes from that lowering, and the host
side of the same lowering says what TVM's runtime would do: which kernels to launch in which order, with
which buffers (the function's parameters and its intermediate allocations, TVM's device workspaces) and
which launch sizes (each kernel's ``thread_extent`` values: ``blockIdx`` x ``threadIdx`` = global size,
``threadIdx`` = local size).

Intermediate buffers start as all-ones bits (NaN as float32), so a kernel reading scratch memory that no
earlier kernel wrote shows up in the result instead of passing by luck on zeroed memory.

    prog = OpenCLProgram(func, Target({"kind": "opencl", "device": "mali"}, host="llvm"))
    results = prog(x, *arrays, out)    # every argument after the run, in parameter order
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import tvm
from tvm.ir import IRModule
from tvm.target import Target
from tvm.tirx.build import codegen_build, split_host_device_mods

from ..errors import TvmPatternError

__all__ = ["KernelLaunch", "OpenCLError", "OpenCLProgram", "opencl_device", "run_many", "run_opencl"]

_THREAD_TAGS = ("blockIdx.", "threadIdx.")
_AXES = "xyz"


class OpenCLError(TvmPatternError):
    """No OpenCL platform, or a kernel / argument this runner cannot handle."""


@dataclass(frozen=True)
class KernelLaunch:
    """One kernel launch of the host code: its name, its operands, and its NDRange."""

    name: str
    operands: tuple[object, ...]  # a parameter index (int), an intermediate buffer name (str) or a scalar
    global_size: tuple[int, int, int]
    local_size: tuple[int, int, int]


@dataclass(frozen=True)
class _Scratch:
    """An intermediate allocation of the host function (TVM would take it from the device workspace)."""

    name: str
    nbytes: int
    dtype: str


def _pyopencl():
    try:
        import pyopencl
    except ImportError as err:
        raise OpenCLError("pyopencl is not installed: pip install pyopencl (a dependency of tvm-pattern)") from err
    return pyopencl


def opencl_device():
    """(context, queue) on the first OpenCL device (GPUs first); ``OpenCLError`` if there is none."""
    cl = _pyopencl()
    try:
        platforms = cl.get_platforms()
    except cl.Error as err:  # the ICD loader finds no platform: PLATFORM_NOT_FOUND_KHR
        platforms, reason = [], str(err)
    else:
        reason = "no platform listed"
    devices = [d for p in platforms for d in p.get_devices()]
    if not devices:
        raise OpenCLError(
            f"no OpenCL platform found ({reason}): install an OpenCL driver, e.g. PoCL on the CPU "
            "(Debian: apt-get install pocl-opencl-icd ocl-icd-libopencl1; `make setup` does it)"
        )
    devices.sort(key=lambda d: not d.type & cl.device_type.GPU)
    ctx = cl.Context([devices[0]])
    return ctx, cl.CommandQueue(ctx)


def _as_module(func_or_mod: tvm.tirx.PrimFunc | IRModule) -> IRModule:
    if isinstance(func_or_mod, IRModule):
        return func_or_mod
    if isinstance(func_or_mod, tvm.tirx.PrimFunc):
        return IRModule({"main": func_or_mod})
    raise OpenCLError(f"expected a PrimFunc or an IRModule of one, got {type(func_or_mod).__name__}")


def _entry(mod: IRModule) -> tuple[tvm.ir.GlobalVar, tvm.tirx.PrimFunc]:
    funcs = [(gv, f) for gv, f in mod.functions_items() if isinstance(f, tvm.tirx.PrimFunc)]
    if len(funcs) != 1:
        raise OpenCLError(f"expected a module with one PrimFunc, got {[gv.name_hint for gv, _ in funcs]}")
    return funcs[0]


@tvm.instrument.pass_instrument
class _AroundSplit:
    """Keeps the module right before SplitHostDevice (one function, fully lowered: what GPU verification
    checks) and right after it (host code still has the function's own parameters)."""

    def __init__(self) -> None:
        self.before: IRModule | None = None
        self.after: IRModule | None = None

    def run_before_pass(self, mod: IRModule, info) -> None:
        if info.name.endswith("SplitHostDevice"):
            self.before = mod

    def run_after_pass(self, mod: IRModule, info) -> None:
        if info.name.endswith("SplitHostDevice"):
            self.after = mod


def _lower(mod: IRModule, target: Target) -> tuple[IRModule, IRModule, IRModule]:
    """(before SplitHostDevice, after it, device module ready for codegen), from one run of TVM's pipeline."""
    host = target.host or Target("llvm")
    mod = tvm.tirx.transform.BindTarget(Target(target, host=host))(mod)
    pipeline, _, finalize_device = tvm.tirx.get_default_tir_pipeline(target)
    capture = _AroundSplit()
    current = tvm.transform.PassContext.current()
    with tvm.transform.PassContext(
        opt_level=current.opt_level, config=current.config, instruments=[*current.instruments, capture]
    ):
        lowered = pipeline(mod)
        _, devices = split_host_device_mods(lowered)
        device_mods = [finalize_device()(m) for t, m in devices.items() if t.kind.name == "opencl"]
    if capture.after is None or len(device_mods) != 1:
        raise OpenCLError(f"lowering for {target} gave no OpenCL device code (are the loops bound to threads?)")
    return capture.before, capture.after, device_mods[0]


def _walk(stmt, visit) -> None:
    """Pre-order walk over host statements (TVM 0.27 has no Python TIR visitor)."""
    visit(stmt)
    stmt_types = tvm.tirx.stmt
    if isinstance(stmt, stmt_types.SeqStmt):
        for s in stmt.seq:
            _walk(s, visit)
    elif isinstance(stmt, stmt_types.IfThenElse):
        _walk(stmt.then_case, visit)
        if stmt.else_case is not None:
            _walk(stmt.else_case, visit)
    elif isinstance(stmt, (stmt_types.AttrStmt, stmt_types.For, stmt_types.While)):
        _walk(stmt.body, visit)


def _launch_sizes(tags: list[str], values: list) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    groups, local = [1, 1, 1], [1, 1, 1]
    for tag, value in zip(tags, values, strict=True):
        if not isinstance(value, tvm.tirx.IntImm):
            raise OpenCLError(f"launch size {tag} = {value} is not a constant")
        scope, axis = tag.split(".")
        (groups if scope == "blockIdx" else local)[_AXES.index(axis)] = int(value)
    return tuple(g * t for g, t in zip(groups, local, strict=True)), tuple(local)


class _HostReader:
    """Reads the host function after SplitHostDevice: scratch allocations and kernel launches, in order."""

    def __init__(self, func: tvm.tirx.PrimFunc, kernel_params: dict[str, int]) -> None:
        self.kernel_params = kernel_params
        self.params = {p: i for i, p in enumerate(func.params)}  # 0.27: a buffer parameter is a Var
        self.alias: dict = {}
        self.scratch: dict = {}
        self.launches: list[KernelLaunch] = []
        _walk(func.body, self._visit)

    def _visit(self, stmt) -> None:
        s = tvm.tirx.stmt
        if isinstance(stmt, s.AllocBuffer):
            buf = stmt.buffer
            size = int(np.prod([int(d) for d in buf.shape]))
            name = f"{buf.name}_{len(self.scratch)}"
            self.scratch[buf] = _Scratch(name, size * tvm.DataType(buf.dtype).itemsize, str(buf.dtype))
        elif isinstance(stmt, s.DeclBuffer):
            self.alias[stmt.buffer] = self._buffer_of(stmt.data)
        elif isinstance(stmt, s.Evaluate) and isinstance(stmt.value, tvm.ir.expr.Call):
            call = stmt.value
            if isinstance(call.op, tvm.ir.Op) and call.op.name == "tirx.call_ffi_kernel":
                self.launches.append(self._launch(call))

    @staticmethod
    def _buffer_of(expr):
        """The buffer Var behind ``buf.data`` (a ``tirx.buffer_data`` call), else the expression itself."""
        is_data = isinstance(expr, tvm.ir.expr.Call) and isinstance(expr.op, tvm.ir.Op)
        return expr.args[0] if is_data and expr.op.name == "tirx.buffer_data" else expr

    def _resolve(self, var):
        while var in self.alias:
            var = self.alias[var]
        return var

    def _operand(self, arg) -> object:
        if isinstance(arg, (tvm.tirx.IntImm, tvm.tirx.FloatImm)):
            return np.array(arg.value, dtype=str(arg.dtype))[()]
        var = self._resolve(self._buffer_of(arg))
        if var in self.params:
            return self.params[var]
        if var in self.scratch:
            return self.scratch[var].name
        raise OpenCLError(f"kernel operand {arg} is neither a parameter, an intermediate buffer nor a constant")

    def _launch(self, call) -> KernelLaunch:
        name = str(call.args[0].value)
        tags = [str(t) for t in call.attrs.launch_params]
        if any(not t.startswith(_THREAD_TAGS) for t in tags):
            raise OpenCLError(f"kernel {name}: launch parameters {tags} are not only thread extents")
        if name not in self.kernel_params:
            raise OpenCLError(f"host code launches {name}, which is not among the kernels {sorted(self.kernel_params)}")
        count = self.kernel_params[name]
        operands = tuple(self._operand(a) for a in call.args[1 : 1 + count])
        global_size, local_size = _launch_sizes(tags, list(call.args[1 + count :]))
        return KernelLaunch(name, operands, global_size, local_size)


def _kernel_names(device_mod: IRModule) -> dict[str, int]:
    """Kernel symbol -> number of operands (the signature of each ``__kernel``)."""
    names = {}
    for gv, func in device_mod.functions_items():
        names[str(func.attrs.get("global_symbol", gv.name_hint))] = len(func.params)
    return names


class OpenCLProgram:
    """A PrimFunc lowered for an OpenCL target, runnable through pyopencl.

    ``source``: the OpenCL C that TVM generated; ``launches``: its kernels in host order; ``lowered``: the
    module right before host / device split. ``name``: the function's symbol, which prefixes its kernel
    names (``run_many`` needs them distinct).
    """

    def __init__(self, func_or_mod: tvm.tirx.PrimFunc | IRModule, target: Target | dict, name: str | None = None):
        target = target if isinstance(target, Target) else Target(target)
        if target.kind.name != "opencl":
            raise OpenCLError(f"target kind must be opencl, got {target.kind.name}")
        gv, func = _entry(_as_module(func_or_mod))
        symbol = name or (func.attrs or {}).get("global_symbol") or gv.name_hint  # private functions get none
        self.func = func.with_attr("global_symbol", str(symbol))  # a public function: MakePackedAPI lowers it
        self.lowered, split, device_mod = _lower(IRModule({gv: self.func}), target)
        self.source = codegen_build(device_mod, target).inspect_source()
        host = next(f for g, f in split.functions_items() if g.name_hint == gv.name_hint)
        reader = _HostReader(host, _kernel_names(device_mod))
        self.launches = tuple(reader.launches)
        self.scratch = tuple(reader.scratch.values())

    def verify(self, constraints: dict[str, int]) -> bool:
        """TVM's GPU code check (threads per group, shared memory, vector bytes ...) on the lowered function."""
        from tvm.s_tir.analysis import verify_gpu_code

        return all(verify_gpu_code(f, constraints) for f in self.lowered.functions.values())

    def check_args(self, args) -> list[np.ndarray]:
        """The arguments as contiguous arrays; ``OpenCLError`` naming the first that does not fit its parameter."""
        params = self.func.params
        if len(args) != len(params):
            raise OpenCLError(f"expected {len(params)} arguments ({[p.name for p in params]}), got {len(args)}")
        checked = []
        for p, a in zip(params, args, strict=True):
            shape, dtype = tuple(int(d) for d in p.ty.shape), str(p.ty.dtype)
            a = np.asarray(a)
            if a.shape != shape or str(a.dtype) != dtype:
                raise OpenCLError(f"argument {p.name}: expected {dtype}{list(shape)}, got {a.dtype}{list(a.shape)}")
            checked.append(np.ascontiguousarray(a))
        return checked

    def run(self, ctx, queue, program, args) -> list[np.ndarray]:
        """Launch every kernel of this function from a built ``program``; every argument after the run."""
        cl = _pyopencl()
        arrays = self.check_args(args)
        flags = cl.mem_flags.READ_WRITE | cl.mem_flags.COPY_HOST_PTR
        bufs: dict[object, object] = {i: cl.Buffer(ctx, flags, hostbuf=a) for i, a in enumerate(arrays)}
        for s in self.scratch:
            fill = np.full(max(s.nbytes, 1), 0xFF, np.uint8)  # all-ones bits: NaN as float32, so reads of
            bufs[s.name] = cl.Buffer(ctx, flags, hostbuf=fill)  # scratch no kernel wrote show in the result
        for launch in self.launches:
            kernel = cl.Kernel(program, launch.name)
            kernel.set_args(*[bufs[o] if isinstance(o, (int, str)) else o for o in launch.operands])
            cl.enqueue_nd_range_kernel(queue, kernel, launch.global_size, launch.local_size)
        results = [np.empty_like(a) for a in arrays]
        for i, r in enumerate(results):
            cl.enqueue_copy(queue, r, bufs[i])
        queue.finish()
        return results

    def __call__(self, *args: np.ndarray) -> list[np.ndarray]:
        """Run every kernel in order; returns every argument (copies) after the run, in parameter order."""
        return run_many([self], [args])[0]


def run_many(programs: list[OpenCLProgram], args_list: list) -> list[list[np.ndarray]]:
    """Run several functions built as one OpenCL program: PoCL spends ~2 s per program build whatever its
    size, so checking many kernels pays it once. Kernel names must be distinct (give each a ``name``)."""
    cl = _pyopencl()
    names = [launch.name for p in programs for launch in {x.name: x for x in p.launches}.values()]
    if len(set(names)) != len(names):
        raise OpenCLError(f"kernel names repeat across programs: {sorted(names)}; give each program a distinct name")
    for prog, args in zip(programs, args_list, strict=True):
        prog.check_args(args)
    ctx, queue = opencl_device()
    program = cl.Program(ctx, "\n".join(p.source for p in programs)).build()
    return [prog.run(ctx, queue, program, args) for prog, args in zip(programs, args_list, strict=True)]


def run_opencl(func_or_mod: tvm.tirx.PrimFunc | IRModule, target: Target | dict, args: list[np.ndarray]) -> list:
    """Lower ``func_or_mod`` for the OpenCL ``target``, run it on the first OpenCL device, return all args."""
    return OpenCLProgram(func_or_mod, target)(*args)
