"""The pattern library: candidates, extraction, JSON round trip, errors."""

import json
from math import comb

import numpy as np
import pytest

from tvm_pattern.errors import PatternError
from tvm_pattern.sparsity.library import PatternLibrary, best_fit, candidate_patterns


@pytest.mark.parametrize("n", [1, 2, 4, 5, 9])
def test_candidates_keep_centre_and_are_distinct(n):
    pats = candidate_patterns(n)
    assert pats.shape == (comb(8, n - 1), 3, 3)
    assert pats[:, 1, 1].all()
    assert (pats.reshape(len(pats), -1).sum(1) == n).all()
    assert len({p.tobytes() for p in pats}) == len(pats)


def test_four_tap_candidates_are_56():
    assert len(candidate_patterns(4)) == 56


def test_extract_counts_best_fits():
    rng = np.random.default_rng(0)
    cands = candidate_patterns(4)
    # 30 kernels near pattern 5, 20 near pattern 9, 10 near pattern 40.
    ids = [5] * 30 + [9] * 20 + [40] * 10
    kernels = np.stack([cands[i] * (2 + rng.random((3, 3))) + 0.01 * rng.random((3, 3)) for i in ids])
    lib = PatternLibrary.extract(kernels, k=3, n=4)
    assert [lib.index_of(cands[i]) for i in (5, 9, 40)] == [0, 1, 2]
    assert lib.counts == (30, 20, 10)
    assert lib.seen == 60


def test_best_fit_matches_brute_force():
    rng = np.random.default_rng(1)
    kernels = rng.normal(size=(200, 3, 3)).astype(np.float32)
    cands = candidate_patterns(4)
    brute = [int(np.argmax([np.sum((k * p) ** 2) for p in cands])) for k in kernels]
    assert best_fit(kernels, cands).tolist() == brute


def test_json_round_trip(tmp_path):
    lib = PatternLibrary.extract(np.random.default_rng(2).normal(size=(500, 3, 3)), k=8)
    lib.save(tmp_path / "patterns.json")
    again = PatternLibrary.load(tmp_path / "patterns.json")
    assert np.array_equal(again.patterns, lib.patterns)
    assert again.counts == lib.counts and again.k == 8 and again.n == 4
    assert json.loads((tmp_path / "patterns.json").read_text())["format_version"] == 1


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"k": 57}, "only 56 candidates"), ({"k": 0}, "k=0"), ({"k": 4, "n": 10}, "1..9")],
)
def test_extract_rejects_bad_k_and_n(kwargs, message):
    with pytest.raises(PatternError, match=message):
        PatternLibrary.extract(np.ones((10, 3, 3)), **kwargs)


def test_library_rejects_patterns_without_centre_or_mixed_sizes():
    no_centre = np.zeros((1, 3, 3), bool)
    no_centre[0, 0, :] = True
    with pytest.raises(PatternError, match="centre"):
        PatternLibrary(no_centre)
    mixed = candidate_patterns(4)[:1].tolist() + candidate_patterns(5)[:1].tolist()
    with pytest.raises(PatternError, match="same number"):
        PatternLibrary(np.array(mixed, bool))


def test_load_reports_missing_and_invalid_files(tmp_path):
    with pytest.raises(PatternError, match="does not exist"):
        PatternLibrary.load(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(PatternError, match="not valid JSON"):
        PatternLibrary.load(tmp_path / "bad.json")
