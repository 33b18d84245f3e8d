"""Moved to ``tvm_pattern.devices.phone``; this name re-exports it."""

import sys

from .devices import phone

sys.modules[__name__] = phone
