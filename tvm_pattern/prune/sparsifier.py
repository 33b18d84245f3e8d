"""Extended-ADMM pruning of a model's convolutions and linear layers, one structure per layer type.

Shaped like ``torch.ao.pruning`` sparsifiers: configure, ``prepare(model)``, call
``step()`` while training (with ``penalty()`` added to the loss), then
``apply_masks()`` for masked retraining and ``squash_mask()`` to make it final.

The structures (``projection``): regular 3x3 convs keep a library pattern per kernel and, at rate
``connectivity``, 1/alpha of their kernels; depthwise 3x3 convs (``depthwise_patterns``) a library pattern
per channel; 1x1 convs (``pointwise``) and linear layers (``linear``) 1/alpha of their input columns, shared
by blocks of ``block`` output channels (or ``"unstructured"``). The first conv and the classifier's last
layer stay dense by default.

ADMM (PatDNN): minimise loss(W) + rho/2 ||W - Z + U||^2 + rho/2 ||W - Y + V||^2, where
Z is the projection of W + U onto the layer's first set (patterns, or block connectivity) and Y that of
W + V onto the kernel-connectivity set (3x3 convs only); the duals U, V accumulate the gaps, and rho grows
step by step.

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
from ..sparsity.blocks import AUTO, kernel_block_of
from ..sparsity.library import PatternLibrary
from . import distributed
from .projection import (
    Block,
    block_mask,
    check_alpha,
    check_block,
    check_kernel_block,
    connectivity_mask,
    kept_columns,
    kept_kernels,
    pattern_mask,
)

Connectivity = float | None | Mapping[str, float | None]
Rate = Connectivity  # alpha for every layer of a type, None for none, or per layer name
PRUNABLE = (nn.Conv2d, nn.Linear)
# layer type -> the option that prunes it (named in the report of a layer left dense)
OPTIONS = {"pointwise": "--pointwise ALPHA", "linear": "--linear ALPHA", "depthwise": "--depthwise-patterns"}


@dataclass
class PrunedLayer:
    """ADMM state of one pruned layer: auxiliary variables Z, Y and scaled duals U, V.

    ``keep``: for a 3x3 conv, the kernels kept by connectivity (None = patterns only); for a 1x1 conv or a
    linear layer, the input columns each block keeps (entries of the layer if unstructured); None for depthwise.
    """

    name: str
    module: nn.Module
    keep: int | None
    z: torch.Tensor = field(repr=False)
    u: torch.Tensor = field(repr=False)
    y: torch.Tensor | None = field(default=None, repr=False)
    v: torch.Tensor | None = field(default=None, repr=False)
    kind: str = "conv3x3"


PrunedConv = PrunedLayer  # the name before 1x1 / linear / depthwise layers were pruned too


def layer_type(module: nn.Module) -> str:
    """``conv3x3``, ``depthwise``, ``pointwise``, ``linear``, or ``conv`` (any other conv: 7x7, grouped, ...)."""
    if isinstance(module, nn.Linear):
        return "linear"
    if module.dilation != (1, 1):
        return "conv"
    if module.kernel_size == (3, 3) and module.groups == 1:
        return "conv3x3"
    if module.kernel_size == (3, 3) and module.groups == module.in_channels == module.out_channels:
        return "depthwise"
    if module.kernel_size == (1, 1) and module.groups == 1:
        return "pointwise"
    return "conv"


CLASSIFIER_TYPES = ("linear", "pointwise")  # layer types a network's last layer can be a classifier of


def layer_types(model: nn.Module, skip_first: bool = True, skip_last: bool = True) -> dict[str, tuple[str, str | None]]:
    """Every conv and linear layer of ``model`` by name: (type, None if its type's structure applies, else why not).

    The last conv or linear layer (in module order) is taken as the classifier's last layer when it is a linear
    layer or a 1x1 conv: it produces the logits, and pruning it costs accuracy for few weights. A network that
    ends on a 3x3 conv (a feature extractor) has no classifier, and that conv is pruned like the others.
    """
    named = [(n, m) for n, m in model.named_modules() if isinstance(m, PRUNABLE)]
    first = next((i for i, (_, m) in enumerate(named) if isinstance(m, nn.Conv2d)), None)
    out: dict[str, tuple[str, str | None]] = {}
    for index, (name, module) in enumerate(named):
        kind = layer_type(module)
        why = _why_dense(module) if kind == "conv" else None
        if index == first and skip_first and why is None:
            why = "first layer (kept dense by default)"
        elif index == len(named) - 1 and skip_last and why is None and kind in CLASSIFIER_TYPES:
            why = "classifier's last layer (kept dense by default)"
        out[name] = (kind, why)
    return out


def conv_eligibility(model: nn.Module, skip_first: bool = True, skip_last: bool = False) -> dict[str, str | None]:
    """Every conv of ``model`` by name: None if it can be pattern-pruned as a regular 3x3 conv, else why not."""
    modules = dict(model.named_modules())
    out = {}
    for name, (kind, why) in layer_types(model, skip_first, skip_last).items():
        if isinstance(modules[name], nn.Conv2d):
            out[name] = why if kind == "conv3x3" else _why_dense(modules[name])
    return out


def _why_dense(conv: nn.Conv2d) -> str:
    if conv.dilation != (1, 1):
        return f"dilation {conv.dilation}"
    if conv.groups != 1:
        kind = "depthwise" if conv.groups == conv.in_channels else "grouped"
        return f"{kind} (groups={conv.groups})"
    return f"kernel {conv.kernel_size[0]}x{conv.kernel_size[1]}, not 3x3"


class PatternSparsifier:
    """Prunes every eligible layer to its type's structure (see the module docstring).

    Args:
        library: the patterns a 3x3 (or depthwise) kernel may keep.
        connectivity: alpha, keep 1/alpha of each 3x3 conv's kernels; None for patterns only;
            or a mapping from conv name to alpha (None there = patterns only for that conv).
        rho: initial ADMM penalty; multiplied by ``rho_growth`` at each ``step()`` up to ``rho_max``.
        skip_first: keep the model's first conv dense (PatDNN does; it has few input channels).
        pointwise, linear: alpha for the 1x1 convs / linear layers (keep 1/alpha of the input columns per
            block); None leaves them dense; a mapping gives per-layer rates (unlisted layers stay dense).
        depthwise_patterns: prune depthwise 3x3 convs to library patterns.
        block: output channels sharing their kept input columns (1x1 and linear), or ``"unstructured"``.
        skip_last: keep the classifier's last layer dense.
        kernel_block: 3x3 connectivity: filters in blocks of this many keep the same input channels (1: each
            its own kernels), which the sparse Winograd kernel runs; ``"auto"``: blocks of 6 for convs of at
            least 256 input channels, else 1 (``sparsity.blocks.kernel_block_of``).
    """

    def __init__(
        self,
        library: PatternLibrary,
        connectivity: Connectivity = 3.6,
        rho: float = 1e-3,
        rho_growth: float = 1.5,
        rho_max: float = 1.0,
        skip_first: bool = True,
        *,
        pointwise: Rate = None,
        linear: Rate = None,
        depthwise_patterns: bool = False,
        block: Block = 4,
        skip_last: bool = True,
        kernel_block: int | str = AUTO,
    ) -> None:
        for rate in (connectivity, pointwise, linear):
            for alpha in _alphas(rate):
                check_alpha(alpha)  # before anything changes
        check_block(block)
        self.kernel_block = check_kernel_block(kernel_block)
        if rho <= 0 or rho_growth < 1:
            raise PatternError(f"need rho > 0 and rho_growth >= 1, got rho={rho}, rho_growth={rho_growth}")
        self.library = library
        self.connectivity = connectivity
        self.rates: dict[str, Rate] = {"pointwise": pointwise, "linear": linear}
        self.depthwise_patterns, self.block = depthwise_patterns, block
        self.rho, self.rho_growth, self.rho_max = rho, rho_growth, rho_max
        self.skip_first, self.skip_last = skip_first, skip_last
        self.layers: list[PrunedLayer] = []
        self.skipped: dict[str, str] = {}
        self._patterns = torch.from_numpy(library.patterns)

    def plan(self, model: nn.Module) -> dict[str, tuple[str, str | None]]:
        """Every conv and linear layer by name: (type, None if this sparsifier prunes it, else why not)."""
        out = {}
        for name, (kind, why) in layer_types(model, self.skip_first, self.skip_last).items():
            if why is None and kind == "depthwise" and not self.depthwise_patterns:
                why = f"depthwise patterns not asked for ({OPTIONS['depthwise']})"
            elif why is None and kind in self.rates and self._rate(kind, name) is None:
                why = f"no {kind} rate given ({OPTIONS[kind]})"
            out[name] = (kind, why)
        return out

    def prepare(self, model: nn.Module, allow_empty: bool = False) -> PatternSparsifier:
        """Pick the prunable layers of ``model`` and start ADMM from its current weights."""
        plan = self.plan(model)
        self.skipped = {name: why for name, (_, why) in plan.items() if why is not None}
        if not allow_empty and all(why is not None for _, why in plan.values()):
            found = "; ".join(f"{n}: {w}" for n, w in self.skipped.items()) or "no Conv2d or Linear at all"
            raise ModelError(f"the model has no layer to prune ({found})")
        for kind, rate in (("conv3x3", self.connectivity), *self.rates.items()):
            if isinstance(rate, Mapping):
                unknown = set(rate) - {n for n, (k, _) in plan.items() if k == kind}
                if unknown:
                    raise ModelError(f"rates given for {kind} layers that do not exist: {sorted(unknown)}")
        modules = dict(model.named_modules())
        self.layers = [self._init_layer(name, kind, modules[name]) for name, (kind, why) in plan.items() if why is None]
        return self

    def _rate(self, kind: str, name: str) -> float | None:
        rate = self.connectivity if kind == "conv3x3" else self.rates.get(kind)
        return rate.get(name) if isinstance(rate, Mapping) else rate

    def _init_layer(self, name: str, kind: str, module: nn.Module) -> PrunedLayer:
        w = module.weight.detach()
        alpha = self._rate(kind, name) if kind != "depthwise" else None
        if kind == "conv3x3":
            keep = None if alpha is None else kept_kernels(w.shape[0] * w.shape[1], alpha)
        else:
            keep = None if alpha is None else kept_columns(tuple(w.shape), alpha, self.block)
        layer = PrunedLayer(name, module, keep, z=w.clone(), u=torch.zeros_like(w), kind=kind)
        if kind == "conv3x3" and keep is not None:
            layer.y, layer.v = w.clone(), torch.zeros_like(w)
        self._project(layer)
        return layer

    def _follow(self, layer: PrunedLayer) -> None:
        """Move the layer's ADMM state to its weight's device (the model may have moved since prepare)."""
        device = layer.module.weight.device
        if layer.z.device != device:
            layer.z, layer.u = layer.z.to(device), layer.u.to(device)
            if layer.y is not None:
                layer.y, layer.v = layer.y.to(device), layer.v.to(device)

    def _tensors(self) -> list[torch.Tensor]:
        return [t for layer in self.layers for t in (layer.z, layer.u, layer.y, layer.v) if t is not None]

    def state_dict(self) -> dict:
        """The ADMM state (rho, blocks; per layer its type, Z, U, Y, V and kept count), on the CPU, for checkpoints."""
        return {
            "rho": self.rho,
            "block": self.block,
            "kernel_block": self.kernel_block,
            "layers": {
                layer.name: {"keep": layer.keep, "kind": layer.kind, "z": _copy(layer.z), "u": _copy(layer.u),
                             "y": _copy(layer.y), "v": _copy(layer.v)}
                for layer in self.layers
            },
        }  # fmt: skip

    def load_state_dict(self, state: dict) -> None:
        """Restore ``state_dict()`` after ``prepare`` on a model of the same shape (tensors go to its device)."""
        names = [layer.name for layer in self.layers]
        if sorted(state["layers"]) != sorted(names):
            raise ModelError(f"ADMM state for layers {sorted(state['layers'])}, the sparsifier prunes {sorted(names)}")
        if state.get("block", self.block) != self.block:
            raise ModelError(f"ADMM state made with block {state['block']!r}, the sparsifier has {self.block!r}")
        saved_block = state.get("kernel_block", 1)  # states from before kernel blocks: per kernel
        for layer in self.layers:
            channels = layer.module.weight.shape[1]
            if layer.y is not None and kernel_block_of(saved_block, channels) != kernel_block_of(self.kernel_block,
                                                                                                  channels):
                raise ModelError(f"ADMM state made with kernel_block {saved_block!r}, the sparsifier has "
                                 f"{self.kernel_block!r}: {layer.name!r} would change structure")  # fmt: skip
        for layer in self.layers:
            saved, device = state["layers"][layer.name], layer.module.weight.device
            if (saved["keep"] != layer.keep or saved.get("kind", "conv3x3") != layer.kind
                    or tuple(saved["z"].shape) != tuple(layer.z.shape)):  # fmt: skip
                raise ModelError(f"ADMM state for {layer.name!r} does not fit: type, shape or kept count differ")
            layer.z, layer.u = _copy(saved["z"], device), _copy(saved["u"], device)
            layer.y, layer.v = _copy(saved["y"], device), _copy(saved["v"], device)
        self.rho = float(state["rho"])

    def _first_mask(self, layer: PrunedLayer, w: torch.Tensor) -> torch.Tensor:
        """The mask of the layer's first set: patterns (3x3, depthwise) or block connectivity (1x1, linear)."""
        if layer.kind in ("conv3x3", "depthwise"):
            return pattern_mask(w, self._patterns)
        return block_mask(w, layer.keep, self.block)

    def _project(self, layer: PrunedLayer) -> None:
        self._follow(layer)
        w = layer.module.weight.detach()
        layer.z = (w + layer.u) * self._first_mask(layer, w + layer.u)
        if layer.y is not None:
            layer.y = (w + layer.v) * connectivity_mask(w + layer.v, layer.keep, self.kernel_block)

    def penalty(self) -> torch.Tensor:
        """rho/2 (||W - Z + U||^2 + ||W - Y + V||^2) summed over layers: add it to the loss."""
        total = torch.zeros((), device=self.layers[0].module.weight.device if self.layers else None)
        for layer in self.layers:
            self._follow(layer)
            w = layer.module.weight
            total = total + (w - layer.z + layer.u).square().sum()
            if layer.y is not None:
                total = total + (w - layer.y + layer.v).square().sum()
        return 0.5 * self.rho * total

    @torch.no_grad()
    def step(self) -> None:
        """One ADMM round: project onto the sets, update the duals, raise rho."""
        for layer in self.layers:
            self._project(layer)
            w = layer.module.weight
            layer.u += w - layer.z
            if layer.y is not None:
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
            worst = max(worst, float((w - w * self._first_mask(layer, w)).norm()) / norm)
            if layer.y is not None:
                worst = max(worst, float((w - w * connectivity_mask(w, layer.keep, self.kernel_block)).norm()) / norm)
        return worst

    @torch.no_grad()
    def compute_masks(self) -> dict[str, torch.Tensor]:
        """Hard masks from the current weights: the first set's (best patterns, or block columns), then the top
        kernels of a 3x3 conv with connectivity."""
        masks = {}
        for layer in self.layers:
            w = _dense_weight(layer.module)
            mask = self._first_mask(layer, w)
            if layer.y is not None:
                mask = mask & connectivity_mask(w * mask, layer.keep, self.kernel_block)
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
    """Hold pruning ``masks`` (layer name -> bool, the weight's shape) on ``model`` via ``torch.nn.utils.prune``.

    Everything is checked before anything changes, so a bad mask leaves the model as it was.
    """
    modules = dict(model.named_modules())
    for name, mask in masks.items():
        module = modules.get(name)
        if not isinstance(module, PRUNABLE):
            raise ModelError(f"mask for {name!r}, but the model has no Conv2d or Linear of that name")
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
        if isinstance(module, PRUNABLE) and prune.is_pruned(module):
            prune.remove(module, "weight")


def mask_optimizer(optimizer: torch.optim.Optimizer, model: nn.Module) -> torch.utils.hooks.RemovableHandle:
    """After every ``optimizer.step()``, zero pruned entries of the raw weights and of the optimiser state.

    ``torch.nn.utils.prune`` already keeps the effective weight exactly zero; this also keeps
    ``weight_orig``, momentum and Adam moments at zero there, so nothing stale revives later.
    """
    held = [
        (m.weight_orig, m.weight_mask) for m in model.modules() if isinstance(m, PRUNABLE) and prune.is_pruned(m)
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


def _dense_weight(module: nn.Module) -> torch.Tensor:
    return (module.weight_orig * module.weight_mask if prune.is_pruned(module) else module.weight).detach()


def _alphas(connectivity: Connectivity) -> Iterable[float]:
    values = connectivity.values() if isinstance(connectivity, Mapping) else [connectivity]
    return [a for a in values if a is not None]
