"""tvm-pattern: pattern-based sparsity (PatDNN / PCONV) from PyTorch pruning to Apache TVM kernels.

The pruning side (``tvm_pattern.prune``) needs only PyTorch; the compiler side needs only TVM; both read
the numpy-only ``tvm_pattern.sparsity``. Import the subpackage you need.
"""

from .errors import DatasetNotFoundError, ModelError, PatternError, TvmPatternError
from .sparsity.library import PatternLibrary, candidate_patterns

__version__ = "0.1.0"
__all__ = [
    "DatasetNotFoundError",
    "ModelError",
    "PatternError",
    "PatternLibrary",
    "TvmPatternError",
    "candidate_patterns",
]
