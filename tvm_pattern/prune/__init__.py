"""The pruning prelude (PyTorch only; never imports TVM).

``sparsifier`` (the extended-ADMM ``PatternSparsifier``, shaped like ``torch.ao.pruning``), ``projection``
(the Euclidean projections it uses), ``recipe`` (dense -> patterns -> connectivity, accuracy per stage),
``job`` (what ``tvm-pattern prune`` runs), and their helpers: ``training``, ``data``, ``models``,
``checkpoints``, ``artifacts`` (the all-or-nothing outputs) and ``plots``.
"""
