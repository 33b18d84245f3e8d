"""``tvm-pattern bench``: side-by-side measurements, each runtime in its own process, medians of repeats.

``layers``: every 3x3 conv of a suite (VGG-16, ResNet-18/50), PyTorch dense vs TVM dense vs pattern-sparse,
and tuned vs untuned kernels. ``peers`` (``bench --model``): one whole model (``models``: ResNet-50,
MobileNet-V2, VGG-16 in plain PyTorch, or any ONNX file) on ours, PyTorch, ONNX Runtime, OpenVINO and
DeepSparse, each in its own process; ``profile``: our time per op type.
"""

from .layers import SUITES, Layer, prune_suite, run_bench, run_tuned_bench
from .peers import RUNTIMES, run_model_bench

__all__ = ["RUNTIMES", "SUITES", "Layer", "prune_suite", "run_bench", "run_model_bench", "run_tuned_bench"]
