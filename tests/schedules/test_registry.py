"""Every target family is a ``ScheduleFamily``; ``family(target)`` picks it; knobs are typed."""

from __future__ import annotations

import pytest

from tvm_pattern.errors import PatternError
from tvm_pattern.schedules import REGISTRY, CpuKnobs, MaliKnobs, ScheduleFamily, arm_cpu, family, mali, x86
from tvm_pattern.targets import arm_target, host_target, mali_target, vector_registers


def test_every_family_satisfies_the_protocol():
    for name, module in REGISTRY.items():
        assert isinstance(module, ScheduleFamily), name
        assert name == module.NAME


def test_family_of_each_target():
    assert family(host_target()) is x86
    assert family(None) is x86
    assert family(arm_target()) is arm_cpu
    assert family(mali_target()) is mali


def test_knobs_are_typed_and_refuse_unknown_names():
    knobs = CpuKnobs(rows=4, cols=16, vector=8, threads=2)
    assert knobs["rows"] == 4 and {**knobs}["cols"] == 16
    assert knobs.with_overrides({"rows": 2, "peel": 0}) == CpuKnobs(rows=2, cols=16, vector=8, peel=False, threads=2)
    with pytest.raises(PatternError, match="unknown knob"):
        knobs.with_overrides({"row": 2})
    assert MaliKnobs.of({"rows": 2, "vectors": 1}).wg_space == 16


def test_register_file_read_from_the_target():
    assert vector_registers(arm_target()) == 32
    assert vector_registers(host_target()) in (16, 32)
