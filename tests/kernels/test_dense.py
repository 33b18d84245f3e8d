"""Dense / linear generator vs torch.nn.functional.linear."""

import numpy as np
import pytest
import torch
from helpers.dense import activate, close, run
from hypothesis import given, settings
from hypothesis import strategies as st

from tvm_pattern.errors import TvmPatternError
from tvm_pattern.kernels.dense import DenseKnobs
from tvm_pattern.schedules.dense_cpu import linear as dense


def check(o, i, batch, bias, act, knobs=None, seed=0):
    rng = np.random.default_rng(seed)
    weight = rng.standard_normal((o, i), dtype=np.float32) / np.float32(np.sqrt(i))
    x = rng.standard_normal((batch, i), dtype=np.float32)
    b = rng.standard_normal(o, dtype=np.float32) if bias else None
    k = dense(weight, batch, b, act, knobs=knobs)
    want = torch.nn.functional.linear(torch.tensor(x), torch.tensor(weight), None if b is None else torch.tensor(b))
    close(run(k, x), activate(want, act))


@settings(max_examples=25, deadline=None)
@given(o=st.integers(1, 40), i=st.integers(1, 300), batch=st.integers(1, 8), bias=st.booleans(),
       act=st.sampled_from([None, "relu", "relu6"]), seed=st.integers(0, 3))
def test_random_shapes(o, i, batch, bias, act, seed):
    check(o, i, batch, bias, act, seed=seed)


@settings(max_examples=8, deadline=None)
@given(mo=st.integers(1, 9), lanes=st.sampled_from([4, 8, 16]), threads=st.integers(1, 3))
def test_knobs(mo, lanes, threads):
    check(23, 77, 2, True, "relu", knobs=DenseKnobs(mo, lanes, threads))


def test_fc_shape():
    check(1000, 2048, 1, True, None)


def test_bad_args():
    with pytest.raises(TvmPatternError):
        dense(np.zeros((3,), np.float32))
    with pytest.raises(TvmPatternError):
        dense(np.zeros((3, 4), np.float32), batch=0)
