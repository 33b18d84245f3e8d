"""Moved to ``tvm_pattern.devices.opencl``; this name re-exports it."""

import sys

from .devices import opencl

sys.modules[__name__] = opencl
