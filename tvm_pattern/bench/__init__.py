"""``tvm-pattern bench``: side-by-side measurements, each runtime in its own process, medians of repeats.

``layers``: every 3x3 conv of a suite (VGG-16, ResNet-18/50), PyTorch dense vs TVM dense vs pattern-sparse,
and tuned vs untuned kernels.
"""

from .layers import SUITES, Layer, prune_suite, run_bench, run_tuned_bench

__all__ = ["SUITES", "Layer", "prune_suite", "run_bench", "run_tuned_bench"]
