"""From a Relax module or an ONNX file to a runnable library, and running it.

- ``build``: ``PatternSparseConv2d`` (kernels from the templates, or from a tuning database), then the
  target's Relax pipeline; for CPUs TVM's ``cpu_generic`` phase lists with ``ParallelizeDense`` added;
- ``compile``: ``compile_file`` (atomic export, cross-linking) and ``compile_command`` (``tvm-pattern compile``);
- ``runtime``: ``load`` / ``CompiledModel``, numpy in and out.
"""

from .build import build, cpu_pipeline, dense_passes
from .compile import compile_command, compile_file
from .runtime import CompiledModel, load

__all__ = ["CompiledModel", "build", "compile_command", "compile_file", "cpu_pipeline", "dense_passes", "load"]
