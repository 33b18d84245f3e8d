"""Pictures people would rather look at than read.

Built on ``matplotlib.figure.Figure`` without pyplot: no display or global backend is needed, and a
notebook shows the returned figures inline.
"""

from __future__ import annotations

import os

import numpy as np
from matplotlib.figure import Figure

from ..sparsity.library import PatternLibrary


def library_figure(library: PatternLibrary, title: str = "pattern library") -> Figure:
    """The library's patterns as 3x3 grids (dark = kept tap), each with how often it was the best fit."""
    fig = Figure(figsize=(1.3 * library.k, 1.8))
    axes = fig.subplots(1, library.k, squeeze=False)
    total = library.seen or sum(library.counts) or 1
    for index, ax in enumerate(axes[0]):
        ax.imshow(library.patterns[index], cmap="Greys", vmin=0, vmax=1.25)
        ax.set_xticks([])
        ax.set_yticks([])
        for edge in np.arange(-0.5, 3, 1):
            ax.axhline(edge, color="0.6", lw=0.5)
            ax.axvline(edge, color="0.6", lw=0.5)
        label = f"#{index}"
        if library.counts:
            label += f"\n{100 * library.counts[index] / total:.1f}%"
        ax.set_title(label, fontsize=8)
    covered = f", best fit of {100 * sum(library.counts) / total:.0f}% of kernels" if library.counts else ""
    fig.suptitle(f"{title}: {library.k} patterns of {library.n} taps{covered}", fontsize=9)
    fig.tight_layout()
    return fig


def kernels_figure(dense: np.ndarray, pruned: np.ndarray, count: int = 8) -> Figure:
    """The first ``count`` kernels (..., 3, 3) before and after pruning, on a shared colour scale."""
    dense, pruned = dense.reshape(-1, 3, 3)[:count], pruned.reshape(-1, 3, 3)[:count]
    scale = float(np.abs(dense).max()) or 1.0
    fig = Figure(figsize=(1.2 * len(dense), 2.8))
    axes = fig.subplots(2, len(dense), squeeze=False)
    for row, (kernels, name) in enumerate(((dense, "dense"), (pruned, "pruned"))):
        for col, kernel in enumerate(kernels):
            ax = axes[row][col]
            ax.imshow(kernel, cmap="RdBu_r", vmin=-scale, vmax=scale)
            ax.set_xticks([])
            ax.set_yticks([])
        axes[row][0].set_ylabel(name, fontsize=8)
    fig.tight_layout()
    return fig


def save(fig: Figure, path: str | os.PathLike, dpi: int = 120) -> None:
    """Save as PNG."""
    fig.savefig(path, dpi=dpi, format="png")
