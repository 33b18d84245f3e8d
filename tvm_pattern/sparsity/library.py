"""The pattern library: which 3x3 shapes a pruned kernel may keep.

A *pattern* is a boolean 3x3 mask with exactly ``n`` entries, the centre among
them (PatDNN). The *library* is the small set of patterns a model may use,
picked as the ``k`` most frequent best-fitting patterns of a trained model.

This module is numpy-only: the PyTorch pruning side and the TVM compiler side
both read the library (``patterns.json``) through it.
"""

from __future__ import annotations

import itertools
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import PatternError

KERNEL = 3
CENTRE = (KERNEL * KERNEL) // 2
FORMAT_VERSION = 1


def candidate_patterns(n: int = 4) -> np.ndarray:
    """All 3x3 patterns of ``n`` entries that keep the centre, shape (C(8, n-1), 3, 3).

    Ordered lexicographically by their flat tap indices, so ids are stable.
    """
    if not 1 <= n <= KERNEL * KERNEL:
        raise PatternError(f"a 3x3 pattern keeps 1..9 entries, got n={n}")
    others = [i for i in range(KERNEL * KERNEL) if i != CENTRE]
    out = []
    for combo in itertools.combinations(others, n - 1):
        flat = np.zeros(KERNEL * KERNEL, dtype=bool)
        flat[[CENTRE, *combo]] = True
        out.append(flat.reshape(KERNEL, KERNEL))
    return np.stack(out)


def best_fit(kernels: np.ndarray, patterns: np.ndarray) -> np.ndarray:
    """Index of the pattern that keeps the most L2 norm of each kernel.

    ``kernels``: (N, 3, 3); ``patterns``: (P, 3, 3) bool. Returns (N,) int64.
    Ties go to the lowest pattern id, so the choice is deterministic.
    """
    energy = np.square(kernels.reshape(len(kernels), -1), dtype=np.float64)
    kept = energy @ patterns.reshape(len(patterns), -1).T.astype(np.float64)
    return np.argmax(kept, axis=1)


@dataclass(frozen=True)
class PatternLibrary:
    """A set of ``k`` patterns of ``n`` entries, with how often each was seen."""

    patterns: np.ndarray  # (k, 3, 3) bool
    counts: tuple[int, ...] = ()  # per pattern, how many kernels it fitted best
    seen: int = 0  # how many kernels were counted

    def __post_init__(self) -> None:
        p = np.asarray(self.patterns, dtype=bool)
        if p.ndim != 3 or p.shape[1:] != (KERNEL, KERNEL) or len(p) == 0:
            raise PatternError(f"patterns must have shape (k, 3, 3) with k >= 1, got {p.shape}")
        sizes = p.reshape(len(p), -1).sum(axis=1)
        if len(set(sizes.tolist())) != 1:
            raise PatternError(f"all patterns must keep the same number of entries, got {sizes.tolist()}")
        if not p.reshape(len(p), -1)[:, CENTRE].all():
            raise PatternError("every pattern must keep the centre of the kernel")
        if len({row.tobytes() for row in p.reshape(len(p), -1)}) != len(p):
            raise PatternError("the library holds the same pattern twice")
        object.__setattr__(self, "patterns", p)

    @property
    def k(self) -> int:
        return len(self.patterns)

    @property
    def n(self) -> int:
        return int(self.patterns[0].sum())

    def taps(self) -> list[list[tuple[int, int]]]:
        """Per pattern, its kept (row, col) offsets in row-major order."""
        return [[(int(r), int(c)) for r, c in zip(*np.nonzero(p), strict=True)] for p in self.patterns]

    def index_of(self, mask: np.ndarray) -> int:
        """Id of the pattern equal to a 3x3 boolean ``mask``, or -1 if none is."""
        hits = np.nonzero((self.patterns == np.asarray(mask, dtype=bool)).all(axis=(1, 2)))[0]
        return int(hits[0]) if len(hits) else -1

    @classmethod
    def extract(cls, kernels: np.ndarray, k: int = 8, n: int = 4) -> PatternLibrary:
        """The ``k`` most frequent best-fitting ``n``-entry patterns of ``kernels`` (N, 3, 3)."""
        candidates = candidate_patterns(n)
        if not 1 <= k <= len(candidates):
            raise PatternError(
                f"k={k} patterns requested, but only {len(candidates)} candidates of n={n} entries exist"
            )
        kernels = np.asarray(kernels, dtype=np.float32)
        if kernels.ndim != 3 or kernels.shape[1:] != (KERNEL, KERNEL) or len(kernels) == 0:
            raise PatternError(f"kernels must have shape (N, 3, 3) with N >= 1, got {kernels.shape}")
        counts = np.bincount(best_fit(kernels, candidates), minlength=len(candidates))
        order = np.argsort(-counts, kind="stable")[:k]
        return cls(candidates[order], tuple(int(c) for c in counts[order]), len(kernels))

    def to_json(self) -> dict:
        return {
            "format_version": FORMAT_VERSION,
            "kernel": [KERNEL, KERNEL],
            "n": self.n,
            "k": self.k,
            "patterns": [p.astype(int).tolist() for p in self.patterns],
            "counts": list(self.counts),
            "seen": self.seen,
        }

    @classmethod
    def from_json(cls, data: dict) -> PatternLibrary:
        try:
            patterns = np.array(data["patterns"], dtype=bool)
        except (KeyError, TypeError, ValueError) as err:
            raise PatternError(f"not a pattern library: {err}") from err
        return cls(patterns, tuple(data.get("counts", ())), int(data.get("seen", 0)))

    def save(self, path: str | os.PathLike) -> None:
        """Write ``patterns.json`` atomically (temporary file, then rename)."""
        path = Path(path)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(self.to_json(), indent=1))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | os.PathLike) -> PatternLibrary:
        path = Path(path)
        if not path.is_file():
            raise PatternError(f"pattern library {path} does not exist")
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as err:
            raise PatternError(f"{path} is not valid JSON: {err}") from err
        return cls.from_json(data)
