"""One-shot pruning (no training): project a model's weights onto the sparsity structures, per layer type.

The "what speed would I get" tool: run it on a trained (or random) torch model or ONNX file before spending
GPU-days on ADMM. The structures are the sparsifier's (``projection``); the recipes:

* ``compression=8``: regular 3x3 convs keep one of 8 four-tap patterns extracted from the model's own kernels
  (2.25x) and 1/3.6 of their kernels (8x in all), in blocks of ``kernel_block`` filters sharing their kept input
  channels (``projection.connectivity_mask``; "auto": 6 for convs of at least 256 input channels, else 1);
  1x1 convs and linear layers 1/8 of their input columns in blocks of ``block`` output channels; depthwise
  3x3 convs one library pattern per channel (2.25x, the most a 3x3 depthwise kernel gives with four taps).
* ``compression=2.25``: patterns only for the 3x3 and depthwise convs, and 1x1 / linear at 2.25x, so the
  number means the same for every layer type.

The first conv and the classifier's last layer (the last layer, if linear or 1x1) stay dense; so do convs of
other shapes (7x7, grouped, dilated). ``prune_only`` limits pruning to some layer types (e.g. ``{"conv3x3"}``,
as the issue-11 figures were made). Both entry points return a report: the library and every layer with its
type, density and, if dense, why.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import ModelError, TvmPatternError
from ..sparsity.blocks import AUTO
from ..sparsity.library import PatternLibrary, candidate_patterns
from .projection import (
    Block,
    check_block,
    check_kernel_block,
    kept_columns,
    kept_kernels,
    project_block,
    project_connectivity,
    project_patterns,
)
from .sparsifier import CLASSIFIER_TYPES, layer_types

TYPES = ("conv3x3", "depthwise", "pointwise", "linear")
COMPRESSIONS = (2.25, 8.0)
CONNECTIVITY_8X = 3.6  # 3x3 at 8x: 9 -> 4 taps (2.25x) times 3.6x of the kernels


@dataclass(frozen=True)
class Recipe:
    """The rates of one compression: 3x3 kernel connectivity (None = patterns only) and the 1x1 / linear alpha."""

    compression: float
    connectivity: float | None
    alpha: float
    block: Block
    types: frozenset[str]
    kernel_block: int | str = AUTO

    @classmethod
    def of(cls, compression: float, block: Block = 4, prune_only: Collection[str] | None = None,
           kernel_block: int | str = AUTO) -> Recipe:
        compression = float(compression)
        if compression not in COMPRESSIONS:
            raise TvmPatternError(f"compression must be 2.25 or 8, got {compression:g}")
        types = frozenset(TYPES if prune_only is None else prune_only)
        unknown = sorted(types - set(TYPES))
        if unknown or not types:
            raise TvmPatternError(f"prune_only: unknown layer type(s) {unknown}; choose from {list(TYPES)}")
        connectivity = CONNECTIVITY_8X if compression == 8.0 else None
        return cls(compression, connectivity, compression, check_block(block), types,
                   check_kernel_block(kernel_block))

    def project(self, kind: str, weight: torch.Tensor, patterns: torch.Tensor) -> torch.Tensor:
        """``weight`` (torch layout: (O, I, kh, kw) or (O, I)) projected onto ``kind``'s structure."""
        if kind in ("conv3x3", "depthwise"):
            pruned = project_patterns(weight, patterns)
            if kind == "conv3x3" and self.connectivity is not None:
                total = weight.shape[0] * weight.shape[1]
                pruned = project_connectivity(pruned, kept_kernels(total, self.connectivity), self.kernel_block)
            return pruned
        return project_block(weight, kept_columns(tuple(weight.shape), self.alpha, self.block), self.block)


def library_of(kernels: list[np.ndarray], k: int = 8, n: int = 4) -> PatternLibrary:
    """The ``k`` most frequent best-fitting patterns of ``kernels`` (each (..., 3, 3)); candidates if none."""
    flat = [np.asarray(w, np.float32).reshape(-1, 3, 3) for w in kernels]
    if not flat:
        return PatternLibrary(candidate_patterns(n)[:k])
    return PatternLibrary.extract(np.concatenate(flat), k=k, n=n)


