"""The compiler facade: ONNX import, build, export and load under their first names.

The code lives in ``tvm_pattern.frontend`` (``import_onnx``), ``tvm_pattern.pipeline`` (``build``,
``compile_file``, ``compile_command``, ``load``, ``CompiledModel``) and ``tvm_pattern.passes``
(``ParallelizeDense``); this module re-exports them.
"""

from .frontend import import_onnx
from .passes import ParallelizeDense
from .pipeline import CompiledModel, build, compile_command, compile_file, cpu_pipeline, load

__all__ = ["CompiledModel", "ParallelizeDense", "build", "compile_command", "compile_file", "cpu_pipeline",
           "import_onnx", "load"]  # fmt: skip
