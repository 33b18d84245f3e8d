"""Moved to ``tvm_pattern.devices.rpc``; this name re-exports it."""

import sys

from .devices import rpc

sys.modules[__name__] = rpc
