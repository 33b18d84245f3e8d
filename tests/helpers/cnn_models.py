"""Test helpers: small VGG-16 / ResNet-18 (real topology, fewer channels), pattern pruning in numpy, importers.

No torchvision: plain ``nn.Module`` definitions. Widths are divided by ``div`` to keep the tests fast.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from tvm_pattern.sparsity.library import PatternLibrary, best_fit, candidate_patterns

VGG16_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


def library8() -> PatternLibrary:
    """A fixed 8-pattern, 4-entry library (PatDNN's favourite size)."""
    return PatternLibrary(candidate_patterns(4)[[0, 5, 11, 20, 27, 34, 41, 55]])


class SmallCNN(nn.Module):
    """Dense first conv, sparse convs with and without bias/ReLU, a strided conv, a 1x1 and a depthwise conv."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 16, 3, padding=1)
        self.c3 = nn.Conv2d(16, 16, 3, stride=2, padding=1, bias=False)
        self.c4 = nn.Conv2d(16, 12, 1)
        self.dw = nn.Conv2d(12, 12, 3, padding=1, groups=12)
        self.c5 = nn.Conv2d(12, 10, 3, padding=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.c1(x))
        x = torch.relu(self.c2(x))
        x = self.c3(x)
        x = torch.relu(self.dw(self.c4(x)))
        return self.c5(x)


class VGG16(nn.Module):
    """VGG-16 (13 conv3x3 + 3 FC), widths / ``div``, for ``size`` x ``size`` inputs."""

    def __init__(self, div: int = 8, size: int = 32, num_classes: int = 10) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        prev = 3
        for item in VGG16_CFG:
            if item == "M":
                layers.append(nn.MaxPool2d(2))
            else:
                layers += [nn.Conv2d(prev, item // div, 3, padding=1), nn.ReLU(inplace=True)]
                prev = item // div
        self.features = nn.Sequential(*layers)
        flat, hidden = prev * (size // 32) ** 2, 4096 // div // 8
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(flat, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
            nn.Linear(hidden, num_classes),
        )  # fmt: skip

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return torch.relu(out + (x if self.down is None else self.down(x)))


class ResNet18(nn.Module):
    """ResNet-18: 7x7/2 stem, max-pool, four stages of two basic blocks (strided 3x3 convs), widths / ``div``."""

    def __init__(self, div: int = 4, num_classes: int = 10) -> None:
        super().__init__()
        widths = [64 // div, 128 // div, 256 // div, 512 // div]
        self.stem = nn.Sequential(
            nn.Conv2d(3, widths[0], 7, stride=2, padding=3, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(),
            nn.MaxPool2d(3, stride=2, padding=1),
        )
        blocks, prev = [], widths[0]
        for stage, width in enumerate(widths):
            for index in range(2):
                blocks.append(BasicBlock(prev, width, 2 if stage > 0 and index == 0 else 1))
                prev = width
        self.blocks = nn.Sequential(*blocks)
        self.fc = nn.Linear(prev, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.stem(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def prune_weight(weight: np.ndarray, library: PatternLibrary, keep: float = 1 / 3.6) -> np.ndarray:
    """Each 3x3 kernel to its best pattern, then keep the ``keep`` fraction of kernels of largest norm.

    Rescaled so the layer's output keeps its scale (otherwise deep nets fade to zero and the test is vacuous).
    """
    o, i = weight.shape[:2]
    kernels = weight.reshape(o * i, 3, 3)
    masks = library.patterns[best_fit(kernels, library.patterns)]
    pruned = np.where(masks, kernels, 0.0)
    norms = np.linalg.norm(pruned.reshape(o * i, -1), axis=1)
    kept = max(1, round(keep * o * i))
    drop = np.argsort(-norms, kind="stable")[kept:]
    pruned[drop] = 0.0
    scale = np.sqrt(np.sum(weight**2) / max(np.sum(pruned**2), 1e-12))
    return (pruned * scale).reshape(weight.shape).astype(np.float32)


def prune_model(model: nn.Module, library: PatternLibrary, keep: float = 1 / 3.6, seed: int = 0) -> nn.Module:
    """Pattern + connectivity prune every 3x3 conv with groups=1 except the first; randomise BN stats."""
    torch.manual_seed(seed)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        for conv in convs[1:]:
            if conv.kernel_size == (3, 3) and conv.groups == 1:
                conv.weight.copy_(torch.from_numpy(prune_weight(conv.weight.numpy(), library, keep)))
        for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
            bn.running_mean.uniform_(-0.2, 0.2)
            bn.running_var.uniform_(0.5, 1.5)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    return model.eval()


def export_onnx(model: nn.Module, example: torch.Tensor, path: Path, fold: bool = True) -> Path:
    """``fold=False`` keeps BatchNorm as its own ONNX node, as the project's own exporter does."""
    torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=17, do_constant_folding=fold)
    return path


def import_torch(model: nn.Module, example: torch.Tensor):
    """Relax module from torch.export, weights as constants (the importer's default)."""
    from tvm.relax.frontend.torch import from_exported_program

    exported = torch.export.export(model, (example,))
    return from_exported_program(exported, unwrap_unit_return_tuple=True)


def import_torch_params(model: nn.Module, example: torch.Tensor, bind: bool = True):
    """Relax module from torch.export with weights kept as params, then (if ``bind``) bound as constants."""
    from tvm import relax
    from tvm.relax.frontend import detach_params
    from tvm.relax.frontend.torch import from_exported_program

    exported = torch.export.export(model, (example,))
    relax_mod = from_exported_program(exported, keep_params_as_input=True, unwrap_unit_return_tuple=True)
    mod, params = detach_params(relax_mod)
    if not bind:
        return mod
    weights = mod["main"].params[-len(params["main"]) :]
    return relax.transform.BindParams("main", dict(zip(weights, params["main"], strict=True)))(mod)


def torch_out(model: nn.Module, example: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return model(example).numpy()
