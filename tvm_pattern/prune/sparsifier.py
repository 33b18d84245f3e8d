"""Extended-ADMM pattern and connectivity pruning of a model's 3x3 convolutions.

Shaped like ``torch.ao.pruning`` sparsifiers: configure, ``prepare(model)``, call
``step()`` while training (with ``penalty()`` added to the loss), then
``apply_masks()`` for masked retraining and ``squash_mask()`` to make it final.

ADMM (PatDNN): minimise loss(W) + rho/2 ||W - Z + U||^2 + rho/2 ||W - Y + V||^2, where
Z is the projection of W + U onto the pattern set and Y that of W + V onto the
connectivity set; the duals U, V accumulate the gaps, and rho grows step by step.

The state (Z, Y, U, V) lives on the device of the model's weights and follows it if the model moves.
Under ``torch.distributed`` every rank computes the same projections from the same (DDP-synchronised)
weights, and ``step()`` / ``compute_masks()`` then broadcast rank 0's results, so the ADMM state and the
masks are identical on every rank by construction, not by floating-point luck.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch
from torch import nn
from torch.nn.utils import prune

from ..errors import ModelError, PatternError
from ..sparsity.library import PatternLibrary
from . import distributed
from .projection import check_alpha, connectivity_mask, kept_kernels, pattern_mask

Connectivity = float | None | Mapping[str, float | None]


@dataclass
class PrunedConv:
    """ADMM state of one prunable conv: auxiliary variables Z, Y and scaled duals U, V."""

    name: str
    module: nn.Conv2d
    keep: int | None  # kernels kept by connectivity pruning; None = patterns only
    z: torch.Tensor = field(repr=False)
    u: torch.Tensor = field(repr=False)
    y: torch.Tensor | None = field(default=None, repr=False)
    v: torch.Tensor | None = field(default=None, repr=False)


def conv_eligibility(model: nn.Module, skip_first: bool = True) -> dict[str, str | None]:
    """Every conv of ``model`` by name: None if it can be pattern-pruned, else why not."""
    out: dict[str, str | None] = {}
    for index, (name, module) in enumerate((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)):
        out[name] = _why_dense(module, first=index == 0 and skip_first)
    return out


def _why_dense(conv: nn.Conv2d, first: bool) -> str | None:
    if conv.kernel_size != (3, 3):
        return f"kernel {conv.kernel_size[0]}x{conv.kernel_size[1]}, not 3x3"
    if conv.groups != 1:
        kind = "depthwise" if conv.groups == conv.in_channels else "grouped"
        return f"{kind} (groups={conv.groups})"
    if conv.dilation != (1, 1):
        return f"dilation {conv.dilation}"
    if first:
        return "first layer (kept dense by default)"
    return None


class PatternSparsifier:
    """Prunes every eligible 3x3 conv to library patterns and, optionally, connectivity.

    Args:
        library: the patterns a kernel may keep.
        connectivity: alpha, keep 1/alpha of each layer's kernels; None for patterns only;
            or a mapping from conv name to alpha (None there = patterns only for that conv).
        rho: initial ADMM penalty; multiplied by ``rho_growth`` at each ``step()`` up to ``rho_max``.
        skip_first: keep the model's first conv dense (PatDNN does; it has few input channels).
    """

    def __init__(
        self,
        library: PatternLibrary,
        connectivity: Connectivity = 3.6,
        rho: float = 1e-3,
        rho_growth: float = 1.5,
        rho_max: float = 1.0,
        skip_first: bool = True,
    ) -> None:
        for alpha in _alphas(connectivity):
            check_alpha(alpha)  # before anything changes
        if rho <= 0 or rho_growth < 1:
            raise PatternError(f"need rho > 0 and rho_growth >= 1, got rho={rho}, rho_growth={rho_growth}")
        self.library = library
        self.connectivity = connectivity
        self.rho, self.rho_growth, self.rho_max = rho, rho_growth, rho_max
        self.skip_first = skip_first
        self.layers: list[PrunedConv] = []
        self.skipped: dict[str, str] = {}
        self._patterns = torch.from_numpy(library.patterns)

    def prepare(self, model: nn.Module) -> PatternSparsifier:
        """Pick the prunable convs of ``model`` and start ADMM from its current weights."""
        eligible = conv_eligibility(model, self.skip_first)
        self.skipped = {name: why for name, why in eligible.items() if why is not None}
        if all(why is not None for why in eligible.values()):
            found = "; ".join(f"{n}: {w}" for n, w in self.skipped.items()) or "no Conv2d at all"
            raise ModelError(f"the model has no prunable 3x3 convolution with groups=1 ({found})")
        if isinstance(self.connectivity, Mapping):
            unknown = set(self.connectivity) - set(eligible)
            if unknown:
                raise ModelError(f"connectivity given for convs that do not exist: {sorted(unknown)}")
        modules = dict(model.named_modules())
        self.layers = [self._init_layer(name, modules[name]) for name, why in eligible.items() if why is None]
        return self

    def _init_layer(self, name: str, conv: nn.Conv2d) -> PrunedConv:
        alpha = self.connectivity.get(name) if isinstance(self.connectivity, Mapping) else self.connectivity
        w = conv.weight.detach()
        keep = None if alpha is None else kept_kernels(w.shape[0] * w.shape[1], alpha)
        layer = PrunedConv(name, conv, keep, z=w.clone(), u=torch.zeros_like(w))
        if keep is not None:
            layer.y, layer.v = w.clone(), torch.zeros_like(w)
        self._project(layer)
        return layer

    def _follow(self, layer: PrunedConv) -> None:
        """Move the layer's ADMM state to its weight's device (the model may have moved since prepare)."""
        device = layer.module.weight.device
        if layer.z.device != device:
            layer.z, layer.u = layer.z.to(device), layer.u.to(device)
            if layer.y is not None:
                layer.y, layer.v = layer.y.to(device), layer.v.to(device)

    def _tensors(self) -> list[torch.Tensor]:
        return [t for layer in self.layers for t in (layer.z, layer.u, layer.y, layer.v) if t is not None]

    def state_dict(self) -> dict:
        """The ADMM state (rho; per conv Z, U, Y, V and kept kernels), on the CPU, for checkpoints."""
        return {
            "rho": self.rho,
            "layers": {
                layer.name: {"keep": layer.keep, "z": _copy(layer.z), "u": _copy(layer.u),
                             "y": _copy(layer.y), "v": _copy(layer.v)}
                for layer in self.layers
            },
        }  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict()`` after ``prepare`` on a model of the same shape (tensors go to its device)."""
        names = [layer.name for layer in self.layers]
        if sorted(state["layers"]) != sorted(names):
            raise ModelError(f"ADMM state for convs {sorted(state['layers'])}, the sparsifier prunes {sorted(names)}")
        for layer in self.layers:
            saved, device = state["layers"][layer.name], layer.module.weight.device
            if saved["keep"] != layer.keep or tuple(saved["z"].shape) != tuple(layer.z.shape):
                raise ModelError(f"ADMM state for {layer.name!r} does not fit: shape or kept kernels differ")
            layer.z, layer.u = _copy(saved["z"], device), _copy(saved["u"], device)
            layer.y, layer.v = _copy(saved["y"], device), _copy(saved["v"], device)
        self.rho = float(state["rho"])

    def _project(self, layer: PrunedConv) -> None:
        self._follow(layer)
        w = layer.module.weight.detach()
        layer.z = (w + layer.u) * pattern_mask(w + layer.u, self._patterns)
        if layer.keep is not None:
            layer.y = (w + layer.v) * connectivity_mask(w + layer.v, layer.keep)

    def penalty(self) -> torch.Tensor:
        """rho/2 (||W - Z + U||^2 + ||W - Y + V||^2) summed over layers: add it to the loss."""
        total = torch.zeros((), device=self.layers[0].module.weight.device if self.layers else None)
        for layer in self.layers:
            self._follow(layer)
            w = layer.module.weight
            total = total + (w - layer.z + layer.u).square().sum()
            if layer.keep is not None:
                total = total + (w - layer.y + layer.v).square().sum()
        return 0.5 * self.rho * total

    @torch.no_grad()
    def step(self) -> None:
        """One ADMM round: project onto both sets, update the duals, raise rho."""
        for layer in self.layers:
            self._project(layer)
            w = layer.module.weight
            layer.u += w - layer.z
            if layer.keep is not None:
                layer.v += w - layer.y
        distributed.broadcast_tensors(self._tensors())  # identical on every rank: rank 0's
        self.rho = min(self.rho * self.rho_growth, self.rho_max)

    @torch.no_grad()
    def gap(self) -> float:
        """Largest relative distance ||W - proj(W)|| / ||W|| over layers and sets: how far from sparse."""
        worst = 0.0
        for layer in self.layers:
            w = layer.module.weight.detach()
            norm = float(w.norm().clamp_min(1e-12))
            worst = max(worst, float((w - w * pattern_mask(w, self._patterns)).norm()) / norm)
            if layer.keep is not None:
                worst = max(worst, float((w - w * connectivity_mask(w, layer.keep)).norm()) / norm)
        return worst

    @torch.no_grad()
    def compute_masks(self) -> dict[str, torch.Tensor]:
        """Hard masks from the current weights: best pattern per kernel, then the top kernels."""
        masks = {}
        for layer in self.layers:
            w = _dense_weight(layer.module)
            mask = pattern_mask(w, self._patterns)
            if layer.keep is not None:
                mask = mask & connectivity_mask(w * mask, layer.keep)
            masks[layer.name] = mask
        distributed.broadcast_tensors(masks.values())
        return masks

    def apply_masks(self, model: nn.Module, masks: Mapping[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """Hard-prune: hold ``masks`` (default: ``compute_masks()``) with ``torch.nn.utils.prune``."""
        masks = dict(self.compute_masks() if masks is None else masks)
        apply_masks(model, masks)
        return masks

    def squash_mask(self, model: nn.Module) -> None:
        """Make the masks permanent: plain ``weight`` parameters with exact zeros."""
        squash_mask(model)


def apply_masks(model: nn.Module, masks: Mapping[str, torch.Tensor]) -> None:
    """Hold pruning ``masks`` (conv name -> bool (O, I, kh, kw)) on ``model`` via ``torch.nn.utils.prune``.

    Everything is checked before anything changes, so a bad mask leaves the model as it was.
    """
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        module = modules.get(name)
        if not isinstance(module, nn.Conv2d):
            raise ModelError(f"mask for {name!r}, but the model has no Conv2d of that name")
        if tuple(mask.shape) != tuple(module.weight.shape):
            raise PatternError(
                f"mask for {name!r} has shape {tuple(mask.shape)}, the weight has {tuple(module.weight.shape)}"
            )
    for name, mask in masks.items():
        module = modules[name]
        if prune.is_pruned(module):
            prune.remove(module, "weight")
        prune.custom_from_mask(module, "weight", mask.to(module.weight.device, torch.bool))


def squash_mask(model: nn.Module) -> None:
    """Fold every held mask into its weight (``prune.remove``)."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d) and prune.is_pruned(module):
            prune.remove(module, "weight")


def mask_optimizer(optimizer: torch.optim.Optimizer, model: nn.Module) -> torch.utils.hooks.RemovableHandle:
    """After every ``optimizer.step()``, zero pruned entries of the raw weights and of the optimiser state.

    ``torch.nn.utils.prune`` already keeps the effective weight exactly zero; this also keeps
    ``weight_orig``, momentum and Adam moments at zero there, so nothing stale revives later.
    """
    held = [
        (m.weight_orig, m.weight_mask) for m in model.modules() if isinstance(m, nn.Conv2d) and prune.is_pruned(m)
    ]

    def zero_pruned(opt: torch.optim.Optimizer, *_: object) -> None:
        with torch.no_grad():
            for param, mask in held:
                param.mul_(mask)
                for value in opt.state.get(param, {}).values():
                    if torch.is_tensor(value) and value.shape == param.shape:
                        value.mul_(mask)

    return optimizer.register_step_post_hook(zero_pruned)


def _copy(tensor: torch.Tensor | None, device: torch.device | str = "cpu") -> torch.Tensor | None:
    """A copy that shares no memory with ``tensor`` (``.to``/``.cpu`` alone may return the same tensor)."""
    return None if tensor is None else tensor.detach().to(device, copy=True)


def _dense_weight(conv: nn.Conv2d) -> torch.Tensor:
    return (conv.weight_orig * conv.weight_mask if prune.is_pruned(conv) else conv.weight).detach()


def _alphas(connectivity: Connectivity) -> Iterable[float]:
    values = connectivity.values() if isinstance(connectivity, Mapping) else [connectivity]
    return [a for a in values if a is not None]