def prune_layers(
    layers: list[tuple[str, str, str | None, np.ndarray]],
    recipe: Recipe,
    write: Callable[[str, np.ndarray], None],
    patterns: int = 8,
) -> dict:
    """Prune ``(name, type, why dense or None, weight in torch layout)`` layers; ``write(name, pruned)`` each.

    Shared by the torch and ONNX paths, so both prune the same weights to the same values. Returns the report.
    """
    chosen = [(name, kind, why if why is not None else _not_chosen(kind, recipe), w) for name, kind, why, w in layers]
    pattern_kernels = [w for _, kind, why, w in chosen if why is None and kind in ("conv3x3", "depthwise")]
    library = library_of(pattern_kernels, k=patterns)
    taps = torch.as_tensor(library.patterns)
    rows = []
    for name, kind, why, w in chosen:
        row = {"name": name, "type": kind, "shape": list(w.shape), "weights": int(w.size), "pruned": why is None}
        if why is None:
            w = recipe.project(kind, torch.from_numpy(np.ascontiguousarray(w)), taps).numpy()
            write(name, w)
        else:
            row["reason"] = why
        row["nonzeros"] = int(np.count_nonzero(w))
        row["density"] = row["nonzeros"] / max(1, w.size)
        if w.ndim == 4:
            row["kept_kernels"] = int(np.any(w.reshape(w.shape[0] * w.shape[1], -1) != 0, axis=1).sum())
            row["total_kernels"] = w.shape[0] * w.shape[1]
        rows.append(row)
    if not any(row["pruned"] for row in rows):
        found = "; ".join(f"{r['name']}: {r['reason']}" for r in rows) or "no conv or linear layer at all"
        raise ModelError(f"nothing to prune one-shot ({found})")
    body = [r for r in rows if not r.get("reason", "").startswith("classifier's last")]
    density = sum(r["nonzeros"] for r in body) / max(1, sum(r["weights"] for r in body))
    return {"compression": recipe.compression, "block": recipe.block, "kernel_block": recipe.kernel_block,
            "types": sorted(recipe.types),
            "patterns": library.to_json()["patterns"], "density_but_last": density, "layers": rows}  # fmt: skip


def _not_chosen(kind: str, recipe: Recipe) -> str | None:
    return None if kind in recipe.types else f"{kind} not pruned (prune_only={sorted(recipe.types)})"


# ---------------------------------------------------------------------------------------------- torch


def prune_torch(
    model: nn.Module,
    compression: float = 8,
    *,
    block: Block = 4,
    prune_only: Collection[str] | None = None,
    patterns: int = 8,
    skip_first: bool = True,
    skip_last: bool = True,
    kernel_block: int | str = AUTO,
) -> dict:
    """Prune ``model`` in place, one-shot, to the ``compression`` recipe (see the module docstring)."""
    recipe = Recipe.of(compression, block, prune_only, kernel_block)
    modules = dict(model.named_modules())
    layers = [(name, kind, why, modules[name].weight.detach().float().cpu().numpy())
              for name, (kind, why) in layer_types(model, skip_first, skip_last).items()]  # fmt: skip

    def write(name: str, pruned: np.ndarray) -> None:
        weight = modules[name].weight
        with torch.no_grad():
            weight.copy_(torch.from_numpy(pruned).to(weight.device, weight.dtype))

    return prune_layers(layers, recipe, write, patterns)


# ---------------------------------------------------------------------------------------------- ONNX


def prune_onnx(
    path_in: str | os.PathLike,
    path_out: str | os.PathLike,
    compression: float = 8,
    *,
    block: Block = 4,
    prune_only: Collection[str] | None = None,
    patterns: int = 8,
    skip_first: bool = True,
    skip_last: bool = True,
    kernel_block: int | str = AUTO,
) -> dict:
    """Prune the conv / Gemm / MatMul weights (initialisers) of an ONNX file one-shot; write it to ``path_out``.

    Everything is checked and pruned in memory, then written to a temporary file next to ``path_out`` and
    renamed, so an error leaves nothing behind (and an existing ``path_out`` untouched).
    """
    recipe = Recipe.of(compression, block, prune_only, kernel_block)
    path_in, path_out = Path(path_in), Path(path_out)
    if not path_out.parent.is_dir():
        raise TvmPatternError(f"cannot write {path_out}: no folder {path_out.parent}")
    model = load_onnx(path_in)
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    found = onnx_layers(model, skip_first, skip_last)
    layers = [(name, kind, why, w) for name, kind, why, w, _ in found]
    to_onnx = {name: back for name, *_, back in found}

    def write(name: str, pruned: np.ndarray) -> None:
        tensor = inits[name]
        value = to_onnx[name](pruned).astype(numpy_helper.to_array(tensor).dtype)
        tensor.CopyFrom(numpy_helper.from_array(value, name))

    report = prune_layers(layers, recipe, write, patterns)
    save_onnx_atomic(model, path_out)
    report["onnx"] = str(path_out)
    return report


