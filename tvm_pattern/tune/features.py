"""Features for the cost model: the knob values a candidate sampled plus its layer's shape (``KnobFeatures``).

Why not MetaSchedule's per-store features: the template is generated code whose IR is the same for every
sample; features of the materialized kernel need it generated first (0.5-2 s per candidate, times the
search population every round), while the knobs determine the kernel exactly and cost nothing.
"""

from __future__ import annotations

import numpy as np
import tvm
from tvm.ir.utils import derived_object
from tvm.s_tir.meta_schedule.feature_extractor import PyFeatureExtractor

from ..errors import TvmPatternError
from ..schedules.space import knobs, template

FEATURES = 32  # length of a KnobFeatures vector (zero-padded), fixed so one model serves every layer


@derived_object
class KnobFeatures(PyFeatureExtractor):
    """A candidate's features for ``XGBModel``: its sampled knobs, its block shape, and its layer's shape.

    One row per candidate, ``FEATURES`` wide. The knobs of a template determine its kernel exactly, so they are
    a complete description; the layer's shape lets one model serve every layer of a job.
    """

    def extract_from(self, context, candidates) -> list[tvm.runtime.Tensor]:
        rows = [_knob_vector(c.sch.mod["main"]) for c in candidates]
        return [tvm.runtime.tensor(row[None, :]) for row in rows]


def _knob_vector(func: tvm.tirx.PrimFunc) -> np.ndarray:
    description = template(func)
    if description is None:
        raise TvmPatternError("KnobFeatures needs a template task (schedules.space.template_mod)")
    picked = knobs(func)
    values = [float(picked[name]) for name in sorted(picked)]
    blocks, default = description.get("blocks"), description.get("default", {})
    if blocks and "block" in picked:
        rows, cols = blocks[picked["block"]][:2]  # dense templates add a third value (row mode, lanes)
        lanes = picked.get("lanes", default.get("vector", 1))
        values += [rows, cols, cols / max(lanes, 1), rows * cols / max(lanes, 1)]
    kernel = description.get("kernel", {})
    values += [*description.get("data_shape", []), kernel.get("out_channels", 0), kernel.get("nnz", 0),
               kernel.get("k", 0), *description.get("strides", [])]  # fmt: skip
    vector = np.zeros(FEATURES, np.float32)
    vector[: min(len(values), FEATURES)] = values[:FEATURES]
    return vector
