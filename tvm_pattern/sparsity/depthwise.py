"""The pattern-grouped format of a depthwise conv weight (C, 1, KH, KW), read off its zeros (numpy only).

Why grouped: in a depthwise conv every channel has one kernel, so a channel's support (its non-zero taps) is its
pattern. Channels that share a support are listed together, so the generated kernel loops over each pattern's
channels with the pattern's tap offsets as literals; all-zero channels form a last group with no taps. The
library is the set of distinct supports, whatever pruned the weight.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..errors import PatternError

__all__ = ["DepthwisePatterns", "pack_depthwise", "unpack_depthwise"]


@dataclass(frozen=True)
class DepthwisePatterns:
    """A depthwise weight grouped by pattern.

    ``patterns``: (P, KH, KW) bool, the distinct non-empty supports, most used first; ``order``: (C,) the
    channels, pattern 0's first, then pattern 1's, ..., the all-zero channels last; ``starts``: (P + 2,) where
    each group begins in ``order`` (group P: the empty channels); ``weights``: the kept taps of each channel in
    ``order``, each channel's in row-major tap order.
    """

    patterns: np.ndarray
    order: np.ndarray
    starts: np.ndarray
    weights: np.ndarray

    @property
    def channels(self) -> int:
        return len(self.order)

    @property
    def k(self) -> int:
        """Number of patterns (the empty group not counted)."""
        return len(self.patterns)

    @property
    def kernel(self) -> tuple[int, int]:
        return int(self.patterns.shape[1]), int(self.patterns.shape[2])

    @property
    def nnz(self) -> int:
        return len(self.weights)

    def taps(self, p: int) -> list[tuple[int, int]]:
        """The (row, col) taps of pattern ``p``, row-major (the order of its weights)."""
        return [(int(r), int(c)) for r, c in zip(*np.nonzero(self.patterns[p]), strict=True)]

    def counts(self) -> np.ndarray:
        """(P + 1,) channels per pattern, the empty channels last."""
        return np.diff(self.starts)

    def weight_starts(self) -> np.ndarray:
        """(P + 1,) where each group's weights begin in ``weights``."""
        sizes = self.counts()[:-1] * self.tap_counts()
        return np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)

    def tap_counts(self) -> np.ndarray:
        """(P,) taps per pattern."""
        return self.patterns.reshape(self.k, -1).sum(axis=1) if self.k else np.zeros(0, np.int64)

    @property
    def max_taps(self) -> int:
        return int(self.tap_counts().max()) if self.k else 0


def _check(weight: np.ndarray) -> np.ndarray:
    w = np.asarray(weight)
    if w.ndim != 4 or w.shape[1] != 1 or min(w.shape) < 1:
        raise PatternError(f"depthwise weight must have shape (C, 1, KH, KW), got {w.shape}")
    if w.dtype != np.float32:
        raise PatternError(f"depthwise weight must be float32, got {w.dtype}")
    if not np.isfinite(w).all():
        raise PatternError("depthwise weight holds NaN or infinity")
    return w


def pack_depthwise(weight: np.ndarray) -> DepthwisePatterns:
    """Group a (C, 1, KH, KW) float32 weight's channels by support (its patterns: the distinct supports)."""
    w = _check(weight)
    c, _, kh, kw = w.shape
    masks = (w != 0).reshape(c, kh * kw)
    empty = ~masks.any(axis=1)
    supports, ids, counts = np.unique(masks[~empty], axis=0, return_inverse=True, return_counts=True)
    rank = np.argsort(-counts, kind="stable")  # most used pattern first
    remap = np.empty_like(rank)
    remap[rank] = np.arange(len(rank))
    pid = np.full(c, len(rank), dtype=np.int64)
    pid[~empty] = remap[ids.reshape(-1)]
    order = np.argsort(pid, kind="stable").astype(np.int32)
    starts = np.searchsorted(pid[order], np.arange(len(rank) + 2)).astype(np.int32)
    flat = w.reshape(c, kh * kw)
    weights = [flat[ch][masks[ch]] for ch in order if not empty[ch]]
    return DepthwisePatterns(
        patterns=supports[rank].reshape(-1, kh, kw),
        order=order,
        starts=starts,
        weights=np.concatenate(weights).astype(np.float32) if weights else np.zeros(0, np.float32),
    )


def unpack_depthwise(packed: DepthwisePatterns) -> np.ndarray:
    """The (C, 1, KH, KW) weight, exactly as packed."""
    kh, kw = packed.kernel
    out = np.zeros((packed.channels, kh * kw), np.float32)
    wstarts = packed.weight_starts()
    for p in range(packed.k):
        mask = packed.patterns[p].reshape(-1)
        n = int(mask.sum())
        chans = packed.order[packed.starts[p]:packed.starts[p + 1]]
        vals = packed.weights[wstarts[p]:wstarts[p + 1]].reshape(len(chans), n)
        out[np.ix_(chans, np.nonzero(mask)[0])] = vals
    return out.reshape(packed.channels, 1, kh, kw)
