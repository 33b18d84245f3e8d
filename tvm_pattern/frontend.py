"""Model import: ONNX to a Relax module with static shapes (the sparse kernel is generated per layer shape)."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from tvm.ir import IRModule

from .errors import ModelError

__all__ = ["import_onnx"]

log = logging.getLogger(__name__)


def import_onnx(path: str | os.PathLike, batch: int = 1) -> IRModule:
    """Relax module of an ONNX model, weights as constants; symbolic input dims become ``batch``.

    Static shapes matter: the sparse kernel is generated per layer shape.
    """
    import onnx
    from tvm.relax.frontend.onnx import from_onnx

    path = Path(path)
    if not path.is_file():
        raise ModelError(f"ONNX model {path} does not exist")
    try:
        onnx.checker.check_model(str(path))  # by path: also works for models with external data
        model = onnx.load(str(path))
    except Exception as err:  # onnx raises several unrelated types for a bad file
        raise ModelError(f"{path} is not a valid ONNX model: {err}") from err
    try:
        return from_onnx(model, shape_dict=_static_inputs(model, batch))
    except Exception as err:
        raise ModelError(f"TVM cannot import {path}: {err}") from err


def _static_inputs(model, batch: int) -> dict[str, list[int]]:
    """Input shapes with every symbolic dim set to ``batch`` (logged: the library is then fixed-shape)."""
    initializers = {init.name for init in model.graph.initializer}
    shapes = {}
    for inp in model.graph.input:
        if inp.name in initializers:
            continue
        dims = inp.type.tensor_type.shape.dim
        shape = [d.dim_value if d.HasField("dim_value") else batch for d in dims]
        if any(not d.HasField("dim_value") for d in dims):
            log.warning("input %r has symbolic dims %s: compiling for shape %s", inp.name, list(dims), shape)
        shapes[inp.name] = shape
    return shapes
