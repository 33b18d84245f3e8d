"""What both sides share, in numpy alone: the pattern library and the compressed (FKR + FKW) weight format.

The pruning side (torch) writes a library; the compiler side (TVM) reads it and packs weights with it.
Neither torch nor tvm is imported here.
"""

from .format import PackedConv, infer_library, pack, unpack
from .library import PatternLibrary, candidate_patterns

__all__ = ["PackedConv", "PatternLibrary", "candidate_patterns", "infer_library", "pack", "unpack"]
