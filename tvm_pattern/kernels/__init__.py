"""TIR kernel generators, one module per op family, with no target knowledge (schedules add that).

- ``tvmscript``: the TVMScript emitter every generator writes with;
- ``pattern_conv2d``: the pattern-sparse 3x3 conv2d (FKW weights, tap offsets baked in per pattern).

A family module offers a ``KernelSpec`` (what its code depends on, JSON-serializable), an ``unscheduled``
generator (the PrimFunc before any schedule) and its arrays (the data arguments besides input and output).
"""
