"""Moved to ``tvm_pattern.devices.cross``; this name re-exports it."""

import sys

from .devices import cross

sys.modules[__name__] = cross
