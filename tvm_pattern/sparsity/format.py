"""Compressed storage for pattern-sparse 3x3 conv weights (PatDNN FKR + FKW).

FKR (filter kernel reorder): output channels (filters) are sorted by how many kernels they keep and then by
their per-pattern counts, so neighbouring filters do the same amount of the same work (balanced threads,
repeated loop shapes). ``perm`` records the order; the conv kernel writes filter ``i`` to output channel
``perm[i]``, so the permutation is undone for free in the output store.

FKW (filter kernel weight): per filter, its kept kernels grouped by pattern; each kept kernel is an input
channel index plus its ``n`` kept weights in row-major tap order. ``offsets`` is a CSR pointer over
(filter, pattern) groups.

numpy only: the TVM code generator and the tests both read this format.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import PatternError
from .library import KERNEL, PatternLibrary

__all__ = ["PackedConv", "pack", "unpack"]


@dataclass(frozen=True)
class PackedConv:
    """A pattern-sparse (O, I, 3, 3) weight in FKR + FKW form.

    ``offsets[i * k + p] : offsets[i * k + p + 1]`` are the kernels of packed filter ``i`` with pattern ``p``.
    """

    library: PatternLibrary  # the k patterns; kernels of pattern p are weights[:, taps of p]
    perm: np.ndarray  # (O,) int32: packed filter i is original output channel perm[i]
    offsets: np.ndarray  # (O * k + 1,) int32 CSR pointer over (filter, pattern) groups
    channels: np.ndarray  # (nnz,) int32 input channel of each kept kernel
    weights: np.ndarray  # (nnz, n) float32 kept weights, row-major tap order
    in_channels: int

    @property
    def out_channels(self) -> int:
        return len(self.perm)

    @property
    def k(self) -> int:
        return self.library.k

    @property
    def n(self) -> int:
        return self.library.n

    @property
    def nnz(self) -> int:
        """Number of kept kernels."""
        return len(self.channels)

    def taps(self) -> list[list[tuple[int, int]]]:
        """Per pattern, its (row, col) offsets in the order of ``weights[:, t]``."""
        return self.library.taps()

    def counts(self) -> np.ndarray:
        """(O, k) kept kernels per packed filter and pattern."""
        return np.diff(self.offsets).reshape(self.out_channels, self.k)

    def pattern_ids(self) -> np.ndarray:
        """(nnz,) pattern id of each kept kernel (implied by the grouping)."""
        return np.repeat(np.tile(np.arange(self.k), self.out_channels), np.diff(self.offsets))

    def filter_of(self) -> np.ndarray:
        """(nnz,) packed filter index of each kept kernel."""
        return np.repeat(np.arange(self.out_channels), self.counts().sum(axis=1))


def _check_weight(weight: np.ndarray) -> np.ndarray:
    w = np.asarray(weight)
    if w.ndim != 4 or w.shape[2:] != (KERNEL, KERNEL):
        raise PatternError(f"weight must have shape (O, I, 3, 3), got {w.shape}")
    if w.dtype != np.float32:
        raise PatternError(f"weight must be float32, got {w.dtype}")
    if not np.isfinite(w).all():
        raise PatternError("weight holds NaN or infinity")
    return w


def infer_library(weight: np.ndarray) -> PatternLibrary:
    """The patterns a weight uses, read off its non-zeros.

    The library is the set of distinct non-zero masks with the most entries; a kernel with fewer non-zeros
    (a kept weight that is exactly 0) must fit inside one of them.
    """
    w = _check_weight(weight)
    masks = (w != 0).reshape(-1, KERNEL * KERNEL)
    sizes = masks.sum(axis=1)
    if not sizes.any():
        raise PatternError("weight is all zeros: no pattern to infer")
    full = np.unique(masks[sizes == sizes.max()], axis=0)
    return PatternLibrary(full.reshape(-1, KERNEL, KERNEL))


def _assign(weight: np.ndarray, library: PatternLibrary) -> np.ndarray:
    """(O, I) pattern id of each kernel, -1 for an empty kernel; raises for a kernel fitting no pattern."""
    o, i = weight.shape[:2]
    masks = (weight != 0).reshape(o * i, KERNEL * KERNEL)
    pats = library.patterns.reshape(library.k, -1)
    outside = masks.astype(np.int32) @ (~pats).T.astype(np.int32)  # non-zeros a pattern does not cover
    fits = outside == 0
    ids = np.where(fits.any(axis=1), np.argmax(fits, axis=1), -2)
    ids[~masks.any(axis=1)] = -1
    bad = np.nonzero(ids == -2)[0]
    if len(bad):
        oc, ic = divmod(int(bad[0]), i)
        mask = masks[bad[0]].reshape(KERNEL, KERNEL).astype(int).tolist()
        raise PatternError(
            f"kernel (out={oc}, in={ic}) with non-zero mask {mask} fits none of the {library.k} library patterns"
            f" ({len(bad)} kernels do not fit)"
        )
    return ids.reshape(o, i)


def _fkr_order(ids: np.ndarray, k: int) -> np.ndarray:
    """Filters sorted by kept-kernel count (descending), then by per-pattern counts; stable."""
    per_pattern = np.stack([(ids == p).sum(axis=1) for p in range(k)], axis=1)
    keys = [per_pattern[:, p] for p in reversed(range(k))] + [-per_pattern.sum(axis=1)]
    return np.lexsort(keys).astype(np.int32)


def pack(weight: np.ndarray, library: PatternLibrary | None = None) -> PackedConv:
    """Compress a pattern-sparse (O, I, 3, 3) float32 weight; ``library=None`` infers it from the non-zeros."""
    w = _check_weight(weight)
    library = infer_library(w) if library is None else library
    ids = _assign(w, library)
    perm = _fkr_order(ids, library.k)
    i = w.shape[1]
    flat_pats = library.patterns.reshape(library.k, -1)
    offsets = [0]
    channels: list[np.ndarray] = []
    weights: list[np.ndarray] = []
    for oc in perm:
        for p in range(library.k):
            ic = np.nonzero(ids[oc] == p)[0]
            channels.append(ic)
            weights.append(w[oc, ic].reshape(len(ic), KERNEL * KERNEL)[:, flat_pats[p]])
            offsets.append(offsets[-1] + len(ic))
    return PackedConv(
        library=library,
        perm=perm,
        offsets=np.asarray(offsets, dtype=np.int32),
        channels=np.concatenate(channels).astype(np.int32),
        weights=np.concatenate(weights).astype(np.float32).reshape(-1, library.n),
        in_channels=i,
    )


def unpack(packed: PackedConv) -> np.ndarray:
    """The dense (O, I, 3, 3) weight, exactly as packed (original filter order)."""
    o, i, k = packed.out_channels, packed.in_channels, packed.k
    dense = np.zeros((o, i, KERNEL * KERNEL), dtype=np.float32)
    flat_pats = packed.library.patterns.reshape(k, -1)
    rows = packed.perm[packed.filter_of()]
    taps = flat_pats[packed.pattern_ids()]  # (nnz, 9) bool, n True per row
    r_idx = np.repeat(rows, packed.n)
    c_idx = np.repeat(packed.channels, packed.n)
    t_idx = np.nonzero(taps)[1]
    dense[r_idx, c_idx, t_idx] = packed.weights.reshape(-1)
    return dense.reshape(o, i, KERNEL, KERNEL)
