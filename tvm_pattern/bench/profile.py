"""Where our compiled model spends its time: the share of each op type (sparse conv, conv2d, matmul, ...).

TVM 0.27's Relax VM has no ``profile=True`` / ``vm.profile`` any more (the profiler went with the graph
executor), so this times every Call instruction with the VM's instrument hook (``set_instrument``: called
before and after each call; CPU kernels are synchronous, so the gap is the kernel's time) and maps each
PrimFunc's name to an op type. Python's hook costs a few microseconds per call, so the per-op sum is a little
above the plain latency; the shares are what this is for.
"""

from __future__ import annotations

import re
import time
from collections import defaultdict

__all__ = ["OP_TYPES", "breakdown", "breakdown_chart", "breakdown_table", "op_type"]

# First match wins: name patterns of the functions FuseOps / legalisation / our pass produce.
OP_TYPES: tuple[tuple[str, str], ...] = (
    ("depthwise conv (our pattern kernel)", r"^pattern_depthwise"),  # passes.PatternDepthwiseConv2d
    ("conv2d 1x1 (our block-sparse kernel)", r"^block_sparse_conv1x1"),  # passes.BlockSparseDense
    ("dense (our block-sparse kernel)", r"^block_sparse_linear"),
    ("Winograd conv (our kernel)", r"^winograd_conv2d"),  # schedules.winograd's (dense or block-sparse)
    ("pattern conv (our kernel)", r"pattern_conv2d|sparse_conv|pattern_sparse"),
    ("conv2d (our dense kernel)", r"^dense_conv2d"),  # passes.DenseKernels' kernels (args are not conv2d's)
    ("depthwise conv (our dense kernel)", r"^dense_depthwise"),
    ("dense (our kernel)", r"^dense_dense"),
    ("depthwise conv", r"depthwise|group_conv"),
    ("conv2d", r"conv2d|conv"),
    ("matmul / dense", r"matmul|dense|linear|gemm|gemv"),
    ("pooling", r"pool"),
    ("softmax / reduce", r"softmax|reduce|(^|_)(sum|mean|max|min)\d*($|_)"),
    ("layout / copy", r"transpose|reshape|layout|flatten|squeeze|concat|copy|pad|strided_slice|split|take"),
    ("add / elementwise", r"add|multiply|subtract|divide|relu|clip|sigmoid|exp|tanh|minimum|maximum|power|sqrt"),
    ("VM builtins (memory, shapes)", r"^vm\.|^relax\.|builtin"),
)


def op_type(name: str, args: tuple = ()) -> str:
    """The op type of a PrimFunc / VM function name (``fused_conv2d_add_relu`` -> ``conv2d``).

    For a dense conv, ``args`` (the call's tensors: input, weight, ...) refine it by the weight's shape:
    ``conv2d 1x1``, ``conv2d 7x7``, ``depthwise conv 3x3`` (one input channel per group).
    """
    lowered = name.lower()
    for label, pattern in OP_TYPES:
        if re.search(pattern, lowered):
            return _conv_kind(args) or label if label == "conv2d" else label
    return "other"


def _conv_kind(args: tuple) -> str | None:
    try:
        shapes = [tuple(int(d) for d in a.shape) for a in args if hasattr(a, "shape")]
    except (TypeError, ValueError):
        return None
    if len(shapes) < 2 or len(shapes[0]) != 4 or len(shapes[1]) != 4:
        return None
    (_, cin, _, _), (_, per_group, kh, kw) = shapes[0], shapes[1]
    if per_group == 1 and cin > 1:
        return f"depthwise conv {kh}x{kw}"
    return f"conv2d {kh}x{kw}"


def breakdown(vm, args: list, runs: int = 3) -> list[dict]:
    """Per op type over ``runs`` calls of ``vm["main"](*args)``: ``ms`` per run, ``share``, ``calls`` per run,
    and its ``functions`` (name -> ms per run), slowest type first. The hook stays off for other callers.
    """
    totals: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    starts: list[float] = []
    kinds: dict[str, str] = {}

    def instrument(_func, symbol, before, _ret, *args):
        if before:
            if symbol not in kinds:
                kinds[symbol] = op_type(symbol, args)
            starts.append(time.perf_counter())
        else:
            totals[symbol] += time.perf_counter() - starts.pop()
            counts[symbol] += 1
        return 0  # VMInstrumentReturnKind.NO_OP

    vm["main"](*args)  # warm-up, un-instrumented
    vm.set_instrument(instrument)
    try:
        for _ in range(runs):
            vm["main"](*args)
    finally:
        vm.set_instrument(None)
    groups: dict[str, dict] = {}
    for symbol, seconds in totals.items():
        g = groups.setdefault(kinds[symbol], {"ms": 0.0, "calls": 0, "functions": {}})
        g["ms"] += seconds * 1e3 / runs
        g["calls"] += counts[symbol] // runs
        g["functions"][symbol] = seconds * 1e3 / runs
    total = sum(g["ms"] for g in groups.values()) or 1.0
    rows = [{"op_type": label, "ms": g["ms"], "share": g["ms"] / total, "calls": g["calls"],
             "functions": dict(sorted(g["functions"].items(), key=lambda kv: -kv[1]))}
            for label, g in groups.items()]  # fmt: skip
    return sorted(rows, key=lambda r: -r["ms"])


def breakdown_table(rows: list[dict]) -> str:
    head = f"{'op type':<30}{'ms':>10}{'share':>8}{'calls':>7}  slowest function"
    lines = [head, "-" * (len(head) + 20)]
    for r in rows:
        top = next(iter(r["functions"]), "")
        lines.append(f"{r['op_type']:<30}{r['ms']:>10.2f}{r['share'] * 100:>7.1f}%{r['calls']:>7}  {top}")
    return "\n".join(lines)


def breakdown_chart(rows: list[dict], path, title: str = "") -> None:
    """A horizontal bar chart of the shares, written to ``path`` (PNG)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["share"] >= 0.001] or rows
    fig, ax = plt.subplots(figsize=(7, 0.45 * len(rows) + 1.2))
    labels = [r["op_type"] for r in rows][::-1]
    shares = [100 * r["share"] for r in rows][::-1]
    bars = ax.barh(labels, shares, color="#4c72b0")
    for bar, r in zip(bars, rows[::-1], strict=True):
        ax.text(bar.get_width() + 0.5, bar.get_y() + bar.get_height() / 2, f"{r['ms']:.1f} ms", va="center",
                fontsize=8)  # fmt: skip
    ax.set_xlabel("share of our run time (%)")
    ax.set_xlim(0, max(shares) * 1.25 + 1)
    ax.set_title(title or "tvm-pattern: time per op type")
    fig.tight_layout()
    fig.savefig(str(path), dpi=120)
    plt.close(fig)
