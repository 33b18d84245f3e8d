"""Per-target schedule templates for the pattern-sparse conv2d (shipped as ``tvm_pattern.schedules``).

One module per device family; adding a device is adding one file here.
"""
