"""What a schedule family is (``ScheduleFamily``) and the base of its typed knobs (``Knobs``).

A family is one module per target family (``x86``, ``arm_cpu``, ``mali``): it picks default knobs for a layer,
generates + schedules its kernel, and describes the layer as a tuning task whose samples select knobs.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import fields, replace
from typing import Any, Protocol, Self, runtime_checkable

import numpy as np
import tvm

from tvm_pattern.errors import PatternError

__all__ = ["Knobs", "ScheduleFamily"]


class Knobs:
    """Base of the frozen knob dataclasses of a template family (``x86.CpuKnobs``, ``mali.MaliKnobs``).

    Knobs read as attributes; they also read like the mapping users write overrides in (``knobs["rows"]``,
    ``{**knobs}``), and ``with_overrides`` applies such a mapping, refusing names the family does not have.
    """

    @classmethod
    def names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))  # type: ignore[arg-type]

    def keys(self) -> tuple[str, ...]:
        return self.names()

    def __getitem__(self, name: str) -> Any:
        if name not in self.names():
            raise KeyError(name)
        return getattr(self, name)

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def get(self, name: str, default: Any = None) -> Any:
        return getattr(self, name) if name in self.names() else default

    def with_overrides(self, overrides: Mapping[str, Any] | None) -> Self:
        """These knobs with ``overrides`` applied (a mapping or other knobs of this family)."""
        if not overrides:
            return self
        overrides = dict(overrides)  # a mapping, or knobs (``keys`` + ``__getitem__``)
        unknown = sorted(set(overrides) - set(self.names()))
        if unknown:
            raise PatternError(f"unknown knob(s) {unknown} for {type(self).__name__}: use {list(self.names())}")
        types = {f.name: f.type for f in fields(self)}  # type: ignore[arg-type]
        cast = {name: bool(v) if types[name] in (bool, "bool") else int(v) for name, v in overrides.items()}
        return replace(self, **cast)  # type: ignore[type-var]

    @classmethod
    def of(cls, knobs: Mapping[str, Any] | Knobs) -> Self:
        """Knobs from a complete mapping (e.g. a template description's defaults)."""
        if isinstance(knobs, cls):
            return knobs
        return cls(**{name: knobs[name] for name in cls.names() if name in knobs})  # type: ignore[call-arg]


@runtime_checkable
class ScheduleFamily(Protocol):
    """A target family's schedule template for the pattern-sparse conv (``schedules.family(target)``)."""

    NAME: str

    def default_config(self, packed, data_shape, out_shape, target=None) -> Knobs:
        """The untuned knobs for one layer on ``target``."""

    def generate(self, packed, data_shape, strides, padding, bias: bool, relu: bool, target,
                 config: Mapping | None = None):
        """The scheduled kernel of one layer (a ``kernels.pattern_conv2d.SparseConvKernel``)."""

    def tuning_task(self, packed, data_shape, strides, padding, bias: np.ndarray | bool, relu: bool, target):
        """The layer as a ``space.TuningTask`` whose samples select the knobs."""

    def materialize(self, description: dict, knobs: dict[str, int]) -> tvm.tirx.PrimFunc:
        """The kernel of a template description for sampled ``knobs``."""
