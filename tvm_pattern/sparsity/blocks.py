"""Block-sparse storage for 1x1 conv and linear weights: output rows in blocks of ``G`` that share their kept
input columns (GRIM-style block column sparsity), detected from the zeros of any weight.

Why blocks: in a sparse 1x1 conv one input row load then feeds ``G`` accumulators (one per output row of the
block), and in a sparse linear layer the ``G`` weights of a kept column are one contiguous vector. The compiler
does not trust the pruner: ``detect`` tries every candidate ``G``, takes per block the union of its rows'
non-zero columns (rows kept by one row but not another become explicit zeros inside the dense ``G x k`` block),
and keeps the ``G`` of least modelled cost (padded MACs plus a per-column index overhead).

Layout (``BlockSparse``): block ``b`` holds rows ``b*G .. b*G+G-1`` (the last block's rows past ``O`` are
zero padding); its kept columns are ``cols[offsets[b]:offsets[b+1]]`` (ascending) and the weight of row
``b*G + g`` at its ``j``-th kept column is ``values[(offsets[b] + j) * G + g]``: column-major inside a block,
so the weights stream in the order the kernels read them.

numpy only: the pruning side, the compiler and the tests all read this format.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import TvmPatternError

__all__ = ["AUTO", "GROUPS", "INDEX_COST", "KERNEL_BLOCK", "KERNEL_BLOCK_MIN_CHANNELS", "BlockSparse", "as_matrix",
           "block_columns", "cost", "detect", "kernel_block_of", "pack", "unpack"]

GROUPS = (16, 8, 4, 2, 1)  # candidate block heights, tried by ``detect``
INDEX_COST = 2.0  # modelled cost of one kept column's index and loop step, in MACs per output position
# 3x3 convs: filters per block sharing their kept input channels (kernel connectivity). The pruner's default,
# "auto", blocks of KERNEL_BLOCK (the sparse Winograd kernel's 6-filter register block) for convs of at least
# KERNEL_BLOCK_MIN_CHANNELS input channels, the narrowest the compiler runs as sparse Winograd
# (``schedules.winograd``); narrower convs keep their kernels one by one, the finer (more accurate) structure.
KERNEL_BLOCK = 6
KERNEL_BLOCK_MIN_CHANNELS = 256
AUTO = "auto"


def kernel_block_of(setting: int | str, in_channels: int) -> int:
    """The filter block a 3x3 conv of ``in_channels`` inputs is pruned in, for a ``kernel_block`` setting (an int,
    or ``"auto"``: see ``KERNEL_BLOCK``)."""
    if setting != AUTO:
        return int(setting)
    return KERNEL_BLOCK if in_channels >= KERNEL_BLOCK_MIN_CHANNELS else 1


@dataclass(frozen=True)
class BlockSparse:
    """An (O, I) weight as blocks of ``group`` output rows sharing their kept columns (see the module doc)."""

    out_features: int
    in_features: int
    group: int
    offsets: np.ndarray  # (nblocks + 1,) int32 CSR pointer over blocks
    cols: np.ndarray  # (ncols,) int32 kept input column of each (block, column) entry
    values: np.ndarray  # (ncols * group,) float32, column-major within each block

    @property
    def blocks(self) -> int:
        return len(self.offsets) - 1

    @property
    def kept(self) -> np.ndarray:
        """(nblocks,) kept columns per block."""
        return np.diff(self.offsets)

    @property
    def stored(self) -> int:
        """Weights stored, padding zeros included (= MACs per output position)."""
        return int(self.offsets[-1]) * self.group

    @property
    def density(self) -> float:
        """Stored weights / dense weights: the fraction of a dense layer's MACs the sparse kernel does."""
        return self.stored / max(1, self.out_features * self.in_features)

    def block_weights(self, b: int) -> np.ndarray:
        """Block ``b``'s dense (group, kept) weights."""
        lo, hi = int(self.offsets[b]), int(self.offsets[b + 1])
        return self.values[lo * self.group:hi * self.group].reshape(hi - lo, self.group).T


def as_matrix(weight: np.ndarray) -> np.ndarray:
    """A linear (O, I) or 1x1 conv (O, C, 1, 1) weight as an (O, I) float32 matrix."""
    w = np.asarray(weight)
    if w.ndim == 4 and w.shape[2:] == (1, 1):
        w = w.reshape(w.shape[0], w.shape[1])
    if w.ndim != 2 or min(w.shape) < 1:
        raise TvmPatternError(f"weight must be (O, I) or (O, C, 1, 1) with positive sizes, got shape {w.shape}")
    return np.ascontiguousarray(w, dtype=np.float32)


def block_columns(mask: np.ndarray, group: int) -> np.ndarray:
    """(nblocks, I) bool: the union of the non-zero columns of each block of ``group`` rows."""
    o, i = mask.shape
    nb = -(-o // group)
    padded = np.zeros((nb * group, i), bool)
    padded[:o] = mask
    return padded.reshape(nb, group, i).any(axis=1)


def cost(mask: np.ndarray, group: int, index_cost: float = INDEX_COST) -> float:
    """Modelled work per output position of blocks of ``group`` rows: padded MACs + per-column overhead."""
    kept = block_columns(mask, group).sum(axis=1)
    return float((kept * (group + index_cost)).sum())


def _check_group(group: int) -> int:
    group = int(group)
    if group < 1:
        raise TvmPatternError(f"block height (group) must be >= 1, got {group}")
    return group


def detect(weight: np.ndarray, groups: Sequence[int] = GROUPS, index_cost: float = INDEX_COST) -> int:
    """The candidate block height of least modelled ``cost`` for the zeros of ``weight`` (ties: the larger G)."""
    if not groups:
        raise TvmPatternError("no candidate block heights (groups) given")
    mask = as_matrix(weight) != 0
    ranked = sorted((cost(mask, _check_group(g), index_cost), -int(g)) for g in groups)
    return -ranked[0][1]


def pack(weight: np.ndarray, group: int | None = None, groups: Sequence[int] = GROUPS,
         index_cost: float = INDEX_COST) -> BlockSparse:
    """``weight`` (O, I) or (O, C, 1, 1) in blocks of ``group`` rows (None: ``detect`` picks it)."""
    w = as_matrix(weight)
    group = detect(w, groups, index_cost) if group is None else _check_group(group)
    o, i = w.shape
    keep = block_columns(w != 0, group)
    nb = keep.shape[0]
    padded = np.zeros((nb * group, i), np.float32)
    padded[:o] = w
    offsets = np.zeros(nb + 1, np.int32)
    offsets[1:] = np.cumsum(keep.sum(axis=1))
    blk, cols = np.nonzero(keep)  # row-major: blocks in order, columns ascending within each
    values = padded.reshape(nb, group, i)[blk, :, cols]  # (ncols, group)
    return BlockSparse(o, i, group, offsets, cols.astype(np.int32), np.ascontiguousarray(values.reshape(-1)))


def unpack(packed: BlockSparse) -> np.ndarray:
    """The dense (O, I) weight back (exact)."""
    g, nb = packed.group, packed.blocks
    dense = np.zeros((nb, g, packed.in_features), np.float32)
    blk = np.repeat(np.arange(nb), packed.kept)
    dense[blk, :, packed.cols] = packed.values.reshape(-1, g)
    return dense.reshape(nb * g, packed.in_features)[:packed.out_features]
