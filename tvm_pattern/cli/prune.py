"""``tvm-pattern prune``: train (or load) a dense CNN, then pattern + connectivity prune it."""

from __future__ import annotations

import argparse

from ..sparsity.blocks import AUTO, KERNEL_BLOCK, KERNEL_BLOCK_MIN_CHANNELS

DATASETS = ("fashion-mnist",)


def parse_connectivity(text: str) -> float | dict[str, float | None] | None:
    """``3.6``, ``none``, or per layer ``features.3=3.6,features.7=none``."""

    def one(value: str) -> float | None:
        if value.strip().lower() in ("none", "off"):
            return None
        try:
            return float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"connectivity must be a number >= 1 or 'none', got {value!r}") from None

    if "=" not in text:
        return one(text)
    pairs = [item.split("=", 1) for item in text.split(",") if item]
    return {name.strip(): one(value) for name, value in pairs}


def _size_or_word(text: str, word: str, what: str) -> int | str:
    """An int >= 1, or ``word`` (any case); ``ArgumentTypeError`` naming ``what`` otherwise."""
    if text.strip().lower() == word:
        return word
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"{what} must be an integer >= 1 or {word!r}, got {text!r}")
    return value


def parse_block(text: str) -> int | str:
    """``--block``: an int G >= 1 (output channels sharing their kept inputs) or ``unstructured``."""
    return _size_or_word(text, "unstructured", "block")


def parse_kernel_block(text: str) -> int | str:
    """``--kernel-block``: an int G >= 1 (filters sharing their kept input channels) or ``auto``."""
    return _size_or_word(text, AUTO, "kernel block")


def add_prune_options(p: argparse.ArgumentParser) -> None:
    """The options ``prune`` and ``demo`` share."""
    p.add_argument(
        "--model", default="vgg-small",
        help="vgg-small (default), or MODULE:CALLABLE: a module name or .py file and a callable returning an nn.Module",
    )  # fmt: skip
    p.add_argument("--weights", metavar="FILE", help="a state dict to load into the model before training")
    p.add_argument("--dataset", default="fashion-mnist", choices=DATASETS)
    p.add_argument(
        "--data",
        help="MODULE:CALLABLE returning (train, test) torch Datasets, or the Fashion-MNIST folder "
        "(default: $TVM_PATTERN_DATA or /usr/share/datasets/fashion-mnist)",
    )
    p.add_argument("--patterns", type=int, default=8, help="pattern library size K (4, 6, 8, 12; default 8)")
    p.add_argument("--taps", type=int, default=4, help="entries each pattern keeps, centre included (default 4)")
    p.add_argument(
        "--connectivity", type=parse_connectivity, default=3.6,
        help="keep 1/alpha of each layer's kernels: alpha (default 3.6), 'none', or name=alpha,...",
    )  # fmt: skip
    p.add_argument(
        "--pointwise", type=parse_connectivity, default=None, metavar="ALPHA",
        help="prune the 1x1 convs: keep 1/alpha of their input columns per block; alpha, or name=alpha,... "
        "(default: dense)",
    )  # fmt: skip
    p.add_argument(
        "--linear", type=parse_connectivity, default=None, metavar="ALPHA",
        help="prune the linear layers (the last one stays dense) like --pointwise (default: dense)",
    )  # fmt: skip
    p.add_argument("--depthwise-patterns", action="store_true",
                   help="prune depthwise 3x3 convs: each channel keeps one library pattern")  # fmt: skip
    p.add_argument(
        "--block", type=parse_block, default=4, metavar="G",
        help="--pointwise/--linear: blocks of G output channels keep the same input columns (default 4), "
        "or 'unstructured'",
    )  # fmt: skip
    p.add_argument(
        "--kernel-block", type=parse_kernel_block, default=AUTO, metavar="G",
        help=f"3x3 connectivity: blocks of G filters keep the same input channels, which the sparse Winograd "
        f"kernel runs faster on x86 (G a multiple of 6 or 4; stride 1, maps 8x8 to 28x28); default auto: "
        f"{KERNEL_BLOCK} for convs of at least {KERNEL_BLOCK_MIN_CHANNELS} input channels, else 1 (each filter its "
        f"own kernels)",
    )  # fmt: skip
    p.add_argument("--prune-last", action="store_true", help="prune the classifier's last layer too (dense by default)")
    p.add_argument("--dense-epochs", type=float, default=5.0, help="epochs to train the dense model (default 5)")
    p.add_argument("--admm-epochs", type=float, default=1.0, help="ADMM epochs per stage (default 1)")
    p.add_argument("--retrain-epochs", type=float, default=3.0, help="masked retraining epochs per stage (default 3)")
    p.add_argument("--prune-first", action="store_true", help="prune the first conv too (dense by default)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-cache", action="store_true", help="retrain the dense model even if cached")
    p.add_argument("--quiet", action="store_true", help="no progress bars")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                   help="where to train: auto (CUDA if available, the GPU of this rank), cpu, cuda")  # fmt: skip
    p.add_argument("--batch-size", type=int, default=128, help="global batch, split across ranks (default 128)")
    p.add_argument("--workers", type=int, default=0, help="DataLoader worker processes per rank (default 0)")
    p.add_argument("--amp", action="store_true", help="mixed precision (float16 autocast + GradScaler; CUDA only)")
    p.add_argument("--checkpoint-dir", metavar="DIR",
                   help="save the run's state there; the same command resumes from it")  # fmt: skip
    p.add_argument("--checkpoint-every", type=float, default=300.0, metavar="SECONDS",
                   help="checkpoint inside a phase this often (default 300; also at every phase boundary)")  # fmt: skip


def register(sub) -> None:
    p = sub.add_parser("prune", help="train (or load) a dense CNN, then pattern + connectivity prune it")
    add_prune_options(p)
    p.add_argument("--out", required=True, help="output folder: patterns.json, masks.pt, model.onnx, patterns.png, ...")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..prune import job

    job.run(args)
    return 0