def load_onnx(path: Path):
    """The ONNX model at ``path``, with a clear error if it is missing or not ONNX."""
    import onnx

    if not path.is_file():
        raise TvmPatternError(f"ONNX model {path} does not exist")
    try:
        model = onnx.load(str(path))
        onnx.checker.check_model(model)
    except Exception as err:
        raise TvmPatternError(f"{path} is not a valid ONNX model ({type(err).__name__}: {err})") from err
    return model


def onnx_layers(model, skip_first: bool = True, skip_last: bool = True) -> list[tuple]:
    """Per weighted Conv / Gemm / MatMul node in graph order: (initialiser name, type, why dense or None, weight
    in torch layout, function from torch layout back to the initialiser's)."""
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    out, seen = [], set()
    for node in model.graph.node:
        if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2 or node.input[1] not in inits:
            continue
        name = node.input[1]
        if name in seen:
            continue  # a weight shared by two nodes is pruned once
        seen.add(name)
        w = numpy_helper.to_array(inits[name]).astype(np.float32)
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if node.op_type == "Conv":
            kind, why = _onnx_conv_type(w, attrs)
            out.append((name, kind, why, w, lambda v: v))
        elif w.ndim != 2:
            out.append((name, "linear", f"{node.op_type} weight of rank {w.ndim}", w, lambda v: v))
        elif node.op_type == "Gemm" and attrs.get("transB", 0):
            out.append((name, "linear", None, w, lambda v: v))  # (N, K): already (out, in)
        else:
            out.append((name, "linear", None, np.ascontiguousarray(w.T), lambda v: np.ascontiguousarray(v.T)))
    first = next((i for i, row in enumerate(out) if row[3].ndim == 4), None)
    for index, (name, kind, why, w, back) in enumerate(out):
        if why is None and skip_first and index == first:
            out[index] = (name, kind, "first layer (kept dense by default)", w, back)
        elif why is None and skip_last and index == len(out) - 1 and kind in CLASSIFIER_TYPES:
            out[index] = (name, kind, "classifier's last layer (kept dense by default)", w, back)
    return out


def _onnx_conv_type(w: np.ndarray, attrs: dict) -> tuple[str, str | None]:
    """The layer type of an ONNX Conv from its weight (O, I/groups, kh, kw) and attributes (as ``layer_type``)."""
    groups = int(attrs.get("group", 1))
    kernel = tuple(w.shape[2:])
    if w.ndim != 4:
        return "conv", f"{w.ndim - 2}-d conv"
    if any(d != 1 for d in attrs.get("dilations", [1, 1])):
        return "conv", f"dilation {tuple(attrs['dilations'])}"
    if kernel == (3, 3) and groups == 1:
        return "conv3x3", None
    if kernel == (3, 3) and groups == w.shape[0] and w.shape[1] == 1:
        return "depthwise", None
    if kernel == (1, 1) and groups == 1:
        return "pointwise", None
    if groups != 1:
        return "conv", f"grouped (groups={groups})"
    return "conv", f"kernel {kernel[0]}x{kernel[1]}, not 3x3"


def save_onnx_atomic(model, path: Path) -> None:
    """Write ``model`` to a temporary file next to ``path``, check it, then rename it over ``path``."""
    import onnx

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        onnx.save(model, tmp)
        onnx.checker.check_model(tmp)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


__all__ = ["COMPRESSIONS", "TYPES", "Recipe", "library_of", "onnx_layers", "prune_layers", "prune_onnx",
           "prune_torch"]  # fmt: skip
